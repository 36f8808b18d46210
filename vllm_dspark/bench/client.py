"""One streaming request against an OpenAI-compatible server, timed per chunk (aiohttp, plain HTTP).

Token counting: speculative decoding delivers several tokens in one SSE chunk, so "one chunk = one token" is
wrong. We ask for `stream_options: {"include_usage": true, "continuous_usage_stats": true}` (the second is a
vLLM extension): every chunk then carries the cumulative `usage.completion_tokens`, and a chunk's token count is
the difference to the previous one (`token_count_source = "continuous_usage"`, exact). A server that ignores the
extension still sends the final usage chunk: we then count one token per chunk with non-empty text and add the
remainder of the final total to the last chunk (`"chunks+usage"`; totals exact, times approximate), or without any
usage, one token per non-empty chunk (`"chunks"`). `ignore_eos` (a vLLM extension) is sent as a top-level
field, as the `openai` client's `extra_body` would, so output lengths are fixed by `max_tokens`.

With `keep_token_ids` the request also asks for `return_token_ids` (a vLLM extension): each choice chunk then
carries its new `token_ids` and the first one the `prompt_token_ids` (in the choice for completions, at the top
of the event for chat), and the summary keeps both lists (`benchmarks/serving/near_ties.py` reads them).

Chunk times are taken when the client reads a chunk. A client (or API server) starved of CPU reads bursts of
chunks at once and per-user speeds come out too high: give the client a core of its own.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from vllm_dspark.bench.prompts import Prompt
from vllm_dspark.bench.stats import per_user_speed, time_per_output_token

ENDPOINTS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


@dataclass(frozen=True)
class SamplingSettings:
    model: str
    max_tokens: int
    endpoint: str = "completions"  # a key of ENDPOINTS
    temperature: float = 0.0
    top_p: float | None = None
    ignore_eos: bool = True
    seed: int | None = None  # request i gets seed + prompt index, so sampled runs repeat
    extra_body: dict[str, Any] = field(default_factory=dict)
    keep_token_ids: bool = False  # ask for `return_token_ids`, keep prompt and output token ids per request
    min_tokens: int | None = None  # set: each prompt's max_tokens is drawn from [min_tokens, max_tokens]

    def __post_init__(self):
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {sorted(ENDPOINTS)}, got {self.endpoint!r}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.min_tokens is not None and not 1 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"min_tokens must be in [1, max_tokens = {self.max_tokens}], got {self.min_tokens}")

    def max_tokens_for(self, prompt_index: int) -> int:
        """The output length asked of this prompt: max_tokens, or with min_tokens a length drawn from
        [min_tokens, max_tokens] by the prompt's index alone, so every configuration and load asks the same
        prompt for the same length (outputs stay comparable) while requests in flight end at different steps,
        as served traffic does."""
        if self.min_tokens is None:
            return self.max_tokens
        return random.Random(f"max_tokens:{prompt_index}").randint(self.min_tokens, self.max_tokens)


def build_payload(settings: SamplingSettings, prompt: Prompt) -> dict[str, Any]:
    """The JSON body for `prompt` (streaming, with per-chunk usage)."""
    body: dict[str, Any] = {
        "model": settings.model,
        "max_tokens": settings.max_tokens_for(prompt.index),
        "temperature": settings.temperature,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "ignore_eos": settings.ignore_eos,
    }
    if settings.top_p is not None:
        body["top_p"] = settings.top_p
    if settings.seed is not None:
        body["seed"] = settings.seed + prompt.index
    if settings.keep_token_ids:
        body["return_token_ids"] = True
    if settings.endpoint == "chat":
        if prompt.text is None:
            raise ValueError(f"prompt {prompt.index}: the chat endpoint needs text prompts, not prompt_token_ids")
        body["messages"] = [{"role": "user", "content": prompt.text}]
    else:
        body["prompt"] = prompt.text if prompt.text is not None else list(prompt.token_ids)
    body.update(settings.extra_body)
    return body


@dataclass
class RequestResult:
    prompt_index: int
    start: float = 0.0  # time.perf_counter() when sent
    chunk_times: list[float] = field(default_factory=list)  # seconds after start, chunks carrying >= 1 token
    chunk_tokens: list[int] = field(default_factory=list)  # tokens per such chunk
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    end_s: float | None = None  # stream closed, seconds after start
    token_count_source: str = "chunks"
    error: str | None = None
    text_parts: list[str] = field(default_factory=list)  # the streamed text, for `output_sha256`
    output_token_ids: list[int] | None = None  # None: no chunk carried `token_ids` (not asked, or not sent)
    prompt_token_ids: list[int] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.chunk_tokens)

    @property
    def output_tokens(self) -> int:
        return sum(self.chunk_tokens)

    @property
    def ttft_s(self) -> float | None:
        return self.chunk_times[0] if self.chunk_times else None

    @property
    def latency_s(self) -> float | None:
        """Time of the last token (not of the stream's close), as in vLLM's TPOT."""
        return self.chunk_times[-1] if self.chunk_times else None

    def summary(self, point_start: float, keep_chunks: bool = False, keep_token_ids: bool = False) -> dict[str, Any]:
        out = {
            "prompt_index": self.prompt_index,
            "ok": self.ok,
            "error": self.error,
            "start_s": self.start - point_start,
            "ttft_s": self.ttft_s,
            "latency_s": self.latency_s,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "num_chunks": len(self.chunk_tokens),
            "max_tokens_per_chunk": max(self.chunk_tokens, default=0),
            "per_user_speed": per_user_speed(self.chunk_times, self.chunk_tokens),
            "tpot_s": time_per_output_token(self.ttft_s, self.latency_s, self.output_tokens),
            "finish_reason": self.finish_reason,
            "token_count_source": self.token_count_source,
            # What was generated, as a digest: comparing configs at T = 0 checks losslessness in the same run.
            "output_sha256": hashlib.sha256("".join(self.text_parts).encode()).hexdigest()[:16] if self.ok else None,
        }
        if keep_chunks:
            out["chunk_times_s"] = list(self.chunk_times)
            out["chunk_tokens"] = list(self.chunk_tokens)
        if keep_token_ids:
            out["prompt_token_ids"] = self.prompt_token_ids
            out["output_token_ids"] = list(self.output_token_ids) if self.ok and self.output_token_ids else None
        return out


def raise_if_cancelling() -> None:
    """Re-raise a cancellation (Ctrl-C: asyncio.run cancels the main task) that arrived as a client error.

    Defensive: should a cancellation surface as a ClientError / OSError (a transport that wraps it; not observed with
    aiohttp here), catching it as a failed request would lose it and the sweep would carry on after Ctrl-C.
    """
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)  # Python >= 3.11
    if cancelling is not None and cancelling():
        raise asyncio.CancelledError


def _chunk_text(choice: dict, endpoint: str) -> str:
    if endpoint == "chat":
        return (choice.get("delta") or {}).get("content") or ""
    return choice.get("text") or ""


def _collect_token_ids(result: RequestResult, event: dict, choice: dict) -> None:
    """Append a chunk's `token_ids`; take `prompt_token_ids` where the first chunk has them (choice or event)."""
    prompt_ids = choice.get("prompt_token_ids") or event.get("prompt_token_ids")
    if prompt_ids is not None and result.prompt_token_ids is None:
        result.prompt_token_ids = list(prompt_ids)
    token_ids = choice.get("token_ids")
    if token_ids is not None:
        if result.output_token_ids is None:
            result.output_token_ids = []
        result.output_token_ids.extend(token_ids)


async def stream_request(
    session: aiohttp.ClientSession, base_url: str, settings: SamplingSettings, prompt: Prompt
) -> RequestResult:
    """Send one streaming request and time every chunk; errors are returned in `RequestResult.error`."""
    result = RequestResult(prompt_index=prompt.index)
    url = base_url.rstrip("/") + ENDPOINTS[settings.endpoint]
    payload = build_payload(settings, prompt)
    cumulative = 0  # completion tokens reported so far (continuous usage)
    final_usage = None
    done = False
    result.start = time.perf_counter()
    try:
        async with session.post(url, json=payload) as resp:
            if resp.status != 200:
                body = (await resp.text())[:500]
                result.error = f"HTTP {resp.status}: {body}"
                return result
            async for raw in resp.content:
                now = time.perf_counter() - result.start
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    done = True
                    break
                event = json.loads(data)
                if "error" in event or event.get("object") == "error":
                    result.error = f"server error in stream: {json.dumps(event)[:500]}"
                    return result
                usage = event.get("usage")
                choices = event.get("choices") or []
                if not choices:
                    final_usage = usage or final_usage
                    continue
                choice = choices[0]
                result.finish_reason = choice.get("finish_reason") or result.finish_reason
                text = _chunk_text(choice, settings.endpoint)
                result.text_parts.append(text)
                if settings.keep_token_ids:
                    _collect_token_ids(result, event, choice)
                if usage and usage.get("completion_tokens") is not None:
                    result.token_count_source = "continuous_usage"
                    n = usage["completion_tokens"] - cumulative
                    cumulative = usage["completion_tokens"]
                    result.prompt_tokens = usage.get("prompt_tokens", result.prompt_tokens)
                else:
                    n = 1 if text else 0
                if n > 0:
                    result.chunk_times.append(now)
                    result.chunk_tokens.append(n)
            result.end_s = time.perf_counter() - result.start
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:  # ValueError: bad JSON / UTF-8 / line
        raise_if_cancelling()
        result.error = f"{type(e).__name__}: {e}"
        return result
    if not done and result.finish_reason is None:
        result.error = "stream ended before [DONE] / finish_reason (connection lost?)"
        return result
    if final_usage:
        result.prompt_tokens = final_usage.get("prompt_tokens", result.prompt_tokens)
        total = final_usage.get("completion_tokens")
        if result.token_count_source != "continuous_usage" and total is not None and result.chunk_tokens:
            missing = total - result.output_tokens
            if missing > 0:
                result.chunk_tokens[-1] += missing
            result.token_count_source = "chunks+usage"
    if not result.chunk_tokens:
        result.error = "no output tokens received"
    return result
