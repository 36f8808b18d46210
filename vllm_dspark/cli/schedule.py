"""`vllm-dspark schedule`: γ per batch size for vLLM's dynamic speculative decoding (async scheduling kept).

From a cost table (`vllm-dspark profile`) and the drafter's acceptance per position (`vllm-dspark eval --json`),
picks for every number of running requests the γ that maximises expected tokens per second
(`vllm_dspark.scheduling.batch_schedule`) and prints the `num_speculative_tokens_per_batch_size` value to put
in `--speculative-config` next to `"dspark": {"mode": "static"}`:

    vllm-dspark schedule --cost-table cost_table.json --eval eval.json --gamma 7 --max-batch 256 [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cost-table", required=True, type=Path, help="cost table JSON (vllm-dspark profile)")
    parser.add_argument("--eval", required=True, type=Path,
                        help="vllm-dspark eval --json output of the drafter (its per_position_acceptance)")
    parser.add_argument("--gamma", type=int, default=None,
                        help="largest γ (the server's num_speculative_tokens; default: every evaluated position)")
    parser.add_argument("--max-batch", type=int, default=256, help="largest number of running requests (max_num_seqs)")
    parser.add_argument("--json", type=Path, default=None, help="also write {schedule, table of K per R} here")


def run(args: argparse.Namespace) -> int:
    from vllm_dspark.scheduling.batch_schedule import acceptance_from_eval, as_vllm_schedule, gamma_by_batch_size
    from vllm_dspark.scheduling.cost import CostTable

    try:
        table = CostTable.load(args.cost_table)
        acceptance = acceptance_from_eval(args.eval)
        gamma = args.gamma or len(acceptance)
        ks = gamma_by_batch_size(table, acceptance, gamma, args.max_batch)
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"vllm-dspark schedule: {e}") from None
    schedule = as_vllm_schedule(ks)
    print(f"{'requests':>12} {'γ':>3}")
    for start, end, k in schedule:
        print(f"{f'{start}-{end}':>12} {k:>3}")
    if not any(ks):
        # Not an error: turning speculation off is the right schedule for this engine, but users expect a speed-up
        # from a speculative config, so say why there is none (typically a compute-bound CPU).
        one, two = table.step_time(1), table.step_time(2)
        print(f"note: no γ pays at any batch size up to {args.max_batch}: one request verifying 1 draft costs "
              f"{two / one:.2f}x a plain step ({two * 1e3:.0f} vs {one * 1e3:.0f} ms) "
              f"and returns {1 + acceptance[0]:.2f} tokens; the schedule turns speculation off (γ = 0).",
              file=sys.stderr)
    print(json.dumps({"num_speculative_tokens_per_batch_size": schedule}))
    if args.json is not None:
        args.json.write_text(json.dumps({"num_speculative_tokens_per_batch_size": schedule, "gamma": gamma,
                                         "acceptance": acceptance[:gamma], "cost_table": str(args.cost_table)},
                                        indent=1))
    return 0
