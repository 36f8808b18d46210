"""DraftGate: drafting on or off per load from measured tokens/s, with exploration, probes and hysteresis."""
from __future__ import annotations

import random

import pytest

from vllm_dspark.scheduling.gate import DraftGate, load_bucket


def run_engine(gate: DraftGate, num_req: int, steps: int, rate_on: float, rate_off: float, noise: float = 0.0,
               seed: int = 0) -> list[bool]:
    """Simulate an engine whose steps generate `num_req` tokens (+ more when drafting) at the given tokens/s."""
    rng = random.Random(seed)
    decisions = []
    for _ in range(steps):
        draft = gate.should_draft(num_req)
        decisions.append(draft)
        tokens = num_req * (2 if draft else 1)
        rate = (rate_on if draft else rate_off) * (1 + noise * rng.uniform(-1, 1))
        gate.observe(num_req, draft, tokens, tokens / rate)
    return decisions


def test_load_bucket_powers_of_two():
    assert [load_bucket(n) for n in (0, 1, 2, 3, 4, 5, 8, 9, 16, 17)] == [1, 1, 2, 4, 4, 8, 8, 16, 16, 32]


def _probe_gaps(decisions: list[bool], probe_value: bool) -> list[int]:
    """Steps between the starts of successive runs of `probe_value` (probes)."""
    at = [i for i, d in enumerate(decisions) if d == probe_value and (i == 0 or decisions[i - 1] != probe_value)]
    return [b - a for a, b in zip(at, at[1:])]


def test_turns_drafting_off_where_it_loses_and_probes_ever_more_rarely():
    gate = DraftGate(min_samples=4, probe_every=32, max_backoff=4)
    decisions = run_engine(gate, 4, 1200, rate_on=70.0, rate_off=100.0, noise=0.05)
    assert decisions[:10] == [True] * 5 + [False] * 5  # exploration: 5 drafting, then 4 pairs (+ the transition)
    tail = decisions[10:]  # after exploration, drafting happens only on 2-step probes, each gap twice the last
    gaps = _probe_gaps(tail, True)
    # interval + 1: a probe starts on the step that completes the interval; exploration's sample alone does not
    # settle the decision (the first interval stays 32), the first probe's does; capped at 32 × 4
    assert gaps[:2] == [32 + 1, 64 + 1] and set(gaps[2:]) == {128 + 1} and len(gaps) >= 8
    assert all(n == 2 for n in map(len, "".join("1" if d else "0" for d in tail).split("0")) if n)
    assert gate.stats.off_steps == decisions.count(False)
    assert gate.gain(4) == pytest.approx(0.7, rel=0.1)  # the last sample or two, weighted by age: noisier
    assert gate.rates(4)[0] == pytest.approx(70.0, rel=0.06)
    assert gate.rates(4)[1] == pytest.approx(100.0, rel=0.06)


def test_keeps_drafting_where_it_pays():
    gate = DraftGate(min_samples=4, probe_every=32)
    decisions = run_engine(gate, 1, 1100, rate_on=140.0, rate_off=100.0, noise=0.05)
    tail = decisions[10:]
    assert _probe_gaps(tail, False) == [33, 65, 129, 257, 513]  # off only to probe, ever more rarely (cap 32 × 16)
    assert gate.stats.switches == 0 and gate.gain(1) == pytest.approx(1.4, rel=0.06)


def test_paired_samples_cancel_drift():
    """Every step slows down over time (contexts grow) while drafting keeps a constant 10% edge: rates measured at
    different times would see the probed state as slower or faster than it is; paired samples see the 10%."""
    gate = DraftGate(min_samples=4, probe_every=8, max_backoff=1, min_gain=0.05)
    for i in range(600):
        slow = 1.0 + i / 100  # 7x slower by the end
        draft = gate.should_draft(8)
        rate = (110.0 if draft else 100.0) / slow
        gate.observe(8, draft, 8, 8 / rate)
    assert gate.gain(8) == pytest.approx(1.1, rel=0.02) and gate.buckets[8].drafting


def test_each_load_decides_on_its_own():
    gate = DraftGate(min_samples=3, probe_every=16)
    run_engine(gate, 1, 200, rate_on=150.0, rate_off=100.0)
    run_engine(gate, 16, 200, rate_on=80.0, rate_off=100.0)
    assert gate.buckets[1].drafting and not gate.buckets[16].drafting


def test_follows_a_change_in_acceptance():
    """Drafting pays, then stops paying (content changed): probes of the state not in use notice it."""
    gate = DraftGate(min_samples=4, probe_every=8, memory=16)
    run_engine(gate, 2, 200, rate_on=130.0, rate_off=100.0)
    assert gate.buckets[2].drafting
    assert gate.buckets[2].probe_interval == 8 * 16  # backed off while drafting paid
    decisions = run_engine(gate, 2, 300, rate_on=60.0, rate_off=100.0)
    assert not gate.buckets[2].drafting
    # the first probe after the change says switch: the interval comes back to 8, the next probes confirm
    switched_at = next(i for i in range(len(decisions) - 20) if not any(decisions[i:i + 20]))
    assert switched_at <= 128 + 3 * 8 * 2, f"switched only after {switched_at} steps"
    assert sum(decisions[-100:]) <= 2 * 100 / 8
    assert gate.stats.switches == 1


def test_hysteresis_holds_the_state_between_close_rates():
    gate = DraftGate(min_samples=4, probe_every=8, max_backoff=1, hysteresis=0.05, min_gain=0.0)
    run_engine(gate, 1, 100, rate_on=100.0, rate_off=101.0, noise=0.01, seed=1)  # exploration picks the better
    assert gate.stats.switches == 1 and not gate.buckets[1].drafting
    run_engine(gate, 1, 200, rate_on=104.0, rate_off=101.0, noise=0.01, seed=2)  # within 5%: no switch back
    assert gate.stats.switches == 1 and not gate.buckets[1].drafting
    run_engine(gate, 1, 200, rate_on=120.0, rate_off=100.0, seed=3)  # 20% better drafting
    assert gate.stats.switches == 2 and gate.buckets[1].drafting


@pytest.mark.parametrize("gain, drafts, settled", [(-0.3, False, True), (0.0, False, True), (0.06, False, False),
                                                   (0.08, False, False), (0.12, True, True), (0.3, True, True)])
def test_drafting_must_gain_clearly(gain, drafts, settled):
    """Near break-even the target alone wins: drafting is kept only where it beats it by more than min_gain, by two
    standard errors (at least `min_spread` per sample: an 8% gain does not clear it, 12% does). Where the gain could
    still clear the band (6-8%: within two standard errors of it) the decision stays unsettled and probes keep their
    base cadence; at a tie, or clearly past the band, they back off."""
    gate = DraftGate(min_samples=4, probe_every=16, min_gain=0.05)
    decisions = run_engine(gate, 16, 300, rate_on=100.0 * (1 + gain), rate_off=100.0, noise=0.005)
    assert gate.buckets[16].drafting == drafts
    probed = sum(d != drafts for d in decisions[-100:])  # steps of the state not kept
    if settled:
        assert probed <= 2 and gate.buckets[16].probe_interval > 16
    else:
        assert 2 * (100 // 17) <= probed <= 2 * (100 // 16 + 1) and gate.buckets[16].probe_interval == 16


def test_drafting_that_fades_near_the_band_keeps_probing():
    """Drafting on (it paid 30%) and then worth only 3%: inside the band, so it stays on, but close enough to the
    edge where it would go off that the decision is unsettled and probes come at the base cadence again."""
    gate = DraftGate(min_samples=4, probe_every=16, min_gain=0.05)
    run_engine(gate, 16, 300, rate_on=130.0, rate_off=100.0, noise=0.005)
    assert gate.buckets[16].drafting and gate.buckets[16].probe_interval > 16
    decisions = run_engine(gate, 16, 600, rate_on=103.0, rate_off=100.0, noise=0.005, seed=1)
    assert gate.buckets[16].drafting and gate.stats.switches == 0
    assert gate.buckets[16].probe_interval == 16
    assert 2 * (100 // 17) <= decisions[-100:].count(False) <= 2 * (100 // 16 + 1)


def test_idle_gaps_are_not_measured():
    gate = DraftGate(min_samples=2, probe_every=8)
    run_engine(gate, 1, 40, rate_on=100.0, rate_off=90.0)
    before = gate.rates(1)
    assert not gate.observe(1, False, 1, 30.0)  # a 30 s gap between two steps of ~10 ms
    assert gate.rates(1) == before and gate.stats.rejected_observations == 1


@pytest.mark.parametrize("kwargs", [{"min_samples": 0}, {"probe_every": 1}, {"max_backoff": 0}, {"hysteresis": 1.0},
                                    {"min_gain": -0.1}, {"probe_len": 1}, {"pair_window": 0}, {"memory": 0.5},
                                    {"max_ratio": 1.0}])
def test_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError, match="draft gate"):
        DraftGate(**kwargs)


def test_a_load_that_loses_sets_larger_loads_off_without_exploring():
    """A drafter that never pays: once one load explored it, the larger loads met later start with drafting off
    and draft only on probes; smaller ones still explore (paying less at a small load is no evidence)."""
    gate = DraftGate(min_samples=4, probe_every=32)
    run_engine(gate, 2, 60, rate_on=70.0, rate_off=100.0)
    assert not gate.buckets[2].drafting and gate.stats.inherited == 0 and gate.stats.switches == 1
    for load in (3, 8, 16):
        decisions = run_engine(gate, load, 31, rate_on=70.0, rate_off=100.0)
        assert not any(decisions), f"load {load} drafted before its first probe"
    assert gate.stats.inherited == 3 and gate.stats.switches == 1
    assert run_engine(gate, 1, 8, rate_on=70.0, rate_off=100.0)[:4] == [True] * 4  # explores


def test_a_settled_load_hands_its_backed_off_probes_to_larger_loads():
    """A drafter that never pays, settled off at 2 requests (probes backed off): the larger loads met later start
    as settled, with probes as rare as at 2, instead of a fresh round of frequent probes each (at 16 requests on a
    CPU, each probe step verifies γ useless drafts per request: half a step's time or more)."""
    gate = DraftGate(min_samples=4, probe_every=16, max_backoff=16)
    run_engine(gate, 2, 800, rate_on=70.0, rate_off=100.0)
    interval = gate.buckets[2].probe_interval
    assert interval >= 128  # backed off
    decisions = run_engine(gate, 16, 3 * interval, rate_on=70.0, rate_off=100.0)
    first = decisions.index(True)
    assert first >= interval - 1  # not at 16 steps, as an unsettled inherited bucket would probe
    gaps = _probe_gaps(decisions, True)
    assert gaps and all(g > interval for g in gaps)  # and it keeps backing off (up to the cap)
    # an unsettled neighbour (exploration's one sample) hands over the state but not the backoff
    fresh = DraftGate(min_samples=4, probe_every=16, max_backoff=16)
    run_engine(fresh, 2, 12, rate_on=70.0, rate_off=100.0)
    assert not fresh.buckets[2].exploring and not fresh.buckets[2].drafting
    assert run_engine(fresh, 16, 40, rate_on=70.0, rate_off=100.0).index(True) == 16 - 1  # on the 16th step


def test_a_load_that_wins_sets_smaller_loads_on_without_exploring():
    gate = DraftGate(min_samples=4, probe_every=32)
    run_engine(gate, 16, 60, rate_on=130.0, rate_off=100.0)
    assert gate.buckets[16].drafting
    assert all(run_engine(gate, 4, 31, rate_on=130.0, rate_off=100.0))
    assert gate.stats.inherited == 1


def test_conflicting_neighbours_mean_exploring():
    gate = DraftGate(min_samples=4, probe_every=32)
    run_engine(gate, 1, 60, rate_on=70.0, rate_off=100.0)  # loses at 1, so 16 starts off ...
    run_engine(gate, 16, 100, rate_on=130.0, rate_off=100.0)  # ... but its first probes find drafting pays there
    assert gate.buckets[16].drafting and gate.stats.inherited == 1
    decisions = run_engine(gate, 4, 10, rate_on=100.0, rate_off=100.0)
    assert decisions == [True] * 5 + [False] * 5 and gate.stats.inherited == 1


def test_pairs_only_with_recent_steps_of_the_same_load():
    """A probe compares with the steps just before it at its own load: after the traffic spent a while at another
    load, the old steps there are not used (they were measured at other contexts)."""
    gate = DraftGate(min_samples=2, probe_every=4, max_backoff=1, pair_window=2)
    run_engine(gate, 16, 40, rate_on=100.0, rate_off=200.0)  # 16: off in use, drafting probed
    pairs = gate.buckets[16].pairs
    run_engine(gate, 2, 30, rate_on=150.0, rate_off=100.0)
    b = gate.buckets[16]
    gate.observe(16, True, 16, 16 / 100.0)  # a drafting step back at 16, right after 30 steps at 2
    assert b.pairs == pairs and not b.in_use and b.last_state is True  # not paired with the steps of long ago


def test_a_gain_that_fades_turns_drafting_off():
    """Drafting pays at the start of a wave of requests (early tokens are easy to draft) and stops paying as they
    go on: the gain measured while exploring must not decide for the rest of the wave. The decision stays unsettled
    near the threshold, so probes keep coming and recent samples outweigh the old ones."""
    gate = DraftGate(min_samples=4, probe_every=16)
    rng = random.Random(0)
    in_use = []
    for i in range(400):
        draft = gate.should_draft(16)
        in_use.append(gate.buckets[16].drafting)
        rate = (115.0 if i < 60 else 95.0) if draft else 100.0
        gate.observe(16, draft, 16, 16 / (rate * (1 + 0.03 * rng.gauss(0, 1))))
    assert all(in_use[:60]), "exploration measured 1.15: drafting kept"
    off_at = in_use.index(False)
    assert off_at <= 60 + 5 * 16, f"drafting went off only {off_at - 60} steps after it stopped paying"
    assert not any(in_use[off_at:]) and gate.gain(16) < 1.0


def test_noise_around_a_tie_does_not_turn_drafting_on():
    """At a tie with noisy steps (±15% per step, as on a busy CPU) the probes' samples scatter around 1; their
    recent mean alone clears the band now and then, the mean less two standard errors does not."""
    gate = DraftGate(min_samples=4, probe_every=16)
    decisions = run_engine(gate, 16, 4000, rate_on=100.0, rate_off=100.0, noise=0.15, seed=7)
    assert not gate.buckets[16].drafting
    assert gate.stats.switches <= 1  # exploration's end may still pick drafting off
    assert sum(decisions[200:]) <= 2 * 3800 / 16 + 2  # probes only


def test_drafting_that_pays_unevenly_comes_back_on():
    """At one request a drafting step's gain swings with its acceptance: here half the steps accept nothing (0.7x
    the target alone's rate) and half accept a lot (4x): 1.19x the target alone's tokens/s over time. After a
    stretch where drafting lost (off), it must come back on: the margin for turning on is a noise floor, not the
    samples' spread, which at this load is content (a margin of two measured standard errors keeps it off)."""
    gate = DraftGate(min_samples=4, probe_every=8, max_backoff=1)
    run_engine(gate, 1, 200, rate_on=60.0, rate_off=100.0)
    assert not gate.buckets[1].drafting
    rng = random.Random(0)
    decisions = []
    for _ in range(600):
        draft = gate.should_draft(1)
        decisions.append(draft)
        rate = rng.choice([70.0, 400.0]) if draft else 100.0
        gate.observe(1, draft, 2 if draft else 1, (2 if draft else 1) / rate)
    back_on = next(i for i in range(len(decisions) - 8) if all(decisions[i:i + 8]))
    assert back_on <= 64, f"drafting back on only after {back_on} steps (8 probes)"
    assert gate.buckets[1].drafting and sum(decisions[-200:]) >= 200 - 2 * 200 / 8


def test_one_noisy_probe_does_not_switch():
    """A settled decision changes on two samples at least: one probe that points the other way only brings the
    next probes back to the base cadence."""
    gate = DraftGate(min_samples=4, probe_every=8)
    run_engine(gate, 4, 300, rate_on=130.0, rate_off=100.0)
    b = gate.buckets[4]
    assert b.drafting and b.probe_interval > 8
    while gate.should_draft(4):  # drafting in use: run up to the next probe's first (transition) step
        gate.observe(4, True, 8, 8 / 130.0)
    gate.observe(4, False, 4, 4 / 100.0)
    assert not gate.should_draft(4)
    gate.observe(4, False, 4, 4 / 140.0)  # a probe step 40% faster than the target alone is: says switch
    assert b.probe_interval == 8 and gate.should_draft(4) and b.drafting
    run_engine(gate, 4, 100, rate_on=130.0, rate_off=100.0)
    assert b.drafting and gate.stats.switches == 0


def test_a_load_the_cost_model_says_cannot_pay_starts_off_and_probes():
    """With no neighbouring load to go by, a prediction below 1 + min_gain starts the load with drafting off (no
    exploration); probes still measure it, and switch drafting on where the prediction was wrong."""
    asked = []

    def predict(num_requests):
        asked.append(num_requests)
        return {1: None, 8: 0.97, 16: 1.4}.get(load_bucket(num_requests))

    gate = DraftGate(min_samples=4, probe_every=16, predict=predict)
    assert run_engine(gate, 1, 10, rate_on=150.0, rate_off=100.0)[:5] == [True] * 5  # nothing predicted: explores
    off = run_engine(gate, 8, 16, rate_on=150.0, rate_off=100.0)
    assert not any(off[:15]) and gate.stats.predicted_off == 1 and not gate.buckets[8].exploring
    run_engine(gate, 8, 80, rate_on=150.0, rate_off=100.0)  # the prediction was wrong: probes find 1.5
    assert gate.buckets[8].drafting and gate.stats.switches == 1
    assert run_engine(gate, 16, 10, rate_on=90.0, rate_off=100.0)[:5] == [True] * 5  # a predicted gain explores
    assert asked == [1, 8, 16] and gate.stats.predicted_off == 1  # asked once per load, on its first visit


@pytest.mark.parametrize("drafting_steps, expected", [
    ([(1, 0.020), (2, 0.020)], 1.5 / 20 * 13),  # acceptance swings, time does not: mean of logs would read 0.92
    ([(2, 0.010), (2, 0.040)], 4 / 50 * 13),  # time swings: mean of logs 1.3, mean of rates 1.63
])
def test_gain_is_tokens_over_time(drafting_steps, expected):
    """Drafting off in use (1 token per 13 ms), probed one used step at a time whose tokens or seconds alternate:
    the gain is what drafting returns over time, summed tokens over summed time, whichever of the two varies."""
    gate = DraftGate(min_samples=4, probe_every=16, half_life=1e9, pair_window=4)
    b = gate._bucket(1)
    b.drafting, b.exploring = False, False
    for cycle in range(16):
        for _ in range(5):  # the first is the change of state's step, not used; four fill the reference window
            gate.observe(1, False, 1, 0.013)
        gate.observe(1, True, 1, 0.013)  # change of state: not used
        tokens, seconds = drafting_steps[cycle % 2]
        gate.observe(1, True, tokens, seconds)
    assert b.pairs == 16
    assert gate.gain(1) == pytest.approx(expected, rel=1e-6)


class _Uncached(DraftGate):
    """The gain recomputed from the samples at every read, aged from the current step (the definition)."""

    def _log_gain(self, b):
        import math

        if not b.samples:
            return 0.0, math.inf, 0.0
        w = [0.5 ** ((b.steps - at) / self.half_life) for at, _, _ in b.samples]
        total = sum(w)
        gain = sum(wi * d for wi, (_, d, _) in zip(w, b.samples)) / sum(wi * a for wi, (_, _, a) in zip(w, b.samples))
        alone = sum(wi * a for wi, (_, _, a) in zip(w, b.samples))
        spread = math.sqrt(sum(wi * (d - gain * a) ** 2 for wi, (_, d, a) in zip(w, b.samples)) / total) \
            / (gain * alone / total)
        n_eff = total * total / sum(wi * wi for wi in w)
        return math.log(gain), max(spread, self.min_spread) / math.sqrt(n_eff), n_eff


@pytest.mark.parametrize("seed", range(6))
def test_the_kept_gain_is_the_gain_recomputed_every_step(seed):
    """The gate reads each load's gain every step and keeps it until that load's samples change: decisions and
    gains equal those of a gate that recomputes it at every read, over loads, acceptances and noise that switch."""
    rng = random.Random(seed)
    kept, fresh = DraftGate(min_samples=3, probe_every=8), _Uncached(min_samples=3, probe_every=8)
    for _ in range(1500):
        num_req = rng.choice([1, 1, 1, 2, 4, 8])
        draft = kept.should_draft(num_req)
        assert fresh.should_draft(num_req) == draft
        tokens = num_req * (rng.choice([1, 3]) if draft else 1)
        seconds = tokens / (rng.choice([60.0, 140.0]) if draft else 100.0) * rng.uniform(0.9, 1.1)
        assert kept.observe(num_req, draft, tokens, seconds) == fresh.observe(num_req, draft, tokens, seconds)
    assert kept.stats == fresh.stats and kept.stats.switches > 0
    for key, b in kept.buckets.items():
        if b.samples:
            assert kept._log_gain(b) == pytest.approx(fresh._log_gain(fresh.buckets[key]), rel=1e-9)
