"""Drafting on or off at the current load: speculate only while it beats the target alone.

The verification policy (admission.py) picks how many drafts to verify once drafts exist; it cannot tell
whether drafting them was worth its cost. At high load on a compute-bound engine (or with a drafter that accepts
little) every verified draft and the draft round itself cost more than the tokens they return, and the best
length is "no drafting at all". This gate decides that, per engine step, from *measured* rates rather than a cost
model: each step reports (running requests R, whether its drafts were drafted, tokens it generated, seconds it
took), and the gate keeps, per load bucket and state (drafting / not), the engine's tokens per second.

- Buckets: R rounded up to a power of two (1, 2, 3-4, 5-8, ...): each load keeps its own estimates.
- Estimates: paired, so that slow drift cancels. Every step gets slower as contexts grow, and acceptance moves with
  content, so rates measured minutes apart (the state in use now against the other's from its last probe) compare the
  clock, not the states. Instead each step of the state *not* in use is compared with the last `pair_window` steps of
  the state in use just before it (at the same load, none of them older than 2 × `pair_window` engine steps): one
  sample, the tokens drafting made in that time and those the target alone made (one of the two at the reference's
  rate). The first step after a change of state is not used: it carries the change's own cost (the context K/V held
  back while drafting was off, written by the next drafting round).
- Recent samples count most. The gain is the ratio of the drafting tokens to the target-alone tokens summed over the
  last `pair_memory` samples (tokens over time, not a mean of per-step ratios, which at low load reads the geometric
  mean of gains that swing with each step's acceptance), each weighted by 2^(-age / `half_life`), age in steps at
  that load: what drafting is worth changes within a request's life (early tokens of a code completion are easier to
  draft than later ones), and a gain measured once at the start of a wave of requests must not decide for the rest
  of it (measured at 16 requests on a CPU: 1.11 when the gate explored, ~0.96 a hundred steps later, with no probes
  in between to see it).
- Exploration: a bucket first takes `min_samples` + 1 steps drafting, then steps without until it holds `min_samples`
  pairs, which then count as one sample (they come from one stretch of steps against one reference window: at the
  start of a wave of requests they measured 1.21 where the gain a few probes later was 1.0). Afterwards the state not
  in use is probed for `probe_len` steps whenever `probe_every` steps have passed while the decision is *unsettled*
  (the gain at which its state would switch, the hysteresis band's far edge, lies within `z` standard errors of the
  gain: the spread of the recent samples, at least `min_spread`, over the square root of their effective number;
  exploration's sample alone never settles it), and at intervals doubling up to `probe_every × max_backoff` while it
  is settled. So a bucket whose answer is clear (a drafter that never pays at this load, one at a tie that cannot
  clear the band, or one that pays twice over) pays for probes ever more rarely, and one near the band keeps
  measuring: there a wrong decision is what loses. Off at a tie settles on purpose: each probe there costs a little
  and puts requests out of step (measured at 16 requests on a CPU: at a per-step gain of 0.95–0.98 the unsettled
  gate drafted in 10–15% of the rounds, and the requests' uneven finish cost more than the probes). A probe whose
  sample points the other way also brings the interval back.
- What one load teaches the next: drafting pays less as the batch grows (the step becomes compute-bound, drafts cost
  more per accepted token), so a bucket first seen after a smaller load explored and left drafting off starts with
  drafting off, and one first seen after a larger load explored and kept drafting starts drafting; either skips its
  exploration and relies on probes, and where that neighbour's decision is settled, so is the new bucket's until it
  holds two samples of its own: its probes start at the neighbour's backed-off interval. (A drafter that never pays
  costs its exploration rounds once, not at every load the traffic passes through, nor a fresh round of frequent
  probes there.) Conflicting evidence, or none, means asking the cost model.
- What the cost model predicts: with no neighbour to go by, `predict(R)` (the adapter's: the verification policy run
  on recent confidences at R requests, the cost table, and the draft round's cost measured at a smaller load, a lower
  bound here, so the prediction is optimistic) gives drafting's expected gain over the target alone. Below 1 +
  `min_gain` the bucket starts with drafting off and only probes: a load where drafting cannot pay even on optimistic
  costs does not pay for an exploration (a short burst at 8 or 16 requests is over before one ends). Where it predicts
  a gain, or nothing (no confidences or no draft time yet), the bucket explores.
- Drafting must pay clearly: the bucket drafts only while the gain exceeds 1 + `min_gain`. Near break-even, a step
  that drafts generates as much as one that does not, but drafting has costs the per-step rate cannot see: requests
  that finish at different steps leave a tail of small, inefficient batches where they would have finished together
  (measured at 16 requests on a CPU: per-step rates within 3% of each other, end-to-end 7–10% behind the target
  alone), and its own variance. So at a tie the target alone wins.
- Hysteresis: the state switches only when the gain passes that threshold by a factor (1 + `hysteresis`) either way,
  on at least two samples' worth of evidence (effective number >= 2: one noisy probe only brings the next ones
  sooner). Asymmetric, as the threshold is: drafting goes off as soon as the gain's estimate falls below the band, but
  goes on (and stays on after exploration, which compares with the threshold itself) only where the estimate less `z`
  standard errors of a mean of samples with `min_spread` noise clears it. Near a tie a few noisy probes average above
  the band often enough to switch drafting on for stretches (measured at 16 requests on a CPU: drafting in 11–49% of
  the rounds at a per-step gain of 0.95–1.0), and each stretch puts requests out of step for the rest of their lives.
- Outliers: a step longer than `max_ratio` × the median of its bucket's recent steps (an idle gap, a stall) is not
  used.
- `rates()` also keeps, for reports, each state's exponentially forgotten tokens / seconds (about `memory` steps).

Pure Python: the proposer (adapter) asks `should_draft(R)` before a round and reports `observe(...)` one step
later. It only decides whether drafts are made; which of them are accepted stays the rejection sampler's rule,
so the gate cannot change what is generated.
"""
from __future__ import annotations

import collections
import math
import statistics
from collections.abc import Callable
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
    exploring: bool = True  # still taking the first steps of each state
    since_probe: int = 0  # steps in the current state since the other was last probed
    probe_interval: int = 32  # steps until the next probe (set from the gate's probe_every)
    probe_left: int = 0  # steps of the probe under way
    recent_seconds: collections.deque = field(default_factory=lambda: collections.deque(maxlen=32))
    in_use: collections.deque = field(default_factory=collections.deque)  # (tokens, seconds), last pair_window
    last_state: bool | None = None  # state of the last observed step
    last_seen: int = 0  # the gate's observation count at this bucket's last step
    steps: int = 0  # observations used at this bucket (the clock samples age by)
    samples: collections.deque = field(default_factory=collections.deque)  # (steps, drafting tokens, alone tokens)
    log_gain: tuple[float, float, float] | None = None  # _log_gain of `samples`, until they change
    pairs: int = 0
    settled_by: bool = False  # started from a neighbouring load whose decision was settled (until samples of its own)

    def add_sample(self, at: int, drafting: float, alone: float, replace: bool = False) -> None:
        """Append a paired sample (or, with `replace`, make it the only one); the kept gain is recomputed on read."""
        if replace:
            self.samples.clear()
        self.samples.append((at, drafting, alone))
        self.log_gain = None


@dataclass
class GateStats:
    steps: int = 0  # decisions made
    off_steps: int = 0  # decisions not to draft
    probe_steps: int = 0  # decisions that sampled the state not in use (exploration included)
    switches: int = 0  # changes of a bucket's state in use
    inherited: int = 0  # buckets that started from a neighbouring load's decision instead of exploring
    predicted_off: int = 0  # buckets that started with drafting off on the cost model's prediction
    observations: int = 0
    rejected_observations: int = 0


class DraftGate:
    def __init__(self, *, min_samples: int = 4, probe_every: int = 16, max_backoff: int = 16, probe_len: int = 2,
                 min_gain: float = 0.05, hysteresis: float = 0.03, pair_window: int = 4, pair_memory: int = 16,
                 half_life: float = 32.0, z: float = 2.0, min_spread: float = 0.05, memory: float = 64.0,
                 max_ratio: float = 4.0, predict: Callable[[int], float | None] | None = None):
        if min_samples < 1 or max_backoff < 1 or not 2 <= probe_len < probe_every:
            raise ValueError(f"draft gate: need min_samples >= 1, max_backoff >= 1 and 2 <= probe_len < probe_every, "
                             f"got {min_samples}, {max_backoff}, {probe_len}, {probe_every}")
        if pair_window < 1 or pair_memory < 1:
            raise ValueError(f"draft gate: need pair_window >= 1 and pair_memory >= 1, got {pair_window}, "
                             f"{pair_memory}")
        if not (0 <= hysteresis < 1) or not (0 <= min_gain < 1) or memory < 1 or max_ratio <= 1:
            raise ValueError(f"draft gate: need 0 <= hysteresis < 1, 0 <= min_gain < 1, memory >= 1, max_ratio > 1, "
                             f"got {hysteresis}, {min_gain}, {memory}, {max_ratio}")
        if not half_life > 0 or z < 0 or min_spread < 0:
            raise ValueError(f"draft gate: need half_life > 0, z >= 0 and min_spread >= 0, got {half_life}, {z}, "
                             f"{min_spread}")
        self.probe_len = probe_len
        self.threshold = math.log1p(min_gain)  # log gain drafting must show
        self.band = math.log1p(hysteresis)
        self.pair_window = pair_window
        self.pair_memory = pair_memory
        self.half_life = float(half_life)
        self.z = z
        self.min_spread = min_spread
        self.min_samples = min_samples
        self.probe_every = probe_every
        self.max_probe_every = probe_every * max_backoff
        self.hysteresis = hysteresis
        self.decay = 1.0 - 1.0 / memory
        self.max_ratio = max_ratio
        self.predict = predict  # R -> predicted gain of drafting at R requests, or None
        self.buckets: dict[int, _Bucket] = {}
        self.stats = GateStats()

    def _bucket(self, num_requests: int) -> _Bucket:
        key = load_bucket(num_requests)
        if key not in self.buckets:
            prior, source = self._prior(key)
            self.stats.inherited += prior is not None
            if prior is None and self.predict is not None:
                predicted = self.predict(num_requests)
                if predicted is not None and math.log(max(predicted, 1e-9)) < self.threshold:
                    prior = False
                    self.stats.predicted_off += 1
            # a neighbour's settled decision is settled here too (drafting pays less as the batch grows), so its
            # probes start as far backed off as the neighbour's: a drafter that never pays does not pay a fresh
            # round of frequent probes at every load the traffic reaches
            settled = source is not None and self._settled(source)
            self.buckets[key] = _Bucket(probe_interval=source.probe_interval if settled else self.probe_every,
                                        drafting=prior is not False, exploring=prior is None, settled_by=settled,
                                        in_use=collections.deque(maxlen=self.pair_window),
                                        samples=collections.deque(maxlen=self.pair_memory))
        return self.buckets[key]

    def _prior(self, key: int) -> tuple[bool | None, _Bucket | None]:
        """The state a new bucket can start in without exploring, and the neighbour it comes from (the nearest
        such load): False when a smaller explored load does not draft, True when a larger explored load drafts,
        (None, None) when neither (or both) holds."""
        decided = [(k, b) for k, b in self.buckets.items() if not b.exploring]
        below = [(k, b) for k, b in decided if k < key and not b.drafting]
        above = [(k, b) for k, b in decided if k > key and b.drafting]
        if bool(below) == bool(above):
            return None, None
        if below:
            return False, max(below, key=lambda kb: kb[0])[1]
        return True, min(above, key=lambda kb: kb[0])[1]

    def should_draft(self, num_requests: int) -> bool:
        """Whether the round about to run at this load should draft (True) or leave drafting off (False)."""
        b = self._bucket(num_requests)
        if b.exploring and b.on.samples <= self.min_samples:
            draft, probe = True, not b.drafting
        elif b.exploring and b.pairs < self.min_samples:
            draft, probe = False, b.drafting
        else:
            if b.exploring:  # exploration over: drafting if it clearly beats the threshold, no hysteresis
                b.exploring = False
                mean, _, n_eff = self._log_gain(b)
                self._switch_if(b, b.drafting != (mean - self._on_margin(n_eff) > self.threshold))
                # its samples shared one stretch of steps (and one reference window): one sample's worth
                at = b.samples[-1][0]
                alone = sum(a for _, _, a in b.samples) / len(b.samples)
                b.add_sample(at, alone * math.exp(mean), alone, replace=True)
            elif b.probe_left == 0:
                self._maybe_switch(b)
            if b.probe_left == 0:
                b.since_probe += 1
                if b.since_probe >= b.probe_interval:
                    b.since_probe = 0
                    b.probe_interval = (min(2 * b.probe_interval, self.max_probe_every) if self._settled(b)
                                        else self.probe_every)
                    b.probe_left = self.probe_len
            probe = b.probe_left > 0
            b.probe_left -= probe
            draft = b.drafting != probe
        self.stats.steps += 1
        self.stats.off_steps += not draft
        self.stats.probe_steps += probe
        return draft

    def _says_switch(self, b: _Bucket, log_gain: float) -> bool:
        """Whether a (log) gain lies beyond the hysteresis band on the other side of the threshold."""
        if b.drafting:
            return log_gain < self.threshold - self.band
        return log_gain > self.threshold + self.band

    def _log_gain(self, b: _Bucket) -> tuple[float, float, float]:
        """(log of the recent samples' weighted gain, its standard error, the samples' effective number);
        (0, inf, 0) before any. The gain is a ratio of sums, the tokens drafting made (or would have, at the
        reference's rate) over those the target alone would have made in the same time: tokens per second over
        time, as serving sees it. A mean of per-sample ratios would not be: at low load one drafting step's gain
        swings with its acceptance (0.7x to 4x at one request), and the mean of their logs then reads far below
        what drafting returns over time (the geometric mean: 1.7x where tokens over time give 1.2x, or the reverse,
        depending on whether tokens or seconds vary)."""
        if not b.samples:
            return 0.0, math.inf, 0.0
        if b.log_gain is not None:  # read every step; it changes only with the samples (`_Bucket.add_sample`)
            return b.log_gain
        # ages from the newest sample, not from now: every weight ages by the same factor a step, and each of the
        # three results is a ratio of weighted sums, so they hold until the samples change
        newest = b.samples[-1][0]
        w = [0.5 ** ((newest - at) / self.half_life) for at, _, _ in b.samples]
        total = sum(w)
        drafting = sum(wi * d for wi, (_, d, _) in zip(w, b.samples))
        alone = sum(wi * a for wi, (_, _, a) in zip(w, b.samples))
        gain = drafting / alone
        # spread of the samples about the ratio, relative to the mean sample (the ratio estimator's linearisation)
        spread = math.sqrt(sum(wi * (d - gain * a) ** 2 for wi, (_, d, a) in zip(w, b.samples)) / total) \
            / (gain * alone / total)
        n_eff = total * total / sum(wi * wi for wi in w)
        b.log_gain = math.log(gain), max(spread, self.min_spread) / math.sqrt(n_eff), n_eff
        return b.log_gain

    def _settled(self, b: _Bucket) -> bool:
        """Whether the recent samples put the gain clearly on the side of the state in use: the gain at which the
        state would switch (the band's far edge, beyond the threshold) lies outside `z` standard errors of the
        estimate. Settled off therefore means "drafting is clearly not going to clear the band", not "drafting
        clearly loses": at a tie (a drafter worth 0.95-1.0x at a high load) off settles and probes back off, as
        each probe costs a little and puts requests out of step, while it could not switch drafting on anyway."""
        if len(b.samples) < 2:  # exploration's one sample alone never settles it; a settled neighbour's decision does
            return b.settled_by
        mean, err, _ = self._log_gain(b)
        if b.drafting:
            return mean - self.z * err > self.threshold - self.band
        return mean + self.z * err < self.threshold + self.band

    def _maybe_switch(self, b: _Bucket) -> None:
        """Switch when the recent gain lies beyond the band, on the evidence of two samples at least: one noisy
        probe only brings the next ones sooner (an inherited state, none yet, holds until measured here). Drafting
        goes on only when the gain less `_on_margin` lies beyond: noise around a tie must not turn it on (drafting's
        costs that the per-step gain does not show come with it), while a gain below the band turns it off at
        once."""
        mean, _, n_eff = self._log_gain(b)
        if not b.drafting:
            mean -= self._on_margin(n_eff)
        self._switch_if(b, n_eff >= 2 - 1e-9 and self._says_switch(b, mean))

    def _on_margin(self, n_eff: float) -> float:
        """What the mean log gain must clear beyond the threshold to turn drafting on: `z` standard errors of a
        mean of `n_eff` samples of per-sample noise `min_spread`. The floor, not the measured spread: at low load
        the gain of single steps swings with each step's acceptance (spread ~0.5 at one request), which is
        content, not noise about a tie, and a margin that large would keep drafting off where it pays 1.3×+."""
        return self.z * self.min_spread / math.sqrt(max(n_eff, 1e-9))

    def _switch_if(self, b: _Bucket, switch: bool) -> None:
        if switch:
            b.drafting = not b.drafting
            b.since_probe = 0
            b.probe_interval = self.probe_every
            b.in_use.clear()
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
        b.steps += 1
        if self.stats.observations - b.last_seen > 2 * self.pair_window:  # the load was elsewhere: nothing recent
            b.in_use.clear()
            b.last_state = None
        b.last_seen = self.stats.observations
        transition, b.last_state = b.last_state is not None and b.last_state != drafted, drafted
        if transition:
            return True
        if drafted == b.drafting:
            b.in_use.append((float(tokens), float(seconds)))
        elif b.in_use:  # a step of the other state, just after steps of the one in use: one paired sample
            ref = sum(t for t, _ in b.in_use) / sum(sec for _, sec in b.in_use)
            # tokens each state makes in this step's time: this step's own, and the reference rate's
            drafting, alone = (tokens, seconds * ref) if drafted else (seconds * ref, tokens)
            b.pairs += 1
            b.add_sample(b.steps, float(drafting), float(alone))
            if self._says_switch(b, math.log(drafting / alone)):
                b.probe_interval = self.probe_every  # this sample says switch: look again soon
        return True

    def gain(self, num_requests: int) -> float | None:
        """Measured tokens/s drafting over tokens/s without, at this load's bucket (None before any pair)."""
        b = self.buckets.get(load_bucket(num_requests))
        return None if b is None or b.pairs == 0 else math.exp(self._log_gain(b)[0])

    def rates(self, num_requests: int) -> tuple[float, float]:
        """(tokens/s drafting, tokens/s not drafting) measured at this load's bucket (0 where unmeasured)."""
        b = self.buckets.get(load_bucket(num_requests))  # a look only: never opens a bucket
        return (0.0, 0.0) if b is None else (b.on.rate, b.off.rate)
