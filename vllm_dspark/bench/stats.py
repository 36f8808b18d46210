"""Per-request and per-point statistics. The ONE definition of per-user speed lives here.

Per-user speed (ours, the DSpark paper's tok/s/user, per request):

    speed = (output tokens that arrived after the first token's chunk) / (last token time - first token time)

Prefill latency (TTFT) is excluded; it measures decoding as one user sees it. Tokens are counted per streamed
chunk because speculative decoding delivers several tokens in one chunk (see `client.py` for how chunks are
counted). When the first chunk carries one token, as prefill does, this is "(output tokens - 1) / (t_last -
t_first)"; counting per chunk stays right when the server merges several steps into the first chunk (vLLM's
front end does when the client reads slower than the engine produces). A point reports the p10 / p50 / p90 /
mean of this over its requests.

Reported alongside, not used for the frontier:
- vLLM's `plot_pareto` definition: point output throughput / concurrency (a per-point number).
- TPOT-based (`vllm bench serve`): TPOT = (latency - TTFT) / (output tokens - 1) per request, speed = 1 / TPOT
  of the point's mean (and median) TPOT. For a single request it equals ours; over a point the mean of TPOTs
  weighs slow requests more than the median of speeds does.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def per_user_speed(chunk_times: Sequence[float], chunk_tokens: Sequence[int]) -> float | None:
    """Tokens after the first chunk / (last chunk time - first chunk time); None if it spans no time.

    `chunk_times[i]` is when chunk i arrived (seconds, any origin), `chunk_tokens[i]` how many tokens it carried;
    only chunks carrying tokens are passed.
    """
    if len(chunk_times) != len(chunk_tokens):
        raise ValueError(f"chunk_times ({len(chunk_times)}) and chunk_tokens ({len(chunk_tokens)}) differ in length")
    if len(chunk_times) < 2:
        return None
    span = chunk_times[-1] - chunk_times[0]
    if span <= 0:
        return None
    return float(sum(chunk_tokens[1:])) / span


def time_per_output_token(ttft: float | None, latency: float | None, output_tokens: int) -> float | None:
    """vLLM's TPOT: (latency - TTFT) / (output tokens - 1); None with fewer than 2 tokens."""
    if ttft is None or latency is None or output_tokens < 2:
        return None
    return (latency - ttft) / (output_tokens - 1)


def distribution(values: Sequence[float | None]) -> dict[str, float | None]:
    """mean, p10, p50, p90 (numpy's linear percentiles) of the non-None values; all None when there are none."""
    data = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if data.size == 0:
        return {"mean": None, "p10": None, "p50": None, "p90": None}
    p10, p50, p90 = np.percentile(data, [10, 50, 90])
    return {"mean": float(data.mean()), "p10": float(p10), "p50": float(p50), "p90": float(p90)}


def summarize_point(requests: Sequence[dict], duration_s: float, concurrency: int | None) -> dict:
    """Aggregate request summaries (dicts from `RequestResult.summary()`) of one load point.

    `duration_s` is the point's wall time (first request sent to last request finished); `concurrency` is the
    configured limit (None in request-rate mode without a limit: then vLLM's per-user speed uses the measured
    mean concurrency, sum of request latencies / duration, by Little's law).
    """
    done = [r for r in requests if r["ok"]]
    output_tokens = sum(r["output_tokens"] for r in done)
    mean_concurrency = sum(r["latency_s"] for r in done) / duration_s if duration_s > 0 and done else None
    throughput = output_tokens / duration_s if duration_s > 0 else None
    divisor = concurrency if concurrency is not None else mean_concurrency
    tpots = distribution([r["tpot_s"] for r in done])
    return {
        "num_requests": len(requests),
        "completed": len(done),
        "failed": len(requests) - len(done),
        "duration_s": duration_s,
        "output_tokens": output_tokens,
        "prompt_tokens": sum(r["prompt_tokens"] or 0 for r in done),
        "output_throughput": throughput,
        "request_throughput": len(done) / duration_s if duration_s > 0 else None,
        "mean_concurrency": mean_concurrency,
        "per_user_speed": distribution([r["per_user_speed"] for r in done]),
        "per_user_speed_vllm": throughput / divisor if throughput is not None and divisor else None,
        "per_user_speed_tpot": {
            "mean_tpot_s": tpots["mean"],
            "p50_tpot_s": tpots["p50"],
            "speed_from_mean_tpot": 1.0 / tpots["mean"] if tpots["mean"] else None,
            "speed_from_p50_tpot": 1.0 / tpots["p50"] if tpots["p50"] else None,
        },
        "ttft_s": distribution([r["ttft_s"] for r in done]),
    }
