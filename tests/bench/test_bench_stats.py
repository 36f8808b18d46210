"""Per-user speed, TPOT and point summaries on hand-made requests (expected values computed by hand)."""
import pytest

from vllm_dspark.bench.stats import distribution, per_user_speed, summarize_point, time_per_output_token


def test_per_user_speed_counts_tokens_after_the_first_chunk():
    # Chunks at 0.1 s (1 token, prefill), 0.2 s (3 tokens, a speculative step), 0.4 s (2 tokens):
    # (3 + 2) tokens / (0.4 - 0.1) s.
    assert per_user_speed([0.1, 0.2, 0.4], [1, 3, 2]) == pytest.approx(5 / 0.3)


def test_per_user_speed_is_none_without_a_time_span():
    assert per_user_speed([0.5], [4]) is None
    assert per_user_speed([], []) is None
    assert per_user_speed([0.5, 0.5], [1, 1]) is None


def test_per_user_speed_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="chunk_times"):
        per_user_speed([0.1, 0.2], [1])


def test_tpot_matches_vllm_definition():
    assert time_per_output_token(0.1, 0.4, 6) == pytest.approx(0.3 / 5)
    assert time_per_output_token(0.1, 0.4, 1) is None


def test_distribution_uses_linear_percentiles_and_skips_none():
    d = distribution([4.0, None, 1.0, 3.0, 2.0])
    assert d["mean"] == pytest.approx(2.5)
    assert d["p50"] == pytest.approx(2.5)
    assert d["p10"] == pytest.approx(1.3)  # rank 0.1 * 3 = 0.3 between 1 and 2
    assert d["p90"] == pytest.approx(3.7)
    assert distribution([None]) == {"mean": None, "p10": None, "p50": None, "p90": None}


def _req(ok, out, latency, ttft, speed, tpot, prompt=10):
    return {"ok": ok, "output_tokens": out, "latency_s": latency, "ttft_s": ttft, "per_user_speed": speed,
            "tpot_s": tpot, "prompt_tokens": prompt}


def test_summarize_point_aggregates_only_successful_requests():
    reqs = [_req(True, 10, 1.0, 0.1, 10.0, 0.1), _req(True, 20, 2.0, 0.3, 30.0, 0.05),
            _req(False, 0, None, None, None, None, None)]
    s = summarize_point(reqs, duration_s=2.0, concurrency=2)
    assert (s["num_requests"], s["completed"], s["failed"]) == (3, 2, 1)
    assert s["output_tokens"] == 30 and s["prompt_tokens"] == 20
    assert s["output_throughput"] == pytest.approx(15.0)  # 30 tokens / 2 s
    assert s["request_throughput"] == pytest.approx(1.0)
    assert s["mean_concurrency"] == pytest.approx(1.5)  # (1 + 2) s of requests in 2 s
    assert s["per_user_speed_vllm"] == pytest.approx(7.5)  # 15 tok/s / concurrency 2
    assert s["per_user_speed"]["p50"] == pytest.approx(20.0)
    assert s["per_user_speed_tpot"]["mean_tpot_s"] == pytest.approx(0.075)
    assert s["per_user_speed_tpot"]["speed_from_mean_tpot"] == pytest.approx(1 / 0.075)
    assert s["ttft_s"]["mean"] == pytest.approx(0.2)


def test_summarize_point_without_concurrency_limit_uses_measured_concurrency():
    s = summarize_point([_req(True, 10, 1.0, 0.1, 10.0, 0.1)], duration_s=4.0, concurrency=None)
    # 2.5 tok/s over a mean of 0.25 requests in flight.
    assert s["per_user_speed_vllm"] == pytest.approx(2.5 / 0.25)
