"""OUT/summary.md of the first GPU run: steps, gpu_check's verdicts, the frontier's tables (read from their JSON)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from vllm_dspark.bench import report


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _steps(results: list[dict]) -> list[str]:
    lines = ["| step | exit | seconds |", "|---|---|---:|"]
    return lines + [f"| {r['name']} | {r['rc']} | {r['seconds']} |" for r in results]


def _gpu_check(doc: dict) -> list[str]:
    lines = [f"## gpu_check: vLLM {doc.get('vllm')}, torch {doc.get('torch')}, {doc.get('gpu')}, γ = {doc.get('gamma')}",
             "", "| server | verdict | tok/s per load (concurrency) | accepted per round |", "|---|---|---|---|"]
    for name, e in doc.get("servers", {}).items():
        tput = ", ".join(f"{t['output_tok_per_s']:.0f} (c={t['concurrency']})" for t in e.get("throughput", []))
        acc = ", ".join(report.fmt(t["mean_accepted_per_round"], ".2f") for t in e.get("throughput", []))
        lines.append(f"| {name} | {e.get('verdict', '-')} | {tput or '-'} | {acc or '-'} |")
    return lines


def _frontier(doc: dict) -> list[str]:
    runs = [dict(run, label=run["label"]) for b in doc.get("baselines", []) for run in b["runs"]]
    lines = ["## frontier", "", "```", report.points_table(runs)]
    if doc.get("comparison"):
        lines.append(report.comparison_table(doc["comparison"]))
    return lines + ["```"]


def write_summary(out: Path, results: list[dict], work: Path) -> None:
    lines = [f"# First GPU run ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", ""]
    env = _read(out / "env.json")
    if env:
        lines += [f"torch {env.get('torch')}, vLLM {env.get('vllm')}, device {env.get('device')}", ""]
    lines += _steps(results) + [""]
    check = _read(out / "gpu_check.json")
    lines += (_gpu_check(check) if check else ["## gpu_check: no report"]) + [""]
    status = _read(work / "frontier" / "status.json") or {}
    lines += [f"- frontier {name}: {what}" for name, what in status.items()] + [""]
    frontier = _read(out / "frontier.json")
    lines += _frontier(frontier) if frontier else ["## frontier: no comparison (see logs.tar.gz: frontier/)"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
