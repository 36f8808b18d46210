"""The bench client under Ctrl-C: a cancellation that arrives as a client error still cancels the sweep."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from vllm_dspark.bench.client import SamplingSettings, stream_request
from vllm_dspark.bench.prompts import Prompt


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
