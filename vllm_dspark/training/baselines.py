"""Load and evaluate any drafter this package trains (DSpark, DFlash, EAGLE-3) with the same reference rules.

`load_any_drafter` dispatches on config.json's `architectures`; `evaluate_any` runs `vllm_dspark.evaluate.evaluate`
(DSpark / DFlash, through `speculative_generate`) or the same loop with `eagle3_generate` (EAGLE-3), with the same
seeds per prompt and the same summary (τ with the bonus token, per-position acceptance).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vllm_dspark.evaluate import Prompt, evaluate, summarize
from vllm_dspark.training.dflash import DFLASH_ARCHITECTURE, load_dflash
from vllm_dspark.training.eagle3 import EAGLE3_ARCHITECTURE, Eagle3Drafter, eagle3_generate, load_eagle3


# config.json `architectures` entry -> drafter kind, in the order a lenient reading prefers them
DRAFTER_ARCHITECTURES = {DFLASH_ARCHITECTURE: "dflash", EAGLE3_ARCHITECTURE: "eagle3", "Qwen3DSparkModel": "dspark"}


def drafter_kind_of_config(config: dict, *, strict: bool = False) -> str:
    """'dspark', 'dflash' or 'eagle3' from a config.json dict's `architectures`.

    Lenient (default): DFlash if named, else EAGLE-3, else DSpark (DeepSpec checkpoints may name other
    architectures). strict: exactly one kind must be named, else ValueError (for tools that rewrite a layout).
    """
    arch = config.get("architectures") or []
    kinds = [kind for name, kind in DRAFTER_ARCHITECTURES.items() if name in arch]
    if strict and len(kinds) != 1:
        raise ValueError(f"architectures: {config.get('architectures')} names none (or several) of the drafter "
                         f"architectures {sorted(DRAFTER_ARCHITECTURES)}")
    return kinds[0] if kinds else "dspark"


def drafter_kind(directory: str | Path) -> str:
    return drafter_kind_of_config(json.loads((Path(directory) / "config.json").read_text()))


def load_any_drafter(directory: str | Path, target: torch.nn.Module | None, *, dtype: torch.dtype | None = None,
                     device: str | torch.device = "cpu"):
    """The drafter of `directory` by its kind; without `target` the checkpoint must carry its embedding and head."""
    kind = drafter_kind(directory)
    if kind == "dflash":
        return load_dflash(directory, target, dtype=dtype, device=device)
    if kind == "eagle3":
        return load_eagle3(directory, target, dtype=dtype, device=device)
    from vllm_dspark.checkpoint import load_drafter

    return load_drafter(directory, target, dtype=dtype, device=device)


def evaluate_any(target, drafter, prompts: list[Prompt], *, temperature: float, max_new_tokens: int,
                 block_size: int, seed: int, stop_token_ids: set[int], progress: bool = True) -> dict[str, Any]:
    if not isinstance(drafter, Eagle3Drafter):
        return evaluate(target, drafter, prompts, temperature=temperature, max_new_tokens=max_new_tokens,
                        block_size=block_size, seed=seed, stop_token_ids=stop_token_ids, progress=progress)
    device = next(target.parameters()).device
    results, per_prompt = [], []
    t0 = time.perf_counter()
    for i, prompt in enumerate(tqdm(prompts, desc="eval eagle3", unit="prompt", disable=not progress)):
        gen = torch.Generator(device=device).manual_seed(seed + i)
        res = eagle3_generate(target, drafter, prompt.token_ids, max_new_tokens=max_new_tokens,
                              temperature=temperature, generator=gen, stop_token_ids=stop_token_ids,
                              gamma=block_size)
        results.append(res)
        per_prompt.append({"line": prompt.line, "num_prompt_tokens": len(prompt.token_ids),
                           "output_token_ids": res.output_token_ids, "accepted_lengths": res.accepted_lengths,
                           "proposed_lengths": [r.proposed for r in res.rounds]})
    summary = summarize(results, block_size)
    summary.update(num_prompts=len(prompts), output_tokens=sum(len(r.output_token_ids) for r in results),
                   wall_seconds=time.perf_counter() - t0, temperature=temperature, block_size=block_size,
                   max_new_tokens=max_new_tokens, seed=seed)
    return {"summary": summary, "prompts": per_prompt}
