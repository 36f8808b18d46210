"""`vllm-dspark profile`: measure steps/s against batch tokens SPS(B) on a real engine and write a cost table.

Starts vLLM offline with the DSpark drafter in static mode; at the end of engine start the adapter times the model
runner's dummy step at each batch size B (the same code a server runs with `"profile": true`) and writes the
table, which a server then loads with `"dspark": {"cost_table": "<file>"}` instead of profiling at every start.

    vllm-dspark profile --model <target> --drafter <drafter dir> --out cost_table.json [--batch-tokens 1,2,4,8]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="target model (path or HF id)")
    parser.add_argument("--drafter", required=True, help="DSpark drafter folder")
    parser.add_argument("--out", required=True, type=Path, help="cost table JSON to write")
    parser.add_argument("--num-speculative-tokens", type=int, default=None, help="γ (default: drafter block_size)")
    parser.add_argument("--batch-tokens", type=str, default=None,
                        help="comma-separated B values (default: 1, 2, 4, ... up to what a verify step holds)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per B (median kept)")
    parser.add_argument("--time-budget-s", type=float, default=900.0,
                        help="seconds of timed steps at most; larger B are extrapolated and marked in the table's "
                        "meta (a server's own start-up profile defaults to 60 s)")
    parser.add_argument("--max-num-seqs", type=int, default=None)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--gpu-memory-utilization", type=float, default=None)
    parser.add_argument("--enforce-eager", action="store_true", help="profile without CUDA graphs")


def _batch_tokens(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--batch-tokens must be comma-separated integers, got {text!r}") from None
    return values


def run(args: argparse.Namespace) -> int:
    from vllm import LLM

    dspark = {"mode": "static", "profile": True, "save_cost_table": str(args.out), "profile_repeats": args.repeats,
              "profile_time_budget_s": args.time_budget_s}
    grid = _batch_tokens(args.batch_tokens)
    if grid is not None:
        dspark["profile_batch_tokens"] = grid
    spec = {"method": "dflash", "model": args.drafter, "dspark": dspark}
    if args.num_speculative_tokens is not None:
        spec["num_speculative_tokens"] = args.num_speculative_tokens
    kwargs = {k: v for k, v in dict(
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization,
    ).items() if v is not None}
    llm = LLM(model=args.model, speculative_config=spec, dtype=args.dtype, enforce_eager=args.enforce_eager, **kwargs)
    del llm
    table = json.loads(Path(args.out).read_text())
    print(f"{'B':>8} {'step ms':>10} {'steps/s':>10}")
    for b, t in zip(table["batch_tokens"], table["step_seconds"]):
        print(f"{b:>8} {t * 1e3:>10.3f} {1.0 / t:>10.1f}")
    extrapolated = table.get("meta", {}).get("extrapolated_batch_tokens")
    if extrapolated:
        print(f"B = {extrapolated} extrapolated, not measured (--time-budget-s {args.time_budget_s:g} reached)")
    print(f"wrote {args.out}")
    return 0
