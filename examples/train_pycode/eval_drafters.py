"""Accepted length τ of several drafters (DSpark, DFlash, EAGLE-3) with the reference loop, same prompts and seeds.

    python examples/train_pycode/eval_drafters.py --target T --prompts P --out-dir D \
        --draft dspark=runs/x/dspark --draft dflash=runs/x/dflash --draft eagle3=runs/x/eagle3 --temperatures 0,1

Writes D/eval_<name>_T<temperature>.json in the format of `vllm-dspark eval --json`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vllm_dspark.evaluate import read_prompts
from vllm_dspark.target import default_device, load_target, max_context, resolve_dtype, stop_token_ids
from vllm_dspark.training.baselines import drafter_kind, evaluate_any, load_any_drafter


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--draft", action="append", required=True, help="NAME=DIR (repeat)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--temperatures", default="0,1")
    p.add_argument("--num-prompts", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--block-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="auto")
    args = p.parse_args()

    device = torch.device(args.device) if args.device else default_device()
    dtype = resolve_dtype(args.dtype, device)
    target, tokenizer = load_target(args.target, dtype=dtype, device=device)
    prompts = read_prompts(args.prompts, tokenizer, max_context=max_context(target), limit=args.num_prompts)
    stops = stop_token_ids(target, tokenizer)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for spec in args.draft:
        name, directory = spec.split("=", 1)
        drafter = load_any_drafter(directory, target, dtype=dtype, device=device)
        block = args.block_size or drafter.config.block_size
        for t in (float(x) for x in args.temperatures.split(",")):
            res = evaluate_any(target, drafter, prompts, temperature=t, max_new_tokens=args.max_new_tokens,
                               block_size=block, seed=args.seed, stop_token_ids=stops)
            res["summary"].update(draft=directory, kind=drafter_kind(directory), target=args.target,
                                  prompts_file=args.prompts, device=str(device),
                                  dtype=str(dtype).removeprefix("torch."))
            path = out_dir / f"eval_{name}_T{t:g}.json"
            path.write_text(json.dumps(res, indent=1) + "\n")
            s = res["summary"]
            acc = " ".join("-" if a is None else f"{a:.2f}" for a in s["per_position_acceptance"])
            print(f"{name} T={t:g}: τ = {s['mean_accepted_length']:.3f} over {s['num_rounds']} rounds; "
                  f"per-position acceptance {acc}; {s['wall_seconds']:.0f} s -> {path}", flush=True)


if __name__ == "__main__":
    main()
