"""Frontier fitting, SLA readout and run comparison on synthetic points (expected values computed by hand)."""
import math

import pytest

from vllm_dspark.bench.frontier import compare_frontiers, speed_at_throughput, throughput_at_speed, upper_frontier

# (speed tok/s/user, throughput tok/s); (60, 150) is beaten by (80, 200), (100, 90) by (100, 100).
POINTS_A = [(100, 100), (50, 300), (80, 200), (60, 150), (100, 90)]
FRONTIER_A = [(50.0, 300.0), (80.0, 200.0), (100.0, 100.0)]
FRONTIER_B = [(60.0, 400.0), (120.0, 200.0)]


def test_upper_frontier_drops_dominated_points_and_sorts_by_speed():
    assert upper_frontier(POINTS_A) == FRONTIER_A


def test_upper_frontier_ignores_missing_and_nonfinite_values():
    points = [(None, 5.0), (10.0, None), (math.nan, 1.0), (20.0, math.inf), (30.0, 7.0)]
    assert upper_frontier(points) == [(30.0, 7.0)]
    assert upper_frontier([]) == []


def test_upper_frontier_keeps_only_strictly_better_throughput():
    # Equal throughput at lower speed is dominated by the faster point.
    assert upper_frontier([(10, 50), (20, 50)]) == [(20.0, 50.0)]


@pytest.mark.parametrize("speed, expected", [
    (50, 300.0),   # first measured point
    (65, 250.0),   # 300 + (65-50)/(80-50) * (200-300)
    (80, 200.0),
    (90, 150.0),   # 200 + (90-80)/(100-80) * (100-200)
    (100, 100.0),  # last measured point
    (49.9, None),  # slower than any measured point: no extrapolation
    (100.1, None),  # faster than any measured point
])
def test_throughput_at_speed_interpolates_inside_the_range_only(speed, expected):
    got = throughput_at_speed(FRONTIER_A, speed)
    assert got == pytest.approx(expected) if expected is not None else got is None


@pytest.mark.parametrize("tput, expected", [(300, 50.0), (250, 65.0), (150, 90.0), (100, 100.0),
                                            (301, None), (99, None)])
def test_speed_at_throughput_is_the_inverse_readout(tput, expected):
    got = speed_at_throughput(FRONTIER_A, tput)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_single_point_frontier_reads_out_only_at_that_point():
    assert throughput_at_speed([(70.0, 500.0)], 70.0) == 500.0
    assert throughput_at_speed([(70.0, 500.0)], 69.0) is None
    assert throughput_at_speed([], 70.0) is None


def test_compare_frontiers_ratio_tables():
    cmp = compare_frontiers({"A": FRONTIER_A, "B": FRONTIER_B}, slas=[80, 110], reference="A")
    assert cmp["reference"] == "A"
    at80, at110 = cmp["sla"]
    assert at80["throughput"]["A"] == pytest.approx(200.0)
    assert at80["throughput"]["B"] == pytest.approx(400 - 200 * 20 / 60)  # 333.33
    assert at80["ratio"]["B"] == pytest.approx((400 - 200 * 20 / 60) / 200)
    assert at80["ratio"]["A"] == pytest.approx(1.0)
    assert at110["throughput"]["A"] is None and at110["ratio"]["B"] is None  # reference has no readout
    assert at110["throughput"]["B"] == pytest.approx(400 - 200 * 50 / 60)  # 233.33
    # Matched throughputs are the reference's measured ones, ascending: 100, 200, 300.
    rows = cmp["matched_throughput"]
    assert [r["throughput"] for r in rows] == [100.0, 200.0, 300.0]
    assert [r["speed"]["A"] for r in rows] == pytest.approx([100.0, 80.0, 50.0])
    assert rows[0]["speed"]["B"] is None  # B never ran at only 100 tok/s
    assert rows[1]["speed"]["B"] == pytest.approx(120.0) and rows[1]["ratio"]["B"] == pytest.approx(1.5)
    assert rows[2]["speed"]["B"] == pytest.approx(90.0)  # halfway between (200, 120) and (400, 60)
    assert rows[2]["ratio"]["B"] == pytest.approx(90.0 / 50.0)


def test_compare_frontiers_rejects_unknown_reference():
    with pytest.raises(ValueError, match="'C'"):
        compare_frontiers({"A": FRONTIER_A}, [80], reference="C")
