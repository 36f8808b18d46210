"""Per-request verification lengths for the next step, from calibrated confidences and the current batch load.

The proposer calls `VerifyLengthPolicy.lengths` once per engine step, before the target verifies the last
round's drafts, with the calibrated confidences c[i, k] of the requests scheduled with drafts; the runner patch
trims each request's drafts to its length. Decisions are the scheduling module's (`verify_lengths`: static /
throughput = "confidence" / sla); this class adds the engine-side state: the cost table and its online refit
from observed step times, and counters for logging. Under async scheduling too, the confidences are those of
the drafts being verified (they are drafted one step before), never stale ones.

Step-time observations: the proposer reports (tokens the target processed this step, seconds since the previous
step's report minus the draft round's own time, so the table stays a curve of verification cost). Gaps (an idle
engine) would poison the table, so an observation is kept only when its ratio to the table's prediction is at most
`max_ratio` times the median ratio of the recently kept ones (before 8 are kept: at most `max_ratio` × 2.5, which
still lets a table profiled on a faster or slower path converge).

The draft round's time is measured every round and kept per load (`draft_seconds`); the lengths are chosen on the
cost of a whole engine step, verification (the table) plus that round, since the step period includes both. Whether
to draft at all at the current load is the `gate`'s decision (scheduling/gate.py; modes confidence and sla), and
how deep the sequential head walks (and, on a synchronous engine, how wide the backbone's block is) is
`draft_depth`'s: one slot past the longest length decided lately at that load, so the round does not draw tokens
(each one an LM-head row and a sequential step) nobody will verify.
At a load the gate meets for the first time it asks `predicted_gain`: what this admission expects drafting to gain
there over the target alone, from the last confidences, the table and the draft cost measured at a smaller load.
"""
from __future__ import annotations

import collections
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vllm_dspark.scheduling.admission import (SERVING_MODES, admit_throughput, expected_throughput,
                                              survival_from_confidence, verify_lengths)
from vllm_dspark.scheduling.cost import CostTable
from vllm_dspark.scheduling.gate import DraftGate, load_bucket


@dataclass
class PolicyStats:
    steps: int = 0
    requests: int = 0  # request-steps decided
    verified_tokens: int = 0  # sum of lengths decided
    sla_fallbacks: int = 0  # steps where the SLA floor could not be met (throughput mode used)
    observations: int = 0  # step times used for refit
    rejected_observations: int = 0
    last_mode: str = ""
    draft_rounds: int = 0  # draft rounds timed
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=32))


class StepCost:
    """Cost of one engine step at B verified tokens: the table's verification time plus a fixed draft-round time
    (the duck type `verify_lengths` reads: `step_time(B)`)."""

    def __init__(self, table: CostTable, draft_seconds: float):
        self.table, self.draft_seconds = table, float(draft_seconds)

    def step_time(self, batch_tokens):
        return self.table.step_time(batch_tokens) + self.draft_seconds


class VerifyLengthPolicy:
    def __init__(self, mode: str, gamma: int, table: CostTable | None = None, *,
                 sla_tokens_per_user: float | None = None, online_refit: bool = True, max_ratio: float = 4.0,
                 gate: DraftGate | None = None, draft_memory: float = 32.0, depth_window: int = 16):
        if mode not in SERVING_MODES:
            raise ValueError(f"mode must be one of {SERVING_MODES}, got {mode!r}")
        if mode == "sla" and sla_tokens_per_user is None:
            raise ValueError("mode 'sla' needs sla_tokens_per_user")
        self.mode = mode
        self.gamma = gamma
        self.table = table
        self.sla_tokens_per_user = sla_tokens_per_user
        self.online_refit = online_refit
        self.max_ratio = max_ratio
        self.stats = PolicyStats()
        self.gate = gate if mode != "static" else None  # static verifies (so drafts) everything
        if self.gate is not None and self.gate.predict is None:
            self.gate.predict = self.predicted_gain  # the gate asks it at a load it meets for the first time
        self._draft_decay = 1.0 - 1.0 / draft_memory
        self._draft_seconds: dict[int, tuple[float, float]] = {}  # load bucket -> forgotten sums (seconds, rounds)
        self.on_decision: Callable[[PolicyStats], None] | None = None  # called after each `lengths` (metrics)
        self._depth_window = depth_window
        self._longest: dict[int, collections.deque] = {}  # load bucket -> longest length of each recent decision
        self._recent_conf: np.ndarray | None = None  # [R, γ] confidences of the last decision (predicted_gain)

    def lengths(self, confidence: np.ndarray, max_len: np.ndarray | None = None) -> np.ndarray:
        """confidence [R, γ] calibrated, max_len [R] (default γ) -> lengths [R] int64 (a prefix of each draft)."""
        conf = np.asarray(confidence, dtype=np.float64)
        num_req = conf.shape[0]
        max_len = np.full(num_req, conf.shape[1], dtype=np.int64) if max_len is None else np.asarray(max_len)
        if self.mode == "static" or num_req == 0:
            out, used = max_len.astype(np.int64), "static"
        elif self.table is None:
            raise RuntimeError(f"mode {self.mode!r} has no cost table yet (profiling did not run)")
        else:
            cost = StepCost(self.table, self.draft_seconds(num_req))
            conf = np.clip(conf, 0.0, 1.0)
            self._recent_conf = conf
            adm = verify_lengths(conf, max_len, cost, self.mode, self.sla_tokens_per_user)
            out, used = adm.lengths, adm.mode
            longest = self._longest.setdefault(load_bucket(num_req), collections.deque(maxlen=self._depth_window))
            longest.append(int(out.max()))
        self.stats.steps += 1
        self.stats.requests += num_req
        self.stats.verified_tokens += int(out.sum())
        self.stats.last_mode = used
        self.stats.sla_fallbacks += used == "sla->throughput"
        if self.on_decision is not None:
            self.on_decision(self.stats)
        return out

    def predicted_gain(self, num_requests: int) -> float | None:
        """Expected tokens/s drafting over the target alone's at this load, before drafting there: the paper's
        admission run on the last decision's confidences (rows repeated to `num_requests`), the cost table for
        verification and the target alone, and the draft round's time measured at the nearest smaller load, not
        scaled up (a round costs at least that here, so the prediction errs towards drafting). None without a
        table, confidences or a smaller load's draft time."""
        if self.table is None or self._recent_conf is None or num_requests < 1:
            return None
        key = load_bucket(num_requests)
        smaller = [k for k in self._draft_seconds if k <= key]
        if not smaller:
            return None
        total, n = self._draft_seconds[max(smaller)]
        cost = StepCost(self.table, total / n)
        conf = np.resize(self._recent_conf, (num_requests, self._recent_conf.shape[1]))
        max_len = np.full(num_requests, conf.shape[1], dtype=np.int64)
        drafting = expected_throughput(survival_from_confidence(conf), admit_throughput(conf, max_len, cost), cost)
        return drafting * float(self.table.step_time(num_requests)) / num_requests

    def draft_depth(self, num_requests: int) -> int:
        """Slots the next round's sequential head should draft at this load: one past the longest length decided in
        the last `depth_window` decisions there (so the depth can grow by one a step when lengths reach it), γ
        before any decision and in mode static (which verifies every slot)."""
        longest = self._longest.get(load_bucket(num_requests))
        if self.mode == "static" or not longest:
            return self.gamma
        return min(self.gamma, max(longest) + 1)

    def observe_step(self, batch_tokens: int, seconds: float) -> bool:
        """Feed one measured engine step to the cost table's refit; returns whether it was kept."""
        if not self.online_refit or self.table is None or batch_tokens < 1 or not seconds > 0:
            return False
        recent = self.stats.recent  # ratios observed / predicted of kept observations
        ratio = seconds / self.table.step_time_as_fitted(batch_tokens)  # no refit per step: only decisions need one
        bound = self.max_ratio * (statistics.median(recent) if len(recent) >= 8 else 2.5)
        keep = ratio <= bound
        if keep:
            recent.append(ratio)
            self.table.observe_one(batch_tokens, seconds)
            self.stats.observations += 1
        else:
            self.stats.rejected_observations += 1
        return keep

    def observe_draft(self, num_requests: int, seconds: float) -> None:
        """One draft round's measured time at this load (requests drafted)."""
        if num_requests < 1 or not seconds >= 0:
            return
        key = load_bucket(num_requests)
        total, n = self._draft_seconds.get(key, (0.0, 0.0))
        self._draft_seconds[key] = (total * self._draft_decay + seconds, n * self._draft_decay + 1.0)
        self.stats.draft_rounds += 1

    def draft_seconds(self, num_requests: int) -> float:
        """Measured draft-round time at this load: its bucket's mean, else the nearest measured bucket's (the larger
        of two equally near), scaled up by the load ratio when that bucket is smaller (draft cost grows at most
        linearly in requests), else 0 (nothing measured yet)."""
        if not self._draft_seconds:
            return 0.0
        key = load_bucket(num_requests)
        if key in self._draft_seconds:
            total, n = self._draft_seconds[key]
            return total / n
        near = min(self._draft_seconds, key=lambda k: (abs(k.bit_length() - key.bit_length()), -k))  # ties: larger
        total, n = self._draft_seconds[near]
        return total / n * (key / near if key > near else 1.0)
