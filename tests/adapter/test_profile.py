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


class _FakeDrafter:
    def __init__(self):
        self.target_only = False

    def target_only_dummy_runs(self):
        import contextlib

        @contextlib.contextmanager
        def ctx():
            self.target_only = True
            try:
                yield
            finally:
                self.target_only = False

        return ctx()


class _FakeRunner:
    """Records what the profile asks of vLLM's dummy step (the 0.32 signature) and of the LM head."""

    def __init__(self):
        import torch

        self.torch = torch
        self.drafter = _FakeDrafter()
        self.calls, self.logit_rows = [], []
        self.model = self

    def _dummy_run(self, num_tokens, cudagraph_runtime_mode=None, force_attention=False, uniform_decode=False,
                   allow_microbatching=True, skip_eplb=False, is_profile=False, profile_seq_lens=None):
        self.calls.append((num_tokens, force_attention, uniform_decode, profile_seq_lens, self.drafter.target_only))
        pad = -(-num_tokens // 8) * 8  # vLLM pads the batch; the LM head must see the B real rows only
        return self.torch.zeros(pad, 4), self.torch.zeros(pad, 4)

    def compute_logits(self, hidden):
        self.logit_rows.append(hidden.shape[0])


def test_verification_step_profiles_the_target_on_verification_shapes():
    runner = _FakeRunner()
    step = profile.verification_step(runner, gamma=3, context_len=256)
    for b in (1, 3, 4, 16):
        step(b)
    # B >= 1 + γ: uniform decode batches (requests of 1 + γ tokens); attention forced on, contexts of 256 tokens,
    # the drafter left out; the LM head on exactly B rows
    assert runner.calls == [(1, True, False, 256, True), (3, True, False, 256, True), (4, True, True, 256, True),
                            (16, True, True, 256, True)]
    assert runner.logit_rows == [1, 3, 4, 16]
    assert runner.drafter.target_only is False


def test_verification_step_needs_the_dspark_proposer():
    runner = _FakeRunner()
    runner.drafter = object()
    with pytest.raises(RuntimeError, match="not DSpark's proposer"):
        profile.verification_step(runner, gamma=3, context_len=None)
