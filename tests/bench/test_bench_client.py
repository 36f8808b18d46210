"""The bench client without a server: Ctrl-C (a cancellation that arrives as a client error still cancels the sweep)
and --keep-token-ids (streamed token ids kept per request)."""
from __future__ import annotations

import asyncio
import hashlib
import json
import math

import aiohttp
import pytest

from vllm_dspark.bench.client import SamplingSettings, build_payload, stream_request
from vllm_dspark.bench.prompts import Prompt
from vllm_dspark.bench.sweep import LoadPoint


class _CancelledAsClientError:
    """A session whose request waits, and turns its cancellation into a ClientConnectionError."""

    def post(self, url, json):
        return self

    async def __aenter__(self):
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise aiohttp.ClientConnectionError("Connection lost") from None

    async def __aexit__(self, *exc):
        return False


class _FailingSession(_CancelledAsClientError):
    async def __aenter__(self):
        raise aiohttp.ClientConnectionError("refused")


def _run(session, cancel: bool):
    async def main():
        settings = SamplingSettings(model="m", max_tokens=4)
        task = asyncio.create_task(stream_request(session, "http://x", settings, Prompt(index=0, text="a")))
        await asyncio.sleep(0.01)
        if cancel:
            task.cancel()
        return await task
    return asyncio.run(main())


def test_a_cancelled_request_raises_instead_of_failing_quietly():
    with pytest.raises(asyncio.CancelledError):
        _run(_CancelledAsClientError(), cancel=True)
    # A real connection error, with no cancellation, is still a failed request.
    result = _run(_FailingSession(), cancel=False)
    assert not result.ok and result.error == "ClientConnectionError: refused"


# --- --keep-token-ids: the request asks for vLLM's return_token_ids, the summary keeps the ids --------------------


class _SSEResponse:
    status = 200

    def __init__(self, events: list[dict]):
        self.lines = [f"data: {json.dumps(e)}\n".encode() for e in events] + [b"data: [DONE]\n"]
        self.content = self  # `async for raw in resp.content`

    def __aiter__(self):
        return self._lines()

    async def _lines(self):
        for line in self.lines:
            yield line

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False


class _StreamingSession:
    """A session whose every POST streams `events` back; it records the JSON bodies it was sent."""

    def __init__(self, events: list[dict]):
        self.events, self.bodies = events, []

    def post(self, url, json):
        self.bodies.append(json)
        return _SSEResponse(self.events)


def _usage(completion_tokens: int) -> dict:
    return {"prompt_tokens": 3, "completion_tokens": completion_tokens, "total_tokens": 3 + completion_tokens}


# vLLM 0.32 completions stream with return_token_ids: prompt ids in the first choice, then each chunk's new ids (a
# speculative step delivers several), then the usage-only chunk.
COMPLETION_EVENTS = [
    {"choices": [{"index": 0, "text": "ab", "prompt_token_ids": [1, 2, 3], "token_ids": [11, 12],
                  "finish_reason": None}], "usage": _usage(2)},
    {"choices": [{"index": 0, "text": "c", "token_ids": [13], "finish_reason": "length"}], "usage": _usage(3)},
    {"choices": [], "usage": _usage(3)},
]
# Chat: the prompt ids sit at the top of the first (role) event.
CHAT_EVENTS = [
    {"prompt_token_ids": [1, 2, 3], "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
     "usage": _usage(0)},
    {"choices": [{"index": 0, "delta": {"content": "ab"}, "token_ids": [11, 12]}], "usage": _usage(2)},
    {"choices": [{"index": 0, "delta": {"content": "c"}, "token_ids": [13], "finish_reason": "length"}],
     "usage": _usage(3)},
]


def _stream(events, keep_token_ids: bool, endpoint: str = "completions"):
    session = _StreamingSession(events)
    settings = SamplingSettings(model="m", max_tokens=3, endpoint=endpoint, keep_token_ids=keep_token_ids)
    result = asyncio.run(stream_request(session, "http://x", settings, Prompt(index=0, text="a")))
    (body,) = session.bodies
    return body, result.summary(result.start, keep_token_ids=keep_token_ids)


@pytest.mark.parametrize("endpoint, events", [("completions", COMPLETION_EVENTS), ("chat", CHAT_EVENTS)])
def test_keep_token_ids_asks_for_them_and_keeps_them(endpoint, events):
    body, summary = _stream(events, keep_token_ids=True, endpoint=endpoint)
    assert body["return_token_ids"] is True
    assert summary["ok"] and summary["output_tokens"] == 3
    assert summary["prompt_token_ids"] == [1, 2, 3]
    assert summary["output_token_ids"] == [11, 12, 13]  # 2 + 1 ids over the two chunks, in order


def test_a_request_asks_for_its_prompts_own_length():
    settings = SamplingSettings(model="m", max_tokens=64, min_tokens=16)
    body = build_payload(settings, Prompt(index=7, text="x"))
    assert body["max_tokens"] == settings.max_tokens_for(7) and 16 <= body["max_tokens"] <= 64
    assert build_payload(SamplingSettings(model="m", max_tokens=64), Prompt(index=7, text="x"))["max_tokens"] == 64
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingSettings(model="m", max_tokens=8, min_tokens=0)


def test_without_keep_token_ids_requests_and_summaries_are_unchanged():
    body, summary = _stream(COMPLETION_EVENTS, keep_token_ids=False)
    assert "return_token_ids" not in body
    assert "output_token_ids" not in summary and "prompt_token_ids" not in summary
    _, kept = _stream(COMPLETION_EVENTS, keep_token_ids=True)
    assert summary["output_sha256"] == kept["output_sha256"] == hashlib.sha256(b"abc").hexdigest()[:16]


def test_a_server_that_sends_no_token_ids_gives_null():
    events = [{"choices": [{k: v for k, v in c.items() if "token_ids" not in k} for c in e["choices"]],
               "usage": e["usage"]} for e in COMPLETION_EVENTS]
    _, summary = _stream(events, keep_token_ids=True)
    assert summary["ok"] and summary["output_token_ids"] is None and summary["prompt_token_ids"] is None


def test_request_schema_accepts_token_id_lists_or_null():
    jsonschema = pytest.importorskip("jsonschema")
    from vllm_dspark.bench.schema import _request

    _, summary = _stream(COMPLETION_EVENTS, keep_token_ids=True)
    jsonschema.validate(summary, _request)
    jsonschema.validate(dict(summary, output_token_ids=None, prompt_token_ids=None), _request)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(dict(summary, output_token_ids=["11"]), _request)


def test_the_sweep_stores_token_ids_only_when_asked(monkeypatch):
    from vllm_dspark.bench import sweep
    from vllm_dspark.bench.client import RequestResult

    async def fake_request(session, base_url, settings, prompt):
        return RequestResult(prompt_index=prompt.index, chunk_times=[0.1], chunk_tokens=[2], text_parts=["ab"],
                             output_token_ids=[11, 12], prompt_token_ids=[1], finish_reason="length")

    monkeypatch.setattr(sweep, "stream_request", fake_request)
    for keep in (False, True):
        points = []
        settings = SamplingSettings(model="m", max_tokens=2, keep_token_ids=keep)
        # Port 9 (discard) refuses at once: the /metrics scrapes fail quietly, the requests are the fake's.
        sweep.run_sweep("http://127.0.0.1:9", settings, [Prompt(index=0, text="a")], [sweep.LoadPoint(1)], points,
                        sweep.SweepOptions(progress=False))
        (request,) = points[0]["requests"]
        assert request.get("output_token_ids") == ([11, 12] if keep else None)
        assert ("prompt_token_ids" in request) is keep


@pytest.mark.parametrize("point", [LoadPoint(concurrency=4), LoadPoint(request_rate=2.5),
                                   LoadPoint(concurrency=8, request_rate=math.inf)])
def test_load_point_comes_back_from_its_dict(point):
    """A results file's `load` names its point as the sweep did (near_ties.py keys requests by it)."""
    back = LoadPoint.from_dict(json.loads(json.dumps(point.as_dict())))
    assert back == point and back.name == point.name
