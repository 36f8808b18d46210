"""Torch reference of the fused Markov step: the CPU path and the test oracle of `kernel.py` (same signatures).

Computes in `compute_dtype` (float32 by default; tests pass float64). The corrected logits are
L = U.float() + z.to(w2.dtype).float() @ w2.float().T, i.e. the bias is not rounded back to the weights' dtype
(MarkovHead.step in bf16 rounds it; that difference is in the tolerance table of the tests).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vllm_dspark.config import GREEDY_EPS

from .common import (
    SAMPLE_GROUP,
    BlockOutput,
    ConfidenceWeights,
    MarkovWeights,
    StepOutput,
    check_block_inputs,
    check_step_inputs,
    head_inputs,
)

_M32 = 0xFFFFFFFF
_PHILOX_KEY_A, _PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85
_PHILOX_ROUND_A, _PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57


def _mul32(a: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of a * b for a, b < 2^32, in int64 without overflow (16-bit limbs)."""
    a_lo, a_hi = a & 0xFFFF, a >> 16
    b_lo, b_hi = b & 0xFFFF, b >> 16
    p0, p1, p2, p3 = a_lo * b_lo, a_lo * b_hi, a_hi * b_lo, a_hi * b_hi
    mid = (p0 >> 16) + (p1 & 0xFFFF) + (p2 & 0xFFFF)
    hi = p3 + (p1 >> 16) + (p2 >> 16) + (mid >> 16)
    lo = (p0 + ((p1 + p2) << 16)) & _M32
    return hi & _M32, lo


def philox4x32(seeds: torch.Tensor, counters: torch.Tensor, rounds: int = 10) -> tuple[torch.Tensor, ...]:
    """Philox4x32 with key = seed (64-bit) and counter = (counter lo, counter hi, 0, 0), as `tl.randint4x`.

    seeds, counters: int64 [N]; returns four int64 tensors holding uint32 values.
    """
    c0, c1 = counters & _M32, (counters >> 32) & _M32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0, k1 = seeds & _M32, (seeds >> 32) & _M32
    for _ in range(rounds):
        hi_b, lo_b = _mul32(c2, _PHILOX_ROUND_B)
        hi_a, lo_a = _mul32(c0, _PHILOX_ROUND_A)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _PHILOX_KEY_A) & _M32
        k1 = (k1 + _PHILOX_KEY_B) & _M32
    return c0, c1, c2, c3


def uniforms(seeds: torch.Tensor, counters: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two uniforms of the sampling contract (common.py), float64 [N] each, exactly as the kernel forms them."""
    r0, r1, _, _ = philox4x32(seeds.long(), counters.long())
    to_u = lambda x: ((x >> 8).double() + 0.5) * 2.0**-24  # noqa: E731 - exact in fp32 too
    return to_u(r0), to_u(r1)


def first_above(weights: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row, the first index whose running sum of `weights` [N, M] exceeds `target` [N].

    When rounding leaves the total at or below the target, the last index with positive weight.
    """
    cum = weights.cumsum(-1)
    idx = (cum <= target[:, None]).sum(-1)
    m = weights.shape[-1]
    last = (m - 1) - (weights > 0).flip(-1).to(torch.int8).argmax(-1)
    return torch.where(idx < m, idx, last)


def inverse_cdf_sample(scaled: torch.Tensor, u1: torch.Tensor, u2: torch.Tensor, group: int = SAMPLE_GROUP):
    """Two-level inverse-CDF draw from softmax(scaled) [N, V] (see the sampling contract in common.py)."""
    n, v = scaled.shape
    p = torch.softmax(scaled, dim=-1)
    pg = F.pad(p, (0, (-v) % group)).view(n, -1, group)  # [N, T, G]
    w = pg.sum(-1)  # [N, T]
    tile = first_above(w, u1.to(w.dtype) * w.sum(-1))
    inside = pg[torch.arange(n, device=p.device), tile]  # [N, G]
    j = first_above(inside, u2.to(w.dtype) * inside.sum(-1))
    return tile * group + j


def _select(logits, temperature, seeds, counters, output):
    """tokens, logprobs, lse, probs-or-None from corrected logits [N, V] (compute dtype)."""
    greedy = temperature < GREEDY_EPS
    inv_t = torch.where(greedy, 1.0, 1.0 / temperature.to(logits.dtype).clamp_min(GREEDY_EPS)).to(logits.dtype)
    scaled = logits * inv_t[:, None]
    lse = torch.logsumexp(scaled, dim=-1)
    u1, u2 = uniforms(seeds, counters)
    sampled = inverse_cdf_sample(scaled, u1, u2)
    tokens = torch.where(greedy, logits.argmax(-1), sampled)
    logprobs = torch.where(greedy, 0.0, scaled.gather(1, tokens[:, None]).squeeze(1) - lse)
    probs = None
    if output == "probs":
        probs = torch.where(
            greedy[:, None], F.one_hot(tokens, logits.shape[-1]).to(logits.dtype), torch.exp(scaled - lse[:, None])
        ).float()
    return tokens, logprobs.float(), lse.float(), probs


def _confidence(conf: ConfidenceWeights | None, hidden, w1_prev, cd):
    if conf is None:
        return None
    x = torch.cat([hidden.to(cd), w1_prev.to(cd)], dim=-1) if conf.with_markov else hidden.to(cd)
    return (x @ conf.weight.to(cd) + conf.bias.to(cd)).float()


def markov_step(
    base_logits: torch.Tensor,  # [N, V]
    prev_ids: torch.Tensor,  # [N] previous chosen token (the anchor at k = 0)
    weights: MarkovWeights,
    temperature: torch.Tensor,  # [N] float; < GREEDY_EPS means greedy
    seeds: torch.Tensor,  # [N] int64
    offsets: torch.Tensor | None = None,  # [N] int64 Philox counter base (default 0)
    *,
    step: int = 0,  # added to offsets: the draw of block position k uses counter offsets + k
    z: torch.Tensor | None = None,  # [N, r] head output; None = vanilla (z = W1[prev])
    hidden: torch.Tensor | None = None,  # [N, H] for the confidence head
    conf: ConfidenceWeights | None = None,
    output: str = "none",  # "none" | "logits" (corrected L) | "probs" (softmax(L/T), one-hot if greedy)
    compute_dtype: torch.dtype = torch.float32,
) -> StepOutput:
    """One draft position for the whole vocabulary."""
    n, _ = check_step_inputs(base_logits, prev_ids, weights, temperature, seeds, offsets, z, hidden, conf, output)
    cd = compute_dtype
    w1_prev = F.embedding(prev_ids, weights.w1)  # [N, r]
    zz = (w1_prev if z is None else z).to(weights.w2.dtype)
    logits = base_logits.to(cd) + zz.to(cd) @ weights.w2.to(cd).T  # [N, V]
    offsets = torch.zeros_like(seeds) if offsets is None else offsets
    tokens, logprobs, lse, probs = _select(logits, temperature, seeds, offsets.long() + step, output)
    return StepOutput(
        tokens=tokens,
        logprobs=logprobs,
        lse=lse,
        conf_logits=_confidence(conf, hidden, w1_prev, cd),
        logits=logits.float() if output == "logits" else None,
        probs=probs,
    )


def markov_block(
    base_logits: torch.Tensor,  # [N, γ, V]
    hidden: torch.Tensor | None,  # [N, γ, H] (needed by gated/rnn heads and the confidence head)
    anchor: torch.Tensor,  # [N] last committed token
    weights: MarkovWeights,
    temperature: torch.Tensor,  # [N]
    seeds: torch.Tensor,  # [N]
    offsets: torch.Tensor | None = None,  # [N]; position k draws with counter offsets + k
    *,
    conf: ConfidenceWeights | None = None,
    output: str = "none",
    compute_dtype: torch.dtype = torch.float32,
) -> BlockOutput:
    """All γ positions of a draft block, left to right (each position's prev is the token chosen before it)."""
    n, gamma, _ = check_block_inputs(base_logits, hidden, anchor, weights, temperature, seeds, offsets, conf)
    prev, state, steps = anchor, None, []
    for k in range(gamma):
        h_k = hidden[:, k] if hidden is not None else None
        z, _, state = head_inputs(weights, prev, h_k, state)
        kw = dict(step=k, z=z, hidden=h_k, conf=conf, output=output, compute_dtype=compute_dtype)
        out = markov_step(base_logits[:, k], prev, weights, temperature, seeds, offsets, **kw)
        steps.append(out)
        prev = out.tokens
    return stack_steps(steps)


def stack_steps(steps: list[StepOutput]) -> BlockOutput:
    def stack(name):
        vals = [getattr(s, name) for s in steps]
        return None if vals[0] is None else torch.stack(vals, dim=1)

    return BlockOutput(*(stack(f) for f in ("tokens", "logprobs", "lse", "conf_logits", "logits", "probs")))
