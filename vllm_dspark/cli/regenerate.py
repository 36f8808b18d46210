"""`vllm-dspark regenerate`: responses to a prompt file by the target itself (vLLM when installed, else transformers)."""
from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="target model folder (or HF id)")
    p.add_argument("--prompts", required=True,
                   help='JSONL(.gz): {"prompt": text} | {"messages": [...]} | {"prompt_token_ids": [...]} per line')
    p.add_argument("--out", required=True, help="output JSONL (.gz to compress)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0 = greedy)")
    p.add_argument("--chat", action="store_true", help="render text prompts with the tokenizer's chat template")
    p.add_argument("--num-prompts", type=int, default=None, help="use only the first N prompts")
    p.add_argument("--backend", choices=["auto", "vllm", "transformers"], default="auto",
                   help="auto = vLLM's offline LLM when importable, else transformers")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per generate() call (transformers backend)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu / cuda (transformers backend)")


def run(args: argparse.Namespace) -> int:
    from vllm_dspark.training.regenerate import regenerate

    summary = regenerate(
        args.target, args.prompts, args.out, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        chat=args.chat, limit=args.num_prompts, backend=args.backend, batch_size=args.batch_size, seed=args.seed,
        device=args.device,
    )
    print(json.dumps(summary))
    return 0
