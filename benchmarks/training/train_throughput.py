"""Training throughput on the CPU: N steps of the `cpu` recipe's settings per configuration, interleaved.

    python benchmarks/training/train_throughput.py --target ../shared/models/pycode-23m \
        --data runs/regen-small.jsonl.gz --cpu 1 --repeats 2 --before-src runs/before-src \
        --out benchmarks/out/train_throughput.json

Each (repeat, arm) is a fresh process pinned to one core (`taskset -c CPU`, one intra-op thread) that runs the real
training loop (`trainer.train`) for WARMUP + STEPS steps and reads the step times from its metrics.jsonl; arms run
in turn within each repeat, so a change of machine load hits every arm alike. Reported per arm (median over
repeats) of the CPU seconds per step (process time: what a step costs, whatever share of the core other processes
of a shared machine take; the wall time is reported beside it), and per CPU-second: anchor blocks, drafted tokens
(valid slots), context tokens and GFLOP (matmul + attention FLOPs of a step, counted by torch's FlopCounterMode),
next to the core's matmul rate measured in the same process (fp32, bf16) and the nominal peaks from the CPU flags.
An arm `before` runs the code of another commit (--before-src, a checkout or `git archive` of it) for reference.
Feature caches are built once per storage dtype before the timed runs (the build time is reported).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]

# The `cpu` recipe's training settings (examples/train_pycode/run.sh), as TrainConfig fields.
RECIPE = dict(batch_size=4, num_anchors=48, anchor_region="all", max_seq_len=512, long="truncate", lr=2e-3,
              warmup_steps=10, target_layer_ids=[1, 2, 4], block_size=7, algo="dspark")
ARMS = {
    "before": dict(),  # run with --before-src on PYTHONPATH
    "online-fp32": dict(),
    "online-bf16": dict(autocast="bf16"),
    "cache-fp32": dict(feature_cache="fp32"),
    "cache-bf16": dict(autocast="bf16", feature_cache="bf16"),
    "cache-bf16-fused": dict(autocast="bf16", feature_cache="bf16", fused_loss=True),
    "cache-bf16-a96": dict(autocast="bf16", feature_cache="bf16", num_anchors=96),
    "cache-bf16-fused-a96": dict(autocast="bf16", feature_cache="bf16", fused_loss=True, num_anchors=96),
    "cache-bf16-b8": dict(autocast="bf16", feature_cache="bf16", batch_size=8),
}


# ------------------------------------------------------------------------------------------------ machine facts
def cpu_facts() -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    first = info.split("\n\n")[0]
    fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    wanted = ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
              "amx_tile", "amx_bf16", "amx_int8"]
    ghz = float(fields.get("bogomips", "0")) / 2000 or float(fields.get("cpu MHz", "0")) / 1000
    fp32_per_cycle = 64 if "avx512f" in flags else 32  # 2 FMA units × 16 (or 8) fp32 lanes × 2 FLOP
    return {
        "model": fields.get("model name", platform.processor()), "cores": os.cpu_count(),
        "isa_flags": {f: f in flags for f in wanted}, "nominal_ghz": round(ghz, 2),
        "nominal_peak_gflops_fp32": round(ghz * fp32_per_cycle, 1),
        # AMX: 1024 bf16 multiply-adds per cycle per core (Intel's figure)
        "nominal_peak_gflops_bf16_amx": round(ghz * 2048, 1) if "amx_bf16" in flags else None,
    }


def matmul_gflops(dtype_name: str, m: int = 2048, k: int = 512, n: int = 8192, reps: int = 5) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * m * k * n / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ------------------------------------------------------------------------------------------------ one arm
def worker(args) -> dict:
    import torch

    torch.set_num_threads(1)
    from vllm_dspark.training import trainer
    from vllm_dspark.training.data import global_batch_indices, make_batch, read_records
    from vllm_dspark.training.trainer import TrainConfig, train

    # Each step calls compute_loss once: (wall, CPU) clocks there delimit the steps. CPU time is what the step cost
    # this process, whatever share of the core the other processes of a shared machine took meanwhile.
    marks: list[tuple[float, float]] = []
    compute_loss = trainer.compute_loss

    def marked(*a, **k):
        marks.append((time.perf_counter(), time.process_time()))
        return compute_loss(*a, **k)

    trainer.compute_loss = marked

    arm = dict(RECIPE, **ARMS[args.arm])
    cache_kind = arm.pop("feature_cache", None)
    if cache_kind:
        arm["feature_cache"] = str(Path(args.cache_root) / cache_kind)
    steps = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(target=args.target, data=args.data, out=tmp, max_steps=steps + 1, save_every=0,
                          log_every=1, progress=False, device="cpu", seed=0, **arm)
        t0 = time.perf_counter()
        summary = train(cfg)
        total = time.perf_counter() - t0
    trainer.compute_loss = compute_loss
    timed = marks[args.warmup: steps + 1]
    step_times = [b[0] - a[0] for a, b in zip(timed, timed[1:])]
    cpu_times = [b[1] - a[1] for a, b in zip(timed, timed[1:])]
    # what the timed steps processed (the same batches the loop built)
    records, _ = read_records(args.data, vocab_size=8192, max_seq_len=cfg.max_seq_len, long=cfg.long)
    blocks = slots = tokens = 0
    for step in range(args.warmup, steps):
        idx = global_batch_indices(len(records), cfg.batch_size, cfg.seed, step)
        b = make_batch(records, idx, gamma=cfg.block_size, num_anchors=cfg.num_anchors, region=cfg.anchor_region,
                       seed=cfg.seed, step=step, pad_id=0)
        blocks += int(b.anchor_valid.sum())
        slots += int(b.slot_valid.sum())
        tokens += int(b.attention_mask.sum())
    result = {"arm": args.arm, "config": {k: v for k, v in arm.items()}, "step_times": step_times,
              "cpu_times": cpu_times, "load": os.getloadavg(),
              "anchor_blocks": blocks, "slots": slots, "context_tokens": tokens, "run_seconds": total,
              "accept_proxy_last": summary["last_log"].get("accept_proxy")}
    if args.count_flops:
        from torch.utils.flop_counter import FlopCounterMode

        with tempfile.TemporaryDirectory() as tmp:
            counter = FlopCounterMode(display=False)
            with counter:
                train(TrainConfig(target=args.target, data=args.data, out=tmp, max_steps=1, save_every=0,
                                  log_every=1, progress=False, device="cpu", seed=0, **arm))
            result["flops_first_step"] = counter.get_total_flops()
            result["first_step_slots"] = int(make_batch(
                records, global_batch_indices(len(records), cfg.batch_size, cfg.seed, 0), gamma=cfg.block_size,
                num_anchors=cfg.num_anchors, region=cfg.anchor_region, seed=cfg.seed, step=0, pad_id=0,
            ).slot_valid.sum())
        result["matmul_gflops"] = {d: round(matmul_gflops(d), 1) for d in ("float32", "bfloat16")}
    return result


def build_cache(args) -> dict:
    import torch

    torch.set_num_threads(1)
    from vllm_dspark.target import load_target
    from vllm_dspark.training.data import read_records
    from vllm_dspark.training.features import open_for_training

    bf16 = args.arm == "bf16"
    target, _ = load_target(args.target, dtype=torch.float32, device=torch.device("cpu"))
    records, _ = read_records(args.data, vocab_size=target.config.vocab_size, max_seq_len=RECIPE["max_seq_len"],
                              long=RECIPE["long"])
    path = Path(args.cache_root) / args.arm
    t0 = time.perf_counter()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else None
    cache = open_for_training(path, target, records, RECIPE["target_layer_ids"], bf16=bf16, autocast=autocast,
                              max_gb=16)
    return {"cache": args.arm, "build_seconds": time.perf_counter() - t0, "records": len(records),
            "tokens": cache.meta["total_tokens"], "bytes": (path / "rows.npy").stat().st_size}


# ------------------------------------------------------------------------------------------------ driver
def run_child(args, mode: str, arm: str, count_flops: bool) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    src = args.before_src if arm == "before" else str(REPO)
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    cmd = ["taskset", "-c", str(args.cpu), sys.executable, str(HERE), "--mode", mode, "--arm", arm,
           "--target", args.target, "--data", args.data, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--cache-root", args.cache_root] + (["--count-flops"] if count_flops else [])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{mode} {arm} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict]) -> list[dict]:
    """Per arm: median over repeats of the mean step time; rates per CPU-second (the primary measure) and per wall s."""
    rows = []
    base = None
    for arm in dict.fromkeys(r["arm"] for r in runs):
        mine = [r for r in runs if r["arm"] == arm]
        cpu = statistics.median(statistics.mean(r["cpu_times"]) for r in mine)
        wall = statistics.median(statistics.mean(r["step_times"]) for r in mine)
        n = len(mine[0]["cpu_times"])
        flop_run = next((r for r in mine if "flops_first_step" in r), None)
        # FLOPs scale with the drafted slots: the first step's count per slot, times the timed steps' slots
        flops = (flop_run["flops_first_step"] / flop_run["first_step_slots"] * mine[0]["slots"] / n
                 if flop_run else None)
        row = {
            "arm": arm, "cpu_s_per_step": cpu, "wall_s_per_step": wall,
            "cpu_s_runs": [round(statistics.mean(r["cpu_times"]), 3) for r in mine],
            "anchor_blocks_per_cpu_s": mine[0]["anchor_blocks"] / n / cpu,
            "draft_tokens_per_cpu_s": mine[0]["slots"] / n / cpu,
            "context_tokens_per_cpu_s": mine[0]["context_tokens"] / n / cpu,
            "gflop_per_step": None if flops is None else flops / 1e9,
            "gflops_per_cpu_s": None if flops is None else flops / cpu / 1e9,
            "matmul_gflops": flop_run.get("matmul_gflops") if flop_run else None,
        }
        base = base or row["anchor_blocks_per_cpu_s"]
        row["speedup"] = row["anchor_blocks_per_cpu_s"] / base
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| arm | CPU s/step (runs) | wall s/step | anchor blocks / CPU-s | draft tokens / CPU-s | "
             "context tokens / CPU-s | GFLOP/step | GFLOP / CPU-s | speed-up |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g = "–" if r["gflop_per_step"] is None else f"{r['gflop_per_step']:.1f}"
        a = "–" if r["gflops_per_cpu_s"] is None else f"{r['gflops_per_cpu_s']:.0f}"
        lines.append(f"| {r['arm']} | {r['cpu_s_per_step']:.3f} ({', '.join(map(str, r['cpu_s_runs']))}) | "
                     f"{r['wall_s_per_step']:.2f} | {r['anchor_blocks_per_cpu_s']:.1f} | "
                     f"{r['draft_tokens_per_cpu_s']:.0f} | {r['context_tokens_per_cpu_s']:.0f} | {g} | {a} | "
                     f"{r['speedup']:.2f}× |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True, help="target model folder (the reference: pycode-23m)")
    p.add_argument("--data", default="runs/regen-small.jsonl.gz")
    p.add_argument("--arms", default="before,online-fp32,online-bf16,cache-fp32,cache-bf16",
                   help=f"comma-separated, from {', '.join(ARMS)}; the first is the speed-up's reference")
    p.add_argument("--steps", type=int, default=10, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cpu", type=int, default=1, help="the core every run is pinned to")
    p.add_argument("--before-src", default=None, help="source tree of the reference code (arm `before`)")
    p.add_argument("--cache-root", default="runs/feature-cache-bench")
    p.add_argument("--out", default="benchmarks/out/train_throughput.json")
    p.add_argument("--mode", choices=["driver", "arm", "cache"], default="driver", help=argparse.SUPPRESS)
    p.add_argument("--arm", default=None, help=argparse.SUPPRESS)
    p.add_argument("--count-flops", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode == "arm":
        print(json.dumps(worker(args)))
        return 0
    if args.mode == "cache":
        print(json.dumps(build_cache(args)))
        return 0
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        p.error(f"unknown arms {unknown}; choose from {list(ARMS)}")
    if "before" in arms and not args.before_src:
        p.error("arm `before` needs --before-src (e.g. `git archive <commit> | tar -x -C runs/before-src`)")
    import torch

    facts = {**cpu_facts(), "torch": torch.__version__, "python": platform.python_version(),
             "load_at_start": os.getloadavg(), "pinned_cpu": args.cpu, "threads": 1}
    caches = sorted({ARMS[a]["feature_cache"] for a in arms if "feature_cache" in ARMS[a]})
    built = [run_child(args, "cache", kind, False) for kind in caches]
    runs = []
    for rep in range(args.repeats):
        for arm in arms:
            r = run_child(args, "arm", arm, count_flops=rep == 0)
            print(f"repeat {rep} {arm}: {statistics.mean(r['cpu_times']):.3f} CPU s/step, "
                  f"{statistics.mean(r['step_times']):.3f} wall s/step, load {r['load'][0]:.1f}", flush=True)
            runs.append(r)
    rows = summarise(runs)
    facts["load_at_end"] = os.getloadavg()
    print(json.dumps(facts, indent=1))
    for b in built:
        print(f"feature cache {b['cache']}: built in {b['build_seconds']:.1f} s, {b['records']} records, "
              f"{b['tokens']} tokens, {b['bytes'] / 2**20:.0f} MiB")
    print(table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": facts, "caches": built, "rows": rows, "runs": runs,
                               "steps": args.steps, "warmup": args.warmup, "recipe": RECIPE}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
