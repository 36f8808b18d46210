"""Start-up profiling: the grid, and the table built from timed steps (a fake clock, no sleeping)."""
from __future__ import annotations

import pytest

from vllm_dspark.adapter import profile


def test_default_grid_doubles_and_ends_at_the_limit():
    assert profile.default_batch_tokens(20) == [1, 2, 4, 8, 16, 20]
    assert profile.default_batch_tokens(16) == [1, 2, 4, 8, 16]
    assert profile.default_batch_tokens(1) == [1, 2]


def test_profile_steps_records_the_median_step_time(monkeypatch):
    clock = {"t": 0.0}
    calls = []

    def fake_perf_counter():
        return clock["t"]

    def run_step(b):  # 2 ms + 0.5 ms per token; every third run of a size is a 10x outlier
        calls.append(b)
        slow = sum(1 for c in calls if c == b) % 3 == 0
        clock["t"] += (2e-3 + 5e-4 * b) * (10 if slow else 1)

    monkeypatch.setattr(profile.time, "perf_counter", fake_perf_counter)
    table = profile.profile_steps(run_step, [1, 4, 16], repeats=3)
    assert calls == [1] * 4 + [4] * 4 + [16] * 4  # one warm-up + 3 timed runs per size
    assert table.step_seconds.tolist() == pytest.approx([2.5e-3, 4e-3, 10e-3])


def test_profile_steps_stops_at_its_time_budget(monkeypatch):
    """The budget reaches CostTable.from_profile: 0.1 s per token, 4 runs per size, 2.5 s allow B = 1, 2 (1.2 s) but
    not B = 4 (1.6 s more), which is then extrapolated."""
    clock = {"t": 0.0}
    calls = []

    def run_step(b):
        calls.append(b)
        clock["t"] += 0.1 * b

    monkeypatch.setattr(profile.time, "perf_counter", lambda: clock["t"])
    table = profile.profile_steps(run_step, [1, 2, 4], repeats=3, time_budget_s=2.5)
    assert sorted(set(calls)) == [1, 2] and table.meta["extrapolated_batch_tokens"] == [4]
    assert table.step_seconds.tolist() == pytest.approx([0.1, 0.2, 0.4])
