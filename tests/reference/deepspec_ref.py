"""An independent float64 oracle of one DeepSpec DSpark draft round and of DeepSpec's verification rule.

Written from `shared/docs/deepspec-format.md` alone (section numbers below refer to it), never from
`vllm_dspark`. It works directly on a DeepSpec-layout state dict (top-level keys such as `fc.weight`,
`layers.0.self_attn.q_proj.weight`, `markov_head.markov_w1.weight`) and the checkpoint's config dict.
Everything is single-sequence (no batch axis) and float64, with loops where a loop reads more plainly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GREEDY_EPS = 1e-5  # DeepSpec: temperature < 1e-5 means argmax (§6)


# ----------------------------------------------------------------------------------------------- helpers
def _w(sd: dict, key: str) -> torch.Tensor:
    return sd[key].to(torch.float64)


def linear(sd: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    """x @ W^T (+ b when the checkpoint stores `<name>.bias`)."""
    y = x @ _w(sd, name + ".weight").T
    if name + ".bias" in sd:
        y = y + _w(sd, name + ".bias")
    return y


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.to(torch.float64)
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight.to(torch.float64)


def head_dim(cfg: dict) -> int:
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def rope_params(cfg: dict) -> dict:
    """The rope dict, whichever spelling the config uses (transformers 5 `rope_parameters` or the older
    `rope_theta` + `rope_scaling`)."""
    p = dict(cfg.get("rope_parameters") or {})
    if cfg.get("rope_scaling"):
        p.update(cfg["rope_scaling"])
    if "rope_theta" not in p:
        p["rope_theta"] = cfg.get("rope_theta", 10000.0)
    p.setdefault("rope_type", p.get("type", "default"))
    return p


def inv_freq(cfg: dict) -> torch.Tensor:
    """RoPE inverse frequencies [hd/2] for `default` and `llama3` rope types (float64)."""
    p = rope_params(cfg)
    d = head_dim(cfg)
    assert p.get("partial_rotary_factor", 1.0) == 1.0, "oracle covers full rotary only"
    freq = 1.0 / (p["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    if p["rope_type"] == "default":
        return freq
    assert p["rope_type"] == "llama3", f"oracle does not cover rope_type {p['rope_type']}"
    factor, lo, hi = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    old_len = p["original_max_position_embeddings"]
    out = []
    for f in freq.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < old_len / hi:  # high frequency: unchanged
            out.append(f)
        elif wavelen > old_len / lo:  # low frequency: divided by factor
            out.append(f / factor)
        else:  # in between: interpolate
            smooth = (old_len / wavelen - lo) / (hi - lo)
            out.append((1 - smooth) * f / factor + smooth * f)
    return torch.tensor(out, dtype=torch.float64)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, freq: torch.Tensor) -> torch.Tensor:
    """HF rotate-half RoPE. x [n_heads, T, hd], positions [T]."""
    ang = positions.to(torch.float64)[:, None] * freq[None, :]  # [T, hd/2]
    cos, sin = torch.cos(ang), torch.sin(ang)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


# ----------------------------------------------------------------------------------------------- backbone
def context_features(hidden_states, layer_ids) -> torch.Tensor:
    """§4: concat HF `hidden_states[id + 1]` (id -1 -> `[0]`, the embedding output) in the given order.
    hidden_states: tuple of [T, H] (or [1, T, H]); returns [T, m*H]."""
    parts = []
    for i in layer_ids:
        h = hidden_states[i + 1]
        parts.append(h[0] if h.dim() == 3 else h)
    return torch.cat(parts, dim=-1).to(torch.float64)


def project_context(sd: dict, cfg: dict, features: torch.Tensor) -> torch.Tensor:
    """§4: ctx = hidden_norm(fc(features)); features [T, m*H] -> [T, H]."""
    return rms_norm(linear(sd, "fc", features.to(torch.float64)), _w(sd, "hidden_norm.weight"), cfg["rms_norm_eps"])


def draft_layer(sd: dict, cfg: dict, i: int, x: torch.Tensor, ctx: torch.Tensor,
                ctx_positions: torch.Tensor, block_positions: torch.Tensor) -> torch.Tensor:
    """§5 steps 1-6 for draft layer i. x [B, H] block hidden, ctx [T, H]."""
    eps = cfg["rms_norm_eps"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim(cfg)
    p = f"layers.{i}."
    h = rms_norm(x, _w(sd, p + "input_layernorm.weight"), eps)  # [B, H]
    kv_in = torch.cat([ctx, h], dim=0)  # [T+B, H]: context rows first, not layer-normed again
    kv_pos = torch.cat([ctx_positions, block_positions])
    q = linear(sd, p + "self_attn.q_proj", h).view(len(h), nh, hd).transpose(0, 1)  # [nh, B, hd]
    k = linear(sd, p + "self_attn.k_proj", kv_in).view(len(kv_in), nkv, hd).transpose(0, 1)  # [nkv, T+B, hd]
    v = linear(sd, p + "self_attn.v_proj", kv_in).view(len(kv_in), nkv, hd).transpose(0, 1)
    q = rms_norm(q, _w(sd, p + "self_attn.q_norm.weight"), eps)
    k = rms_norm(k, _w(sd, p + "self_attn.k_norm.weight"), eps)  # k_norm on context AND block keys
    freq = inv_freq(cfg)
    q = apply_rope(q, block_positions, freq)
    k = apply_rope(k, kv_pos, freq)
    group = nh // nkv
    out = torch.empty(nh, len(h), hd, dtype=torch.float64)
    for head in range(nh):  # GQA: query head `head` reads kv head `head // group`
        kh, vh = k[head // group], v[head // group]
        scores = q[head] @ kh.T * hd ** -0.5  # [B, T+B], no mask at all
        out[head] = torch.softmax(scores, dim=-1) @ vh
    attn = out.transpose(0, 1).reshape(len(h), nh * hd)
    x = x + linear(sd, p + "self_attn.o_proj", attn)
    h2 = rms_norm(x, _w(sd, p + "post_attention_layernorm.weight"), eps)
    assert cfg.get("hidden_act", "silu") == "silu", "oracle covers SiLU MLPs only"
    mlp = linear(sd, p + "mlp.down_proj",
                 F.silu(linear(sd, p + "mlp.gate_proj", h2)) * linear(sd, p + "mlp.up_proj", h2))
    return x + mlp


def block_input_ids(cfg: dict, anchor: int) -> torch.Tensor:
    """§5: [anchor, mask x (B-1)]."""
    return torch.tensor([anchor] + [cfg["mask_token_id"]] * (cfg["block_size"] - 1))


def backbone(sd: dict, cfg: dict, features: torch.Tensor, anchor: int, start: int,
             ctx_positions: torch.Tensor | None = None) -> torch.Tensor:
    """Block hidden after the final norm, [B, H]. features [T, m*H] are the context rows; by default at
    positions 0..T-1 with start = T (the anchor at its own position `start`)."""
    ctx = project_context(sd, cfg, features)
    if ctx_positions is None:
        ctx_positions = torch.arange(len(ctx))
    block_positions = start + torch.arange(cfg["block_size"])
    x = _w(sd, "embed_tokens.weight")[block_input_ids(cfg, anchor)]  # [B, H]
    for i in range(cfg["num_hidden_layers"]):
        x = draft_layer(sd, cfg, i, x, ctx, ctx_positions, block_positions)
    return rms_norm(x, _w(sd, "norm.weight"), cfg["rms_norm_eps"])


# ----------------------------------------------------------------------------------------------- heads
def markov_bias(sd: dict, cfg: dict, h_k: torch.Tensor, prev: int, state: torch.Tensor | None):
    """§6 table: (bias_k [V], new rnn state). h_k [H]."""
    kind = str(cfg.get("markov_head_type", "vanilla")).lower()
    w1 = _w(sd, "markov_head.markov_w1.weight")[prev]  # [r]
    w2 = lambda z: linear(sd, "markov_head.markov_w2", z)  # stored [V, r]: bias = W2_stored @ z
    if kind == "vanilla":
        return w2(w1), state
    if kind == "gated":
        g = torch.sigmoid(linear(sd, "markov_head.gate_proj", torch.cat([h_k, w1])))
        return w2(g * w1), state
    assert kind == "rnn", kind
    if state is None:
        state = torch.zeros_like(w1)
    gate, cand, out = linear(sd, "markov_head.joint_proj", torch.cat([state, w1, h_k])).chunk(3)
    state = torch.sigmoid(gate) * state + (1 - torch.sigmoid(gate)) * torch.tanh(cand)
    return w2(torch.tanh(out)), state


def logits_to_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """DeepSpec `logits_to_probs`: one-hot argmax at T < 1e-5, else softmax(L / T)."""
    if temperature < GREEDY_EPS:
        return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(torch.float64)
    return torch.softmax(logits.to(torch.float64) / temperature, dim=-1)


@dataclass
class RefDraft:
    block_hidden: torch.Tensor  # [B, H]
    base_logits: torch.Tensor  # [B, V]
    corrected_logits: torch.Tensor  # [B, V]
    tokens: torch.Tensor  # [B]
    probs: torch.Tensor  # [B, V]
    confidence_logits: torch.Tensor | None  # [B]


def sequential_stage(sd: dict, cfg: dict, block_hidden: torch.Tensor, anchor: int, temperature: float = 0.0,
                     tokens: torch.Tensor | None = None, generator: torch.Generator | None = None) -> RefDraft:
    """§6-7. Left to right; prev_0 = anchor, prev_k = the token chosen at k-1. If `tokens` is given the
    chain follows those tokens (to check a sampler's logits/probs along its own draws)."""
    B = block_hidden.shape[0]
    base = block_hidden @ _w(sd, "lm_head.weight").T  # [B, V]
    rank = cfg.get("markov_rank", 0) or 0
    corrected, chosen, probs, conf = [], [], [], []
    prev, state = anchor, None
    for k in range(B):
        h_k = block_hidden[k]
        L = base[k]
        if rank > 0:
            bias, state = markov_bias(sd, cfg, h_k, prev, state)
            L = L + bias
        p = logits_to_probs(L, temperature)
        if tokens is not None:
            x = int(tokens[k])
        elif temperature < GREEDY_EPS:
            x = int(L.argmax())
        else:
            x = int(torch.multinomial(p, 1, generator=generator))
        if cfg.get("enable_confidence_head"):
            feat = h_k
            if cfg.get("confidence_head_with_markov"):
                feat = torch.cat([h_k, _w(sd, "markov_head.markov_w1.weight")[prev]])
            conf.append(linear(sd, "confidence_head.proj", feat)[0])
        corrected.append(L)
        probs.append(p)
        chosen.append(x)
        prev = x
    return RefDraft(block_hidden, base, torch.stack(corrected), torch.tensor(chosen), torch.stack(probs),
                    torch.stack(conf) if conf else None)


def draft_round(sd: dict, cfg: dict, features: torch.Tensor, anchor: int, start: int | None = None,
                temperature: float = 0.0, tokens: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> RefDraft:
    """One DeepSpec draft round from raw (unprojected) context features [T, m*H]."""
    start = len(features) if start is None else start
    hidden = backbone(sd, cfg, features, anchor, start)
    return sequential_stage(sd, cfg, hidden, anchor, temperature, tokens, generator)


# ----------------------------------------------------------------------------------------------- §8 verify
def accepted_count(p_target: torch.Tensor, p_draft: torch.Tensor, drafts: torch.Tensor,
                   uniforms: torch.Tensor) -> int:
    """§8: draft j is accepted iff u_j < min(1, p_t[j](x_j) / max(p_d[j](x_j), 1e-8)); a = all-accepted prefix.
    p_target [>=k, V], p_draft [k, V], drafts [k], uniforms [k]."""
    a = 0
    for j in range(len(drafts)):
        x = int(drafts[j])
        ratio = min(1.0, float(p_target[j, x]) / max(float(p_draft[j, x]), 1e-8))
        if not float(uniforms[j]) < ratio:
            break
        a += 1
    return a


def residual(p_target_row: torch.Tensor, p_draft_row: torch.Tensor) -> torch.Tensor:
    """§8: normalised max(p_t - p_d, 0); falls back to p_t when it is all zero."""
    r = (p_target_row.to(torch.float64) - p_draft_row.to(torch.float64)).clamp_min(0)
    return p_target_row.to(torch.float64) if float(r.sum()) <= 0 else r / r.sum()


def bonus_distribution(p_target: torch.Tensor, p_draft: torch.Tensor, a: int) -> torch.Tensor:
    """Distribution of the token committed after a accepted drafts out of k = len(p_draft)."""
    return residual(p_target[a], p_draft[a]) if a < len(p_draft) else p_target[a].to(torch.float64)


def cut_at_stop(drafts: list[int], a: int, stop_ids) -> tuple[int, bool]:
    """§8 stop handling: if an accepted draft is a stop token, a is cut to include it and no bonus follows.
    Returns (a, bonus_follows)."""
    for j in range(a):
        if drafts[j] in stop_ids:
            return j + 1, False
    return a, True


# ----------------------------------------------------------------------------------------------- greedy loop
@dataclass
class RefRun:
    output_ids: list[int]  # generated tokens (the prefill token first)
    accepted_lengths: list[int]  # per round, a + 1 (a when stopped inside the drafts)
    drafts: list[list[int]]  # proposed tokens per round
    confidence_logits: list[torch.Tensor | None]
    stopped_in_drafts: bool = False  # the last round ended on an accepted stop draft (no bonus)


@torch.no_grad()
def greedy_generate(target, sd: dict, cfg: dict, prompt_ids: list[int], max_new_tokens: int,
                    stop_ids=(), verify_lens=None, cap_to_budget: bool = True) -> RefRun:
    """DeepSpec's greedy evaluator loop (§5, §8) for batch size 1, recomputing everything from scratch.
    `target` is a HF causal LM; `verify_lens[r]` (optional) truncates round r's proposal to a prefix.
    `cap_to_budget`: never propose more drafts than the token budget can still take (our loop's rule, which the
    spec leaves open); it changes only the last rounds' proposed counts."""
    layer_ids = cfg["target_layer_ids"]
    stop_ids = set(stop_ids)
    out = target(torch.tensor([prompt_ids]), output_hidden_states=True)
    committed = list(prompt_ids)  # tokens whose features are the context
    anchor = int(out.logits[0, -1].argmax())
    gen = [anchor]
    run = RefRun(gen, [], [], [])
    rnd = 0
    while len(gen) < max_new_tokens and anchor not in stop_ids:
        hs = target(torch.tensor([committed]), output_hidden_states=True).hidden_states
        feats = context_features(hs, layer_ids)
        d = draft_round(sd, cfg, feats, anchor, start=len(committed))
        k = cfg["block_size"] if verify_lens is None else int(verify_lens[rnd])
        if cap_to_budget:
            k = min(k, max_new_tokens - len(gen) - 1)
        drafts = d.tokens[:k].tolist()
        logits = target(torch.tensor([committed + [anchor] + drafts])).logits[0, len(committed):]  # [k+1, V]
        greedy = logits.argmax(-1).tolist()
        a = 0
        while a < k and drafts[a] == greedy[a]:
            a += 1
        a, bonus_follows = cut_at_stop(drafts, a, stop_ids)
        run.drafts.append(drafts)
        run.confidence_logits.append(d.confidence_logits)
        committed += [anchor] + drafts[:a]
        gen += drafts[:a]
        if bonus_follows:
            anchor = greedy[a]
            gen.append(anchor)
            run.accepted_lengths.append(a + 1)
        else:
            run.accepted_lengths.append(a)
            run.stopped_in_drafts = True
            break
        rnd += 1
    del gen[max_new_tokens:]
    return run
