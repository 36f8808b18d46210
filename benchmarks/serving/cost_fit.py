"""How well the cost model predicts serving: read a step trace, print a table per load, write JSON (and a plot).

A server started with `VLLM_DSPARK_STEP_TRACE=trace.jsonl` (modes confidence / sla) writes one line per engine step
(those with a prefill chunk are marked `prefill` and left out here): requests, batch tokens, whether its drafts were
drafted, the step period, the draft round's time, the verification time (period − round), and what the cost table
predicted for that verification before seeing it (`predicted_verify_s`; `prior_verify_s`: the start-up profile
alone). Per number of running requests this prints mean observed and predicted times, the mean absolute prediction
error over the first and the last half of the steps (the online refit should shrink it), the draft round's share of
the step, and the round's parts (timed only while tracing, which synchronises a GPU at each part); then where the
run's engine time went (steps with a prefill chunk, decoding with and without drafts), the draft gate's measured
gain per load, the tokens/s decoding steps generated with and without drafts per load (`generated_tokens`), and the
run as one character per step.

    python benchmarks/serving/cost_fit.py trace.jsonl --json cost_fit.json --plot cost_fit.png
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
from pathlib import Path

from vllm_dspark.scheduling.gate import load_bucket


def decoding(rows: list[dict]) -> list[dict]:
    """The verification steps of a trace (those without a prefill chunk)."""
    return [r for r in rows if not r.get("prefill")]


def load(path: Path, *, prefill: bool = False) -> list[dict]:
    """The trace's verification steps (and, with `prefill`, its steps with a prefill chunk too)."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return rows if prefill else decoding(rows)


def _err(rows: list[dict], key: str) -> float | None:
    errs = [abs(r[key] / r["verify_s"] - 1) for r in rows if r.get(key)]
    return statistics.fmean(errs) if errs else None


def draft_parts_ms(drafted: list[dict]) -> dict[str, float] | None:
    """Mean ms of each part of the draft round: input preparation, context K/V, the backbone with the rest of
    vLLM's round (the remainder), the LM head, and the sequential + confidence heads."""
    rows = [r for r in drafted if r.get("draft_phases_s")]
    if not rows:
        return None

    def parts(r: dict) -> dict[str, float]:
        p = r["draft_phases_s"]
        known = p.get("inputs", 0.0) + p.get("context_kv", 0.0) + p.get("round", 0.0)
        return {"inputs": p.get("inputs", 0.0), "context_kv": p.get("context_kv", 0.0),
                "backbone_and_rest": max(0.0, r["draft_s"] - known), "lm_head": p.get("lm_head", 0.0),
                "sequential_heads": p.get("round", 0.0) - p.get("lm_head", 0.0)}

    each = [parts(r) for r in rows]
    return {k: 1e3 * statistics.fmean(e[k] for e in each) for k in each[0]}


def summarize(records: list[dict]) -> list[dict]:
    by_load: dict[int, list[dict]] = collections.defaultdict(list)
    for r in records:
        by_load[int(r["requests"])].append(r)
    out = []
    for load, rows in sorted(by_load.items()):
        half = len(rows) // 2
        drafted = [r for r in rows if r["drafted"]]
        out.append({
            "requests": load, "steps": len(rows), "drafted_steps": len(drafted),
            "mean_batch_tokens": statistics.fmean(r["batch_tokens"] for r in rows),
            "observed_verify_ms": 1e3 * statistics.fmean(r["verify_s"] for r in rows),
            "predicted_verify_ms": 1e3 * statistics.fmean(r["predicted_verify_s"] or 0 for r in rows),
            "prior_error": _err(rows, "prior_verify_s"),
            "error_first_half": _err(rows[:half], "predicted_verify_s") if half else None,
            "error_last_half": _err(rows[half:], "predicted_verify_s"),
            "draft_ms": 1e3 * statistics.fmean(r["draft_s"] for r in drafted) if drafted else None,
            "draft_share": (statistics.fmean(r["draft_s"] / r["period_s"] for r in drafted) if drafted else None),
            "draft_parts_ms": draft_parts_ms(drafted),
            "mean_draft_depth": (statistics.fmean(r["draft_depth"] for r in drafted)
                                 if drafted and all("draft_depth" in r for r in drafted) else None),
        })
    return out


def time_split(records: list[dict]) -> dict:
    """Where a traced run's engine time went (records with their prefill steps: `load(..., prefill=True)`):
    seconds and steps with a prefill chunk, decoding with drafts, decoding without; the draft gate's last
    measured gain (tokens/s drafting over not) per number of running requests; the tokens/s the decoding steps
    generated with and without drafts per load bucket (requests rounded up to a power of two, as the gate keeps
    them; from each record's `generated_tokens`, over the whole run, so the two compare different moments) and
    the median decoding step's period with and without drafts per bucket; and
    the run as one character per step (D / . : decoding with / without drafts; P / p : the same with a prefill
    chunk)."""
    def part(rows: list[dict]) -> dict:
        return {"steps": len(rows), "seconds": sum(r["period_s"] for r in rows)}

    decode = decoding(records)
    gains = {int(r["requests"]): r["gate_gain"] for r in records if r.get("gate_gain") is not None}
    periods: dict[int, tuple[list, list]] = {}
    rates: dict[int, list] = {}
    for r in decode:
        bucket = load_bucket(int(r["requests"]))
        periods.setdefault(bucket, ([], []))[0 if r["drafted"] else 1].append(r["period_s"])
        if r.get("generated_tokens") is not None:
            sums = rates.setdefault(bucket, [0.0, 0.0, 0.0, 0.0])
            sums[0 if r["drafted"] else 2] += r["generated_tokens"]
            sums[1 if r["drafted"] else 3] += r["period_s"]
    return {"prefill": part([r for r in records if r.get("prefill")]),
            "decode_drafted": part([r for r in decode if r["drafted"]]),
            "decode_undrafted": part([r for r in decode if not r["drafted"]]),
            "gate_gain": dict(sorted(gains.items())),
            "decode_rates": {k: [t / sec if sec else None for t, sec in ((v[0], v[1]), (v[2], v[3]))]
                             for k, v in sorted(rates.items())},
            "decode_median_ms": {k: [1e3 * statistics.median(v) if v else None for v in pair]
                                 for k, pair in sorted(periods.items())},
            "timeline": "".join(("P" if r.get("prefill") else "D") if r["drafted"] else
                                ("p" if r.get("prefill") else ".") for r in records)}


def print_time_split(split: dict) -> None:
    total = sum(split[k]["seconds"] for k in ("prefill", "decode_drafted", "decode_undrafted")) or 1.0
    print("\nengine time: " + ", ".join(
        f"{name} {split[k]['seconds']:.2f} s ({100 * split[k]['seconds'] / total:.0f}%, {split[k]['steps']} steps)"
        for k, name in (("prefill", "with a prefill chunk"), ("decode_drafted", "decoding with drafts"),
                        ("decode_undrafted", "decoding without"))))
    if split["gate_gain"]:
        print("draft gate's last gain per running requests: " + ", ".join(
            f"{k}: {v:.2f}" for k, v in split["gate_gain"].items()))
    if split.get("decode_rates"):
        print("decoding tokens/s with / without drafts per load (requests up to): " + ", ".join(
            f"{k}: {_rate(on)} / {_rate(off)}" for k, (on, off) in split["decode_rates"].items()))
    if split.get("decode_median_ms"):
        print("median decoding step ms with / without drafts per load (requests up to): " + ", ".join(
            f"{k}: {_rate(on)} / {_rate(off)}" for k, (on, off) in split["decode_median_ms"].items()))
    print(f"steps (D/. decoding with/without drafts, P/p the same with a prefill chunk): {split['timeline']}")


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def print_table(rows: list[dict]) -> None:
    print("| requests | steps (drafted) | mean B | verify ms observed | predicted | prior error | error 1st half "
          "| error 2nd half | draft ms | draft share of step |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        draft = "-" if r["draft_ms"] is None else f"{r['draft_ms']:.1f}"
        print(f"| {r['requests']} | {r['steps']} ({r['drafted_steps']}) | {r['mean_batch_tokens']:.1f} "
              f"| {r['observed_verify_ms']:.1f} | {r['predicted_verify_ms']:.1f} | {_pct(r['prior_error'])} "
              f"| {_pct(r['error_first_half'])} | {_pct(r['error_last_half'])} | {draft} | {_pct(r['draft_share'])} |")


def print_draft_parts(rows: list[dict]) -> None:
    rows = [r for r in rows if r["draft_parts_ms"]]
    if not rows:
        return
    names = list(rows[0]["draft_parts_ms"])
    print("\n| requests | " + " | ".join(f"{n} ms" for n in names) + " | round ms | verify ms | slots drafted |")
    print("|---:|" + "---:|" * (len(names) + 3))
    for r in rows:
        parts = " | ".join(f"{r['draft_parts_ms'][n]:.1f}" for n in names)
        depth = "-" if r["mean_draft_depth"] is None else f"{r['mean_draft_depth']:.2f}"
        print(f"| {r['requests']} | {parts} | {r['draft_ms']:.1f} | {r['observed_verify_ms']:.1f} | {depth} |")


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for load in sorted({int(r["requests"]) for r in records}):
        pts = [(i, r["predicted_verify_s"] / r["verify_s"]) for i, r in enumerate(records)
               if int(r["requests"]) == load and r.get("predicted_verify_s")]
        if pts:
            ax.plot(*zip(*pts), ".", ms=3, label=f"{load} requests")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xlabel("verification step")
    ax.set_ylabel("predicted / observed verify time")
    ax.set_ylim(0, 2)
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args(argv)
    everything = load(args.trace, prefill=True)
    records = decoding(everything)
    if not records:
        raise SystemExit(f"{args.trace}: no steps traced (was the server started with VLLM_DSPARK_STEP_TRACE, in "
                         "mode confidence or sla?)")
    rows = summarize(records)
    split = time_split(everything)
    print_table(rows)
    print_draft_parts(rows)
    print_time_split(split)
    if args.json:
        args.json.write_text(json.dumps({"loads": rows, "time_split": split}, indent=1))
    if args.plot:
        plot(records, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
