"""Never-lose table of a gate_cpu.sh run: each DSpark config against the mean of the two no-spec runs, per load.

    python -m benchmarks.serving.summarize_gate runs/gate-cpu/results.json [--json runs/gate-cpu/gate.json]

Per concurrency: output tok/s of `nospec` and `nospec-again` (their ratio is the drift of the machine over the run),
then each other config's tok/s, its ratio to the no-spec mean, and the share of its decided rounds that the draft gate
left without drafts (`dspark:draft_off_steps_total` over it plus `dspark:length_decisions_total`, rounds whose lengths
the policy decided), and the point's drain: the share of its time after fewer than c requests are left in flight (the
last requests finishing one by one). The target alone at a fixed output length finishes a wave of requests together
and has no drain; a server that speculates finishes them out of step, so the end of a closed-loop point runs at a
falling batch size. That is a property of the measurement (the longer the point, the smaller its share), not of the
steady state, and this column shows how much of a ratio it explains. Below it: the never-lose verdict (>= 0.97x at
every load) and whether greedy outputs equal no-spec's (`output_sha256`).

With repeats (gate_cpu.sh REPEATS=N: configs `nospec`, `dspark-confidence`, `dspark-sla`, then the same names with
`-r2`, `-r3`, ... and `nospec-again` last), each config's runs of a point are pooled (output tokens summed over
durations summed) and compared with all no-spec runs pooled the same way; beside it, the range of each repeat's
ratio to that repeat's own no-spec run, and the drift is the fastest no-spec run over the slowest.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.serving.summarize_campaign import by_concurrency

REFERENCES = ("nospec", "nospec-again")
FLOOR = 0.97


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def off_share(point: dict) -> float | None:
    m = point.get("server_metrics") or {}
    decided = m.get("dspark:length_decisions_total")
    off = m.get("dspark:draft_off_steps_total")
    return None if decided is None or off is None or decided + off == 0 else off / (decided + off)


def drain_share(point: dict) -> float | None:
    """Share of a closed-loop point's time after the number of requests in flight first drops below c."""
    c, reqs = point["load"]["concurrency"], [r for r in point.get("requests") or [] if r.get("latency_s") is not None]
    if not c or len(reqs) < c:
        return None
    ends = sorted(r["start_s"] + r["latency_s"] for r in reqs)
    start = min(r["start_s"] for r in reqs)
    return (ends[-1] - ends[len(ends) - c]) / (ends[-1] - start) if ends[-1] > start else None


def waves(point: dict) -> dict | None:
    """How a closed-loop point's requests kept in step (seconds from its first request's start): when the first c
    requests ended (first and last), when the last request started, when its drain began (the first end after that
    start that leaves fewer than c in flight) and how long it lasted, and the output tok/s before the drain (from the
    requests' chunk times: the bench's --chunk-times) and during it."""
    c, reqs = point["load"]["concurrency"], [r for r in point.get("requests") or [] if r.get("latency_s") is not None]
    if not c or len(reqs) < c or not all(r.get("chunk_times_s") for r in reqs):
        return None
    t0 = min(r["start_s"] for r in reqs)
    first = sorted(reqs, key=lambda r: r["start_s"])[:c]
    ends = sorted(r["start_s"] + r["latency_s"] - t0 for r in reqs)
    drain = ends[len(ends) - c]
    before = sum(n for r in reqs for t, n in zip(r["chunk_times_s"], r["chunk_tokens"])
                 if r["start_s"] - t0 + t <= drain)
    total = sum(r["output_tokens"] for r in reqs)
    return {"first_wave_end_s": [min(r["start_s"] + r["latency_s"] - t0 for r in first),
                                 max(r["start_s"] + r["latency_s"] - t0 for r in first)],
            "last_start_s": max(r["start_s"] for r in reqs) - t0, "drain_start_s": drain, "drain_s": ends[-1] - drain,
            "tok_s_before_drain": before / drain if drain > 0 else None,
            "tok_s_in_drain": (total - before) / (ends[-1] - drain) if ends[-1] > drain else None}


def print_waves(doc: dict) -> None:
    print("| config | c | first c requests end (s) | last start (s) | drain from (s), for | tok/s before / in the "
          "drain |")
    print("|---|---|---|---|---|---|")
    for run in doc["runs"]:
        for c, point in by_concurrency(run).items():
            w = waves(point)
            if w is None:
                continue
            rates = " / ".join("-" if x is None else f"{x:.1f}"
                               for x in (w["tok_s_before_drain"], w["tok_s_in_drain"]))
            print(f"| {run['label']} | {c} | {w['first_wave_end_s'][0]:.2f}–{w['first_wave_end_s'][1]:.2f} | "
                  f"{w['last_start_s']:.2f} | {w['drain_start_s']:.2f}, {w['drain_s']:.2f} | {rates} |")


def digests(point: dict) -> dict[int, str]:
    return {r["prompt_index"]: r["output_sha256"] for r in point.get("requests") or [] if r.get("output_sha256")}


def split_repeat(label: str) -> tuple[str, int]:
    """A config's name and repeat (gate_cpu.sh's REPEATS: `dspark-sla-r2` is `dspark-sla`, 2; no suffix: 1)."""
    head, _, tail = label.rpartition("-r")
    return (head, int(tail)) if head and tail.isdigit() else (label, 1)


def base_name(label: str) -> str:
    return split_repeat(label)[0]


def repeat_of(label: str) -> int:
    return split_repeat(label)[1]


def pooled(points: list[dict]) -> float:
    """Tokens over time of several runs of one point: their output tokens summed over their durations summed."""
    return sum(p["output_tokens"] for p in points) / sum(p["duration_s"] for p in points)


def summarize(doc: dict) -> tuple[str, dict]:
    runs = {r["label"]: by_concurrency(r) for r in doc["runs"]}
    refs = [name for name in runs if base_name(name) in REFERENCES]
    if not refs:
        raise SystemExit(f"no reference run ({' / '.join(REFERENCES)}) among {sorted(runs)}")
    groups: dict[str, list[str]] = {}
    for name in runs:
        if name not in refs:
            groups.setdefault(base_name(name), []).append(name)
    repeats = max(len(g) for g in groups.values()) if groups else 1
    loads = sorted({c for points in runs.values() for c in points})
    ref_head = [f"{r} (drain)" for r in refs] if len(refs) <= 2 else [f"no-spec × {len(refs)}: tok/s"]
    head = ["c", *ref_head, "drift"]
    cell = "× no-spec, gate off, drain" if repeats == 1 else \
        f"pooled over {repeats} repeats, × no-spec pooled [each repeat × its own no-spec], gate off, drain"
    head += [f"{name} ({cell})" for name in groups]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    table: dict = {"floor": FLOOR, "repeats": repeats, "loads": {}}
    worst: dict[str, tuple[float, int]] = {}
    same, compared = 0, 0
    for c in loads:
        ref_points = [runs[r][c] for r in refs if c in runs[r]]
        ref_tput = [p["output_throughput"] for p in ref_points]
        # one reference run: its tok/s; several: tokens over time pooled (the mean for the classic two)
        base = (statistics.fmean(ref_tput) if len(refs) <= 2 else pooled(ref_points)) if ref_points else None
        drift = (ref_tput[-1] / ref_tput[0] if len(refs) <= 2 else max(ref_tput) / min(ref_tput)) \
            if len(ref_tput) >= 2 else None
        ref_drain = [drain_share(p) for p in ref_points]
        if len(refs) <= 2:
            ref_cells = [f"{t:.1f} ({pct(d)})" for t, d in zip(ref_tput, ref_drain)]
        else:
            ref_cells = [" / ".join(f"{t:.1f}" for t in ref_tput)]
        row = [str(c), *ref_cells, "-" if drift is None else f"{drift:.3f}"]
        entry = {"reference_tok_s": ref_tput, "reference_drain_share": ref_drain, "drift": drift, "configs": {}}
        ref_by_repeat = {repeat_of(r): runs[r][c] for r in refs if c in runs[r] and base_name(r) == REFERENCES[0]}
        ref_digests = digests(ref_points[0]) if ref_points else {}
        for group, names in groups.items():
            points = [runs[n][c] for n in names if c in runs[n]]
            if not points or base is None:
                row.append("-")
                continue
            tok_s = pooled(points) if len(points) > 1 else points[0]["output_throughput"]
            x = tok_s / base
            shares = [s for s in map(off_share, points) if s is not None]
            share = statistics.fmean(shares) if shares else None
            drains = [d for d in map(drain_share, points) if d is not None]
            drain = statistics.fmean(drains) if drains else None
            each = [runs[n][c]["output_throughput"] / ref_by_repeat[repeat_of(n)]["output_throughput"]
                    for n in names if c in runs[n] and repeat_of(n) in ref_by_repeat] if len(points) > 1 else []
            spread = f" [{min(each):.2f}–{max(each):.2f}]" if each else ""
            row.append(f"{tok_s:.1f} ({x:.2f}×{spread}, {pct(share)}, {pct(drain)})")
            entry["configs"][group] = {"tok_s": tok_s, "ratio": x, "repeat_ratios": each, "gate_off_share": share,
                                       "drain_share": drain}
            if group not in worst or x < worst[group][0]:
                worst[group] = (x, c)
            for p in points:
                for i, d in digests(p).items():
                    if i in ref_digests:
                        compared += 1
                        same += d == ref_digests[i]
        table["loads"][c] = entry
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for name, (x, c) in worst.items():
        verdict = "PASS" if x >= FLOOR else f"MISS by {FLOOR - x:.1%}"
        lines.append(f"{name}: lowest {x:.3f}× no-spec (c = {c}): never lose (≥ {FLOOR}×) {verdict}")
    lines.append(f"greedy outputs equal to {refs[0]}'s: {same} / {compared}")
    table.update(worst={k: {"ratio": x, "concurrency": c} for k, (x, c) in worst.items()},
                 greedy_identical=same, greedy_compared=compared)
    return "\n".join(lines), table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results")
    p.add_argument("--json", help="write the table as JSON here")
    p.add_argument("--waves", action="store_true", help="also print how each point's requests kept in step "
                   "(needs the bench's --chunk-times)")
    args = p.parse_args()
    doc = json.loads(Path(args.results).read_text())
    if args.waves:  # first: it needs no reference run
        print_waves(doc)
    text, table = summarize(doc)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
