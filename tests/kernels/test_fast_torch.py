"""The CPU serving path of the draft block (kernels/markov_step/fast_torch.py) against the reference, which is
itself checked against float64 and the model's modules elsewhere: same tokens, same floats within fp32 rounding,
on fresh random inputs for every head type, greedy / sampled / mixed batches and every output kind."""
import zlib

import pytest
import torch

from markov_checks import TOL
from vllm_dspark.kernels.markov_step import ConfidenceWeights, MarkovWeights, fast_torch, markov_block, reference
from vllm_dspark.model.heads import ConfidenceHead, MarkovHead


def _weights(v, h, r, head_type, dtype, seed):
    torch.manual_seed(seed)
    head, conf = MarkovHead(v, h, r, head_type), ConfidenceHead(h, r, with_markov=seed % 2 == 0)
    with torch.no_grad():
        head.markov_w2.weight.mul_(6.0)  # a bias large enough to move the argmax
        for p in list(head.parameters()) + list(conf.parameters()):
            if p.dim() == 1:
                p.normal_()
    head, conf = head.to(dtype), conf.to(dtype)
    return MarkovWeights.from_module(head), ConfidenceWeights.from_module(conf)


TEMPS = {"greedy": [0.0, 0.0, 0.0, 0.0, 0.0], "sampled": [1.0, 0.7, 1.3, 1.0, 2.0],
         "mixed": [0.0, 1.0, 0.0, 0.6, 1.0]}


@pytest.mark.parametrize("head_type", ["vanilla", "gated", "rnn"])
@pytest.mark.parametrize("temps", list(TEMPS))
@pytest.mark.parametrize("output", ["none", "logits", "probs"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_block_matches_reference(head_type, temps, output, dtype):
    n, gamma, v, h, r = 5, 4, 517, 24, 16
    seed = zlib.crc32(f"{head_type}{temps}{output}{dtype}".encode()) % 1000
    w, conf = _weights(v, h, r, head_type, dtype, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    u = (torch.randn(n, gamma, v, generator=gen) * 2).to(dtype)
    hidden = torch.randn(n, gamma, h, generator=gen).to(dtype)
    anchor = torch.randint(0, v, (n,), generator=gen)
    temp = torch.tensor(TEMPS[temps])
    seeds = torch.randint(0, 2**62, (n,), generator=gen)
    offsets = torch.randint(0, 10_000, (n,), generator=gen)
    args = (u, hidden, anchor, w, temp, seeds, offsets)
    want = reference.markov_block(*args, conf=conf, output=output)
    got = fast_torch.markov_block(*args, conf=conf, output=output)
    assert torch.equal(got.tokens, want.tokens)
    for name in ("logprobs", "lse", "conf_logits", "logits", "probs"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape, name
            torch.testing.assert_close(a, b, **TOL[name])


def test_dispatch_takes_the_fast_path(monkeypatch):
    w, conf = _weights(97, 8, 4, "vanilla", torch.float32, 0)
    u, hidden = torch.randn(2, 3, 97), torch.randn(2, 3, 8)
    args = (u, hidden, torch.tensor([1, 2]), w, torch.zeros(2), torch.zeros(2, dtype=torch.long))
    calls = []
    real = fast_torch.markov_block
    monkeypatch.setattr(fast_torch, "markov_block", lambda *a, **k: calls.append(1) or real(*a, **k))
    markov_block(*args, backend="torch")
    assert calls == [1]


def test_w2_cache_follows_in_place_updates():
    w, _ = _weights(97, 8, 4, "vanilla", torch.bfloat16, 1)
    u, hidden = torch.randn(3, 2, 97), torch.randn(3, 2, 8)
    args = lambda: (u, hidden, torch.tensor([1, 2, 3]), w, torch.zeros(3), torch.zeros(3, dtype=torch.long))  # noqa: E731
    fast_torch.markov_block(*args(), output="logits")
    with torch.no_grad():
        w.w2.mul_(-3.0)  # e.g. weights loaded in place after a first (warm-up) call
    got = fast_torch.markov_block(*args(), output="logits")
    want = reference.markov_block(*args(), output="logits")
    torch.testing.assert_close(got.logits, want.logits, **TOL["logits"])


def test_inference_mode_weights():
    # vLLM may create or load weights under torch.inference_mode(): such tensors have no version counter.
    with torch.inference_mode():
        w, conf = _weights(97, 8, 4, "vanilla", torch.bfloat16, 2)
        u, hidden = torch.randn(2, 3, 97), torch.randn(2, 3, 8)
        args = (u, hidden, torch.tensor([1, 2]), w, torch.zeros(2), torch.zeros(2, dtype=torch.long))
        got = fast_torch.markov_block(*args, conf=conf, output="logits")
        want = reference.markov_block(*args, conf=conf, output="logits")
    torch.testing.assert_close(got.logits, want.logits, **TOL["logits"])
