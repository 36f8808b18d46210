"""The parallel backbone vs the float64 oracle (tests/reference/deepspec_ref.py), module by module.

NOTE: transformers' Qwen3RMSNorm and rotary embedding compute in float32 even for float64 inputs, so a float64
drafter agrees with the oracle to ~1e-6, not 1e-12; the tolerances below allow for that and nothing more.
"""
from __future__ import annotations

import pytest
import torch

from reference import deepspec_ref as ref

ATOL = 3e-5  # float32 norms/RoPE inside a float64 model (see module docstring)

# (family, target layer ids): -1 included; GQA (qwen3 4:2, llama 6:3, qwen2 3:1) and no GQA (mistral 4:4).
CASES = [("qwen3", [-1, 1, 2]), ("llama", [0, 2]), ("qwen2", [-1, 1]), ("mistral", [0, 1])]


def _context_ids(target, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, target.config.vocab_size, (1, n), generator=g)


def _context(target, n: int, seed: int):
    return target(_context_ids(target, n, seed), output_hidden_states=True).hidden_states


@pytest.mark.parametrize("family,layer_ids", CASES)
def test_target_features_follow_layer_id_convention(drafter_pair, family, layer_ids):
    from vllm_dspark.model import target_features

    target, _, _, _ = drafter_pair(family, layer_ids=layer_ids)
    ids = _context_ids(target, 9, 0)
    hs = target(ids, output_hidden_states=True).hidden_states
    ours = target_features(hs, layer_ids)[0]
    assert ours.shape == (9, len(layer_ids) * target.config.hidden_size)
    torch.testing.assert_close(ours.double(), ref.context_features(hs, layer_ids), rtol=0, atol=0)
    # Independently of HF's hidden_states tuple: id i = the raw output of decoder layer i (forward hook, as
    # DeepSpec's training cache reads it), -1 = the embedding output.
    captured = {}
    def keep(i):
        return lambda module, args, out: captured.__setitem__(i, out[0] if isinstance(out, tuple) else out)

    hooks = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(target.model.layers)]
    try:
        target(ids)
    finally:
        for h in hooks:
            h.remove()
    H = target.config.hidden_size
    for j, i in enumerate(layer_ids):
        want = target.get_input_embeddings().weight[ids[0]] if i == -1 else captured[i].reshape(-1, H)
        torch.testing.assert_close(ours[:, j * H:(j + 1) * H], want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("family,layer_ids", CASES)
def test_project_context(drafter_pair, family, layer_ids):
    target, drafter, sd, cfg = drafter_pair(family, layer_ids=layer_ids)
    feats = ref.context_features(_context(target, 11, 1), layer_ids)
    torch.testing.assert_close(drafter.project_context(feats[None])[0], ref.project_context(sd, cfg, feats),
                               rtol=0, atol=ATOL)


@pytest.mark.parametrize("family,layer_ids", CASES)
def test_single_draft_layer(drafter_pair, family, layer_ids):
    """One layer: context K/V from projected features, k_norm on both, RoPE at absolute positions, no mask, GQA."""
    target, drafter, sd, cfg = drafter_pair(family, layer_ids=layer_ids, block_size=5)
    g = torch.Generator().manual_seed(2)
    H = cfg["hidden_size"]
    ctx = torch.randn(1, 13, H, generator=g, dtype=torch.float64)
    x = torch.randn(1, 5, H, generator=g, dtype=torch.float64)
    ctx_pos = torch.arange(13)[None] * 3 + 1  # non-contiguous on purpose: positions must be used as given
    blk_pos = torch.arange(60, 65)[None]
    rope_q = drafter.rotary_emb(x, blk_pos)
    rope_kv = drafter.rotary_emb(x, torch.cat([ctx_pos, blk_pos], 1))
    ours = drafter.layers[0](x, ctx, rope_q, rope_kv, None)[0]
    expected = ref.draft_layer(sd, cfg, 0, x[0], ctx[0], ctx_pos[0], blk_pos[0])
    torch.testing.assert_close(ours, expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("family,layer_ids", CASES)
def test_block_hidden_and_base_logits(drafter_pair, family, layer_ids):
    target, drafter, sd, cfg = drafter_pair(family, layer_ids=layer_ids, block_size=6)
    n = 17
    feats = ref.context_features(_context(target, n, 3), layer_ids)
    anchor = 7
    ctx = drafter.project_context(feats[None])
    hidden = drafter.block_hidden(ctx, torch.arange(n)[None], torch.tensor([anchor]), torch.tensor([n]))[0]
    expected = ref.backbone(sd, cfg, feats, anchor, n)
    torch.testing.assert_close(hidden, expected, rtol=0, atol=ATOL)
    base = drafter.lm_head(hidden)
    torch.testing.assert_close(base, expected @ sd["lm_head.weight"].T, rtol=0, atol=5 * ATOL)


def test_block_layout_anchor_at_its_own_position(drafter_pair):
    """The oracle with the anchor moved to start+1 (a plausible off-by-one) must disagree with the drafter: the
    comparison above is sensitive to the block's positions."""
    target, drafter, sd, cfg = drafter_pair("qwen3", layer_ids=[-1, 1, 2], block_size=4)
    feats = ref.context_features(_context(target, 10, 4), [-1, 1, 2])
    ctx = drafter.project_context(feats[None])
    hidden = drafter.block_hidden(ctx, torch.arange(10)[None], torch.tensor([3]), torch.tensor([10]))[0]
    shifted = ref.backbone(sd, cfg, feats, 3, 11)
    assert (hidden - shifted).abs().max() > 1e-3
    torch.testing.assert_close(hidden, ref.backbone(sd, cfg, feats, 3, 10), rtol=0, atol=ATOL)


def test_batched_with_padding_matches_per_request(drafter_pair):
    """N requests with different context lengths / anchors / positions, right-padded context (ctx_valid)."""
    target, drafter, sd, cfg = drafter_pair("llama", layer_ids=[0, 2], block_size=5)
    lengths, anchors = [6, 14, 9], [4, 11, 0]
    C = max(lengths)
    H_feat = len(cfg["target_layer_ids"]) * cfg["hidden_size"]
    feats = torch.zeros(3, C, H_feat, dtype=torch.float64)
    valid = torch.zeros(3, C, dtype=torch.bool)
    per_request = []
    for i, n in enumerate(lengths):
        f = ref.context_features(_context(target, n, 10 + i), cfg["target_layer_ids"])
        feats[i, :n] = f
        feats[i, n:] = 100.0  # garbage in padding rows: must not leak into the result
        valid[i, :n] = True
        per_request.append(f)
    positions = torch.arange(C)[None].expand(3, -1)
    block = drafter.draft(feats, positions, torch.tensor(anchors), torch.tensor(lengths), ctx_valid=valid)
    for i, n in enumerate(lengths):
        expected = ref.draft_round(sd, cfg, per_request[i], anchors[i], start=n)
        torch.testing.assert_close(block.logits[i], expected.corrected_logits, rtol=0, atol=5 * ATOL)
        assert block.tokens[i].tolist() == expected.tokens.tolist()


@pytest.mark.parametrize("family,layer_ids", [("llama", [0, 2]), ("qwen3", [-1, 1, 2])])
def test_every_rms_norm_uses_the_config_eps(drafter_pair, family, layer_ids):
    """Inputs of tiny magnitude, where eps (1e-5 for the llama target, 1e-6 for qwen3) changes the result."""
    target, drafter, sd, cfg = drafter_pair(family, layer_ids=layer_ids)
    g = torch.Generator().manual_seed(5)
    norms = {"hidden_norm": cfg["hidden_size"], "norm": cfg["hidden_size"],
             "layers.0.input_layernorm": cfg["hidden_size"], "layers.1.post_attention_layernorm": cfg["hidden_size"],
             "layers.0.self_attn.q_norm": ref.head_dim(cfg), "layers.1.self_attn.k_norm": ref.head_dim(cfg)}
    for name, width in norms.items():
        x = torch.randn(3, width, generator=g, dtype=torch.float64) * 3e-3
        module = drafter.get_submodule(name)
        want = ref.rms_norm(x, sd[name + ".weight"], cfg["rms_norm_eps"])
        torch.testing.assert_close(module(x), want, rtol=1e-5, atol=0, msg=name)
