"""DSpark served by vLLM (V1 runner, CPU): lossless at T = 0 and T = 1, metrics, load-dependent lengths.

Servers (conftest.py): "plain" (no speculation) and one per DSpark mode ("static" with greedy drafts,
"confidence" and "sla" with probabilistic drafts whose distributions reach the rejection sampler), and "dynamic":
static drafts with γ per batch size from vLLM's dynamic speculative decoding, async scheduling on.
"""
from __future__ import annotations

import pytest

from clients import chats, completions

MODES = ("static", "confidence", "sla", "dynamic")


_RESULTS: dict[tuple[str, str], list[list[int]]] = {}


def greedy(kind: str, server, prompts: list[str]) -> list[list[int]]:
    """16 requests in flight at T = 0, once per (kind, server) per session."""
    key = (kind, server.name)
    if key not in _RESULTS:
        _RESULTS[key] = completions(server, prompts, temperature=0.0) if kind == "completions" else chats(server, prompts)
    return _RESULTS[key]


@pytest.fixture(scope="module")
def plain_greedy(servers, e2e_prompts):
    plain = servers.get("plain")
    return {kind: greedy(kind, plain, e2e_prompts) for kind in ("completions", "chat")}


@pytest.mark.parametrize("mode", MODES)
def test_greedy_completions_equal_plain(servers, e2e_prompts, plain_greedy, mode):
    got = greedy("completions", servers.get(mode), e2e_prompts)
    want = plain_greedy["completions"]
    assert [len(g) for g in got] == [len(w) for w in want]
    mismatched = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not mismatched, f"mode {mode}: requests {mismatched} differ from the plain server"


@pytest.mark.parametrize("mode", MODES)
def test_greedy_chat_equal_plain(servers, e2e_prompts, plain_greedy, mode):
    got = greedy("chat", servers.get(mode), e2e_prompts)
    mismatched = [i for i, (g, w) in enumerate(zip(got, plain_greedy["chat"])) if g != w]
    assert not mismatched, f"mode {mode}: chat requests {mismatched} differ from the plain server"


@pytest.mark.parametrize("mode", MODES)
def test_acceptance_and_verify_metrics(servers, e2e_prompts, plain_greedy, mode):
    server = servers.get(mode)
    greedy("completions", server, e2e_prompts)
    m = server.metrics()
    assert m["vllm:spec_decode_num_accepted_tokens_total"] > 0
    assert m["vllm:spec_decode_num_accepted_tokens_per_pos_total"] > 0
    assert m["dspark:scheduler_info"] == 1
    assert m["dspark:verified_tokens_total"] == m["vllm:spec_decode_num_draft_tokens_total"]
    assert 0 < m["dspark:mean_verify_length"] <= 4
    if mode == "static":
        assert m["dspark:mean_verify_length"] == 4
    # Worker counters (CPU: the draft round is eager by design, so no CUDA graphs and no fallbacks from them).
    assert m["dspark:draft_cuda_graphs"] == 0
    assert m["dspark:draft_eager_fallbacks_total"] == 0
    decisions, fallbacks = m["dspark:length_decisions_total"], m["dspark:sla_fallbacks_total"]
    if mode in ("static", "dynamic"):
        assert decisions == fallbacks == 0, "static verification lengths need no decision"
    else:
        assert decisions > 0
        assert fallbacks <= decisions if mode == "sla" else fallbacks == 0
    # The draft gate (sla server only) explores both states at every load it sees, so some rounds draft nothing.
    off, probes = m["dspark:draft_off_steps_total"], m["dspark:draft_probe_steps_total"]
    if mode == "sla":
        assert off > 0 and probes > 0, f"draft gate: {off} rounds without drafts, {probes} probes"
    else:
        assert off == probes == 0, f"mode {mode} has no draft gate, yet {off} rounds went without drafts"


@pytest.mark.parametrize("mode", MODES)
def test_engine_start_logs_the_kernel_backend(servers, mode):
    log = servers.servers[mode].log
    servers.get(mode)
    assert "vllm-dspark: sequential-head kernel backend 'torch': cpu tensors (the Triton kernels need CUDA)" in (
        log.read_text(errors="replace"))


def _mean_length(server, prompts, concurrent: bool, per: str = "dspark:request_steps_total") -> float:
    """Drafts verified per running request-step (or per `per` counter, e.g. dspark:verify_rounds_total)."""
    before = server.metrics()
    if concurrent:
        completions(server, prompts, temperature=0.0)
    else:
        for p in prompts:
            completions(server, [p], temperature=0.0)
    after = server.metrics()
    return ((after["dspark:verified_tokens_total"] - before["dspark:verified_tokens_total"])
            / (after[per] - before[per]))


def test_verify_lengths_shrink_under_load(servers, e2e_prompts):
    server = servers.get("confidence")
    alone = _mean_length(server, e2e_prompts[:4], concurrent=False)
    loaded = _mean_length(server, e2e_prompts, concurrent=True)
    assert loaded < alone, f"mean verification length alone {alone:.2f}, with 16 in flight {loaded:.2f}"


def test_dynamic_gamma_follows_the_batch_schedule(servers, e2e_prompts):
    """conftest.DYNAMIC_SCHEDULE: γ = 4 with one request in flight, 2 from two on (vLLM picks K per step)."""
    server = servers.get("dynamic")
    full, reduced = servers.dynamic_schedule[0][2], servers.dynamic_schedule[1][2]
    rounds = "dspark:verify_rounds_total"  # drafts verified per request-round
    alone = _mean_length(server, e2e_prompts[:3], concurrent=False, per=rounds)
    loaded = _mean_length(server, e2e_prompts, concurrent=True, per=rounds)
    assert alone == full, f"one request in flight verified {alone:.2f} drafts per round, schedule says {full}"
    # 16 in flight: 2 per round until only one request is left (its tail rounds verify 4).
    assert reduced <= loaded < (reduced + full) / 2, f"16 in flight verified {loaded:.2f} drafts per round"
