"""Build the inflated CPU serving testbed: the target and its drafters, inflated with `benchmarks.inflate`.

pycode-23m (6 layers, hidden 512) is so small that on a CPU a drafter costs about as much as the target, unlike a
real deployment. The default shape here (hidden 1024, 28 layers, 16/8 heads x 128, MLP 3072, bf16: 449M params)
puts a verify step of a 2-core CPU at ~100-130 ms for 1 token and not much more for 8 (benchmarks/RESULTS.md,
"Inflated CPU testbed"), the memory-bound regime of a GPU serving a real model, while the greedy outputs (and every
drafter's drafts) stay the small model's (exactly in real arithmetic; bf16 rounds the rescaled norm weights).

    python -m benchmarks.serving.testbed --target ../shared/models/pycode-23m --out runs/inflated \
        [--drafter runs/pycode-cpu/dspark --drafter runs/pycode-cpu/eagle3 ...] [--hidden 640 --layers 8 ...]

Writes OUT/target and OUT/drafters/<name of each --drafter folder>. A part whose inflate_meta.json records the same
inputs (source folder and a digest of its config and weights, shape, dtype, seed, a digest of benchmarks/inflate/*.py;
for a drafter also the target's) is kept as it is; any other is rebuilt in OUT/<part>.partial and then moved in
place, so an interrupted build never leaves a folder that looks complete (OUT/.build.lock serialises builders of one
OUT).
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

import benchmarks.inflate
from benchmarks.inflate.drafters import inflate_drafter
from benchmarks.inflate.plan import Shape
from benchmarks.inflate.shards import WEIGHT_FILES
from benchmarks.inflate.target import inflate_target

INFLATE_CODE = sorted(Path(benchmarks.inflate.__file__).parent.glob("*.py"))  # a change in any of them rebuilds
DEFAULT_SHAPE = Shape(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                      head_dim=128, intermediate_size=3072)
SHAPE_FLAGS = {"hidden": "hidden_size", "layers": "num_hidden_layers", "heads": "num_attention_heads",
               "kv_heads": "num_key_value_heads", "head_dim": "head_dim", "intermediate": "intermediate_size"}


def digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:20]


def model_digest(folder: Path) -> str:
    """Digest of a model folder's config.json and weight files (what the inflated copy is computed from)."""
    files = sorted(p for p in folder.iterdir() if p.name == "config.json" or WEIGHT_FILES.match(p.name))
    if not any(WEIGHT_FILES.match(p.name) for p in files):
        raise SystemExit(f"{folder}: no model.safetensors (or shards) to inflate")
    return digest(files)


def recorded_inputs(folder: Path) -> dict | None:
    meta = folder / "inflate_meta.json"
    return json.loads(meta.read_text()).get("inputs") if meta.is_file() else None


def build(out: Path, inputs: dict, make) -> str:
    """Run make(partial_dir) unless `out` was built from `inputs`; returns 'kept' or 'built in N s'."""
    if recorded_inputs(out) == inputs:
        return "kept (same inputs)"
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    t0 = time.perf_counter()
    make(partial)
    meta = partial / "inflate_meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "inputs": inputs}, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return f"built in {time.perf_counter() - t0:.0f} s"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving.testbed", description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, type=Path, help="small Qwen3 target folder")
    p.add_argument("--out", required=True, type=Path, help="testbed folder (target/, drafters/<name>/)")
    p.add_argument("--drafter", action="append", default=[], type=Path,
                   help="a drafter folder of --target (DSpark, DFlash or EAGLE-3); repeat for several")
    for flag, field in SHAPE_FLAGS.items():
        p.add_argument(f"--{flag.replace('_', '-')}", type=int, default=getattr(DEFAULT_SHAPE, field),
                       help=f"inflated {field} (default {getattr(DEFAULT_SHAPE, field)})")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the target (drafters: seed + 1)")
    p.add_argument("--device", help="build device (default: cuda if available)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shape = Shape(**{field: getattr(args, flag) for flag, field in SHAPE_FLAGS.items()})
    dtype = getattr(torch, args.dtype)
    names = [d.resolve().name for d in args.drafter]
    if len(set(names)) != len(names):
        raise SystemExit(f"--drafter folders must have distinct names (they name the outputs), got {names}")
    target_config = json.loads((args.target / "config.json").read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / ".build.lock").open("w") as lock:  # two builders on one folder would share the .partial dirs
        fcntl.flock(lock, fcntl.LOCK_EX)
        build_all(args, names, shape, dtype, target_config)
    return 0


def build_all(args: argparse.Namespace, names: list[str], shape: Shape, dtype: torch.dtype,
              target_config: dict) -> None:
    common = {"shape": asdict(shape), "dtype": args.dtype, "inflate_code": digest(INFLATE_CODE)}
    target_inputs = {"source": str(args.target.resolve()), "source_digest": model_digest(args.target),
                     "seed": args.seed, **common}
    status = build(args.out / "target", target_inputs, lambda d: inflate_target(
        args.target, d, shape, dtype=dtype, device=args.device, seed=args.seed))
    print(f"target {args.out / 'target'}: {status}", flush=True)
    for src, name in zip(args.drafter, names):
        inputs = {"source": str(src.resolve()), "source_digest": model_digest(src), "seed": args.seed + 1,
                  "target_digest": target_inputs["source_digest"], **common}
        out = args.out / "drafters" / name
        status = build(out, inputs, lambda d, src=src: inflate_drafter(
            src, d, target_config, shape, dtype=dtype, device=args.device, seed=args.seed + 1))
        print(f"drafter {out}: {status}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
