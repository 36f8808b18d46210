"""Load sweep against one endpoint: each point sends the same prompts at one load level and is summarised.

Load levels: a closed loop of `concurrency` users (each sends its next request when the previous one ends; the
usual serving benchmark and the x-axis of vLLM's Pareto plots), or an open loop with Poisson arrivals at
`request_rate` requests/s (seeded exponential gaps), optionally capped at `concurrency` requests in flight.
Server metrics are scraped right before and after a point, so their deltas belong to that point alone (the
server must be otherwise idle).
"""
from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
import httpx
from tqdm import tqdm

from vllm_dspark.bench import metrics_scrape
from vllm_dspark.bench.client import RequestResult, SamplingSettings, raise_if_cancelling, stream_request
from vllm_dspark.bench.prompts import Prompt
from vllm_dspark.bench.server import ServerError
from vllm_dspark.bench.stats import summarize_point


@dataclass(frozen=True)
class LoadPoint:
    concurrency: int | None = None  # closed loop (or the cap in request-rate mode)
    request_rate: float | None = None  # requests/s with Poisson arrivals; math.inf sends all at once

    def __post_init__(self):
        if self.concurrency is None and self.request_rate is None:
            raise ValueError("a load point needs concurrency or request_rate")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.request_rate is not None and not self.request_rate > 0:
            raise ValueError(f"request_rate must be > 0, got {self.request_rate}")

    @property
    def name(self) -> str:
        if self.request_rate is None:
            return f"c={self.concurrency}"
        cap = f",c<={self.concurrency}" if self.concurrency else ""
        return f"rate={self.request_rate:g}{cap}"

    @classmethod
    def from_dict(cls, d: dict) -> "LoadPoint":
        """The inverse of `as_dict` (a results file's `load`)."""
        rate = d.get("request_rate")
        return cls(concurrency=d.get("concurrency"), request_rate=None if rate is None else float(rate))

    def as_dict(self) -> dict:
        rate = self.request_rate
        return {"concurrency": self.concurrency, "request_rate": None if rate is None else
                ("inf" if math.isinf(rate) else rate)}


@dataclass(frozen=True)
class SweepOptions:
    metrics_prefixes: tuple[str, ...] = metrics_scrape.DEFAULT_PREFIXES
    request_timeout_s: float = 600.0
    keep_chunk_times: bool = True  # store every chunk's time and token count per request in the JSON
    seed: int = 0  # Poisson arrival times
    progress: bool = True


class ServerDied(ServerError):
    """The server stopped answering during a load point (the point is discarded, earlier ones are kept)."""


def discover_model(base_url: str, timeout: float = 10.0) -> str:
    """The first model id the server lists at /v1/models."""
    resp = httpx.get(base_url.rstrip("/") + "/v1/models", timeout=timeout)
    resp.raise_for_status()
    models = resp.json().get("data") or []
    if not models:
        raise ServerError(f"{base_url}/v1/models lists no models")
    return models[0]["id"]


def server_info(base_url: str, timeout: float = 10.0) -> dict:
    """What the server says about itself: /version and /v1/models (None where an endpoint is missing)."""
    info: dict = {}
    for key, path in (("version", "/version"), ("models", "/v1/models")):
        try:
            resp = httpx.get(base_url.rstrip("/") + path, timeout=timeout)
            info[key] = resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            info[key] = None
    return info


_PROBE_TIMEOUT = aiohttp.ClientTimeout(total=30)  # /metrics and /health; requests have their own, longer limit


async def _scrape(session: aiohttp.ClientSession, base_url: str, prefixes: Sequence[str]):
    try:
        async with session.get(base_url.rstrip("/") + "/metrics", timeout=_PROBE_TIMEOUT) as resp:
            if resp.status != 200:
                return None
            return metrics_scrape.parse_metrics(await resp.text(), prefixes)
    except (aiohttp.ClientError, OSError, TimeoutError):
        raise_if_cancelling()
        return None


async def _send_closed_loop(session, base_url, settings, prompts, concurrency, on_done) -> list[RequestResult]:
    queue = list(reversed(prompts))
    results: list[RequestResult] = []

    async def user():
        while queue:
            result = await stream_request(session, base_url, settings, queue.pop())
            results.append(result)
            on_done()

    await asyncio.gather(*(user() for _ in range(min(concurrency, len(prompts)))))
    return results


async def _send_poisson(session, base_url, settings, prompts, rate, cap, seed, on_done) -> list[RequestResult]:
    rng = random.Random(seed)
    limit = asyncio.Semaphore(cap) if cap else None

    async def one(prompt):
        if limit is None:
            result = await stream_request(session, base_url, settings, prompt)
        else:
            async with limit:
                result = await stream_request(session, base_url, settings, prompt)
        on_done()
        return result

    tasks = []
    for prompt in prompts:
        tasks.append(asyncio.create_task(one(prompt)))
        if not math.isinf(rate):
            await asyncio.sleep(rng.expovariate(rate))
    return list(await asyncio.gather(*tasks))


async def _run_point(base_url, settings, prompts, load, options, on_done, server_alive) -> dict:
    timeout = aiohttp.ClientTimeout(total=options.request_timeout_s)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        before = await _scrape(session, base_url, options.metrics_prefixes)
        start = time.perf_counter()
        if load.request_rate is None:
            results = await _send_closed_loop(session, base_url, settings, prompts, load.concurrency, on_done)
        else:
            results = await _send_poisson(session, base_url, settings, prompts, load.request_rate,
                                          load.concurrency, options.seed, on_done)
        duration = time.perf_counter() - start
        failed = [r for r in results if not r.ok]
        if failed:
            healthy = server_alive() if server_alive else True
            if healthy:
                try:
                    async with session.get(base_url.rstrip("/") + "/health", timeout=_PROBE_TIMEOUT) as resp:
                        healthy = resp.status == 200
                except (aiohttp.ClientError, OSError, TimeoutError):
                    raise_if_cancelling()
                    healthy = False
            if not healthy:
                raise ServerDied(f"server died or stopped answering during point {load.name}: "
                                 f"{len(results) - len(failed)}/{len(results)} requests finished; "
                                 f"first error: {failed[0].error}")
        after = await _scrape(session, base_url, options.metrics_prefixes)
    requests = [r.summary(start, options.keep_chunk_times, settings.keep_token_ids)
                for r in sorted(results, key=lambda r: r.start)]
    point = {"load": load.as_dict(), **summarize_point(requests, duration, load.concurrency)}
    if before is not None and after is not None:
        point["server_metrics"] = metrics_scrape.delta(before, after)
        point["spec_decode"] = metrics_scrape.spec_decode_summary(point["server_metrics"])
    else:
        point["server_metrics"] = None
        point["spec_decode"] = None
    point["errors"] = sorted({r.error for r in results if r.error})[:5]
    point["requests"] = requests
    return point


def warmup(base_url: str, settings: SamplingSettings, prompts: Sequence[Prompt], timeout_s: float = 600.0) -> None:
    """Send `prompts` one by one, unrecorded (first requests pay one-off costs); raise ServerError on failure."""
    async def go():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
            for prompt in prompts:
                result = await stream_request(session, base_url, settings, prompt)
                if not result.ok:
                    raise ServerError(f"warm-up request failed: {result.error}")
    asyncio.run(go())


def run_sweep(
    base_url: str,
    settings: SamplingSettings,
    prompts: Sequence[Prompt],
    loads: Sequence[LoadPoint],
    points: list[dict],
    options: SweepOptions = SweepOptions(),
    on_point: Callable[[], None] | None = None,
    server_alive: Callable[[], bool] | None = None,
    label: str = "",
) -> None:
    """Run every load point in order, appending each finished point to `points` and then calling `on_point`.

    Raises ServerDied when the server stops answering (earlier points stay in `points`), KeyboardInterrupt on
    Ctrl-C. `server_alive` (e.g. `ServerProcess.alive`) tells a dead local server from a failing request.
    """
    bar = tqdm(total=len(loads) * len(prompts), unit="req", disable=not options.progress, dynamic_ncols=True)
    try:
        for load in loads:
            bar.set_description(f"{label} {load.name}".strip())
            point = asyncio.run(_run_point(base_url, settings, list(prompts), load, options,
                                           lambda: bar.update(1), server_alive))
            points.append(point)
            if on_point:
                on_point()
    finally:
        bar.close()
