"""Verification lengths: how many of each request's drafts the target verifies this step (paper Algorithm 1).

Terms (k is 0-based here; the paper counts from 1):
    confidence c[i, k]  calibrated probability that draft k of request i is accepted given drafts 0..k-1 were.
    survival S[i, k] = prod_{j<=k} c[i, j]: probability that drafts 0..k are all accepted.
    L_i            verification length, 0 <= L_i <= max_len[i]; the target verifies drafts 0..L_i-1.
    yield y_i = 1 + sum_{k<L_i} S[i, k]: expected tokens request i gets this step (the 1 is the bonus token,
                   which every running request produces).
    B = sum_i (1 + L_i): tokens verified in the step.       tau = sum_i y_i: expected tokens of the step.
    Theta = tau * SPS(B) = tau / step_time(B): expected tokens per second of the engine.
    per-user speed v_i = y_i / step_time(B).

Modes:
    static      L_i = max_len[i] (plain speculative decoding).
    throughput  the paper's greedy ("confidence" mode): candidates (i, k) in order of S descending, admitted one
                at a time while Theta strictly grows; stops at the first candidate that does not raise it.
    sla         ours: maximise Theta subject to a per-user speed floor (see `admit_sla`).

Ties between equal survivals are broken by (position k, request i) ascending everywhere, so every
implementation admits in the same order. All of this is lossless: it only picks how many drafts are verified;
the rejection rule decides which are accepted.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vllm_dspark.scheduling.cost import CostTable

__all__ = [
    "Admission", "survival_from_confidence", "expected_throughput", "user_speeds",
    "admit_static", "admit_throughput", "admit_sla", "verify_lengths", "MODES", "SERVING_MODES", "MODE_ALIASES",
]

SERVING_MODES = ("static", "confidence", "sla")  # what a server takes as `dspark.mode`
MODE_ALIASES = {"throughput": "confidence"}  # the scheduler's name for the paper's "confidence" rule
MODES = SERVING_MODES + tuple(MODE_ALIASES)  # what `verify_lengths` takes


def survival_from_confidence(confidence):
    """S[..., k] = prod_{j<=k} c[..., j] (cumulative product over the last dim; numpy or torch)."""
    if isinstance(confidence, torch.Tensor):
        return torch.cumprod(confidence, dim=-1)
    return np.cumprod(np.asarray(confidence, dtype=np.float64), axis=-1)


# ----- evaluation of a given admission -----
def _check_lengths(survival: np.ndarray, lengths) -> np.ndarray:
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if survival.ndim != 2 or lengths.shape[0] != survival.shape[0]:
        raise ValueError(f"lengths {lengths.shape} do not match survival {survival.shape} (want [R] and [R, gamma])")
    if np.any(lengths < 0) or np.any(lengths > survival.shape[1]):
        raise ValueError(f"lengths must lie in [0, {survival.shape[1]}], got {lengths.tolist()}")
    return lengths


def _user_yields(survival: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    gamma = survival.shape[1]
    taken = np.arange(gamma)[None, :] < lengths[:, None]  # [R, gamma]
    return 1.0 + np.where(taken, survival, 0.0).sum(axis=1)  # [R]


def expected_throughput(survival, lengths, table: CostTable) -> float:
    """Theta = tau / step_time(B), B = sum_i (1 + L_i)."""
    s = np.asarray(survival, dtype=np.float64)
    lengths = _check_lengths(s, lengths)
    b = s.shape[0] + int(lengths.sum())
    return float(_user_yields(s, lengths).sum()) / table.step_time(b)


def user_speeds(survival, lengths, table: CostTable) -> np.ndarray:
    """v_i = y_i / step_time(B): expected tokens/s of each request under this admission. [R]"""
    s = np.asarray(survival, dtype=np.float64)
    lengths = _check_lengths(s, lengths)
    b = s.shape[0] + int(lengths.sum())
    return _user_yields(s, lengths) / table.step_time(b)


@dataclass(frozen=True)
class Admission:
    """Result of `verify_lengths`: the lengths and what the scheduler expects of them."""
    lengths: np.ndarray  # [R] int64
    mode: str  # mode that produced the lengths; "sla->throughput" when the floor was infeasible
    batch_tokens: int  # B
    expected_tokens: float  # tau
    throughput: float  # Theta, expected tokens / s
    min_user_speed: float  # min_i v_i (inf for an empty batch)


# ----- modes -----
def _max_len_array(max_len, gamma: int | None) -> np.ndarray:
    m = np.asarray(max_len).reshape(-1)
    if m.size and (not np.issubdtype(m.dtype, np.integer) and not np.all(m == np.round(m))):
        raise ValueError(f"max_len must be integers, got {m.tolist()}")
    m = m.astype(np.int64)
    if np.any(m < 0):
        raise ValueError(f"max_len must be >= 0, got {m.tolist()}")
    if gamma is not None and np.any(m > gamma):
        raise ValueError(f"max_len must be <= gamma = {gamma} (confidence columns), got {m.tolist()}")
    return m


def _as_confidence_source(confidence):
    """numpy array, torch tensor (copied to host once), or any object with [i, k] and optionally .shape."""
    if isinstance(confidence, torch.Tensor):
        confidence = confidence.detach().to("cpu", torch.float64).numpy()
    shape = getattr(confidence, "shape", None)
    if shape is not None and len(shape) != 2:
        raise ValueError(f"confidence must be [R, gamma], got shape {tuple(shape)}")
    return confidence, (int(shape[0]), int(shape[1])) if shape is not None else None


def admit_static(max_len) -> np.ndarray:
    """L_i = max_len[i]."""
    return _max_len_array(max_len, None).copy()


def admit_throughput(confidence, max_len, table: CostTable) -> np.ndarray:
    """The paper's greedy admission with early stop, reading confidences lazily.

    A k-way merge over requests: each request offers only its next candidate (i, k), whose survival needs
    c[i, k], read only once (i, k-1) has been admitted (c[i, 0] for every request with max_len > 0 at the start).
    The best offer (largest S, ties by k then i) is admitted iff it strictly raises Theta; otherwise the
    schedule stops. So no confidence past the decision point is ever read: the drafter may still be computing
    later positions, or they may be garbage.

    NOTE: early stop is not the global optimum of Theta when Theta is not unimodal along this order (e.g. step
    time with a jump at a CUDA-graph bucket boundary: Theta dips at the jump and would recover past it). That is
    the paper's rule and what we implement; `admit_sla` with floor 0 gives the best prefix of the same order.

    Args:
        confidence: [R, gamma], values in [0, 1]; indexed as confidence[i, k].
        max_len: [R] int, drafts available per request (<= gamma).
    Returns:
        lengths [R] int64.
    """
    source, shape = _as_confidence_source(confidence)
    max_len = _max_len_array(max_len, shape[1] if shape else None)
    num_req = max_len.shape[0]
    if shape is not None and shape[0] != num_req:
        raise ValueError(f"confidence has {shape[0]} rows but max_len has {num_req} requests")
    lengths = np.zeros(num_req, dtype=np.int64)
    if num_req == 0:
        return lengths
    step_time = table.step_time(np.arange(num_req, num_req + int(max_len.sum()) + 1))  # [N+1], index n = B - R

    def read(i: int, k: int) -> float:
        c = float(source[i, k])
        if not 0.0 <= c <= 1.0:  # also rejects NaN
            raise ValueError(f"confidence[{i}, {k}] = {c} is not a probability in [0, 1]")
        return c

    heap: list[tuple[float, int, int]] = [(-read(i, 0), 0, i) for i in range(num_req) if max_len[i] > 0]
    heapq.heapify(heap)
    admitted_sum = 0.0  # sum of admitted survivals; tau = R + admitted_sum
    n = 0
    theta = num_req / step_time[0]
    while heap:
        neg_s, k, i = heap[0]
        new_theta = (num_req + (admitted_sum + -neg_s)) / step_time[n + 1]
        if not new_theta > theta:
            break
        heapq.heappop(heap)
        admitted_sum += -neg_s
        theta = new_theta
        n += 1
        lengths[i] = k + 1
        if k + 1 < max_len[i]:
            heapq.heappush(heap, (neg_s * read(i, k + 1), k + 1, i))
    return lengths


def _sorted_candidates(survival: np.ndarray, max_len: np.ndarray):
    """Valid (i, k) candidates sorted by S descending, ties by k then i. Returns (req [N], pos [N], s [N])."""
    num_req, gamma = survival.shape
    pos, req = np.nonzero(np.arange(gamma)[:, None] < max_len[None, :])  # k-major, so a stable sort ties by (k, i)
    s = survival[req, pos]
    order = np.argsort(-s, kind="stable")
    return req[order], pos[order], s[order]


def admit_sla(confidence, max_len, table: CostTable, sla_tokens_per_user: float) -> tuple[np.ndarray, bool]:
    """Maximise Theta subject to a per-user speed floor; exact. Returns (lengths [R], floor_met).

    Definition (what a serving operator means by "every user sees at least X tokens/s"):
        maximise   Theta(L) = tau(L) / step_time(B)
        subject to v_i(L) = y_i(L_i) / step_time(B) >= floor   for every request i that is not exempt,
    where request i is exempt iff it cannot reach the floor even in its best case, alone with its drafts:
    max_{0<=l<=max_len_i} y_i(l) / step_time(R + l) < floor (every other request verifying only its bonus
    token). Why per request and not the mean: the mean speed is Theta / R, so a floor on it never binds against
    maximising Theta; the floor must protect the slowest users. Why the exemption: a request whose drafts are
    all rejected (or that has no drafts yet) would otherwise make the whole batch infeasible and drop everyone
    to throughput mode. If no admission satisfies the constraint, falls back to `admit_throughput` and returns
    floor_met = False.

    Exact solution: for each total draft count n, B = R + n fixes the step time, hence the per-request minimum
    length m_i(n) (shortest prefix with y_i / step_time >= floor); feasible iff sum_i m_i <= n, and the best
    tau is the mandatory prefixes plus the top (n - sum_i m_i) remaining survivals (each request's survivals
    are non-increasing, so these stay prefixes). Take the best feasible n (ties: smallest n).
    Cost O(N * (N + R * gamma)) with N = sum max_len; a reference for moderate batches, not a per-step hot path
    at R in the hundreds.
    """
    floor = float(sla_tokens_per_user)
    if not (math.isfinite(floor) and floor >= 0):
        raise ValueError(f"sla_tokens_per_user must be a finite number >= 0, got {sla_tokens_per_user}")
    source, shape = _as_confidence_source(confidence)
    if shape is None:
        raise ValueError("admit_sla needs a confidence array with a .shape ([R, gamma])")
    conf = np.asarray(source, dtype=np.float64)
    max_len = _max_len_array(max_len, shape[1])
    num_req, gamma = conf.shape
    if max_len.shape[0] != num_req:
        raise ValueError(f"confidence has {num_req} rows but max_len has {max_len.shape[0]} requests")
    valid = np.arange(gamma)[None, :] < max_len[:, None]  # [R, gamma]
    used = np.where(valid, conf, 0.0)
    if not np.all((used >= 0) & (used <= 1)):
        bad = np.argwhere(~((used >= 0) & (used <= 1)))[0]
        raise ValueError(f"confidence[{bad[0]}, {bad[1]}] = {conf[bad[0], bad[1]]} is not a probability in [0, 1]")
    if num_req == 0:
        return np.zeros(0, dtype=np.int64), True
    survival = np.where(valid, np.cumprod(used, axis=1), 0.0)  # [R, gamma]
    total = int(max_len.sum())
    step_time = table.step_time(np.arange(num_req, num_req + total + 1))  # [N+1]

    # yields[i, l] = 1 + sum_{k<l} S[i, k] for l = 0..gamma; lengths past max_len are not allowed.
    yields = 1.0 + np.concatenate([np.zeros((num_req, 1)), np.cumsum(survival, axis=1)], axis=1)  # [R, gamma+1]
    allowed = np.arange(gamma + 1)[None, :] <= max_len[:, None]  # [R, gamma+1]
    best_alone = np.where(allowed, yields / step_time[np.minimum(np.arange(gamma + 1), total)][None, :], -np.inf)
    exempt = best_alone.max(axis=1) < floor  # [R]

    meets = (yields[None, :, :] / step_time[:, None, None] >= floor) & allowed[None]  # [N+1, R, gamma+1]
    reachable = meets.any(axis=2) | exempt[None, :]  # [N+1, R]
    mandatory_len = np.where(exempt[None, :], 0, np.argmax(meets, axis=2))  # [N+1, R] m_i(n)
    n_values = np.arange(total + 1)
    feasible = reachable.all(axis=1) & (mandatory_len.sum(axis=1) <= n_values)  # [N+1]
    if not feasible.any():
        return admit_throughput(conf, max_len, table), False

    req, pos, s = _sorted_candidates(survival, max_len)  # [N]
    mandatory = pos[None, :] < mandatory_len[:, req]  # [N+1, N]
    optional_rank = np.cumsum(~mandatory, axis=1)  # [N+1, N]
    extra = (n_values - mandatory_len.sum(axis=1))[:, None]  # [N+1, 1]
    admitted = mandatory | (~mandatory & (optional_rank <= extra))  # [N+1, N]
    tau = num_req + (admitted * s[None, :]).sum(axis=1)  # [N+1]
    theta = np.where(feasible, tau / step_time, -np.inf)
    best = int(np.argmax(theta))  # first maximum: fewest verified tokens among equals
    lengths = np.bincount(req[admitted[best]], minlength=num_req).astype(np.int64)
    return lengths, True


def verify_lengths(confidence, max_len, table: CostTable, mode: str = "throughput",
                   sla_tokens_per_user: float | None = None) -> Admission:
    """Dispatch on mode ("static", "throughput" / "confidence", "sla") and describe the result."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    source, shape = _as_confidence_source(confidence)
    used_mode = mode
    if mode == "static":
        lengths = admit_static(max_len)
    elif MODE_ALIASES.get(mode, mode) == "confidence":
        lengths = admit_throughput(source, max_len, table)
        used_mode = "throughput"
    else:
        if sla_tokens_per_user is None:
            raise ValueError("mode 'sla' needs sla_tokens_per_user")
        lengths, met = admit_sla(source, max_len, table, sla_tokens_per_user)
        used_mode = "sla" if met else "sla->throughput"
    return _describe(source, shape, lengths, table, used_mode)


def _describe(source: Any, shape, lengths: np.ndarray, table: CostTable, mode: str) -> Admission:
    num_req = lengths.shape[0]
    yields = np.ones(num_req)
    for i in range(num_req):  # reads only admitted confidences (keeps the lazy contract)
        s = 1.0
        for k in range(int(lengths[i])):
            s *= float(source[i, k])
            yields[i] += s
    b = num_req + int(lengths.sum())
    t = table.step_time(b)
    return Admission(lengths=lengths, mode=mode, batch_tokens=b, expected_tokens=float(yields.sum()),
                     throughput=float(yields.sum()) / t, min_user_speed=float((yields / t).min()) if num_req else math.inf)
