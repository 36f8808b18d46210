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


def _gaps(decisions: list[bool], probe_value: bool) -> list[int]:
    at = [i for i, d in enumerate(decisions) if d == probe_value]
    return [b - a for a, b in zip(at, at[1:])]


def test_turns_drafting_off_where_it_loses_and_probes_ever_more_rarely():
    gate = DraftGate(min_samples=4, probe_every=32, max_backoff=4)
    decisions = run_engine(gate, 4, 1200, rate_on=70.0, rate_off=100.0, noise=0.05)
    tail = decisions[8:]  # after exploration, drafting happens only on probes, each gap twice the last
    gaps = _gaps(tail, True)
    assert gaps[0] == 64 and set(gaps[1:]) == {128} and len(gaps) >= 8  # capped at 32 × 4
    assert gate.stats.off_steps == decisions.count(False)
    assert gate.rates(4)[0] == pytest.approx(70.0, rel=0.06)
    assert gate.rates(4)[1] == pytest.approx(100.0, rel=0.06)


def test_keeps_drafting_where_it_pays():
    gate = DraftGate(min_samples=4, probe_every=32)
    decisions = run_engine(gate, 1, 1000, rate_on=140.0, rate_off=100.0, noise=0.05)
    tail = decisions[8:]
    assert _gaps(tail, False) == [64, 128, 256, 512]  # off only to probe, ever more rarely (cap 32 × 16)
    assert gate.stats.switches == 0


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
    decisions = run_engine(gate, 2, 300, rate_on=60.0, rate_off=100.0)
    assert not gate.buckets[2].drafting
    assert sum(decisions[-100:]) <= 100 / 8 + 1
    # backed off to 128 steps between probes while drafting paid; the switch brought the interval back to 8
    assert gate.stats.switches == 1 and gate.buckets[2].probe_interval <= 8 * 2 ** 5


def test_hysteresis_holds_the_state_between_close_rates():
    gate = DraftGate(min_samples=4, probe_every=8, hysteresis=0.05)
    run_engine(gate, 1, 100, rate_on=100.0, rate_off=101.0, noise=0.01, seed=1)  # within 5%: no switch
    assert gate.stats.switches == 0
    run_engine(gate, 1, 200, rate_on=100.0, rate_off=120.0, seed=2)  # 20% better without drafting
    assert gate.stats.switches == 1 and not gate.buckets[1].drafting


def test_idle_gaps_are_not_measured():
    gate = DraftGate(min_samples=2, probe_every=8)
    run_engine(gate, 1, 40, rate_on=100.0, rate_off=90.0)
    before = gate.rates(1)
    assert not gate.observe(1, False, 1, 30.0)  # a 30 s gap between two steps of ~10 ms
    assert gate.rates(1) == before and gate.stats.rejected_observations == 1


@pytest.mark.parametrize("kwargs", [{"min_samples": 0}, {"probe_every": 1}, {"max_backoff": 0}, {"hysteresis": 1.0},
                                    {"memory": 0.5}, {"max_ratio": 1.0}])
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


def test_a_load_that_wins_sets_smaller_loads_on_without_exploring():
    gate = DraftGate(min_samples=4, probe_every=32)
    run_engine(gate, 16, 60, rate_on=130.0, rate_off=100.0)
    assert gate.buckets[16].drafting
    assert all(run_engine(gate, 4, 31, rate_on=130.0, rate_off=100.0))
    assert gate.stats.inherited == 1


def test_conflicting_neighbours_mean_exploring():
    gate = DraftGate(min_samples=4, probe_every=32)
    run_engine(gate, 1, 60, rate_on=70.0, rate_off=100.0)  # loses at 1, so 16 starts off ...
    run_engine(gate, 16, 60, rate_on=130.0, rate_off=100.0)  # ... but its first probe finds drafting pays there
    assert gate.buckets[16].drafting and gate.stats.inherited == 1
    decisions = run_engine(gate, 4, 8, rate_on=100.0, rate_off=100.0)
    assert decisions == [True] * 4 + [False] * 4 and gate.stats.inherited == 1
