"""Drafting on or off at the current load: speculate only while it beats the target alone.

The verification policy (admission.py) picks how many drafts to verify once drafts exist; it cannot tell
whether drafting them was worth its cost. At high load on a compute-bound engine (or with a drafter that accepts
little) every verified draft and the draft round itself cost more than the tokens they return, and the best
length is "no drafting at all". This gate decides that, per engine step, from *measured* rates rather than a cost
model: each step reports (running requests R, whether its drafts were drafted, tokens it generated, seconds it
took), and the gate keeps, per load bucket and state (drafting / not), the engine's tokens per second.

- Buckets: R rounded up to a power of two (1, 2, 3-4, 5-8, ...): each load keeps its own estimates.
- Estimates: exponentially forgotten sums of tokens and seconds (about `memory` steps), rate = tokens / seconds.
- Exploration: a bucket first takes each state for `min_samples` steps; afterwards the state not in use is
  sampled once every `probe_every` steps (so its estimate follows changes in content and acceptance). Each probe
  that leaves the state in use unchanged doubles the bucket's interval, up to `probe_every × max_backoff`; a
  switch resets it. So a bucket whose answer keeps being the same (a drafter that never pays at this load) pays
  for probes ever more rarely, and one whose answer changes probes often again.
- What one load teaches the next: drafting pays less as the batch grows (the step becomes compute-bound, drafts
  cost more per accepted token), so a bucket first seen after a smaller load explored and left drafting off starts
  with drafting off, and one first seen after a larger load explored and kept drafting starts drafting; either
  skips its exploration and relies on probes. (A drafter that never pays costs its exploration rounds once, not at
  every load the traffic passes through.) Conflicting evidence, or none, means exploring.
- Hysteresis: the state switches only when the other state's rate beats the current one's by `hysteresis`.
- Outliers: a step longer than `max_ratio` × the median of its bucket's recent steps (an idle gap, a stall) is
  not used.

Pure Python: the proposer (adapter) asks `should_draft(R)` before a round and reports `observe(...)` one step
later. It only decides whether drafts are made; which of them are accepted stays the rejection sampler's rule,
so the gate cannot change what is generated.
"""
from __future__ import annotations

import collections
import statistics
from dataclasses import dataclass, field

__all__ = ["DraftGate", "GateStats", "load_bucket"]


def load_bucket(num_requests: int) -> int:
    """Smallest power of two >= num_requests (1 for 0 or 1)."""
    n = max(1, int(num_requests))
    return 1 << (n - 1).bit_length()


@dataclass
class _Rate:
    tokens: float = 0.0
    seconds: float = 0.0
    samples: int = 0

    def add(self, tokens: float, seconds: float, decay: float) -> None:
        self.tokens = self.tokens * decay + tokens
        self.seconds = self.seconds * decay + seconds
        self.samples += 1

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Bucket:
    on: _Rate = field(default_factory=_Rate)
    off: _Rate = field(default_factory=_Rate)
    drafting: bool = True  # the state in use
    exploring: bool = True  # still taking min_samples steps of each state
    since_probe: int = 0  # steps in the current state since the other was last sampled
    probe_interval: int = 32  # steps until the next probe (set from the gate's probe_every)
    recent_seconds: collections.deque = field(default_factory=lambda: collections.deque(maxlen=32))


@dataclass
class GateStats:
    steps: int = 0  # decisions made
    off_steps: int = 0  # decisions not to draft
    probe_steps: int = 0  # decisions that sampled the state not in use (exploration included)
    switches: int = 0  # changes of a bucket's state in use
    inherited: int = 0  # buckets that started from a neighbouring load's decision instead of exploring
    observations: int = 0
    rejected_observations: int = 0


class DraftGate:
    def __init__(self, *, min_samples: int = 4, probe_every: int = 32, max_backoff: int = 16,
                 hysteresis: float = 0.03, memory: float = 64.0, max_ratio: float = 4.0):
        if min_samples < 1 or probe_every < 2 or max_backoff < 1:
            raise ValueError(f"draft gate: need min_samples >= 1, probe_every >= 2 and max_backoff >= 1, got "
                             f"{min_samples}, {probe_every}, {max_backoff}")
        if not (0 <= hysteresis < 1) or memory < 1 or max_ratio <= 1:
            raise ValueError(f"draft gate: need 0 <= hysteresis < 1, memory >= 1, max_ratio > 1, got {hysteresis}, "
                             f"{memory}, {max_ratio}")
        self.min_samples = min_samples
        self.probe_every = probe_every
        self.max_probe_every = probe_every * max_backoff
        self.hysteresis = hysteresis
        self.decay = 1.0 - 1.0 / memory
        self.max_ratio = max_ratio
        self.buckets: dict[int, _Bucket] = {}
        self.stats = GateStats()

    def _bucket(self, num_requests: int) -> _Bucket:
        key = load_bucket(num_requests)
        if key not in self.buckets:
            prior = self._prior(key)
            self.buckets[key] = _Bucket(probe_interval=self.probe_every, drafting=prior is not False,
                                        exploring=prior is None)
            self.stats.inherited += prior is not None
        return self.buckets[key]

    def _prior(self, key: int) -> bool | None:
        """The state a new bucket can start in without exploring: False when a smaller explored load does not
        draft, True when a larger explored load drafts, None when neither (or both) holds."""
        decided = [(k, b.drafting) for k, b in self.buckets.items() if not b.exploring]
        loses_below = any(k < key and not drafting for k, drafting in decided)
        wins_above = any(k > key and drafting for k, drafting in decided)
        return None if loses_below == wins_above else wins_above

    def should_draft(self, num_requests: int) -> bool:
        """Whether the round about to run at this load should draft (True) or leave drafting off (False)."""
        b = self._bucket(num_requests)
        if b.exploring and b.on.samples < self.min_samples:
            draft, probe = True, not b.drafting
        elif b.exploring and b.off.samples < self.min_samples:
            draft, probe = False, b.drafting
        else:
            b.exploring = False
            self._maybe_switch(b)
            b.since_probe += 1
            probe = b.since_probe >= b.probe_interval
            if probe:  # the state in use has held since the last switch: wait longer for the next probe
                b.since_probe = 0
                b.probe_interval = min(2 * b.probe_interval, self.max_probe_every)
            draft = b.drafting != probe
        self.stats.steps += 1
        self.stats.off_steps += not draft
        self.stats.probe_steps += probe
        return draft

    def _maybe_switch(self, b: _Bucket) -> None:
        current, other = (b.on, b.off) if b.drafting else (b.off, b.on)
        if other.rate > current.rate * (1.0 + self.hysteresis):
            b.drafting = not b.drafting
            b.since_probe = 0
            b.probe_interval = self.probe_every
            self.stats.switches += 1

    def observe(self, num_requests: int, drafted: bool, tokens: int, seconds: float) -> bool:
        """One finished step at this load: whether its tokens were drafted, tokens generated, its duration.
        Returns whether it was used (False for an outlier or an empty step)."""
        if num_requests < 1 or tokens < 1 or not seconds > 0:
            return False
        b = self._bucket(num_requests)
        recent = b.recent_seconds
        if len(recent) >= 8 and seconds > self.max_ratio * statistics.median(recent):
            self.stats.rejected_observations += 1
            return False
        recent.append(seconds)
        (b.on if drafted else b.off).add(float(tokens), float(seconds), self.decay)
        self.stats.observations += 1
        return True

    def rates(self, num_requests: int) -> tuple[float, float]:
        """(tokens/s drafting, tokens/s not drafting) measured at this load's bucket (0 where unmeasured)."""
        b = self._bucket(num_requests)
        return b.on.rate, b.off.rate
