"""Triton admission: survival products and greedy verification lengths in three small launches, no host sync.

Same result as `admit_torch` (reference.py) without its sort: candidate c = k·R + i (k-major, so index order is
the (k, i) tie-break) gets its rank in the admission order by pairwise comparison,
    rank_c = #{valid j : S_j > S_c or (S_j == S_c and j < c)},   pre_c = Σ of those S_j,
which gives Θ before and after admitting c without a scan:
    Θ_before = (R + pre_c) / t(R + rank_c),   Θ_after = (R + pre_c + S_c) / t(R + rank_c + 1).
The greedy with early stop admits the leading run of improving candidates, i.e. every candidate whose rank is
below the smallest rank of a non-improving one. O((R·γ)²) comparisons: ~3M at R = 256, γ = 7, microseconds on a
GPU, spread over (R·γ)/64 programs. Math in float64, as admit_torch; sums run in a different order than its
cumsum, so only a Θ tie to the last ulp could decide differently.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 64


@triton.jit
def _survival_kernel(
    in_ptr, stride_in,  # [R, γ] confidences (FROM_CONF) or survivals
    out_ptr,  # [R, γ] float64 survival, made non-increasing along k (cummin; a no-op for true survivals)
    R, G,
    BLOCK_R: tl.constexpr, FROM_CONF: tl.constexpr,
):
    i = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    m = i < R
    s = tl.full([BLOCK_R], 1.0, tl.float64)
    lo = tl.full([BLOCK_R], float("inf"), tl.float64)
    for k in range(0, G):
        x = tl.load(in_ptr + i.to(tl.int64) * stride_in + k, mask=m, other=1.0).to(tl.float64)
        if FROM_CONF:
            s = s * x
        else:
            s = x
        lo = tl.minimum(lo, s)
        tl.store(out_ptr + i.to(tl.int64) * G + k, lo, mask=m)


@triton.jit
def _step_time(b, x_ptr, y_ptr, P, BLOCK_P: tl.constexpr):
    """Piecewise-linear step time at b [BLOCK] (float64), as cost.step_seconds_torch."""
    p = tl.arange(0, BLOCK_P)
    xs = tl.load(x_ptr + p, mask=p < P, other=float("inf"))
    hi = tl.sum((xs[None, :] <= b[:, None]).to(tl.int32), axis=1)
    hi = tl.minimum(tl.maximum(hi, 1), P - 1)
    lo = hi - 1
    x_lo = tl.load(x_ptr + lo)
    x_hi = tl.load(x_ptr + hi)
    y_lo = tl.load(y_ptr + lo)
    y_hi = tl.load(y_ptr + hi)
    t = y_lo + (b - x_lo) * ((y_hi - y_lo) / (x_hi - x_lo))
    return tl.where(b <= tl.load(x_ptr), tl.load(y_ptr), t)


@triton.jit
def _rank_kernel(
    surv_ptr,  # [R, γ] float64 survival (non-increasing along k)
    max_len_ptr,  # [R] int
    x_ptr, y_ptr,  # [P] float64 cost table
    rank_ptr, improves_ptr,  # [R·γ] int32 rank in admission order (k-major index), int8 Θ improves (valid only)
    R, G, P,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_P: tl.constexpr,
):
    c = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    n_all = R * G
    c_in = c < n_all
    ci = c % R
    ck = c // R
    c_valid = c_in & (ck < tl.load(max_len_ptr + ci, mask=c_in, other=0))
    s_c = tl.load(surv_ptr + ci.to(tl.int64) * G + ck, mask=c_in, other=0.0)
    rank = tl.zeros([BLOCK_I], dtype=tl.int32)
    pre = tl.zeros([BLOCK_I], dtype=tl.float64)
    for j0 in range(0, n_all, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        j_in = j < n_all
        ji = j % R
        jk = j // R
        j_valid = j_in & (jk < tl.load(max_len_ptr + ji, mask=j_in, other=0))
        s_j = tl.load(surv_ptr + ji.to(tl.int64) * G + jk, mask=j_in, other=0.0)
        before = j_valid[None, :] & ((s_j[None, :] > s_c[:, None]) | ((s_j[None, :] == s_c[:, None])
                                                                      & (j[None, :] < c[:, None])))
        rank += tl.sum(before.to(tl.int32), axis=1)
        pre += tl.sum(tl.where(before, s_j[None, :], 0.0), axis=1)
    r_f = (rank * 0 + R).to(tl.float64)
    b_before = r_f + rank.to(tl.float64)
    t_before = _step_time(b_before, x_ptr, y_ptr, P, BLOCK_P)
    t_after = _step_time(b_before + 1.0, x_ptr, y_ptr, P, BLOCK_P)
    improves = (r_f + pre + s_c) / t_after > (r_f + pre) / t_before
    tl.store(rank_ptr + c, rank, mask=c_in)
    tl.store(improves_ptr + c, (c_valid & improves).to(tl.int8), mask=c_in)


@triton.jit
def _lengths_kernel(
    rank_ptr, improves_ptr, max_len_ptr,  # from _rank_kernel; [R] int
    len_ptr,  # [R] int64 verification lengths
    R, G,
    BLOCK: tl.constexpr,
):
    n_all = R * G
    # Admitted = the leading run of improving candidates in rank order: ranks below the first non-improving one.
    stop_vec = tl.zeros([BLOCK], dtype=tl.int32) + n_all
    for c0 in range(0, n_all, BLOCK):
        c = c0 + tl.arange(0, BLOCK)
        c_in = c < n_all
        ci = c % R
        valid = c_in & ((c // R) < tl.load(max_len_ptr + ci, mask=c_in, other=0))
        rank = tl.load(rank_ptr + c, mask=c_in, other=0)
        imp = tl.load(improves_ptr + c, mask=c_in, other=0)
        stop_vec = tl.minimum(stop_vec, tl.where(valid & (imp == 0), rank, n_all))
    stop = tl.min(stop_vec, axis=0)
    for i0 in range(0, R, BLOCK):
        i = i0 + tl.arange(0, BLOCK)
        i_in = i < R
        ml = tl.load(max_len_ptr + i, mask=i_in, other=0)
        length = tl.zeros([BLOCK], dtype=tl.int64)
        for k in range(0, G):
            rank = tl.load(rank_ptr + k * R + i, mask=i_in, other=0)
            length += ((k < ml) & (rank < stop)).to(tl.int64)
        tl.store(len_ptr + i, length, mask=i_in)


def _check(name, t):
    if t.dim() != 2:
        raise ValueError(f"{name} must be [R, gamma], got shape {tuple(t.shape)}")


def _survival(x: torch.Tensor, from_conf: bool) -> torch.Tensor:
    r, g = x.shape
    x = x if x.stride(-1) == 1 else x.contiguous()
    out = torch.empty(r, g, device=x.device, dtype=torch.float64)
    if r:
        _survival_kernel[(triton.cdiv(r, BLOCK),)](x, x.stride(0), out, r, g, BLOCK_R=BLOCK, FROM_CONF=from_conf)
    return out


def _lengths(surv: torch.Tensor, max_len, table_x, table_y) -> torch.Tensor:
    r, g = surv.shape
    if max_len.dim() != 1 or max_len.shape[0] != r:
        raise ValueError(f"max_len must be [R] with R = {r}, got shape {tuple(max_len.shape)}")
    if table_x.dim() != 1 or table_x.shape != table_y.shape or table_x.numel() < 2:
        raise ValueError(f"table_x / table_y must be equal-length [P] with P >= 2, got {tuple(table_x.shape)}, "
                         f"{tuple(table_y.shape)}")
    dev = surv.device
    lengths = torch.empty(r, device=dev, dtype=torch.int64)
    if r == 0:
        return lengths
    max_len = max_len.to(device=dev, dtype=torch.int32).contiguous()
    tx = table_x.to(device=dev, dtype=torch.float64).contiguous()
    ty = table_y.to(device=dev, dtype=torch.float64).contiguous()
    n_all = r * g
    rank = torch.empty(n_all, device=dev, dtype=torch.int32)
    improves = torch.empty(n_all, device=dev, dtype=torch.int8)
    _rank_kernel[(triton.cdiv(n_all, BLOCK),)](
        surv, max_len, tx, ty, rank, improves, r, g, tx.numel(),
        BLOCK_I=BLOCK, BLOCK_J=BLOCK, BLOCK_P=triton.next_power_of_2(tx.numel()), num_warps=4,
    )
    _lengths_kernel[(1,)](rank, improves, max_len, lengths, r, g, BLOCK=256, num_warps=4)
    return lengths


def survival(confidence: torch.Tensor) -> torch.Tensor:
    _check("confidence", confidence)
    return _survival(confidence, True)


def admission_lengths(survival: torch.Tensor, max_len, table_x, table_y) -> torch.Tensor:
    _check("survival", survival)
    return _lengths(_survival(survival, False), max_len, table_x, table_y)


def admit(confidence: torch.Tensor, max_len, table_x, table_y):
    s = survival(confidence)
    return s, _lengths(s, max_len, table_x, table_y)
