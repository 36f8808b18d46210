"""One verification length per batch size: the hardware-aware schedule for vLLM's dynamic speculative decoding.

Modes `confidence` / `sla` pick a length per request from live confidences. vLLM's own dynamic speculative
decoding (`num_speculative_tokens_per_batch_size` in `--speculative-config`) instead sets one γ per step from the
number of running requests, with mode `static` (no per-request work in the runner). This fills that schedule with
the paper's objective, using the drafter's measured acceptance in place of live confidences: for R requests,

    K*(R) = argmax_{0 <= K <= γ}  R · (1 + sum_{k<K} a_k) / step_time(R · (1 + K))

with a_k = P(drafts 0..k are all accepted) (the evaluator's `per_position_acceptance`) and step_time from a
cost table (`vllm-dspark profile`). Ties go to the shorter K. Long drafts when the engine has room, short ones
(down to 0) under load — the batch-level half of the paper's scheduler, without per-request confidences.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vllm_dspark.scheduling.cost import CostTable

__all__ = ["gamma_by_batch_size", "as_vllm_schedule", "acceptance_from_eval"]


def _check_acceptance(acceptance: Sequence[float], gamma: int) -> np.ndarray:
    a = np.asarray(acceptance, dtype=np.float64).reshape(-1)
    if a.size < gamma:
        raise ValueError(f"acceptance has {a.size} positions, fewer than γ = {gamma}")
    a = a[:gamma]
    if not np.all((a >= 0) & (a <= 1)):
        raise ValueError(f"acceptance values must lie in [0, 1], got {a.tolist()}")
    # a_k is a survival probability, so non-increasing; measured rates can wobble where late positions were
    # proposed in fewer rounds (a request's last round), so take the running minimum.
    return np.minimum.accumulate(a)


def gamma_by_batch_size(table: CostTable, acceptance: Sequence[float], gamma: int, max_batch: int) -> np.ndarray:
    """K*(R) for R = 1..max_batch, as an int64 array of length max_batch (entry R-1)."""
    if gamma < 1 or max_batch < 1:
        raise ValueError(f"need γ >= 1 and max_batch >= 1, got {gamma}, {max_batch}")
    a = _check_acceptance(acceptance, gamma)
    tokens_per_request = 1.0 + np.concatenate([[0.0], np.cumsum(a)])  # [γ+1]: 1 + sum_{k<K} a_k
    r = np.arange(1, max_batch + 1, dtype=np.float64)[:, None]  # [R, 1]
    k = np.arange(gamma + 1, dtype=np.float64)[None, :]  # [1, γ+1]
    throughput = r * tokens_per_request[None, :] / table.step_time(r * (1.0 + k))  # [R, γ+1]
    return np.argmax(throughput, axis=1).astype(np.int64)  # first maximum = shortest K among ties


def as_vllm_schedule(ks: Sequence[int]) -> list[list[int]]:
    """[[first R, last R, K], ...] (inclusive ranges, R from 1): the `num_speculative_tokens_per_batch_size`
    value of vLLM's `--speculative-config`; batches above the last range keep its K in vLLM."""
    out: list[list[int]] = []
    for i, k in enumerate(int(x) for x in ks):
        if out and out[-1][2] == k:
            out[-1][1] = i + 1
        else:
            out.append([i + 1, i + 1, k])
    return out


def acceptance_from_eval(path: str | Path) -> list[float]:
    """`per_position_acceptance` of a `vllm-dspark eval --json` file (positions never reached count as 0)."""
    data = json.loads(Path(path).read_text())
    summary = data.get("summary", data)
    if "per_position_acceptance" not in summary:
        raise ValueError(f"{path}: no 'per_position_acceptance' (expected the JSON of `vllm-dspark eval --json`)")
    return [0.0 if a is None else float(a) for a in summary["per_position_acceptance"]]
