"""The soak's request mix: deterministic from a seed, within max-model-len, some at the limit, some sent twice."""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

from vllm_dspark.bench.prompts import load_prompts

KINDS = ("greedy", "sampled", "seeded", "multi")  # multi: n = 2..3 at T = 1
ORDINARY_MARGIN = 64  # ordinary prompts keep their last max-model-len - max_tokens - this tokens


@dataclass(eq=False)  # identity: two requests with equal fields are still two requests
class SoakRequest:
    index: int
    kind: str  # one of KINDS
    prompt_token_ids: list[int]
    max_tokens: int
    n: int = 1
    temperature: float = 0.0
    seed: int | None = None
    stream: bool = False
    abort_after_chunks: int | None = None  # the client closes the stream after this many chunks
    near_limit: bool = False  # prompt + max_tokens at or just below max-model-len
    repeat_of: int | None = None  # a seeded request sent again (same prompt, seed and settings)

    def body(self, model: str) -> dict:
        body = {"model": model, "prompt": self.prompt_token_ids, "max_tokens": self.max_tokens, "n": self.n,
                "temperature": self.temperature, "return_token_ids": True, "stream": self.stream,
                "ignore_eos": self.near_limit}  # near-limit requests run into the length limit
        if self.seed is not None:
            body["seed"] = self.seed
        return body


@dataclass
class MixOptions:
    num_requests: int = 1000
    max_model_len: int = 256
    min_tokens: int = 32
    max_tokens: int = 40
    kind_weights: tuple[float, ...] = (0.4, 0.2, 0.2, 0.2)  # KINDS
    stream_fraction: float = 0.35
    abort_fraction: float = 0.5  # of the streamed requests
    near_limit_fraction: float = 0.2
    repeat_fraction: float = 0.5  # of the seeded requests, sent a second time
    seed: int = 0


def load_prompt_ids(target: Path) -> list[list[int]]:
    """Token ids of the target's eval_prompts.jsonl (text lines tokenized with the target's tokenizer)."""
    from transformers import AutoTokenizer

    tok = None
    out = []
    for p in load_prompts(target / "eval_prompts.jsonl"):
        if p.token_ids is not None:
            out.append(list(p.token_ids))
            continue
        tok = tok or AutoTokenizer.from_pretrained(str(target))
        out.append(tok(p.text)["input_ids"])
    return out


def _filled_prompt(prompts: list[list[int]], rng: random.Random, length: int) -> list[int]:
    """`length` tokens: consecutive prompts joined, starting from a random one."""
    ids: list[int] = []
    i = rng.randrange(len(prompts))
    while len(ids) < length:
        ids += prompts[i % len(prompts)]
        i += 1
    return ids[:length]


def make_requests(prompts: list[list[int]], opts: MixOptions) -> list[SoakRequest]:
    """The request list in send order, deterministic from opts.seed; a repeated seeded request comes after its
    original (`repeat_of` = the original's index)."""
    if opts.max_tokens + ORDINARY_MARGIN + 8 > opts.max_model_len:
        raise ValueError(f"--max-tokens ({opts.max_tokens}) must be at least {ORDINARY_MARGIN + 8} below "
                         f"--max-model-len ({opts.max_model_len})")
    rng = random.Random(opts.seed)
    requests: list[SoakRequest] = []
    repeats: list[SoakRequest] = []
    while len(requests) + len(repeats) < opts.num_requests:
        kind = rng.choices(KINDS, weights=opts.kind_weights)[0]
        max_tokens = rng.randint(opts.min_tokens, opts.max_tokens)
        near_limit = rng.random() < opts.near_limit_fraction
        if near_limit:  # slack 0 = exactly at the limit
            ids = _filled_prompt(prompts, rng, opts.max_model_len - max_tokens - rng.randint(0, 8))
        else:
            ids = prompts[rng.randrange(len(prompts))][-(opts.max_model_len - opts.max_tokens - ORDINARY_MARGIN):]
        stream = rng.random() < opts.stream_fraction
        abort = stream and rng.random() < opts.abort_fraction
        req = SoakRequest(
            index=-1, kind=kind, prompt_token_ids=ids, max_tokens=max_tokens, near_limit=near_limit,
            n=rng.randint(2, 3) if kind == "multi" else 1, temperature=0.0 if kind == "greedy" else 1.0,
            seed=rng.randrange(2**31) if kind == "seeded" else None, stream=stream,
            abort_after_chunks=rng.randint(1, max_tokens // 4) if abort else None)
        requests.append(req)
        if kind == "seeded" and not abort and rng.random() < opts.repeat_fraction:
            repeats.append(req)
    rng.shuffle(requests)
    for original in repeats:
        pos = rng.randint(requests.index(original) + 1, len(requests))
        requests.insert(pos, SoakRequest(**{**asdict(original), "repeat_of": id(original)}))
    index_of = {id(r): i for i, r in enumerate(requests) if r.repeat_of is None}
    for i, r in enumerate(requests):
        r.index = i
        if r.repeat_of is not None:
            r.repeat_of = index_of[r.repeat_of]
    return requests[: opts.num_requests]


def request_row(r: SoakRequest) -> dict:
    return {"kind": r.kind, "n": r.n, "stream": r.stream, "abort_after_chunks": r.abort_after_chunks,
            "near_limit": r.near_limit, "prompt_tokens": len(r.prompt_token_ids), "max_tokens": r.max_tokens,
            "repeat_of": r.repeat_of}


def request_mix(requests: list[SoakRequest], max_model_len: int) -> dict:
    return {
        "total": len(requests),
        "by_kind": {k: sum(r.kind == k for r in requests) for k in KINDS},
        "streamed": sum(r.stream for r in requests),
        "abort_planned": sum(r.abort_after_chunks is not None for r in requests),
        "near_limit": sum(r.near_limit for r in requests),
        "at_limit_exactly": sum(len(r.prompt_token_ids) + r.max_tokens == max_model_len for r in requests),
        "seeded_repeats": sum(r.repeat_of is not None for r in requests),
        "choices": sum(r.n for r in requests),
        "prompt_tokens_max": max(len(r.prompt_token_ids) for r in requests),
    }
