"""Markov heads (vanilla / gated / rnn) and the confidence head vs the float64 oracle, on random inputs."""
from __future__ import annotations

import pytest
import torch

from reference import deepspec_ref as ref
from reference.deepspec_writer import random_state_dict

V, H, R = 29, 22, 9  # odd sizes


def _head_sd(kind: str, with_conf: bool, with_markov: bool, seed: int = 0):
    cfg = {"hidden_size": H, "vocab_size": V, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
           "intermediate_size": 8, "num_hidden_layers": 0, "target_layer_ids": [0], "markov_rank": R,
           "markov_head_type": kind, "enable_confidence_head": with_conf, "confidence_head_with_markov": with_markov}
    return cfg, random_state_dict(cfg, seed=seed)


def _heads(kind: str, with_conf: bool, with_markov: bool, sd: dict):
    from vllm_dspark.model import ConfidenceHead, MarkovHead

    markov = MarkovHead(V, H, R, kind).double()
    markov.load_state_dict({k[len("markov_head."):]: v for k, v in sd.items() if k.startswith("markov_head.")},
                           strict=True)
    conf = None
    if with_conf:
        conf = ConfidenceHead(H, R, with_markov).double()
        conf.load_state_dict({"proj.weight": sd["confidence_head.proj.weight"],
                              "proj.bias": sd["confidence_head.proj.bias"]}, strict=True)
    return markov, conf


@pytest.mark.parametrize("kind", ["vanilla", "gated", "rnn"])
def test_markov_step_chain(kind):
    """Several steps (the rnn state carried over) for a batch of independent chains."""
    cfg, sd = _head_sd(kind, False, False)
    markov, _ = _heads(kind, False, False, sd)
    g = torch.Generator().manual_seed(1)
    N, steps = 4, 5
    hidden = torch.randn(N, steps, H, generator=g, dtype=torch.float64)
    prev = torch.randint(0, V, (N, steps), generator=g)
    state = markov.init_state(N, hidden)
    ref_states = [None] * N
    for k in range(steps):
        bias, w1_prev, state = markov.step(prev[:, k], hidden[:, k], state)
        for n in range(N):
            want, ref_states[n] = ref.markov_bias(sd, cfg, hidden[n, k], int(prev[n, k]), ref_states[n])
            torch.testing.assert_close(bias[n], want, rtol=0, atol=1e-12)
            torch.testing.assert_close(w1_prev[n], sd["markov_head.markov_w1.weight"][prev[n, k]], rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["vanilla", "gated", "rnn"])
def test_teacher_forced_equals_sequential_oracle(kind):
    cfg, sd = _head_sd(kind, False, False, seed=3)
    markov, _ = _heads(kind, False, False, sd)
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(3, 6, H, generator=g, dtype=torch.float64)
    prev = torch.randint(0, V, (3, 6), generator=g)
    bias, w1 = markov.teacher_forced(prev, hidden)
    for n in range(3):
        state = None
        for k in range(6):
            want, state = ref.markov_bias(sd, cfg, hidden[n, k], int(prev[n, k]), state)
            torch.testing.assert_close(bias[n, k], want, rtol=0, atol=1e-12)


def test_markov_w2_is_stored_transposed():
    """bias = W2_stored @ W1[prev] with W2_stored [V, r] (§3, §10.6): check against the formula directly."""
    cfg, sd = _head_sd("vanilla", False, False, seed=5)
    markov, _ = _heads("vanilla", False, False, sd)
    bias, _, _ = markov.step(torch.tensor([7]), torch.zeros(1, H, dtype=torch.float64))
    want = sd["markov_head.markov_w2.weight"] @ sd["markov_head.markov_w1.weight"][7]
    torch.testing.assert_close(bias[0], want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("with_markov", [True, False])
def test_confidence_head(with_markov):
    cfg, sd = _head_sd("vanilla", True, with_markov, seed=6)
    markov, conf = _heads("vanilla", True, with_markov, sd)
    g = torch.Generator().manual_seed(7)
    hidden = torch.randn(5, H, generator=g, dtype=torch.float64)
    prev = torch.randint(0, V, (5,), generator=g)
    _, w1_prev, _ = markov.step(prev, hidden)
    logits = conf(hidden, w1_prev)
    assert logits.shape == (5,)
    for n in range(5):
        feat = torch.cat([hidden[n], sd["markov_head.markov_w1.weight"][prev[n]]]) if with_markov else hidden[n]
        want = feat @ sd["confidence_head.proj.weight"][0] + sd["confidence_head.proj.bias"][0]
        torch.testing.assert_close(logits[n], want, rtol=0, atol=1e-12)


def test_calibrated_confidence_per_position_temperatures():
    from vllm_dspark.model import calibrated_confidence

    logits = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, -3.0]], dtype=torch.float64)
    temps = [1.0, 2.0, 0.5]
    want = torch.sigmoid(logits / torch.tensor(temps, dtype=torch.float64))
    torch.testing.assert_close(calibrated_confidence(logits, temps), want)
    torch.testing.assert_close(calibrated_confidence(logits, None), torch.sigmoid(logits))


def test_unknown_head_type_is_refused():
    from vllm_dspark.model import MarkovHead

    with pytest.raises(ValueError, match="lstm"):
        MarkovHead(V, H, R, "lstm")


@pytest.mark.parametrize("temperature", [0.0, 1e-6, 0.7, 1.0])
def test_logits_to_probs(temperature):
    from vllm_dspark.model import logits_to_probs

    g = torch.Generator().manual_seed(8)
    logits = torch.randn(4, V, generator=g, dtype=torch.float64) * 3
    torch.testing.assert_close(logits_to_probs(logits, temperature).double(), ref.logits_to_probs(logits, temperature),
                               rtol=0, atol=1e-6)
