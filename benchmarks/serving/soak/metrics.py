"""vLLM's Prometheus metrics: a scrape, and the request / KV-cache gauges once the load is over."""
from __future__ import annotations

import time

import httpx

from vllm_dspark.bench.metrics_scrape import parse_metrics

METRIC_PREFIXES = ("vllm:",)


def scrape(url: str) -> dict[str, float]:
    """vLLM's samples by name ({} when the server does not answer)."""
    try:
        text = httpx.get(url + "/metrics", timeout=30).text
    except httpx.HTTPError:
        return {}
    return {k: s.value for k, s in parse_metrics(text, METRIC_PREFIXES).items()}


def settle_gauges(url: str, model: str, timeout_s: float = 30.0) -> dict[str, float]:
    """Gauges after the load: one short probe request first (vLLM refreshes its gauges on an engine step, and a
    client abort alone causes none), then poll until running / waiting / KV usage are 0 or time runs out."""
    try:
        httpx.post(url + "/v1/completions", json={"model": model, "prompt": [1, 2, 3], "max_tokens": 1}, timeout=60)
    except httpx.HTTPError:
        pass  # a dead server shows in the gauges (NaN) and the /health check
    deadline = time.monotonic() + timeout_s
    while True:
        m = scrape(url)
        gauges = {k: m.get(k, float("nan")) for k in
                  ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")}
        if all(v == 0 for v in gauges.values()) or time.monotonic() > deadline:
            return gauges
        time.sleep(1.0)
