"""The batched training forwards equal one-anchor-at-a-time inference (the thing the drafter is used for).

DSpark / DFlash: many anchors in one masked forward == `block_hidden` + the sequential head per anchor, with the
context computed by running the target on the prefix alone (as at inference: no feature of the anchor or later).
EAGLE-3: the batched training-time-test forward == a float64 loop over keys written from vLLM's semantics.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vllm_dspark.config import DSparkConfig
from vllm_dspark.model import DSparkDrafter, target_features
from vllm_dspark.target import load_target
from vllm_dspark.training.data import Record, make_batch
from vllm_dspark.training.dflash import DFlashDrafter
from vllm_dspark.training.eagle3 import Eagle3Config, Eagle3Drafter
from vllm_dspark.training.online_target import run_target
from vllm_dspark.training.parallel import ParallelDraftForward, block_attention_mask


@pytest.fixture(scope="module")
def target(tiny_target):
    model, _ = load_target(tiny_target, dtype=torch.float64, device=torch.device("cpu"))
    return model


def _randomize(module: torch.nn.Module, seed: int, std: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.requires_grad:
                base = 1.0 if name.endswith("norm.weight") else 0.0
                p.copy_(base + std * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _batch(gamma: int, num_anchors: int = 5):
    g = torch.Generator().manual_seed(3)
    recs = [Record(1, torch.randint(5, 96, (7,), generator=g).tolist(), torch.randint(5, 96, (20,), generator=g).tolist()),
            Record(2, torch.randint(5, 96, (4,), generator=g).tolist(), torch.randint(5, 96, (9,), generator=g).tolist())]
    batch = make_batch(recs, [0, 1], gamma=gamma, num_anchors=num_anchors, region="all", seed=0, step=0, pad_id=1)
    assert not batch.slot_valid.all()  # the short record has padding and truncated blocks: both must be handled
    return recs, batch


def test_block_attention_mask_by_hand():
    m = block_attention_mask(torch.tensor([[2, 4]]), block_len=2, num_ctx=5)[0].int()
    expected = torch.tensor([
        # ctx 0..4        block a0 a0 a1 a1
        [1, 1, 0, 0, 0, 1, 1, 0, 0],
        [1, 1, 0, 0, 0, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 1, 1],
        [1, 1, 1, 1, 0, 0, 0, 1, 1],
    ])
    assert torch.equal(m, expected)


@pytest.mark.parametrize("head_type", ["vanilla", "gated", "rnn"])
def test_dspark_training_forward_equals_per_anchor_inference(target, head_type):
    gamma = 4
    cfg = DSparkConfig.from_target(target.config, block_size=gamma, mask_token_id=2, target_layer_ids=[-1, 1, 2],
                                   num_draft_layers=2, markov_rank=6, markov_head_type=head_type)
    drafter = DSparkDrafter(cfg).double()
    _randomize(drafter, seed=1)
    drafter.share_target_embeddings(target)
    recs, batch = _batch(gamma)
    tp = run_target(target, batch.input_ids, batch.attention_mask, cfg.target_layer_ids,
                    batch.target_positions.flatten(1).clamp_max(batch.input_ids.shape[1] - 1))
    anchor_ids = torch.gather(batch.input_ids, 1, batch.anchors)
    logits, conf = ParallelDraftForward(drafter, "dspark")(tp.features, anchor_ids, batch.anchors, batch.prev_ids,
                                                           batch.slot_valid)
    row = 0
    for n, rec in enumerate(recs):
        ids = rec.token_ids
        for i in range(batch.anchors.shape[1]):
            if not batch.anchor_valid[n, i]:
                continue
            a = int(batch.anchors[n, i])
            out = target(torch.tensor([ids[:a]]), output_hidden_states=True)  # the prefix alone
            ctx = drafter.project_context(target_features(out.hidden_states, cfg.target_layer_ids))
            h = drafter.block_hidden(ctx, torch.arange(a)[None], torch.tensor([ids[a]]), torch.tensor([a]))
            base = drafter.lm_head(h)
            state = drafter.markov_head.init_state(1, h)
            for k in range(gamma):
                bias, w1, state = drafter.markov_head.step(torch.tensor([ids[min(a + k, len(ids) - 1)]]), h[:, k], state)
                if not batch.slot_valid[n, i, k]:
                    continue
                torch.testing.assert_close(logits[row], (base[0, k] + bias[0]), rtol=1e-9, atol=1e-9)
                torch.testing.assert_close(conf[row], drafter.confidence_head(h[:, k], w1)[0], rtol=1e-9, atol=1e-9)
                row += 1
    assert row == logits.shape[0] == int(batch.slot_valid.sum())


def test_dflash_training_forward_equals_per_anchor_inference(target):
    gamma = 3
    cfg = DSparkConfig.from_target(target.config, block_size=gamma, mask_token_id=2, target_layer_ids=[0, 2],
                                   num_draft_layers=1, markov_rank=0, enable_confidence_head=False)
    drafter = DFlashDrafter(cfg).double()
    _randomize(drafter, seed=2)
    drafter.share_target_embeddings(target)
    recs, batch = _batch(gamma)
    tp = run_target(target, batch.input_ids, batch.attention_mask, cfg.target_layer_ids,
                    batch.target_positions.flatten(1).clamp_max(batch.input_ids.shape[1] - 1))
    anchor_ids = torch.gather(batch.input_ids, 1, batch.anchors)
    logits, conf = ParallelDraftForward(drafter, "dflash")(tp.features, anchor_ids, batch.anchors, batch.prev_ids,
                                                           batch.slot_valid)
    assert conf is None
    expected = []
    for n, rec in enumerate(recs):
        for i in range(batch.anchors.shape[1]):
            if not batch.anchor_valid[n, i]:
                continue
            a = int(batch.anchors[n, i])
            out = target(torch.tensor([rec.token_ids[:a]]), output_hidden_states=True)
            ctx = drafter.project_context(target_features(out.hidden_states, cfg.target_layer_ids))
            # vLLM's layout spelled out: [anchor, mask x γ] at a..a+γ, drafts from the mask slots
            ids = torch.tensor([[rec.token_ids[a]] + [2] * gamma])
            h = drafter(drafter.embed_tokens(ids), torch.arange(a, a + gamma + 1)[None], ctx, torch.arange(a)[None])
            torch.testing.assert_close(
                drafter.block_hidden(ctx, torch.arange(a)[None], ids[:, 0], torch.tensor([a])), h[:, 1:])
            for k in range(gamma):
                if batch.slot_valid[n, i, k]:
                    expected.append(drafter.lm_head(h[0, k + 1]))
    torch.testing.assert_close(logits, torch.stack(expected), rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------ EAGLE-3 oracle
def _rms(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def _rope(x, pos, hd, theta):
    # angles in float32, as transformers computes them
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd)
    ang = torch.tensor(float(pos)) * inv
    cos, sin = torch.cat([ang.cos(), ang.cos()]).double(), torch.cat([ang.sin(), ang.sin()]).double()
    rot = torch.cat([-x[..., hd // 2:], x[..., : hd // 2]], dim=-1)
    return x * cos + rot * sin


def naive_eagle3_chain(sd: dict, cfg: Eagle3Config, feats, next_tokens, chain_tokens):
    """One chain in float64 with a loop over keys. feats [t+1, 3H]: rows 0..t; next_tokens [t+1]: x_{s+1} of row s;
    chain_tokens [γ-1]: token inputs of steps 1..γ-1. Returns logits [γ, V]."""
    eps, hd = cfg.rms_norm_eps, cfg.head_dim
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    theta = cfg.rope_parameters["rope_theta"]
    w = {k: v.double() for k, v in sd.items()}
    lin = lambda name, x: x @ w[name + ".weight"].T  # noqa: E731
    p = "midlayer."

    def row_input(tok, hidden):
        e = w["embed_tokens.weight"][tok]
        return torch.cat([_rms(e, w[p + "input_layernorm.weight"], eps), _rms(hidden, w[p + "hidden_norm.weight"], eps)])

    def kv(x, pos):
        k = lin(p + "self_attn.k_proj", x).view(nkv, hd)
        v = lin(p + "self_attn.v_proj", x).view(nkv, hd)
        return torch.stack([_rope(k[h], pos, hd, theta) for h in range(nkv)]), v

    def attend(x, pos, keys, values, residual):
        q = lin(p + "self_attn.q_proj", x).view(nh, hd)
        heads = []
        for h in range(nh):
            qh = _rope(q[h], pos, hd, theta)
            kvh = h // (nh // nkv)
            s = torch.stack([qh @ k[kvh] for k in keys]) / math.sqrt(hd)
            heads.append((torch.softmax(s, 0)[:, None] * torch.stack([v[kvh] for v in values])).sum(0))
        r = residual + lin(p + "self_attn.o_proj", torch.cat(heads))
        m = _rms(r, w[p + "post_attention_layernorm.weight"], eps)
        mlp = lin(p + "mlp.down_proj", F.silu(lin(p + "mlp.gate_proj", m)) * lin(p + "mlp.up_proj", m))
        return r + mlp

    g = feats.double() @ w["fc.weight"].T
    t = g.shape[0] - 1
    keys, values = [], []
    for s in range(t + 1):
        k, v = kv(row_input(next_tokens[s], g[s]), s)
        keys.append(k)
        values.append(v)
    r = attend(row_input(next_tokens[t], g[t]), t, keys, values, g[t])
    out = [r]
    for j, tok in enumerate(chain_tokens, start=1):
        x = row_input(tok, r)
        k, v = kv(x, t + j)
        keys.append(k)
        values.append(v)
        r = attend(x, t + j, keys, values, r)
        out.append(r)
    return torch.stack([_rms(o, w["norm.weight"], eps) @ w["lm_head.weight"].T for o in out])


def test_eagle3_training_forward_equals_float64_chain(target):
    gamma = 4
    cfg = Eagle3Config.from_target(target.config, block_size=gamma)
    assert cfg.target_layer_ids == [0, 1, 2]  # low / mid / high of 4 layers (the last is never used)
    drafter = Eagle3Drafter(cfg).double()
    _randomize(drafter, seed=4)
    drafter.share_target_embeddings(target)
    recs, batch = _batch(gamma)
    tp = run_target(target, batch.input_ids, batch.attention_mask, cfg.target_layer_ids,
                    batch.target_positions.flatten(1).clamp_max(batch.input_ids.shape[1] - 1))
    logits, _ = drafter(tp.features, batch.input_ids, batch.anchors, batch.prev_ids, batch.slot_valid)
    sd = drafter.state_dict()
    row = 0
    for n, rec in enumerate(recs):
        ids = rec.token_ids
        for i in range(batch.anchors.shape[1]):
            if not batch.anchor_valid[n, i]:
                continue
            a = int(batch.anchors[n, i])
            out = target(torch.tensor([ids[:a]]), output_hidden_states=True)
            feats = target_features(out.hidden_states, cfg.target_layer_ids)[0]
            chain = [ids[min(a + j, len(ids) - 1)] for j in range(1, gamma)]
            ref = naive_eagle3_chain(sd, cfg, feats, ids[1: a + 1], chain)
            for k in range(gamma):
                if batch.slot_valid[n, i, k]:
                    # transformers' Qwen3RMSNorm normalises in float32 even for float64 inputs: ~1e-6 apart
                    torch.testing.assert_close(logits[row], ref[k], rtol=1e-4, atol=2e-5)
                    row += 1
    assert row == logits.shape[0]


def test_eagle3_draft_equals_training_forward_on_its_own_tokens(target):
    """`draft` (inference, sampled tokens fed back) and `forward` (teacher-forced) agree when fed the same tokens."""
    gamma = 5
    drafter = Eagle3Drafter(Eagle3Config.from_target(target.config, block_size=gamma)).double()
    _randomize(drafter, seed=5)
    drafter.share_target_embeddings(target)
    ids = torch.randint(5, 96, (1, 13), generator=torch.Generator().manual_seed(6))
    a = 9
    out = target(ids[:, :a], output_hidden_states=True)
    feats = target_features(out.hidden_states, drafter.config.target_layer_ids)
    block = drafter.draft(feats, ids[:, : a + 1], temperature=0.0, generator=None)
    seq = torch.cat([ids[:, : a + 1], block.tokens], dim=1)  # x_0..x_a, then the drafts
    full = target(seq, output_hidden_states=True)
    prev = torch.cat([ids[:, a: a + 1], block.tokens[:, :-1]], dim=1)[:, None]  # [1, 1, γ]
    logits, _ = drafter(target_features(full.hidden_states, drafter.config.target_layer_ids), seq,
                        torch.tensor([[a]]), prev, torch.ones(1, 1, gamma, dtype=torch.bool))
    torch.testing.assert_close(logits.float(), block.logits[0], rtol=1e-6, atol=1e-6)
