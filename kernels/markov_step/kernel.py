"""Triton kernels for the Markov step and their launchers (same signatures as reference.py).

Design (memory bound: per step the whole batch needs V·r weights + N·V base logits; V = 151,936, r = 256 gives
78 MB of W2 per step in bf16):

1. `_tile_stats_kernel`: programs = (batch tile of BLOCK_N rows) x (vocabulary stream), about two per SM; a
   program loads its z rows [BLOCK_N, r] once (W1[prev] gathered in-kernel for the vanilla head) and walks the
   128-wide vocabulary tiles j, j + streams, ...: bias = z @ W2_tileᵀ with `tl.dot` (z padded to 64 rows, so the
   same code serves N = 1), L = U + bias, then per row the tile's max of L/T and its argmax (one reduction),
   Σ exp(L/T - max), and for sampled rows the in-tile draw with u2 (TILE_DRAW: a scan over the tile; the
   token u2 picks if u1 later picks this tile) stored in place of the argmax.
   Batch tiles are the fastest-varying program index, so the programs sharing a W2 tile run together and W2
   comes from HBM about once per step for the whole batch; U is read once. Optionally writes L (fp32) for the
   probs/logits outputs. Odd positions walk the tiles in reverse, so the tail of W2 read by the previous
   position is still in L2 (H100, graph replay: -9 % at batch 1, -7 % at 64, -1 % at 256).
2. `_select_kernel`, grid = N: combines the tile stats (online-softmax merge) into lse and the greedy argmax, or
   samples by the two-level inverse CDF (common.py): u1 picks a tile from the tile masses, and the token is that
   tile's pass-1 draw (its logit recomputed from one W2 row for the log-prob). Without TILE_DRAW (the caller
   said all_greedy, or LaunchOptions(tile_draw=False)) a sampled row instead recomputes the 128 corrected logits
   of the drawn tile (one [128, r] W2 read per request) and draws with u2 there. Also the confidence logit
   w·[h; W1[prev]] + b. Writes token / logprob / lse into [N] or strided [N, γ] outputs, so the next step reads
   its prev ids straight from the token buffer (no host sync).
3. `_normalize_kernel` (output="probs" only): probs = exp(L/T - lse) in place (one-hot for greedy rows).

Launch choices the benchmark varies (tile config, tile order, in-tile draws) are `LaunchOptions` arguments of the
launchers; the defaults are what serving runs.
"""
from __future__ import annotations

import dataclasses
import functools

import torch
import triton
import triton.language as tl

from vllm_dspark.config import GREEDY_EPS

from .._backend import interpreting
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

BLOCK_V = SAMPLE_GROUP  # vocabulary tile = sampling group (part of the RNG contract)


@triton.jit
def _load_z(rows, row_mask, k, k_mask, prev_ptr, stride_prev, z_ptr, stride_z, w1_ptr, R,
            Z_FROM_PREV: tl.constexpr):
    """z rows [len(rows), BLOCK_R]: W1[prev] (vanilla) or the given head output."""
    m = row_mask[:, None] & k_mask[None, :]
    if Z_FROM_PREV:
        prev = tl.load(prev_ptr + rows * stride_prev, mask=row_mask, other=0).to(tl.int64)
        z = tl.load(w1_ptr + prev[:, None] * R + k[None, :], mask=m, other=0.0)
    else:
        z = tl.load(z_ptr + rows[:, None] * stride_z + k[None, :], mask=m, other=0.0)
    return z


@triton.jit
def _uniform(x):
    """uint32 -> float32 in (0, 1): ((x >> 8) + 0.5) / 2^24, exact."""
    return ((x >> 8).to(tl.float32) + 0.5) * 5.9604644775390625e-08


@triton.jit(do_not_specialize=["N", "T", "reverse", "progs_v", "step"])
def _tile_stats_kernel(
    u_ptr, stride_u,  # base logits U_k [N, V] (unit stride along V)
    prev_ptr, stride_prev,  # [N] previous token ids (Z_FROM_PREV)
    z_ptr, stride_z,  # [N, r] head output (not Z_FROM_PREV)
    w1_ptr, w2_ptr,  # [V, r] markov_w1 / markov_w2.weight, contiguous
    temp_ptr,  # [N] float32 temperatures
    seed_ptr, offset_ptr, step,  # [N] int64 Philox keys / counter bases (TILE_DRAW)
    tmax_ptr, tsum_ptr, targ_ptr,  # [N, T] per tile: max(L/T), Σ exp(L/T - max), token id (see TILE_DRAW)
    logits_ptr, stride_logits,  # [N, V] float32 corrected logits (WRITE_LOGITS)
    N, V, R, T, reverse, progs_v, greedy_eps,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_R: tl.constexpr,
    Z_FROM_PREV: tl.constexpr, WRITE_LOGITS: tl.constexpr, DOT_FP32: tl.constexpr, TILE_DRAW: tl.constexpr,
):
    # Program = (batch tile b, vocabulary stream j), b fastest: the programs of all batch tiles that read the
    # same W2 tile run side by side, so W2 comes from HBM once and from L2 for the others. Stream j visits tiles
    # j, j + progs_v, ... (a loop the compiler software-pipelines: the next W2 tile loads during this one's math).
    pid = tl.program_id(0)
    n_btiles = tl.cdiv(N, BLOCK_N)
    b = pid % n_btiles
    j = pid // n_btiles
    rows = (b * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    row_mask = rows < N
    k = tl.arange(0, BLOCK_R)
    k_mask = k < R
    z = _load_z(rows, row_mask, k, k_mask, prev_ptr, stride_prev, z_ptr, stride_z, w1_ptr, R, Z_FROM_PREV)
    t = tl.load(temp_ptr + rows, mask=row_mask, other=1.0)
    greedy = t < greedy_eps
    inv_t = tl.where(greedy, 1.0, 1.0 / tl.maximum(t, greedy_eps))
    lane = tl.arange(0, BLOCK_V)
    if TILE_DRAW:  # u2 of the sampling contract, per row: the in-tile draw is made here for every tile
        seed = tl.load(seed_ptr + rows, mask=row_mask, other=0)
        _, r1, _, _ = tl.randint4x(seed, tl.load(offset_ptr + rows, mask=row_mask, other=0) + step)
        u2 = _uniform(r1)
    for i in range(j, T, progs_v):
        tile = tl.where(reverse != 0, T - 1 - i, i)
        v = tile * BLOCK_V + lane
        v_mask = v < V
        # NOTE: evict_last keeps W2 in L2 for the next position; U is read once (evict_first).
        w2 = tl.load(w2_ptr + v[:, None].to(tl.int64) * R + k[None, :], mask=v_mask[:, None] & k_mask[None, :],
                     other=0.0, eviction_policy="evict_last")  # [BLOCK_V, BLOCK_R]
        if DOT_FP32:
            bias = tl.dot(z.to(tl.float32), tl.trans(w2.to(tl.float32)), input_precision="ieee")
        else:
            bias = tl.dot(z.to(w2.dtype), tl.trans(w2))  # [BLOCK_N, BLOCK_V] fp32
        m2 = row_mask[:, None] & v_mask[None, :]
        u = tl.load(u_ptr + rows[:, None] * stride_u + v[None, :], mask=m2, other=0.0,
                    eviction_policy="evict_first").to(tl.float32)
        logits = u + bias
        if WRITE_LOGITS:
            tl.store(logits_ptr + rows[:, None] * stride_logits + v[None, :], logits, mask=m2)
        scaled = tl.where(m2, logits * inv_t[:, None], float("-inf"))
        # One reduction for max and argmax (first occurrence; for greedy rows scaled == L).
        t_max, t_arg = tl.max(scaled, axis=1, return_indices=True, return_indices_tie_break_left=True)
        shift = tl.where(t_max == float("-inf"), 0.0, t_max)
        e = tl.exp(scaled - shift[:, None])
        t_sum = tl.sum(e, axis=1)
        if TILE_DRAW:
            # Sampled rows: the token u2 would pick if u1 picks this tile (first lane whose running mass
            # exceeds u2 · tile mass, else the last lane with mass), so the select kernel never revisits W2.
            cum = tl.cumsum(e, axis=1)
            first = tl.min(tl.where(cum > (u2 * t_sum)[:, None], lane[None, :], BLOCK_V), axis=1)
            last = tl.max(tl.where(e > 0.0, lane[None, :], -1), axis=1)
            pick = tl.where(first < BLOCK_V, first, tl.maximum(last, 0))
            t_arg = tl.where(greedy, t_arg, pick)
        out = rows * T + tile
        tl.store(tmax_ptr + out, t_max, mask=row_mask)
        tl.store(tsum_ptr + out, t_sum, mask=row_mask)
        tl.store(targ_ptr + out, tile * BLOCK_V + t_arg, mask=row_mask)


@triton.jit
def _confidence(n, prev, hidden_ptr, stride_h, conf_w_ptr, conf_b_ptr, w1_ptr, H, R,
                BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr, CONF_MARKOV: tl.constexpr):
    acc = tl.zeros([BLOCK_H], dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        hh = h0 + tl.arange(0, BLOCK_H)
        hm = hh < H
        x = tl.load(hidden_ptr + n * stride_h + hh, mask=hm, other=0.0).to(tl.float32)
        acc += x * tl.load(conf_w_ptr + hh, mask=hm, other=0.0).to(tl.float32)
    logit = tl.sum(acc, axis=0) + tl.load(conf_b_ptr).to(tl.float32)
    if CONF_MARKOV:
        k = tl.arange(0, BLOCK_R)
        km = k < R
        w1 = tl.load(w1_ptr + prev * R + k, mask=km, other=0.0).to(tl.float32)
        logit += tl.sum(w1 * tl.load(conf_w_ptr + H + k, mask=km, other=0.0).to(tl.float32), axis=0)
    return logit


@triton.jit
def _load_z_row(n, prev, k, k_mask, z_ptr, stride_z, w1_ptr, R, Z_FROM_PREV: tl.constexpr):
    """Elements k of request n's z: W1[prev] (vanilla) or the given head output."""
    if Z_FROM_PREV:
        return tl.load(w1_ptr + prev * R + k, mask=k_mask, other=0.0)
    return tl.load(z_ptr + n * stride_z + k, mask=k_mask, other=0.0)


@triton.jit(do_not_specialize=["T", "step"])
def _select_kernel(
    tmax_ptr, tsum_ptr, targ_ptr,  # [N, T] tile stats from _tile_stats_kernel
    u_ptr, stride_u, prev_ptr, stride_prev, z_ptr, stride_z, w1_ptr, w2_ptr,  # to recompute the drawn tile
    temp_ptr, seed_ptr, offset_ptr, step, greedy_eps,  # [N] float32, [N] int64, [N] int64
    hidden_ptr, stride_h, conf_w_ptr, conf_b_ptr, H,  # confidence head (HAS_CONF)
    tok_ptr, stride_tok, logp_ptr, stride_logp, lse_ptr, stride_lse, conf_ptr, stride_conf,  # [N] outputs
    V, R, T,
    BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_RC: tl.constexpr,
    BLOCK_H: tl.constexpr, Z_FROM_PREV: tl.constexpr, HAS_CONF: tl.constexpr, CONF_MARKOV: tl.constexpr,
    TILE_DRAW: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    base = n * T
    temp = tl.load(temp_ptr + n)
    greedy = temp < greedy_eps
    inv_t = tl.where(greedy, 1.0, 1.0 / tl.maximum(temp, greedy_eps))

    # One pass of online-softmax merging over the tile stats, per lane; `best` keeps, per lane, the first tile
    # holding that lane's maximum (tiles grow along the loop), for the greedy argmax = first occurrence overall.
    m_vec = tl.full([BLOCK_T], float("-inf"), tl.float32)
    z_vec = tl.zeros([BLOCK_T], dtype=tl.float32)
    best_vec = tl.zeros([BLOCK_T], dtype=tl.int32) + T
    for t0 in range(0, T, BLOCK_T):
        tt = t0 + tl.arange(0, BLOCK_T)
        tm = tt < T
        mx = tl.load(tmax_ptr + base + tt, mask=tm, other=float("-inf"))
        sm = tl.load(tsum_ptr + base + tt, mask=tm, other=0.0)
        m_new = tl.maximum(m_vec, mx)
        ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        z_vec = z_vec * tl.exp(m_vec - ref) + sm * tl.exp(mx - ref)
        best_vec = tl.where(mx > m_vec, tt, best_vec)
        m_vec = m_new
    m_all = tl.max(m_vec, axis=0)
    shift = tl.where(m_all == float("-inf"), 0.0, m_all)
    z_vec = z_vec * tl.exp(m_vec - shift)
    best_vec = tl.where(m_vec == m_all, best_vec, T)
    z_all = tl.sum(z_vec, axis=0)
    lse = shift + tl.log(z_all)
    best = tl.minimum(tl.min(best_vec, axis=0), T - 1)
    token = tl.load(targ_ptr + base + best).to(tl.int64)
    logp = temp * 0.0  # fp32 scalar (a temperature is finite)

    prev = tl.load(prev_ptr + n * stride_prev).to(tl.int64)
    if temp >= greedy_eps:
        r0, r1, _, _ = tl.randint4x(tl.load(seed_ptr + n), tl.load(offset_ptr + n) + step)
        # Level 1: the tile whose running mass first exceeds u1 · Z (else the last tile with mass).
        target = _uniform(r0) * z_all
        carry = 0.0
        first = T
        last = -1
        for t0 in range(0, T, BLOCK_T):
            tt = t0 + tl.arange(0, BLOCK_T)
            tm = tt < T
            mx = tl.load(tmax_ptr + base + tt, mask=tm, other=float("-inf"))
            w = tl.where(tm, tl.load(tsum_ptr + base + tt, mask=tm, other=0.0) * tl.exp(mx - shift), 0.0)
            cum = tl.cumsum(w, axis=0) + carry
            first = tl.minimum(first, tl.min(tl.where(tm & (cum > target), tt, T), axis=0))
            last = tl.maximum(last, tl.max(tl.where(w > 0.0, tt, -1), axis=0))
            carry += tl.sum(w, axis=0)
        tile = tl.where(first < T, first, tl.maximum(last, 0))
        if TILE_DRAW:
            # Level 2 was drawn by the tile kernel; only the chosen token's logit is recomputed (one W2 row).
            token = tl.load(targ_ptr + base + tile).to(tl.int64)
            acc = tl.zeros([BLOCK_RC], dtype=tl.float32)
            for k0 in range(0, R, BLOCK_RC):
                k = k0 + tl.arange(0, BLOCK_RC)
                km = k < R
                zc = _load_z_row(n, prev, k, km, z_ptr, stride_z, w1_ptr, R, Z_FROM_PREV)
                w2 = tl.load(w2_ptr + token * R + k, mask=km, other=0.0)
                acc += w2.to(tl.float32) * zc.to(w2.dtype).to(tl.float32)
            logit = tl.load(u_ptr + n * stride_u + token).to(tl.float32) + tl.sum(acc, axis=0)
            logp = logit * inv_t - lse
        else:
            # Level 2: recompute that tile's corrected logits and draw inside it with u2.
            v = tile * BLOCK_V + tl.arange(0, BLOCK_V)
            v_mask = v < V
            acc = tl.zeros([BLOCK_V], dtype=tl.float32)
            for k0 in range(0, R, BLOCK_RC):
                k = k0 + tl.arange(0, BLOCK_RC)
                km = k < R
                zc = _load_z_row(n, prev, k, km, z_ptr, stride_z, w1_ptr, R, Z_FROM_PREV)
                w2 = tl.load(w2_ptr + v[:, None].to(tl.int64) * R + k[None, :],
                             mask=v_mask[:, None] & km[None, :], other=0.0)
                acc += tl.sum(w2.to(tl.float32) * zc.to(w2.dtype).to(tl.float32)[None, :], axis=1)
            logits = tl.load(u_ptr + n * stride_u + v, mask=v_mask, other=0.0).to(tl.float32) + acc
            scaled = tl.where(v_mask, logits * inv_t, float("-inf"))
            e = tl.exp(scaled - shift)
            cum = tl.cumsum(e, axis=0)
            lane = tl.arange(0, BLOCK_V)
            j = tl.min(tl.where(v_mask & (cum > _uniform(r1) * tl.sum(e, axis=0)), lane, BLOCK_V), axis=0)
            j = tl.where(j < BLOCK_V, j, tl.maximum(tl.max(tl.where(e > 0.0, lane, -1), axis=0), 0))
            token = (tile * BLOCK_V + j).to(tl.int64)
            logp = tl.sum(tl.where(lane == j, scaled, 0.0), axis=0) - lse

    tl.store(tok_ptr + n * stride_tok, token)
    tl.store(logp_ptr + n * stride_logp, logp)
    tl.store(lse_ptr + n * stride_lse, lse)
    if HAS_CONF:
        c = _confidence(n, prev, hidden_ptr, stride_h, conf_w_ptr, conf_b_ptr, w1_ptr, H, R, BLOCK_H, BLOCK_R,
                        CONF_MARKOV)
        tl.store(conf_ptr + n * stride_conf, c)


@triton.jit
def _normalize_kernel(
    logits_ptr, stride_logits,  # [N, V] float32 corrected logits -> draft probs, in place
    temp_ptr, tok_ptr, stride_tok, lse_ptr, stride_lse,
    V, greedy_eps,
    BLOCK: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    v = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    vm = v < V
    temp = tl.load(temp_ptr + n)
    ptrs = logits_ptr + n * stride_logits + v
    if temp < greedy_eps:
        p = tl.where(v == tl.load(tok_ptr + n * stride_tok), 1.0, 0.0)
    else:
        p = tl.exp(tl.load(ptrs, mask=vm, other=0.0) / temp - tl.load(lse_ptr + n * stride_lse))
    tl.store(ptrs, p, mask=vm)


# ----------------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------------

def _tile_config(n: int, dot_fp32: bool) -> tuple[int, int, int, int]:
    """(BLOCK_N, num_warps, num_stages, programs per SM) for the tile-stats kernel."""
    if dot_fp32:  # fp32 operands (no tensor cores; 2x the shared memory of bf16): small row tiles
        # 8 warps: with 4, ptxas spills ~9 KB per thread (tests/kernels/aot.py, sm_90); 152 KB of shared
        # memory per program leaves room for one per SM.
        return 16, 8, 1, 1
    # H100 sweep (benchmarks/kernels/bench_markov_step.py --tile-configs, graph replay): 64 rows, 4 warps, no
    # software pipelining, 2 programs per SM won at batch 1, 64 and 256 (W2 tile 64 KB + z 32 KB of shared memory
    # per program; the second program per SM hides the load latency better than a deeper pipeline).
    return 64, 4, 1, 2


@dataclasses.dataclass(frozen=True)
class LaunchOptions:
    """Launch choices of the Triton path; the defaults are the serving ones, the others are benchmark ablations."""

    tile_config: tuple[int, int, int, int] | None = None  # (BLOCK_N, warps, stages, programs/SM); None: _tile_config
    alternate_tile_order: bool = True  # odd block positions walk the vocabulary tiles backwards (L2 reuse of W2)
    # In-tile draws in the tile kernel (a scan per tile) instead of the select kernel's per-request W2 tile
    # re-read; skipped anyway when the caller says every row is greedy (`all_greedy=True`).
    tile_draw: bool = True


DEFAULT_LAUNCH = LaunchOptions()


class _StepBuffers:
    """Outputs of one step: [N] views, possibly columns of [N, γ] block buffers."""

    def __init__(self, tokens, logprobs, lse, conf):
        self.tokens, self.logprobs, self.lse, self.conf = tokens, logprobs, lse, conf


@functools.lru_cache(maxsize=None)
def _num_sms_cached(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _num_sms(device: torch.device) -> int:
    # NOTE: under the interpreter (CPU) a few programs, so each walks several tiles and the loop is exercised.
    return _num_sms_cached(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 2


def _dummy(device, dtype=torch.float32):
    return torch.empty(1, device=device, dtype=dtype)


def _launch_step(base_logits, prev_ids, weights: MarkovWeights, temperature, seeds, offsets, step, z, hidden,
                 conf: ConfidenceWeights | None, logits_out, out: _StepBuffers, scratch, reverse: bool,
                 all_greedy: bool, launch: LaunchOptions):
    """Launch the tile-stats and select kernels for one step; `logits_out` [N, V] fp32 view or None.

    all_greedy=True (the caller's promise that every temperature is < GREEDY_EPS) skips the in-tile draws; a row
    that samples anyway is still drawn correctly, by the select kernel's W2 tile re-read.
    """
    n, v = base_logits.shape
    r = weights.rank
    device = base_logits.device
    if base_logits.stride(-1) != 1:
        raise ValueError("base_logits must have unit stride along the vocabulary axis")
    w1, w2 = weights.w1, weights.w2
    if not (w1.is_contiguous() and w2.is_contiguous()):
        raise ValueError("markov w1 / w2 must be contiguous [V, r] tensors")
    num_tiles = triton.cdiv(v, BLOCK_V)
    tmax, tsum, targ = scratch(n, num_tiles)
    dot_fp32 = interpreting() or w2.dtype == torch.float32
    block_n, warps, stages, per_sm = launch.tile_config or _tile_config(n, dot_fp32)
    block_r = max(16, triton.next_power_of_2(r))
    n_btiles = triton.cdiv(n, block_n)
    progs_v = max(1, min(num_tiles, _num_sms(device) * per_sm // n_btiles))
    z_from_prev = z is None
    zt = z if z is not None else w1  # placeholder pointer when unused
    if z is not None and z.stride(-1) != 1:
        zt = z = z.contiguous()
    write_logits = logits_out is not None
    lo = logits_out if write_logits else _dummy(device)
    tile_draw = launch.tile_draw and not all_greedy
    _tile_stats_kernel[(n_btiles * progs_v,)](
        base_logits, base_logits.stride(0), prev_ids, prev_ids.stride(0), zt, zt.stride(0), w1, w2, temperature,
        seeds, offsets, step, tmax, tsum, targ, lo, lo.stride(0) if write_logits else 0,
        n, v, r, num_tiles, int(reverse), progs_v, GREEDY_EPS,
        BLOCK_N=block_n, BLOCK_V=BLOCK_V, BLOCK_R=block_r, Z_FROM_PREV=z_from_prev, WRITE_LOGITS=write_logits,
        DOT_FP32=dot_fp32, TILE_DRAW=tile_draw, num_warps=warps, num_stages=stages,
    )
    has_conf = conf is not None
    h = hidden if has_conf else _dummy(device)
    if has_conf and h.stride(-1) != 1:
        h = h.contiguous()
    cw = conf.weight if has_conf else _dummy(device)
    cb = conf.bias if has_conf else _dummy(device)
    conf_out = out.conf if has_conf else _dummy(device)
    hdim = h.shape[-1] if has_conf else 1
    _select_kernel[(n,)](
        tmax, tsum, targ, base_logits, base_logits.stride(0), prev_ids, prev_ids.stride(0), zt, zt.stride(0),
        w1, w2, temperature, seeds, offsets, step, GREEDY_EPS,
        h, h.stride(0), cw, cb, hdim,
        out.tokens, out.tokens.stride(0), out.logprobs, out.logprobs.stride(0), out.lse, out.lse.stride(0),
        conf_out, conf_out.stride(0),
        v, r, num_tiles,
        BLOCK_T=min(1024, triton.next_power_of_2(num_tiles)), BLOCK_V=BLOCK_V, BLOCK_R=block_r,
        BLOCK_RC=min(block_r, 128), BLOCK_H=min(1024, triton.next_power_of_2(hdim)), Z_FROM_PREV=z_from_prev,
        HAS_CONF=has_conf, CONF_MARKOV=has_conf and conf.with_markov, TILE_DRAW=tile_draw, num_warps=8,
    )


def _normalize(logits_out, temperature, out: _StepBuffers):
    n, v = logits_out.shape
    block = 1024
    _normalize_kernel[(n, triton.cdiv(v, block))](
        logits_out, logits_out.stride(0), temperature, out.tokens, out.tokens.stride(0), out.lse, out.lse.stride(0),
        v, GREEDY_EPS, BLOCK=block, num_warps=4,
    )


class _Scratch:
    """Tile-stat buffers, allocated once per call and reused by every step of a block."""

    def __init__(self, device):
        self.device, self.bufs = device, None

    def __call__(self, n, t):
        if self.bufs is None or self.bufs[0].shape != (n, t):
            f = dict(device=self.device, dtype=torch.float32)
            self.bufs = (torch.empty(n, t, **f), torch.empty(n, t, **f),
                         torch.empty(n, t, device=self.device, dtype=torch.int64))
        return self.bufs


def _prep(temperature, seeds, offsets, weights, conf):
    temperature = temperature.to(torch.float32).contiguous()
    seeds = seeds.to(torch.int64).contiguous()
    offsets = torch.zeros_like(seeds) if offsets is None else offsets.to(torch.int64).contiguous()
    if conf is not None:
        conf = ConfidenceWeights(conf.weight.contiguous(), conf.bias, conf.with_markov)
    return temperature, seeds, offsets, conf


def _new_step_buffers(n, device, has_conf, gamma=None):
    shape = (n,) if gamma is None else (n, gamma)
    f = dict(device=device, dtype=torch.float32)
    return (torch.empty(shape, device=device, dtype=torch.int64), torch.empty(shape, **f), torch.empty(shape, **f),
            torch.empty(shape, **f) if has_conf else None)


def markov_step(base_logits, prev_ids, weights: MarkovWeights, temperature, seeds, offsets=None, *, step=0, z=None,
                hidden=None, conf=None, output="none", compute_dtype=None, all_greedy=False,
                launch: LaunchOptions = DEFAULT_LAUNCH) -> StepOutput:
    """Triton form of reference.markov_step (compute_dtype is ignored: fp32 accumulation; all_greedy: see
    _launch_step)."""
    n, v = check_step_inputs(base_logits, prev_ids, weights, temperature, seeds, offsets, z, hidden, conf, output)
    temperature, seeds, offsets, conf = _prep(temperature, seeds, offsets, weights, conf)
    device = base_logits.device
    tokens, logprobs, lse, conf_out = _new_step_buffers(n, device, conf is not None)
    out = _StepBuffers(tokens, logprobs, lse, conf_out)
    logits_out = torch.empty(n, v, device=device, dtype=torch.float32) if output != "none" else None
    _launch_step(base_logits, prev_ids, weights, temperature, seeds, offsets, step, z, hidden, conf, logits_out,
                 out, _Scratch(device), reverse=False, all_greedy=all_greedy, launch=launch)
    if output == "probs":
        _normalize(logits_out, temperature, out)
    return StepOutput(tokens, logprobs, lse, conf_out, logits_out if output == "logits" else None,
                      logits_out if output == "probs" else None)


def markov_block(base_logits, hidden, anchor, weights: MarkovWeights, temperature, seeds, offsets=None, *,
                 conf=None, output="none", compute_dtype=None, all_greedy=False,
                 launch: LaunchOptions = DEFAULT_LAUNCH) -> BlockOutput:
    """γ launches of the step kernels (2 per position, 3 with probs). No host sync: each position reads its prev
    ids from the previous column of the token buffer. Wrap in kernels.graphs.GraphedDraftRound to remove the
    launch overhead."""
    n, gamma, v = check_block_inputs(base_logits, hidden, anchor, weights, temperature, seeds, offsets, conf)
    temperature, seeds, offsets, conf = _prep(temperature, seeds, offsets, weights, conf)
    device = base_logits.device
    tokens, logprobs, lse, conf_out = _new_step_buffers(n, device, conf is not None, gamma)
    big = torch.empty(n, gamma, v, device=device, dtype=torch.float32) if output != "none" else None
    scratch = _Scratch(device)
    prev, state = anchor, None
    for k in range(gamma):
        h_k = hidden[:, k] if hidden is not None else None
        z = None
        if weights.head_type != "vanilla":
            z, _, state = head_inputs(weights, prev, h_k, state)
        out = _StepBuffers(tokens[:, k], logprobs[:, k], lse[:, k], conf_out[:, k] if conf_out is not None else None)
        col = big[:, k] if big is not None else None
        _launch_step(base_logits[:, k], prev, weights, temperature, seeds, offsets, k, z, h_k, conf, col, out,
                     scratch, reverse=launch.alternate_tile_order and bool(k % 2), all_greedy=all_greedy,
                     launch=launch)
        if output == "probs":
            _normalize(col, temperature, out)
        prev = tokens[:, k]
    return BlockOutput(tokens, logprobs, lse, conf_out, big if output == "logits" else None,
                       big if output == "probs" else None)
