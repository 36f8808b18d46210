"""`vllm-dspark eval`: accepted length of a drafter with the reference speculative loop (transformers target)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="target model folder or HF id")
    p.add_argument("--draft", required=True, help="drafter folder (DeepSpec, vLLM-native or vllm-dspark layout)")
    p.add_argument("--prompts", required=True, help='JSONL: {"prompt": text} or {"prompt_token_ids": [...]} per line')
    p.add_argument("--json", required=True, dest="json_out", help="where to write the results")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--block-size", type=int, default=None, help="γ (default: the drafter's block_size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat", action="store_true", help="render text prompts with the tokenizer's chat template")
    p.add_argument("--num-prompts", type=int, default=None, help="use only the first N prompts")
    p.add_argument("--confidence-threshold", type=float, default=0.0,
                   help="verify drafts up to the first slot with confidence below this (0 = all)")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-sequence token")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float64")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    import torch

    from vllm_dspark.checkpoint import load_drafter
    from vllm_dspark.evaluate import evaluate, read_prompts
    from vllm_dspark.target import default_device, load_target, max_context, resolve_dtype, stop_token_ids

    device = torch.device(args.device) if args.device else default_device()
    dtype = resolve_dtype(args.dtype, device)
    target, tokenizer = load_target(args.target, dtype=dtype, device=device)
    drafter = load_drafter(args.draft, target, dtype=dtype, device=device)
    prompts = read_prompts(args.prompts, tokenizer, chat=args.chat, max_context=max_context(target),
                           limit=args.num_prompts)
    block_size = args.block_size or drafter.config.block_size
    result = evaluate(
        target, drafter, prompts,
        temperature=args.temperature, max_new_tokens=args.max_new_tokens, block_size=block_size, seed=args.seed,
        stop_token_ids=set() if args.ignore_eos else stop_token_ids(target, tokenizer),
        confidence_threshold=args.confidence_threshold,
    )
    result["summary"].update(target=str(args.target), draft=str(args.draft), prompts_file=str(args.prompts),
                             dtype=str(dtype).removeprefix("torch."), device=str(device))
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(result, indent=1) + "\n")
    s = result["summary"]
    acc = " ".join("-" if a is None else f"{a:.2f}" for a in s["per_position_acceptance"])
    print(f"τ (mean accepted length, bonus included) = {s['mean_accepted_length']:.3f} over {s['num_rounds']} rounds, "
          f"{s['num_prompts']} prompts; per-position acceptance: {acc}; wrote {args.json_out}")
    return 0
