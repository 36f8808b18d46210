"""DSpark served by vLLM (V1 runner, CPU): lossless at T = 0 and T = 1, metrics, load-dependent lengths.

Servers (conftest.py): "plain" (no speculation) and one per DSpark mode ("static" with greedy drafts,
"confidence" and "sla" with probabilistic drafts whose distributions reach the rejection sampler), and "dynamic":
static drafts with γ per batch size from vLLM's dynamic speculative decoding, async scheduling on.
"""
from __future__ import annotations

import json

import pytest

from clients import MAX_TOKENS, chats, completions

from vllm_dspark.scheduling import SERVING_MODES

MODES = (*SERVING_MODES, "dynamic")  # one server per mode, and "dynamic" (static under vLLM's dynamic γ)


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
    assert m["vllm:spec_decode_num_accepted_tokens_per_pos_total"] == m["vllm:spec_decode_num_accepted_tokens_total"]
    assert m["dspark:scheduler_info"] == 1
    assert m["dspark:verified_tokens_total"] == m["vllm:spec_decode_num_draft_tokens_total"]
    assert m["dspark:verify_rounds_total"] == m["vllm:spec_decode_num_drafts_total"]
    # The gauge is the counters' ratio; static verifies all γ drafts, dynamic 2 or γ per round (its schedule).
    assert m["dspark:mean_verify_length"] == pytest.approx(
        m["dspark:verified_tokens_total"] / m["dspark:verify_rounds_total"])
    if mode == "static":
        assert m["dspark:mean_verify_length"] == servers.gamma
    if mode == "dynamic":
        assert servers.dynamic_schedule[1][2] <= m["dspark:mean_verify_length"] <= servers.gamma
    # Worker counters (CPU: the draft round is eager by design, so no CUDA graphs and no fallbacks from them).
    assert m["dspark:draft_cuda_graphs"] == 0
    assert m["dspark:draft_eager_fallbacks_total"] == 0
    if mode in ("static", "dynamic"):
        assert m["dspark:length_decisions_total"] == m["dspark:sla_fallbacks_total"] == 0, (
            "static verification lengths need no decision")
    # The draft gate (sla server only) explores both states at every load it sees, so some rounds draft nothing.
    off, probes = m["dspark:draft_off_steps_total"], m["dspark:draft_probe_steps_total"]
    if mode == "sla":
        assert off > 0 and probes > 0, f"draft gate: {off} rounds without drafts, {probes} probes"
    else:
        assert off == probes == 0, f"mode {mode} has no draft gate, yet {off} rounds went without drafts"


def _greedy_accepted(drafts: list[int], length: int, sequence: list[int], anchor_pos: int) -> int:
    """Drafts accepted at T = 0: the verified prefix that repeats the target's own continuation."""
    accepted = 0
    for j, token in enumerate(drafts[:length]):
        if token != sequence[anchor_pos + 1 + j]:
            break
        accepted += 1
    return accepted


@pytest.mark.parametrize("mode", ["confidence", "sla"])
def test_counters_equal_what_the_draft_dump_records(servers, e2e_prompts, mode):
    """One greedy run (EOS ignored) on a server that dumps its rounds: the policy's decisions, SLA fallbacks,
    verified rounds and tokens, and the accepted drafts vLLM counts all follow from the dumped drafts and lengths
    (accepted: the plain server's continuation, drafted past the returned text, is the oracle)."""
    server, dump = servers.get(mode), servers.dumps[mode]
    plain = completions(servers.get("plain"), e2e_prompts, max_tokens=MAX_TOKENS + servers.gamma + 1,
                        ignore_eos=True, with_prompt_ids=True, temperature=0.0)
    reference = {tuple(p): p + out for p, out in plain}
    offset = dump.stat().st_size if dump.exists() else 0
    before = server.metrics()
    completions(server, e2e_prompts, ignore_eos=True, temperature=0.0)
    after = server.metrics()
    with open(dump, encoding="utf-8") as f:
        f.seek(offset)
        records = [json.loads(line) for line in f]
    got = {k: after[k] - before.get(k, 0.0) for k in after}
    rounds = [r["decided_mode"] for r in records if r["table_ms"] is not None]  # a round's first record has the table
    decided = [r for r in records if r["length"] is not None]
    assert len(decided) >= len(e2e_prompts), f"{len(decided)} decided request-rounds for {len(e2e_prompts)} requests"
    assert got["dspark:length_decisions_total"] == sum(m is not None for m in rounds)
    assert got["dspark:sla_fallbacks_total"] == rounds.count("sla->throughput")
    rules = {"confidence": {None, "throughput"}, "sla": {None, "sla", "sla->throughput"}}[mode]
    assert set(rounds) <= rules, f"mode {mode} decided with {set(rounds) - rules}"
    verified = [r for r in decided if r["length"] > 0]
    assert got["vllm:spec_decode_num_drafts_total"] == got["dspark:verify_rounds_total"] == len(verified)
    assert got["dspark:verified_tokens_total"] == sum(r["length"] for r in verified)
    accepted = sum(_greedy_accepted(r["drafts"], r["length"], reference[tuple(r["prompt_token_ids"])],
                                    r["anchor_pos"]) for r in verified)
    assert got["vllm:spec_decode_num_accepted_tokens_total"] == accepted


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
    """conftest.DYNAMIC_SCHEDULE: γ = 4 with one request in flight, 2 from two on, 0 with all 16 (vLLM picks K per
    step; steps without drafts are no verify rounds)."""
    server = servers.get("dynamic")
    full, reduced = servers.dynamic_schedule[0][2], servers.dynamic_schedule[1][2]
    rounds = "dspark:verify_rounds_total"  # drafts verified per request-round
    alone = _mean_length(server, e2e_prompts[:3], concurrent=False, per=rounds)
    loaded = _mean_length(server, e2e_prompts, concurrent=True, per=rounds)
    assert alone == full, f"one request in flight verified {alone:.2f} drafts per round, schedule says {full}"
    # 16 in flight: 2 per round until only one request is left (its tail rounds verify 4).
    assert reduced <= loaded < (reduced + full) / 2, f"16 in flight verified {loaded:.2f} drafts per round"


def test_step_trace_and_draft_gate(servers, e2e_prompts):
    """The sla server traces every verification step (VLLM_DSPARK_STEP_TRACE): rounds with and without drafts
    (the gate explores both at each load), the draft round's time and parts only where it drafted, verification
    times that add up to the period, predictions from the cost table, and a step count the gate agrees with."""
    from benchmarks.serving import cost_fit

    server = servers.get("sla")
    greedy("completions", server, e2e_prompts)
    m = server.metrics()
    steps = cost_fit.load(servers.step_trace)
    drafted = [s for s in steps if s["drafted"]]
    skipped = [s for s in steps if not s["drafted"]]
    assert drafted and skipped, f"{len(drafted)} traced steps with drafts, {len(skipped)} without"
    assert all(s["draft_s"] > 0 and s["draft_phases_s"].get("round", 0) > 0 for s in drafted)
    assert all(s["draft_s"] == 0 and "round" not in s["draft_phases_s"] for s in skipped)
    assert all(s["verify_s"] == pytest.approx(s["period_s"] - s["draft_s"]) and s["predicted_verify_s"] > 0
               for s in steps)
    # a step without drafts verifies one token per request (the skipped round's placeholders are all cut)
    assert all(s["batch_tokens"] == s["requests"] for s in skipped)
    # every traced step without drafts was a gate decision (a few gate decisions may not be traced: prefill steps)
    assert len(skipped) <= m["dspark:draft_off_steps_total"]
    rows = cost_fit.summarize(steps)
    assert sum(r["steps"] for r in rows) == len(steps)
    # steps with a prefill chunk are traced too, marked, so the time split accounts for the whole run
    everything = cost_fit.load(servers.step_trace, prefill=True)
    split = cost_fit.time_split(everything)
    assert split["prefill"]["steps"] > 0 and len(split["timeline"]) == len(everything) > len(steps)
    assert split["gate_gain"], "the gate measured no gain at any load"
    # each decoding step carries the tokens it generated: one per request without drafts, at most its verified
    # tokens with (the last step of a server's life is written only when a next step starts)
    assert all(s["generated_tokens"] == s["requests"] for s in skipped)
    assert all(s["requests"] <= s["generated_tokens"] <= s["batch_tokens"] for s in drafted)
    assert any(s["generated_tokens"] > s["requests"] for s in drafted), "no traced step accepted a draft"
