"""VerifyLengthPolicy: load-dependent lengths, SLA fallback accounting, step-time observation filter."""
from __future__ import annotations

import numpy as np
import pytest

from vllm_dspark.adapter.policy import VerifyLengthPolicy
from vllm_dspark.scheduling.gate import DraftGate
from vllm_dspark.scheduling.cost import CostTable

GAMMA = 4


def linear_table(a=10e-3, b=1e-3, top=256) -> CostTable:
    """step_time(B) = a + b·B (seconds)."""
    xs = [1, 2, 4, 8, 16, 32, 64, 128, top]
    return CostTable(xs, [a + b * x for x in xs])


def test_static_verifies_everything():
    policy = VerifyLengthPolicy("static", GAMMA)
    conf = np.full((3, GAMMA), 0.1)
    assert policy.lengths(conf).tolist() == [4, 4, 4]
    assert policy.lengths(conf, np.array([2, 0, 4])).tolist() == [2, 0, 4]


def test_lengths_shrink_with_load():
    # c = 0.8 everywhere, step time 10 ms + 1 ms per verified token.
    # R = 1: Theta(L) = (1 + sum_{k<=L} 0.8^k) / (11 + L) ms^-1 grows up to L = 4 (3.36/15 > 2.952/14 > ...).
    # R = 16: admitting the 16 first drafts (S = 0.8) raises Theta from 16/26 to 28.8/42; a second draft (S = 0.64)
    # adds 0.64 to tau = 28.8 (+2.2 %) but one token to 42 ms (+2.4 %): not admitted, so every length is 1.
    policy = VerifyLengthPolicy("confidence", GAMMA, linear_table())
    assert policy.lengths(np.full((1, GAMMA), 0.8)).tolist() == [4]
    assert policy.lengths(np.full((16, GAMMA), 0.8)).tolist() == [1] * 16
    assert policy.stats.steps == 2 and policy.stats.verified_tokens == 4 + 16


def test_lengths_are_prefixes_within_max_len():
    rng = np.random.default_rng(0)
    policy = VerifyLengthPolicy("confidence", GAMMA, linear_table(a=2e-3, b=1e-4))
    for _ in range(20):
        r = int(rng.integers(1, 12))
        conf = rng.uniform(0.0, 1.0, (r, GAMMA))
        max_len = rng.integers(0, GAMMA + 1, r)
        lengths = policy.lengths(conf, max_len)
        assert lengths.shape == (r,) and (lengths >= 0).all() and (lengths <= max_len).all()


def test_sla_floor_out_of_reach_falls_back_and_is_counted():
    # 4 requests, c = 0.9, step 10 ms + 1 ms/token. Alone (others verify 0 drafts) a request reaches 150 tok/s with
    # L >= 2 (2.71 tokens / 16 ms = 169/s), so none is exempt; together every L >= 2 gives B >= 12 and at most
    # 4.095 tokens / 30 ms = 136/s per user: infeasible, hence throughput mode.
    policy = VerifyLengthPolicy("sla", GAMMA, linear_table(), sla_tokens_per_user=150.0)
    lengths = policy.lengths(np.full((4, GAMMA), 0.9))
    assert policy.stats.sla_fallbacks == 1 and policy.stats.last_mode == "sla->throughput"
    assert (lengths <= GAMMA).all()
    reachable = VerifyLengthPolicy("sla", GAMMA, linear_table(), sla_tokens_per_user=50.0)
    reachable.lengths(np.full((4, GAMMA), 0.9))
    assert reachable.stats.sla_fallbacks == 0 and reachable.stats.last_mode == "sla"


def test_confidence_mode_without_a_table_is_an_error():
    with pytest.raises(RuntimeError, match="no cost table"):
        VerifyLengthPolicy("confidence", GAMMA).lengths(np.full((2, GAMMA), 0.5))
    with pytest.raises(ValueError, match="sla_tokens_per_user"):
        VerifyLengthPolicy("sla", GAMMA, linear_table())


def test_observed_steps_refit_the_table_and_gaps_are_dropped():
    table = linear_table()
    policy = VerifyLengthPolicy("confidence", GAMMA, table)
    before = table.step_time(8)  # 18 ms
    for _ in range(30):
        assert policy.observe_step(8, 2 * before)  # the engine is twice as slow as profiled
    assert table.step_time(8) == pytest.approx(2 * before, rel=0.1)
    assert not policy.observe_step(8, 100 * before)  # an idle gap, far beyond the recent ratio
    assert policy.stats.observations == 30 and policy.stats.rejected_observations == 1
    off = VerifyLengthPolicy("confidence", GAMMA, linear_table(), online_refit=False)
    assert not off.observe_step(8, 0.02)


def test_observing_steps_never_refits_until_a_decision_reads_the_table(monkeypatch):
    """A server whose gate keeps drafting off observes every step and decides none: each observation must stay a
    few scalar updates (a refit solves a linear system; measured in a CPU engine at ~0.2 ms a step)."""
    table = linear_table()
    refits = []
    original = table._refit
    monkeypatch.setattr(table, "_refit", lambda: (refits.append(1), original())[1])
    policy = VerifyLengthPolicy("confidence", GAMMA, table)
    for _ in range(50):
        assert policy.observe_step(8, 0.03)
    assert refits == [] and policy.stats.observations == 50
    policy.lengths(np.full((2, GAMMA), 0.5))  # a decision reads the curve: one refit, from all 50
    assert refits == [1] and table.step_time(8) > 0.02


def test_draft_cost_is_part_of_the_step():
    """The lengths maximise tokens per *engine step*, and a step pays for its draft round too. R = 16, c = 0.5,
    verification 10 ms + 1 ms per token. No round: 16 / 26 ms beats 24 / 42 ms (all first drafts), so none.
    A 40 ms round: 16 / 66 < 24 / 82 = 0.2927 > 24.25 / 83 (one second draft), so the first drafts only.
    A 200 ms round: 24 / 242 < 28 / 258 < 30 / 274 = 0.10949 > 30.0625 / 275, so three."""
    conf = np.full((16, GAMMA), 0.5)
    policy = VerifyLengthPolicy("confidence", GAMMA, linear_table(), draft_memory=1)
    assert policy.lengths(conf).tolist() == [0] * 16
    policy.observe_draft(16, 0.040)
    assert policy.lengths(conf).tolist() == [1] * 16
    policy.observe_draft(16, 0.200)  # memory 1: the last round only
    assert policy.draft_seconds(16) == pytest.approx(0.200)
    assert policy.lengths(conf).tolist() == [3] * 16


def test_draft_seconds_per_load():
    policy = VerifyLengthPolicy("confidence", GAMMA, linear_table(), draft_memory=4)
    assert policy.draft_seconds(3) == 0.0  # nothing measured: the table alone
    for s in (0.010, 0.012, 0.011):
        policy.observe_draft(1, s)
    assert policy.draft_seconds(1) == pytest.approx(np.average([0.010, 0.012, 0.011], weights=[0.75**2, 0.75, 1]))
    assert policy.draft_seconds(4) == pytest.approx(4 * policy.draft_seconds(1))  # nearest load, scaled up
    policy.observe_draft(4, 0.020)
    assert policy.draft_seconds(3) == pytest.approx(0.020)  # 3 and 4 share a bucket
    assert policy.draft_seconds(2) == pytest.approx(0.020)  # 1 and 4 equally near: the larger, never scaled down


def test_modes_come_from_one_list():
    """The server's `dspark.mode`, the policy and the scheduler accept the same modes (scheduling.SERVING_MODES)."""
    import typing

    from vllm_dspark.adapter import spec_config
    from vllm_dspark.scheduling import MODE_ALIASES, MODES, SERVING_MODES

    assert typing.get_args(spec_config.Mode) == SERVING_MODES
    assert set(MODES) == set(SERVING_MODES) | set(MODE_ALIASES) and set(MODE_ALIASES.values()) <= set(SERVING_MODES)
    for mode in SERVING_MODES:
        VerifyLengthPolicy(mode, 4, sla_tokens_per_user=10.0 if mode == "sla" else None)
    with pytest.raises(ValueError, match="mode must be one of"):
        VerifyLengthPolicy("throughput", 4)  # an alias of the scheduler, not a serving mode


def test_draft_depth_follows_the_longest_recent_length_per_load():
    gamma = 7
    policy = VerifyLengthPolicy("confidence", gamma, linear_table(), depth_window=4)
    assert policy.draft_depth(16) == gamma  # nothing decided yet at this load
    assert policy.lengths(np.full((16, gamma), 0.8)).tolist() == [1] * 16  # (as test_lengths_shrink_with_load)
    assert policy.draft_depth(16) == 2 and policy.draft_depth(9) == 2  # one past the longest, same bucket
    assert policy.draft_depth(1) == gamma  # another load keeps its own history
    policy.lengths(np.full((1, gamma), 0.8))  # R = 1 verifies more: 4 at c = 0.8 (10 ms + 1 ms per token)
    assert policy.draft_depth(1) == min(gamma, int(policy.lengths(np.full((1, gamma), 0.8))[0]) + 1)
    # a long length lately keeps the depth up until the window forgets it
    certain = np.ones((16, gamma))
    policy.lengths(certain, np.full(16, 5))
    assert policy.draft_depth(16) == 6
    for _ in range(4):
        policy.lengths(np.full((16, gamma), 0.8))
    assert policy.draft_depth(16) == 2
    assert VerifyLengthPolicy("static", gamma).draft_depth(16) == gamma


def test_predicted_gain_of_drafting_at_a_load_not_met_yet():
    """Expected tokens/s drafting over the target alone's, computed by hand: step 10 ms + 1 ms per verified token,
    c = 0.8 everywhere, a 2 ms draft round measured at 1 request (not scaled up at 4)."""
    policy = VerifyLengthPolicy("confidence", GAMMA, linear_table(), gate=DraftGate())
    assert policy.gate.predict == policy.predicted_gain  # wired for the gate's first visit to a load
    assert policy.predicted_gain(4) is None  # no confidences yet
    policy.lengths(np.full((1, GAMMA), 0.8))
    assert policy.predicted_gain(4) is None  # nor a draft round's time
    policy.observe_draft(1, 2e-3)
    # R = 4, every request verifying L drafts: Theta(L) = 4 (1 + sum_{k<=L} 0.8^k) / (14 + 4L + 2) ms^-1:
    # L = 2: 0.4098, 3: 0.4217; a first 4th draft gives 12.2176 / 29 = 0.4213: the greedy stops at L = 3
    theta = 4 * (1 + 0.8 + 0.64 + 0.512) / 28
    assert policy.predicted_gain(4) == pytest.approx(theta / (4 / 14), rel=1e-6)
    # step 10 ms + 20 ms per token (compute-bound): no draft pays, the round is pure cost
    steep = VerifyLengthPolicy("confidence", GAMMA, linear_table(b=20e-3))
    steep.lengths(np.full((1, GAMMA), 0.8))
    steep.observe_draft(1, 2e-3)
    assert steep.predicted_gain(4) == pytest.approx((4 / 92) / (4 / 90), rel=1e-6)  # 0.978: below 1
