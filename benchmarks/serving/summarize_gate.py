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


def digests(point: dict) -> dict[int, str]:
    return {r["prompt_index"]: r["output_sha256"] for r in point.get("requests") or [] if r.get("output_sha256")}


def summarize(doc: dict) -> tuple[str, dict]:
    runs = {r["label"]: by_concurrency(r) for r in doc["runs"]}
    refs = [name for name in REFERENCES if name in runs]
    if not refs:
        raise SystemExit(f"no reference run ({' / '.join(REFERENCES)}) among {sorted(runs)}")
    others = [name for name in runs if name not in REFERENCES]
    loads = sorted({c for points in runs.values() for c in points})
    head = ["c", *[f"{r} (drain)" for r in refs], "drift"]
    head += [f"{name} (× no-spec, gate off, drain)" for name in others]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    table: dict = {"floor": FLOOR, "loads": {}}
    worst: dict[str, tuple[float, int]] = {}
    same, compared = 0, 0
    for c in loads:
        ref_tput = [runs[r][c]["output_throughput"] for r in refs if c in runs[r]]
        base = statistics.fmean(ref_tput) if ref_tput else None
        drift = ref_tput[-1] / ref_tput[0] if len(ref_tput) == 2 else None
        ref_drain = [drain_share(runs[r][c]) for r in refs if c in runs[r]]
        row = [str(c)] + [f"{t:.1f} ({pct(d)})" for t, d in zip(ref_tput, ref_drain)] + [
            "-" if drift is None else f"{drift:.3f}"]
        entry = {"reference_tok_s": ref_tput, "reference_drain_share": ref_drain, "drift": drift, "configs": {}}
        ref_digests = digests(runs[refs[0]][c]) if c in runs[refs[0]] else {}
        for name in others:
            p = runs[name].get(c)
            if p is None or base is None:
                row.append("-")
                continue
            x = p["output_throughput"] / base
            share, drain = off_share(p), drain_share(p)
            row.append(f"{p['output_throughput']:.1f} ({x:.2f}×, {pct(share)}, {pct(drain)})")
            entry["configs"][name] = {"tok_s": p["output_throughput"], "ratio": x, "gate_off_share": share,
                                      "drain_share": drain}
            if name not in worst or x < worst[name][0]:
                worst[name] = (x, c)
            mine = digests(p)
            for i, d in mine.items():
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
    args = p.parse_args()
    text, table = summarize(json.loads(Path(args.results).read_text()))
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
