"""Campaign table from a `vllm-dspark bench` results.json: SLA readouts, ratios, matched throughput, targets.

    python benchmarks/serving/summarize_campaign.py runs/campaign-cpu/results.json --sla 60 100 \
        --reference nospec --static dspark-static-g2 dspark-static-g7 --dspark dspark-confidence dspark-sla \
        --native dflash-native eagle3-native --out runs/campaign-cpu/summary.md --plot-dir runs/campaign-cpu

Readouts come from the bench's own frontier code (`vllm_dspark.bench.frontier`): each config's upper frontier of
(p50 per-user speed, output throughput) over its concurrency points, linearly interpolated, None ("-") outside
the measured speeds (no extrapolation). Per-concurrency comparisons use the measured points directly.

Targets (issue 7), checked for every `--dspark` config and printed as PASS / MISS with the gap:
  T1 throughput >= 1.5x the reference (no speculation) at the first (moderate) SLA
  T2 throughput >= 1.2x the best `--static` config at the first SLA
  T3 never lose: throughput >= 0.97x the reference's at every concurrency (any host)
  T4 throughput >= every `--native` config's at every concurrency
  T5 throughput >= the best `--static` config's at every concurrency
  T6 (a host whose decode step is memory-bound) >= 1.5x the reference and >= `--ngram` at c = 1-4, >= 1.2x the
     reference at c = 16
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vllm_dspark.bench.frontier import speed_at_throughput, throughput_at_speed, upper_frontier

SPEED_STAT = "p50"


def fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def frontier_of(run: dict) -> list[tuple[float, float]]:
    return upper_frontier((p["per_user_speed"][SPEED_STAT], p["output_throughput"]) for p in run["points"])


def by_concurrency(run: dict) -> dict[int, dict]:
    return {p["load"]["concurrency"]: p for p in run["points"] if p["load"]["request_rate"] is None}


def spec_cell(point: dict) -> str:
    spec = point.get("spec_decode") or {}
    acc, ver = spec.get("mean_accepted_length"), spec.get("mean_verification_length")
    return "-" if acc is None else f"{acc:.2f} / {fmt(ver, '.2f')}"


def summarize(doc: dict, slas: list[float], reference: str, static: list[str], dspark: list[str],
              native: list[str], ngram: str | None = "ngram") -> str:
    runs = {r["label"]: r for r in doc["runs"]}
    if reference not in runs:
        raise SystemExit(f"--reference {reference!r} is not among the runs {sorted(runs)}")
    for name in static + dspark + native:
        if name not in runs:
            print(f"note: config {name!r} is not in the results (not run or failed to start)", file=sys.stderr)
    static = [s for s in static if s in runs and runs[s]["points"]]
    dspark = [s for s in dspark if s in runs and runs[s]["points"]]
    native = [s for s in native if s in runs and runs[s]["points"]]
    fronts = {label: frontier_of(r) for label, r in runs.items()}
    tput_at = {label: [throughput_at_speed(f, s) for s in slas] for label, f in fronts.items()}
    best_static = []
    for i in range(len(slas)):
        values = [(tput_at[s][i], s) for s in static if tput_at[s][i] is not None]
        best_static.append(max(values) if values else (None, None))
    concurrencies = sorted({c for r in runs.values() for c in by_concurrency(r)})

    out = []
    sla_cols = " | ".join(f"tok/s @ {s:g} | × no-spec | × best static" for s in slas)
    out.append(f"| config | {sla_cols} | peak tok/s (c) | fastest p50 tok/s/user "
               f"| accepted len / verification len at c = {', '.join(map(str, concurrencies))} |")
    out.append("|---" * (3 + 3 * len(slas) + 1) + "|")
    for label, run in runs.items():
        cells = []
        speeds = [p[0] for p in fronts[label]]
        for i in range(len(slas)):
            t = tput_at[label][i]
            cell = fmt(t)
            if t is None and speeds and slas[i] < min(speeds):
                # Even its most loaded point is faster than the anchor: the frontier there is at least its peak.
                cell = f"≥ {max(p[1] for p in fronts[label]):.1f}"
            cells += [cell, fmt(ratio(t, tput_at[reference][i]), ".2f"), fmt(ratio(t, best_static[i][0]), ".2f")]
        pts = by_concurrency(run)
        peak = max(pts.items(), key=lambda kv: kv[1]["output_throughput"], default=None)
        peak_cell = "-" if peak is None else f"{peak[1]['output_throughput']:.1f} ({peak[0]})"
        spec = "; ".join(spec_cell(pts[c]) if c in pts else "-" for c in concurrencies)
        err = " (failed: " + run["error"].splitlines()[0][:80] + ")" if run.get("error") else ""
        top = max((p[0] for p in fronts[label]), default=None)
        out.append(f"| {label}{err} | " + " | ".join(cells) + f" | {peak_cell} | {fmt(top)} | {spec} |")
    out.append("")
    best = ", ".join(f"{s:g}: {b[1] or '-'}" for s, b in zip(slas, best_static))
    out.append("Throughput at the SLA anchors: each config's frontier of (p50 per-user speed, output throughput) over "
               "its concurrency points, interpolated; '-' = the anchor lies outside that config's measured speeds, "
               "'≥ x' = every measured point is faster than the anchor (x = its peak throughput, a lower bound; more "
               f"load would be needed). Best static at each anchor: {best}.")
    out.append("")

    # Per-user speed at matched throughput: the reference's measured throughputs.
    ref_points = sorted(by_concurrency(runs[reference]).items())
    out.append("Per-user speed (p50 tok/s/user) at matched throughput (the no-spec throughput at each concurrency), "
               "ratio vs no-spec:")
    out.append("")
    out.append("| config | " + " | ".join(f"@ {p['output_throughput']:.0f} tok/s (no-spec c={c})"
                                        for c, p in ref_points) + " |")
    out.append("|---" * (1 + len(ref_points)) + "|")
    for label in runs:
        cells = []
        for _, p in ref_points:
            v = speed_at_throughput(fronts[label], p["output_throughput"])
            r = ratio(v, speed_at_throughput(fronts[reference], p["output_throughput"]))
            cells.append(f"{fmt(v)} ({fmt(r, '.2f')}×)" if v is not None else "-")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append("")

    # Per-concurrency throughput, ratio vs the reference.
    out.append("Output throughput (tok/s) per concurrency, ratio vs no-spec; p50 per-user speed in brackets:")
    out.append("")
    out.append("| config | " + " | ".join(f"c={c}" for c in concurrencies) + " |")
    out.append("|---" * (1 + len(concurrencies)) + "|")
    ref_pts = by_concurrency(runs[reference])
    for label, run in runs.items():
        pts = by_concurrency(run)
        cells = []
        for c in concurrencies:
            if c not in pts:
                cells.append("-")
                continue
            t = pts[c]["output_throughput"]
            r = ratio(t, ref_pts[c]["output_throughput"]) if c in ref_pts else None
            cells.append(f"{t:.1f} ({fmt(r, '.2f')}×) [{fmt(pts[c]['per_user_speed'][SPEED_STAT])}]")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append("")

    out += greedy_identity(doc, runs, reference)

    # Targets.
    out.append("Targets (first SLA anchor = the moderate one):")
    out.append("")
    if not dspark:
        out.append("- no vllm-dspark config was measured: nothing to check")
    for label in dspark:
        t = tput_at[label][0]
        r1 = ratio(t, tput_at[reference][0])
        speeds = [p[0] for p in fronts[label]]
        span = f"[{fmt(min(speeds, default=None))}, {fmt(max(speeds, default=None))}]"
        why = (f"{slas[0]:g} tok/s/user is outside {label}'s measured p50 speeds {span}" if t is None
               else "the reference has no readout")
        out.append(f"- {label}: T1 ≥ 1.5× no-spec @ {slas[0]:g}: " + _verdict(r1, 1.5, why))
        r2 = ratio(t, best_static[0][0])
        why2 = why if t is None else "no static config reaches the anchor"
        out.append(f"- {label}: T2 ≥ 1.2× best static ({best_static[0][1] or '-'}) @ {slas[0]:g}: "
                   + _verdict(r2, 1.2, why2))
        pts = by_concurrency(runs[label])
        worst = min(((ratio(pts[c]["output_throughput"], ref_pts[c]["output_throughput"]), c)
                     for c in pts if c in ref_pts), default=(None, None))
        out.append(f"- {label}: T3 ≥ 0.97× no-spec at every concurrency (worst c={worst[1]}): "
                   + _verdict(worst[0], 0.97))
        for nat in native:
            npts = by_concurrency(runs[nat])
            worst = min(((ratio(pts[c]["output_throughput"], npts[c]["output_throughput"]), c)
                         for c in pts if c in npts), default=(None, None))
            out.append(f"- {label}: T4 ≥ {nat} at every concurrency (worst c={worst[1]}): " + _verdict(worst[0], 1.0))
        out += per_concurrency_targets(label, runs, static, reference, ngram)
    return "\n".join(out) + "\n"


def per_concurrency_targets(label: str, runs: dict[str, dict], static: list[str], reference: str,
                            ngram: str | None) -> list[str]:
    """T5 (>= best static at each concurrency) and T6 (the memory-bound host's targets)."""
    pts, ref = by_concurrency(runs[label]), by_concurrency(runs[reference])
    tput = lambda run_pts, c: run_pts[c]["output_throughput"] if c in run_pts else None  # noqa: E731
    lines = []
    static_pts = [by_concurrency(runs[s]) for s in static]
    worst = min(((ratio(tput(pts, c), max(filter(None, (tput(sp, c) for sp in static_pts)), default=None)), c)
                 for c in pts), key=lambda x: (x[0] is None, x[0] or 0.0), default=(None, None))
    lines.append(f"- {label}: T5 ≥ best static at every concurrency (worst c={worst[1]}): "
                 + _verdict(worst[0], 1.0, "no static config measured"))
    goals = [(c, 1.5) for c in (1, 2, 4)] + [(16, 1.2)]
    for c, goal in goals:
        if c not in pts or c not in ref:
            continue
        r = ratio(tput(pts, c), tput(ref, c))
        line = f"- {label}: T6 ≥ {goal:g}× no-spec at c={c}: " + _verdict(r, goal)
        if ngram in runs and c <= 4:
            line += f"; ≥ {ngram}: " + _verdict(ratio(tput(pts, c), tput(by_concurrency(runs[ngram]), c)), 1.0)
        lines.append(line)
    return lines


def greedy_identity(doc: dict, runs: dict[str, dict], reference: str) -> list[str]:
    """At T = 0, every config's outputs against the reference's: same prompt, same concurrency, same text digest."""
    if doc.get("settings", {}).get("temperature") != 0:
        return []
    lines = ["Greedy outputs against the reference's (same prompt and concurrency; the bench's per-request text "
             "digests):", ""]
    ref = {(c, q["prompt_index"]): q.get("output_sha256")
           for c, p in by_concurrency(runs[reference]).items() for q in p["requests"]}
    for label, run in runs.items():
        if label == reference:
            continue
        pairs = [(q.get("output_sha256"), ref.get((c, q["prompt_index"])))
                 for c, p in by_concurrency(run).items() for q in p["requests"]]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if not pairs:
            lines.append(f"- {label}: not compared (no digests: results from before output_sha256, or failed)")
            continue
        same = sum(a == b for a, b in pairs)
        verdict = "identical" if same == len(pairs) else "DIFFERENT"
        lines.append(f"- {label}: {same}/{len(pairs)} requests identical to {reference}: {verdict}")
    return lines + [""]


def _verdict(value, target: float, why_none: str = "no readout") -> str:
    if value is None:
        return f"MISS ({why_none})"
    status = "PASS" if value >= target else "MISS"
    return f"{status} ({value:.2f}× vs {target:g}×)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results")
    p.add_argument("--sla", type=float, nargs="+", required=True, help="moderate anchor first")
    p.add_argument("--reference", default="nospec")
    p.add_argument("--static", nargs="*", default=[])
    p.add_argument("--dspark", nargs="*", default=[])
    p.add_argument("--native", nargs="*", default=[])
    p.add_argument("--ngram", default="ngram", help="the n-gram config (T6 compares with it at c = 1-4)")
    p.add_argument("--out")
    p.add_argument("--plot-dir", help="redraw the bench's PNG plots here with these --sla lines")
    args = p.parse_args()
    doc = json.loads(Path(args.results).read_text())
    text = summarize(doc, args.sla, args.reference, args.static, args.dspark, args.native, args.ngram)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.plot_dir:
        from vllm_dspark.bench import plots, report
        runs = [dict(r, frontier=report.run_frontier(r, args.sla, SPEED_STAT)) for r in doc["runs"] if r["points"]]
        for name, path in plots.plot_all(runs, args.sla, args.plot_dir).items():
            print(f"plot {name}: {path}")


if __name__ == "__main__":
    main()
