"""Offline evaluation: run the reference speculative loop over a prompt file and report accepted lengths.

Metrics follow DeepSpec's evaluator (deepspec-format.md §8): τ = Σ(a+1) / #rounds (bonus included);
acceptance at position j = fraction of rounds with a > j among rounds that proposed > j.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vllm_dspark.decoding import GenerationResult, speculative_generate
from vllm_dspark.jsonl import encode_prompt, iter_objects
from vllm_dspark.model import DSparkDrafter


class PromptFileError(ValueError):
    pass


@dataclass
class Prompt:
    line: int  # 1-based line number in the file
    token_ids: list[int]


def read_prompts(
    path: str | Path,
    tokenizer: Any | None,
    *,
    chat: bool = False,
    max_context: int | None = None,
    limit: int | None = None,
) -> list[Prompt]:
    """JSONL lines with "prompt" (text; rendered with the chat template when `chat`) or "prompt_token_ids"."""
    path = Path(path)
    prompts: list[Prompt] = []
    for lineno, row in iter_objects(path, PromptFileError, "prompt file"):
        if not ({"prompt", "prompt_token_ids"} & row.keys()):
            raise PromptFileError(f'{path}:{lineno}: expected an object with "prompt" or "prompt_token_ids"')
        if "prompt_token_ids" in row:
            ids = row["prompt_token_ids"]
            if not isinstance(ids, list) or not all(isinstance(t, int) and t >= 0 for t in ids):
                raise PromptFileError(f"{path}:{lineno}: prompt_token_ids must be a list of non-negative ints")
        else:
            if tokenizer is None:
                raise PromptFileError(f'{path}:{lineno}: a text "prompt" needs a tokenizer')
            text = row["prompt"]
            if not isinstance(text, str):
                raise PromptFileError(f'{path}:{lineno}: "prompt" must be a string')
            ids = encode_prompt(tokenizer, text, chat, PromptFileError, f"{path}:{lineno}")
        if not ids:
            raise PromptFileError(f"{path}:{lineno}: the prompt is empty")
        if max_context is not None and len(ids) >= max_context:
            raise PromptFileError(
                f"{path}:{lineno}: prompt has {len(ids)} tokens, the target's context is {max_context}"
            )
        prompts.append(Prompt(lineno, ids))
        if limit is not None and len(prompts) >= limit:
            break
    if not prompts:
        raise PromptFileError(f"{path}: no prompts (the file is empty)")
    return prompts


def confidence_truncation(threshold: float):
    """DeepSpec's evaluator option: verify drafts up to the first slot whose confidence is below `threshold`."""

    def verify_length(block) -> int:
        if block.confidence is None:
            raise ValueError("--confidence-threshold needs a drafter with a confidence head")
        below = (block.confidence[0] < threshold).nonzero()
        return int(below[0]) if len(below) else block.tokens.shape[1]

    return verify_length


def summarize(results: list[GenerationResult], block_size: int) -> dict[str, Any]:
    rounds = [r for res in results for r in res.rounds]
    per_position = []
    for j in range(block_size):
        proposed = [r for r in rounds if r.proposed > j]
        per_position.append(sum(r.accepted > j for r in proposed) / len(proposed) if proposed else None)
    total_committed = sum(r.accepted + int(r.bonus) for r in rounds)
    return {
        "num_rounds": len(rounds),
        "mean_accepted_length": total_committed / len(rounds) if rounds else None,
        "mean_proposed": sum(r.proposed for r in rounds) / len(rounds) if rounds else None,
        "per_position_acceptance": per_position,
        "verify_rate": total_committed / (sum(r.proposed for r in rounds) + len(rounds)) if rounds else None,
    }


def evaluate(
    target: torch.nn.Module,
    drafter: DSparkDrafter,
    prompts: list[Prompt],
    *,
    temperature: float,
    max_new_tokens: int,
    block_size: int,
    seed: int,
    stop_token_ids: set[int],
    confidence_threshold: float = 0.0,
    progress: bool = True,
) -> dict[str, Any]:
    if block_size > drafter.config.block_size:
        raise ValueError(f"--block-size {block_size} exceeds the drafter's block_size={drafter.config.block_size}")
    verify_length = (lambda b: block_size) if confidence_threshold <= 0 else confidence_truncation(confidence_threshold)
    if confidence_threshold > 0 and block_size < drafter.config.block_size:
        base = verify_length
        verify_length = lambda b: min(block_size, base(b))  # noqa: E731
    device = next(target.parameters()).device
    per_prompt, results = [], []
    t0 = time.perf_counter()
    for i, prompt in enumerate(tqdm(prompts, desc="eval", unit="prompt", disable=not progress)):
        gen = torch.Generator(device=device).manual_seed(seed + i)
        res = speculative_generate(
            target,
            drafter,
            prompt.token_ids,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            verify_length=verify_length,
            generator=gen,
            stop_token_ids=stop_token_ids,
        )
        results.append(res)
        per_prompt.append(
            {
                "line": prompt.line,
                "num_prompt_tokens": len(prompt.token_ids),
                "output_token_ids": res.output_token_ids,
                "accepted_lengths": res.accepted_lengths,
                "proposed_lengths": [r.proposed for r in res.rounds],
                "draft_token_ids": [r.draft_token_ids for r in res.rounds],
                "confidence_logits": [r.confidence_logits for r in res.rounds]
                if drafter.confidence_head is not None
                else None,
                # σ(logit) without STS temperatures: what DeepSpec's evaluator reports
                "confidences": [[1 / (1 + math.exp(-x)) for x in r.confidence_logits] for r in res.rounds]
                if drafter.confidence_head is not None
                else None,
            }
        )
    wall = time.perf_counter() - t0
    summary = summarize(results, block_size)
    summary.update(
        num_prompts=len(prompts),
        output_tokens=sum(len(r.output_token_ids) for r in results),
        wall_seconds=wall,
        temperature=temperature,
        block_size=block_size,
        max_new_tokens=max_new_tokens,
        seed=seed,
        confidence_threshold=confidence_threshold,
    )
    return {"summary": summary, "prompts": per_prompt}
