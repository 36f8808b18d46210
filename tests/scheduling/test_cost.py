"""CostTable: interpolation, validation, JSON, profiling, and the online refit converging to the true curve."""
import json

import numpy as np
import pytest
import torch

from vllm_dspark.scheduling.cost import CostTable

XS = [1, 8, 32, 128, 512]
YS = [0.010, 0.011, 0.014, 0.030, 0.100]


def ref_step_time(b, xs=XS, ys=YS):
    """np.interp inside (clamps below), the last segment's line beyond the end."""
    b = np.asarray(b, dtype=float)
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return np.where(b > xs[-1], ys[-1] + (b - xs[-1]) * slope, np.interp(b, xs, ys))


def test_interpolation_numpy_torch_and_scalars():
    table = CostTable(XS, YS)
    b = np.array([0, 1, 2, 7.5, 8, 100, 128, 300, 512, 1000, 4096])
    np.testing.assert_allclose(table.step_time(b), ref_step_time(b), rtol=1e-14)
    got = table.step_time(torch.tensor(b))
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), ref_step_time(b), rtol=1e-14)
    assert isinstance(table.step_time(20), float)
    assert table.step_time(20) == pytest.approx(0.011 + 12 / 24 * 0.003)
    assert table.step_time(torch.tensor(20)).shape == ()
    assert table.step_time(0) == 0.010  # clamped below the first point
    # numpy and torch paths are bitwise equal (the greedy and tensor schedulers rely on it)
    ints = np.arange(1, 2000)
    assert np.array_equal(table.step_time(ints), table.step_time(torch.tensor(ints)).numpy())


@pytest.mark.parametrize("xs, ys, match", [
    ([1], [0.01], "at least 2"),
    ([1, 8], [0.01], "2 points"),
    ([1, 8, 8], [0.01, 0.02, 0.03], "strictly increasing"),
    ([8, 1], [0.01, 0.02], "strictly increasing"),
    ([1, 8], [0.0, 0.02], "> 0"),
    ([1, 8], [0.01, float("nan")], "> 0"),
    ([1, 8, 16], [0.01, 0.03, 0.02], "non-decreasing"),
    ([0, 8], [0.01, 0.02], "integers >= 1"),
    ([1, 8.5], [0.01, 0.02], "integers >= 1"),
])
def test_validation_errors(xs, ys, match):
    with pytest.raises(ValueError, match=match):
        CostTable(xs, ys)


def test_json_round_trip_and_errors(tmp_path):
    table = CostTable(XS, YS, device="test-gpu", meta={"context_len": 8192})
    path = table.save(tmp_path / "sub" / "cost.json")
    data = json.loads(path.read_text())
    assert data == {"batch_tokens": XS, "step_seconds": YS, "device": "test-gpu", "meta": {"context_len": 8192}}
    again = CostTable.load(path)
    assert again.batch_tokens.tolist() == XS and again.step_seconds.tolist() == YS and again.device == "test-gpu"
    (tmp_path / "bad.json").write_text('{"batch_tokens": [1, 2]}')
    with pytest.raises(ValueError, match="step_seconds"):
        CostTable.load(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        CostTable.load(tmp_path / "broken.json")


def test_from_profile_takes_medians_and_smooths():
    calls = []
    noise = iter([0.5, 0.0, 0.02, -0.01] * 100)  # first call per B is warmup: the 0.5 outlier is discarded

    def measure(b):
        calls.append(b)
        return 0.01 + 1e-4 * b + 1e-3 * next(noise)

    table = CostTable.from_profile(measure, [1, 16, 64], repeats=3, warmup=1, device="cpu")
    assert calls == [1] * 4 + [16] * 4 + [64] * 4
    # medians of {0.0, 0.02, -0.01}, {0.5, 0.0, 0.02} ... per B, computed by hand from the noise cycle:
    # B=1: warmup .5, then 0, .02, -.01 -> median 0;  B=16: warmup .5, then 0, .02, -.01 -> 0; same for 64.
    np.testing.assert_allclose(table.step_seconds, [0.0101, 0.0116, 0.0164], rtol=1e-12)
    assert table.meta["repeats"] == 3 and table.device == "cpu"

    ys = iter([0.010, 0.030, 0.020, 0.040])  # a larger B measured faster: projected to non-decreasing
    smooth = CostTable.from_profile(lambda b: next(ys), [1, 2, 3, 4], repeats=1, warmup=0)
    np.testing.assert_allclose(smooth.step_seconds, [0.010, 0.025, 0.025, 0.040])
    assert smooth.meta["raw_step_seconds"] == [0.010, 0.030, 0.020, 0.040]
    with pytest.raises(ValueError, match="measure"):
        CostTable.from_profile(lambda b: -1.0, [1, 2], repeats=1)
    with pytest.raises(ValueError, match="strictly increasing"):
        CostTable.from_profile(lambda b: 1.0, [4, 2])



def test_from_profile_extrapolates_past_its_time_budget():
    """A compute-bound engine (0.1 s per token): with warm-up + 3 repeats per B, B = 1, 2, 4, 8 spend 6 s; B = 16
    would take 6.4 s more, past a 10 s budget, so 16 and 32 come from the line through B = 4 and 8 (exact here)."""
    calls = []

    def measure(b):
        calls.append(b)
        return 0.1 * b

    grid = [1, 2, 4, 8, 16, 32]
    table = CostTable.from_profile(measure, grid, repeats=3, warmup=1, time_budget_s=10.0)
    assert sorted(set(calls)) == [1, 2, 4, 8] and len(calls) == 16
    np.testing.assert_allclose(table.step_seconds, [0.1 * b for b in grid], rtol=1e-12)
    assert table.meta["extrapolated_batch_tokens"] == [16, 32] and len(table.meta["raw_step_seconds"]) == 4
    # Without a budget (or with room to spare) every B is measured and nothing is marked.
    calls.clear()
    full = CostTable.from_profile(measure, grid, repeats=3, warmup=1, time_budget_s=100.0)
    assert sorted(set(calls)) == grid and "extrapolated_batch_tokens" not in full.meta
    # Two points are measured even when the first one alone exhausts the budget; a falling line is held flat
    # (B = 4 at 0.4 s, not 0.3), then the curve is made non-decreasing: mean(0.5, 0.4, 0.4) at every B.
    ys = iter([0.5, 0.5, 0.4, 0.4])
    flat = CostTable.from_profile(lambda b: next(ys), [1, 2, 4], repeats=1, warmup=1, time_budget_s=0.1)
    np.testing.assert_allclose(flat.step_seconds, [1.3 / 3] * 3)
    assert flat.meta["extrapolated_batch_tokens"] == [4]
    with pytest.raises(ValueError, match="time_budget_s"):
        CostTable.from_profile(measure, grid, time_budget_s=0.0)


def observe_curve(table, truth, rng, b_low, b_high, n, noise=0.02):
    for _ in range(n):
        b = int(round(np.exp(rng.uniform(np.log(b_low), np.log(b_high)))))  # log-uniform: every node is seen
        table.observe(b, truth(b) * (1 + noise * rng.standard_normal()))


def test_refit_converges_from_a_wrong_prior():
    true_ys = np.array(YS)
    prior_ys = 2.0 * np.array([0.010, 0.010, 0.010, 0.020, 0.120])  # wrong level and wrong shape
    table = CostTable(XS, prior_ys)
    rng = np.random.default_rng(0)
    err_before = np.abs(table.step_seconds / true_ys - 1).max()
    observe_curve(table, lambda b: float(ref_step_time(b)), rng, 1, 700, 4000)
    err_after = np.abs(table.step_seconds / true_ys - 1).max()
    assert err_before > 0.5 and err_after < 0.03, (err_before, err_after)
    assert np.all(np.diff(table.step_seconds) >= 0)
    np.testing.assert_array_equal(table.prior_seconds, prior_ys)  # the prior is kept
    assert table.num_observations == 4000


def test_refit_tracks_a_change_and_keeps_monotone():
    table = CostTable(XS, YS, memory=256)
    rng = np.random.default_rng(1)
    slower = lambda b: 1.5 * float(ref_step_time(b))  # e.g. contexts grew: every step 50% slower
    observe_curve(table, slower, rng, 1, 600, 3000)
    np.testing.assert_allclose(table.step_seconds, 1.5 * np.array(YS), rtol=0.03)
    # adversarial observations saying big batches are faster: the curve stays non-decreasing
    for _ in range(500):
        table.observe(500, 0.001)
        table.observe(2, 0.2)
    assert np.all(np.diff(table.step_seconds) >= 0) and np.all(table.step_seconds > 0)


def test_refit_spreads_a_local_correction_to_unobserved_neighbours():
    table = CostTable(XS, 2.0 * np.array(YS))
    rng = np.random.default_rng(2)
    observe_curve(table, lambda b: float(ref_step_time(b)), rng, 30, 34, 2000)  # only around B = 32
    ratio = table.step_seconds / np.array(YS)
    assert abs(ratio[2] - 1) < 0.03  # the observed node converged
    assert ratio[1] < 1.9 and ratio[3] < 1.9  # neighbours moved towards the observed correction
    assert np.all(np.diff(table.step_seconds) >= 0)


def test_no_observations_means_the_prior_and_observations_are_saved(tmp_path):
    table = CostTable(XS, YS)
    np.testing.assert_array_equal(table.step_seconds, YS)
    table.observe([8, 32], [0.02, 0.03])
    assert not np.allclose(table.step_seconds, YS)
    saved = json.loads(table.save(tmp_path / "c.json").read_text())
    assert saved["meta"]["prior_step_seconds"] == YS and saved["meta"]["num_observations"] == 2
    assert saved["step_seconds"] == table.step_seconds.tolist()


def reference_normal_equations(xs, prior, observations, memory):
    """The refit's forgetting normal equations built densely in float64: interpolation weights w at B, features
    a = w * prior / (w @ prior), gram = sum rho^age a a^T, rhs = sum rho^age a t / (w @ prior)."""
    x, prior = np.asarray(xs, dtype=np.float64), np.asarray(prior, dtype=np.float64)
    rho, p = 1.0 - 1.0 / memory, len(x)
    gram, rhs = np.zeros((p, p)), np.zeros(p)
    for b, t in observations:
        w = np.zeros(p)
        if b <= x[0]:
            w[0] = 1.0
        else:
            hi = min(max(int(np.searchsorted(x, b, side="right")), 1), p - 1)
            u = (b - x[hi - 1]) / (x[hi] - x[hi - 1])
            w[hi - 1], w[hi] = 1 - u, u
        a = w * prior / (w @ prior)
        gram = rho * gram + np.outer(a, a)
        rhs = rho * rhs + a * t / (w @ prior)
    return gram, rhs


def test_per_step_observe_matches_the_dense_normal_equations():
    rng = np.random.default_rng(7)
    xs = [1, 3, 8, 20, 64, 200]
    prior = np.sort(rng.uniform(0.01, 0.2, len(xs)))
    # below the first node, on nodes, between them and beyond the last (extrapolated)
    obs = [(float(b), float(rng.uniform(0.005, 0.3))) for b in rng.choice([1, 2, 3, 5.5, 8, 100, 200, 350], 300)]
    one, many = CostTable(xs, prior, memory=64), CostTable(xs, prior, memory=64)
    for b, t in obs:
        one.observe_one(b, t)
    many.observe([b for b, _ in obs], [t for _, t in obs])
    gram, rhs = reference_normal_equations(xs, prior, obs, 64)
    for table in (one, many):
        np.testing.assert_allclose(table._gram, gram, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(table._rhs, rhs, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(one.step_seconds, many.step_seconds)


def test_step_time_as_fitted_reads_the_last_refit_without_refitting():
    table = CostTable(XS, YS)
    for b in (1, 5, 32, 200, 900):  # the prior's curve before any observation, extrapolated beyond the end
        assert table.step_time_as_fitted(b) == pytest.approx(float(table.step_time(b)), rel=1e-12)
    table.observe_one(32, 10 * float(ref_step_time(32)))
    assert table.step_time_as_fitted(32) == pytest.approx(YS[2], rel=1e-12)  # stale: no refit yet
    refit = float(table.step_time(32))  # a decision's read refits
    assert refit > 1.5 * YS[2] and table.step_time_as_fitted(32) == pytest.approx(refit, rel=1e-12)


def test_observe_validation():
    table = CostTable(XS, YS)
    with pytest.raises(ValueError, match="seconds"):
        table.observe(8, 0.0)
    with pytest.raises(ValueError, match="batch_tokens"):
        table.observe(0, 0.01)
    with pytest.raises(ValueError, match="2 values but seconds has 1"):
        table.observe([1, 2], [0.01])
    with pytest.raises(ValueError, match="seconds"):
        table.observe_one(8, float("nan"))
    with pytest.raises(ValueError, match="batch_tokens"):
        table.observe_one(0.5, 0.01)
    with pytest.raises(ValueError, match="seconds"):  # an array is checked whole before any of it is kept
        table.observe([8, 16], [0.02, -1.0])
    assert table.num_observations == 0
