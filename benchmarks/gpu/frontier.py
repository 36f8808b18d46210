"""Throughput-vs-SLA frontier on one GPU: every configuration's server starts at once, then each is measured alone.

`vllm-dspark bench --serve ... --config ...` starts one server after the other; on a GPU with vLLM 0.26 an engine
start (compile, CUDA-graph capture, DSpark's cost-table profile) takes about a minute, so five configurations would
spend most of a short run starting. Here all servers start together (each with a fixed KV cache: vLLM's memory
profiling is skewed by engines starting beside it), and once `--after FILE` exists (the run before this one is
done with the GPU) each healthy server is measured alone with `vllm-dspark bench --url` and then stopped; the
others stay idle meanwhile. A last `vllm-dspark bench --baseline ...` compares the runs and draws the plots.

    python -m benchmarks.gpu.frontier --out-dir D --serve 'COMMON SERVER ARGS' --config NAME='ARGS' ... \
        --bench 'BENCH ARGS' [--server-env K=V ...] [--after FILE] [--deadline UNIX_TIME] [--tag gpu]

Writes D/server-NAME.log, D/NAME/TAG/results.json (+ plots) per configuration, D/status.json (measured, or why not),
D/results.json (+ plots) for all of them; exits 1 when a configuration failed to start or to measure.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from vllm_dspark.bench.server import ServerError, ServerProcess, start_failure

BENCH = [sys.executable, "benchmarks/throughput_vs_sla.py"]
MARGIN_S = 20.0  # kept for the comparison and the caller's packing


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return key, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.frontier", description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("--serve", required=True, help="server args common to every configuration")
    p.add_argument("--config", type=_key_value, action="append", required=True, metavar="NAME=ARGS")
    p.add_argument("--server-env", type=_key_value, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--bench", default="", help="vllm-dspark bench args (prompts, loads) but --sla")
    p.add_argument("--sla", type=float, nargs="+", default=[80.0, 120.0], help="per-user speeds read out (tok/s)")
    p.add_argument("--after", type=Path, help="measure only once this file exists (servers start at once)")
    p.add_argument("--deadline", type=float, default=float("inf"), help="UNIX time by which to be done")
    p.add_argument("--start-timeout", type=float, default=600.0)
    p.add_argument("--tag", default="gpu", help="folder of each run's results (its label suffix in the comparison)")
    return p.parse_args(argv)


def _left(deadline: float) -> float:
    return deadline - time.time() - MARGIN_S


def wait_for(path: Path | None, deadline: float) -> None:
    while path is not None and not path.exists() and _left(deadline) > 0:
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    servers = {name: ServerProcess(f"{args.serve} {extra}", log_path=args.out_dir / f"server-{name}.log",
                                   env=dict(args.server_env)) for name, extra in args.config}
    status: dict[str, str] = {}  # D/status.json: what became of each configuration
    results: list[Path] = []
    sla = ["--sla", *(f"{v:g}" for v in args.sla)]
    try:
        for s in servers.values():
            s.start()
        ready = {}
        for name, s in servers.items():
            try:
                s.wait_healthy(timeout=max(1.0, min(args.start_timeout, _left(args.deadline))))
                ready[name] = s
                print(f"[frontier] {name}: up at {s.url}", flush=True)
            except ServerError as e:
                s.stop()
                status[name] = "failed to start: " + start_failure(s.log_path.read_text(errors="replace"))
                print(f"[frontier] {name}: FAILED to start: {str(e)[-1500:]}", flush=True)
        wait_for(args.after, args.deadline)
        for name, s in ready.items():
            run_dir = args.out_dir / name / args.tag
            cmd = [*BENCH, "--url", s.url, "--label", name, "--out-dir", str(run_dir), *shlex.split(args.bench), *sla]
            print(f"[frontier] {name}: {shlex.join(cmd)}", flush=True)
            try:
                rc = subprocess.run(cmd, timeout=max(1.0, _left(args.deadline))).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            s.stop()
            if (run_dir / "results.json").is_file():
                results.append(run_dir / "results.json")
            status[name] = "measured" if rc == 0 else f"bench exited with {rc}"
            print(f"[frontier] {name}: {status[name]}", flush=True)
    finally:
        for s in servers.values():
            s.stop()
    if results:
        compare = [*BENCH, *[a for r in results for a in ("--baseline", str(r))], *sla, "--out-dir", str(args.out_dir)]
        try:
            subprocess.run(compare, timeout=max(10.0, _left(args.deadline) + MARGIN_S / 2))
        except subprocess.TimeoutExpired:
            print("[frontier] the comparison ran out of time (each run's results.json is kept)", flush=True)
    status.update({name: "not measured (no time left)" for name in servers if name not in status})
    (args.out_dir / "status.json").write_text(json.dumps(status, indent=2) + "\n")
    print(f"[frontier] {json.dumps(status)}", flush=True)
    return 0 if all(v == "measured" for v in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
