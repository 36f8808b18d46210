"""One whole draft round (backbone + sequential stage + confidence) vs the float64 oracle, for every target family,
head type and confidence variant; sampling checked along the drafter's own draws and by a χ² test."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reference import deepspec_ref as ref
from reference.stats import chi2_pvalue

ATOL = 1e-4  # logits scale ~3; float32 norms/RoPE inside the float64 model (see test_dspark_backbone.py)
LAYER_IDS = {"qwen3": [-1, 1, 2], "llama": [0, 1, 2], "qwen2": [-1, 1], "mistral": [1]}
HEADS = [  # (markov_rank, markov_head_type, enable_confidence_head, confidence_head_with_markov)
    (11, "vanilla", True, True), (11, "vanilla", True, False), (11, "gated", True, True),
    (11, "gated", False, False), (11, "rnn", True, True), (11, "rnn", True, False),
    (0, "vanilla", True, False), (0, "vanilla", False, False),
]


def _round(target, drafter, layer_ids, n_ctx, anchor, seed, temperature=0.0, generator=None):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, target.config.vocab_size, (1, n_ctx), generator=g)
    feats = ref.context_features(target(ids, output_hidden_states=True).hidden_states, layer_ids)
    block = drafter.draft(feats[None], torch.arange(n_ctx)[None], torch.tensor([anchor]), torch.tensor([n_ctx]),
                          temperature=temperature, generator=generator)
    return feats, block


def _check(block, expected, with_conf):
    torch.testing.assert_close(block.logits[0].double(), expected.corrected_logits, rtol=0, atol=ATOL)
    torch.testing.assert_close(block.probs[0].double(), expected.probs, rtol=0, atol=1e-5)
    if with_conf:
        torch.testing.assert_close(block.confidence_logits[0].double(), expected.confidence_logits, rtol=0, atol=ATOL)
        torch.testing.assert_close(block.confidence[0].double(), torch.sigmoid(expected.confidence_logits),
                                   rtol=0, atol=ATOL)
    else:
        assert block.confidence_logits is None and block.confidence is None


@pytest.mark.parametrize("family", list(LAYER_IDS))
@pytest.mark.parametrize("rank,kind,conf,conf_markov", HEADS)
def test_greedy_round_matches_oracle(drafter_pair, family, rank, kind, conf, conf_markov):
    ids = LAYER_IDS[family]
    target, drafter, sd, cfg = drafter_pair(family, layer_ids=ids, block_size=6, markov_rank=rank,
                                            markov_head_type=kind, enable_confidence_head=conf,
                                            confidence_head_with_markov=conf_markov)
    for seed, (n_ctx, anchor) in enumerate([(13, 2), (5, 9)]):
        feats, block = _round(target, drafter, ids, n_ctx, anchor, seed)
        expected = ref.draft_round(sd, cfg, feats, anchor)
        assert block.tokens[0].tolist() == expected.tokens.tolist()
        torch.testing.assert_close(drafter.lm_head(drafter.block_hidden(
            drafter.project_context(feats[None]), torch.arange(n_ctx)[None], torch.tensor([anchor]),
            torch.tensor([n_ctx])))[0], expected.base_logits, rtol=0, atol=ATOL)
        _check(block, expected, conf)
        # Greedy probs are one-hot on the chosen tokens.
        assert torch.equal(block.probs[0].argmax(-1), block.tokens[0])
        assert bool((block.probs[0].max(-1).values == 1).all())


def test_markov_bias_changes_the_draft(drafter_pair):
    """Guard against a vacuous comparison: the sequential stage really moves logits away from U."""
    target, drafter, sd, cfg = drafter_pair("qwen3", layer_ids=[-1, 1, 2], block_size=6, markov_rank=11,
                                            markov_head_type="rnn")
    feats, block = _round(target, drafter, [-1, 1, 2], 9, 3, 0)
    expected = ref.draft_round(sd, cfg, feats, 3)
    assert (expected.corrected_logits - expected.base_logits).abs().max() > 0.5


@pytest.mark.parametrize("kind", ["vanilla", "gated", "rnn"])
@pytest.mark.parametrize("temperature", [0.6, 1.0])
def test_sampled_round_follows_its_own_draws(drafter_pair, kind, temperature):
    """At T > 0 the logits/probs/confidences must be those of the chain of *sampled* tokens (prev = anchor, then
    the token drawn at k-1)."""
    target, drafter, sd, cfg = drafter_pair("llama", layer_ids=[0, 2], block_size=7, markov_rank=11,
                                            markov_head_type=kind)
    gen = torch.Generator().manual_seed(11)
    for seed in range(3):
        feats, block = _round(target, drafter, [0, 2], 8, 4, seed, temperature, gen)
        expected = ref.draft_round(sd, cfg, feats, 4, temperature=temperature, tokens=block.tokens[0])
        _check(block, expected, True)


def _batched_hidden(drafter, target, cfg, n):
    feats = ref.context_features(target(torch.arange(6)[None] % target.config.vocab_size,
                                        output_hidden_states=True).hidden_states, cfg["target_layer_ids"])
    ctx = drafter.project_context(feats[None])
    hidden = drafter.block_hidden(ctx, torch.arange(6)[None], torch.tensor([1]), torch.tensor([6]))
    return feats, hidden.expand(n, -1, -1)


@pytest.mark.parametrize("kind", ["vanilla", "rnn"])
def test_sampling_distribution_chi2(drafter_pair, kind):
    """χ² of the joint (x_0, x_1) drawn by the drafter (20k draws in one batch) against the oracle's exact
    P(x_0) · P(x_1 | x_0) at T = 0.8, V = 11."""
    target, drafter, sd, cfg = drafter_pair("qwen3", layer_ids=[-1, 1], block_size=2, markov_rank=5,
                                            markov_head_type=kind, target_overrides={"vocab_size": 11})
    T, n, V = 0.8, 20000, 11
    feats, hidden = _batched_hidden(drafter, target, cfg, n)
    block = drafter.sample_block(hidden, torch.full((n,), 1), T, torch.Generator().manual_seed(0))
    counts = np.zeros((V, V))
    np.add.at(counts, (block.tokens[:, 0].numpy(), block.tokens[:, 1].numpy()), 1)
    h = ref.backbone(sd, cfg, feats, 1, 6)
    expected = np.zeros((V, V))
    for x0 in range(V):
        d = ref.sequential_stage(sd, cfg, h, 1, T, tokens=torch.tensor([x0, 0]))
        expected[x0] = d.probs[0, x0].item() * d.probs[1].numpy()
    assert abs(expected.sum() - 1) < 1e-9
    assert chi2_pvalue(counts, expected) > 1e-3
    # Power check: the same draws are far from the law of a sampler whose x_1 ignores x_0 (prev = anchor).
    unchained = ref.sequential_stage(sd, cfg, h, 1, T, tokens=torch.tensor([1, 0])).probs[1].numpy()
    assert chi2_pvalue(counts, expected.sum(1)[:, None] * unchained[None, :]) < 1e-6


def test_draft_gamma_override_and_survival(drafter_pair):
    """A shorter block (gamma < block_size) is the oracle's round with a smaller block; survival = cumprod(c)."""
    target, drafter, sd, cfg = drafter_pair("mistral", layer_ids=[0, 1], block_size=6)
    g = torch.Generator().manual_seed(12)
    ids = torch.randint(0, target.config.vocab_size, (1, 7), generator=g)
    feats = ref.context_features(target(ids, output_hidden_states=True).hidden_states, [0, 1])
    block = drafter.draft(feats[None], torch.arange(7)[None], torch.tensor([2]), torch.tensor([7]), gamma=3)
    expected = ref.draft_round(sd, {**cfg, "block_size": 3}, feats, 2)
    assert block.tokens[0].tolist() == expected.tokens.tolist()
    _check(block, expected, True)
    torch.testing.assert_close(block.survival, torch.cumprod(block.confidence, -1))
