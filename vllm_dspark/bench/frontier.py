"""Throughput-vs-per-user-speed frontier: fit, SLA readout and run comparison (pure functions).

A run is a set of measured points (per-user speed, aggregate throughput), one per load level. Faster users
cost throughput, so the useful curve is the *upper frontier*: the points no other point beats on both axes.
Between two frontier points we interpolate linearly (a monotone interpolation: the frontier's throughput falls
as speed rises, and a straight segment keeps that order). Outside the measured speed range we do not
extrapolate: a readout there is None, because the run holds no evidence about it.

SLA readout (the DSpark paper's anchors, e.g. 80 and 120 tok/s/user): the throughput the frontier reaches at
that per-user speed. Matched-throughput readout: the per-user speed the frontier reaches at a throughput.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

Point = tuple[float, float]  # (per-user speed [tok/s/user], throughput [tok/s])


def upper_frontier(points: Iterable[Point | Sequence[float | None]]) -> list[Point]:
    """Pareto-optimal points sorted by speed ascending; their throughput strictly decreases.

    Points with a missing (None) or non-finite coordinate are dropped. Of several points with equal speed only
    the highest throughput can survive; a point is dropped when another is at least as fast and at least as
    productive.
    """
    clean = []
    for p in points:
        speed, tput = p[0], p[1]
        if speed is None or tput is None or not (math.isfinite(speed) and math.isfinite(tput)):
            continue
        clean.append((float(speed), float(tput)))
    # Walk from the fastest point down; keep a point only if it beats every faster point's throughput.
    clean.sort(key=lambda p: (-p[0], -p[1]))
    frontier: list[Point] = []
    best_tput = -math.inf
    for speed, tput in clean:
        if tput > best_tput:
            frontier.append((speed, tput))
            best_tput = tput
    frontier.reverse()
    return frontier


def _interpolate(x: float, xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Linear interpolation at x over ascending xs; None outside [xs[0], xs[-1]] or for empty input."""
    if not xs or x < xs[0] or x > xs[-1]:
        return None
    for i in range(len(xs) - 1):
        if xs[i] <= x <= xs[i + 1]:
            if xs[i + 1] == xs[i]:
                return ys[i]
            w = (x - xs[i]) / (xs[i + 1] - xs[i])
            return ys[i] + w * (ys[i + 1] - ys[i])
    return ys[-1]  # single point and x == xs[0]


def throughput_at_speed(frontier: Sequence[Point], speed: float) -> float | None:
    """Throughput the frontier reaches at a per-user speed (an SLA); None outside the measured speeds."""
    return _interpolate(speed, [p[0] for p in frontier], [p[1] for p in frontier])


def speed_at_throughput(frontier: Sequence[Point], throughput: float) -> float | None:
    """Per-user speed the frontier reaches at a throughput; None outside the measured throughputs."""
    ordered = sorted(frontier, key=lambda p: p[1])  # ascending throughput = descending speed
    return _interpolate(throughput, [p[1] for p in ordered], [p[0] for p in ordered])


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def compare_frontiers(
    frontiers: Mapping[str, Sequence[Point]], slas: Sequence[float], reference: str
) -> dict:
    """Compare runs against `reference` (a key of `frontiers`).

    Returns {"reference", "sla": [{"sla", "throughput": {label: t}, "ratio": {label: t / t_ref}}],
    "matched_throughput": [{"throughput", "speed": {label: v}, "ratio": {label: v / v_ref}}]}, where the
    matched throughputs are the reference frontier's measured throughputs (ascending). Missing readouts are None.
    """
    if reference not in frontiers:
        raise ValueError(f"reference run {reference!r} is not among the runs {sorted(frontiers)}")
    sla_rows = []
    for sla in slas:
        tputs = {label: throughput_at_speed(f, sla) for label, f in frontiers.items()}
        ratios = {label: _ratio(t, tputs[reference]) for label, t in tputs.items()}
        sla_rows.append({"sla": float(sla), "throughput": tputs, "ratio": ratios})
    matched_rows = []
    for _, tput in sorted(frontiers[reference], key=lambda p: p[1]):
        speeds = {label: speed_at_throughput(f, tput) for label, f in frontiers.items()}
        ratios = {label: _ratio(v, speeds[reference]) for label, v in speeds.items()}
        matched_rows.append({"throughput": tput, "speed": speeds, "ratio": ratios})
    return {"reference": reference, "sla": sla_rows, "matched_throughput": matched_rows}
