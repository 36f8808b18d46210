"""benchmarks.serving.soak: its checks on hand-made outcomes, and a small soak run against real servers.

The small run (pycode-23m, the script's own drafter, 64 requests + 8 warm-up on each server, KV cache of 10 blocks
of 32 tokens) must pass every check the full soak has: no request errors, preemption seen, greedy ids identical to
no speculation, RSS stable, no leaked requests, both servers alive.
"""
from __future__ import annotations

import pytest

from benchmarks.serving.soak.checks import greedy_check, request_check, server_checks
from benchmarks.serving.soak.cli import parse_args
from benchmarks.serving.soak.client import Outcome, judge
from benchmarks.serving.soak.mix import KINDS, MixOptions, SoakRequest, make_requests
from benchmarks.serving.soak.rss import rss_summary
from benchmarks.serving.soak.run import SoakOptions, run_soak, server_env, summary

PROMPTS = [list(range(10 + i, 60 + 3 * i)) for i in range(20)]


def _mix(**kw):
    return MixOptions(**{"num_requests": 200, "max_model_len": 128, "min_tokens": 8, "max_tokens": 16, **kw})


def test_request_list_is_deterministic_and_within_limits():
    a, b = make_requests(PROMPTS, _mix()), make_requests(PROMPTS, _mix())
    assert [vars(r) for r in a] == [vars(r) for r in b]
    assert len(a) == 200 and [r.index for r in a] == list(range(200))
    assert {r.kind for r in a} == set(KINDS)
    assert any(r.abort_after_chunks for r in a) and any(r.near_limit for r in a)
    assert any(len(r.prompt_token_ids) + r.max_tokens == 128 for r in a)  # some exactly at the limit
    for r in a:
        assert len(r.prompt_token_ids) + r.max_tokens <= 128
        assert (r.n > 1) == (r.kind == "multi") and (r.temperature == 0) == (r.kind == "greedy")
        if r.repeat_of is not None:
            original = a[r.repeat_of]
            assert original.index < r.index and original.repeat_of is None and original.kind == "seeded"
            assert (original.prompt_token_ids, original.seed) == (r.prompt_token_ids, r.seed)
    assert any(r.repeat_of is not None for r in a)
    assert [vars(r) for r in make_requests(PROMPTS, _mix(seed=1))] != [vars(r) for r in a]


def test_judge_rejects_unfinished_and_overlong_choices():
    req = SoakRequest(index=0, kind="multi", prompt_token_ids=[1] * 100, max_tokens=10, n=2, temperature=1.0)
    ok = Outcome(index=0, token_ids=[[5] * 10, [6] * 3], finish_reasons=["length", "stop"])
    judge(ok, req, max_model_len=128)
    assert ok.status == "finished", ok.error
    for token_ids, reasons in (([[5] * 10, [6] * 3], ["length", None]),  # one choice never finished
                               ([[5] * 11, [6] * 3], ["length", "stop"]),  # more than max_tokens
                               ([[5] * 4, [6] * 3], ["length", "stop"]),  # "length" before any limit
                               ([[5] * 10], ["length"])):  # a choice missing
        bad = Outcome(index=0, token_ids=token_ids, finish_reasons=reasons)
        judge(bad, req, max_model_len=128)
        assert bad.status == "error", (token_ids, reasons)


def test_checks_fail_on_an_error_and_on_differing_greedy_ids():
    reqs = [SoakRequest(index=i, kind="greedy", prompt_token_ids=[1, 2], max_tokens=4) for i in range(3)]
    done = [Outcome(index=i, status="finished", token_ids=[[7, 8]], finish_reasons=["stop"]) for i in range(3)]
    check, counts = request_check("x", reqs, done, warmup=[])
    assert check.passed and counts == {"finished": 3, "aborted": 0, "error": 0}
    failed = [*done[:2], Outcome(index=2, status="error", http_status=500, error="boom")]
    assert not request_check("x", reqs, failed, warmup=[])[0].passed
    assert not request_check("x", reqs, done, warmup=[failed[2]])[0].passed

    assert greedy_check(reqs, done, done)[0].passed
    other = [*done[:2], Outcome(index=2, status="finished", token_ids=[[7, 9]], finish_reasons=["stop"])]
    check, stats = greedy_check(reqs, done, other)
    assert not check.passed and stats["mismatched"][0]["index"] == 2 and stats["mismatched"][0]["first_difference"] == 1
    assert not greedy_check(reqs, done[:0], done[:0])[0].passed  # nothing compared is no evidence


def test_rss_and_leak_checks():
    flat = [(2.0 * i, {"api_server": 600.0 + (i % 3), "VLLM::EngineCore": 400.0}) for i in range(40)]
    growing = [(2.0 * i, {"api_server": 600.0, "VLLM::EngineCore": 400.0 + 10 * i}) for i in range(40)]
    assert rss_summary(growing)["growth_by_role_mb"] == {"VLLM::EngineCore": 300.0, "api_server": 0.0}
    zero = {"vllm:num_requests_running": 0.0, "vllm:num_requests_waiting": 0.0, "vllm:kv_cache_usage_perc": 0.0}
    before, after = {"vllm:num_preemptions_total": 2.0}, {"vllm:num_preemptions_total": 9.0}
    by_name = {c.name.split(" (")[0]: c for c in
               server_checks("s", before, after, zero, rss_summary(flat), rss_growth_mb=100)}
    assert all(c.passed for c in by_name.values()), by_name
    grown = server_checks("s", before, before, {**zero, "vllm:num_requests_running": 1.0},
                          rss_summary(growing), rss_growth_mb=100)
    assert not any(c.passed for c in grown)  # no preemption, RSS +300 MB, one request left running


def test_onednn_cache_capacity_reaches_the_servers():
    """The default turns oneDNN's primitive cache off in both servers; -1 leaves oneDNN's own default."""
    opts, _ = parse_args([])
    assert server_env(opts)["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "0"
    opts, _ = parse_args(["--onednn-cache-capacity", "64"])
    assert server_env(opts)["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"
    opts, _ = parse_args(["--onednn-cache-capacity", "-1"])
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in server_env(opts)


@pytest.mark.slow
@pytest.mark.e2e
def test_small_soak_passes_every_check(pycode_dir, tmp_path):
    opts = SoakOptions(
        target=pycode_dir, drafter=None, concurrency=8, max_num_seqs=8, block_size=32, num_blocks=10,
        warmup_requests=8, work_dir=tmp_path,
        mix=MixOptions(num_requests=64, max_model_len=160, min_tokens=16, max_tokens=28, seed=0))
    doc = run_soak(opts)
    report = summary(doc)
    assert doc["passed"], report
    assert not [c for c in doc["checks"] if c["verdict"] == "FAIL"], report
    for name in ("nospec", "dspark"):
        counts = doc["servers"][name]["counts"]
        assert counts["aborted"] > 0 and counts["finished"] > 0 and counts["error"] == 0, report
    assert doc["greedy"]["compared"] >= 10, report
    assert doc["servers"]["dspark"]["metrics_delta"].get("vllm:spec_decode_num_drafts_total", 0) > 0, report
