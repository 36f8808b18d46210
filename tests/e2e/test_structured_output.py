"""Structured outputs with per-request verification lengths: the grammar bitmask vLLM builds for the scheduled drafts
must line up with the drafts the worker keeps (patch_runner_trim), or constrained tokens come out wrong.

Greedy requests constrained by a regex and by a JSON schema, all in flight at once, on the "confidence" server
(lengths from a fixed cost table: drafts cut per request) and the "sla" server (draft gate on: rounds without
drafts too), token-identical to the plain server; the regex outputs match it and drafts were verified meanwhile.
"""
from __future__ import annotations

import json
import re

import pytest

from clients import completions

NUM_PROMPTS = 8
REGEX = r"def [a-z_]{1,12}\(\):\n    return [0-9]{1,4}\n"
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
                                           "size": {"type": "integer"}}, "required": ["name", "size"],
          "additionalProperties": False}
CONSTRAINTS = {"regex": {"structured_outputs": {"regex": REGEX}},
               "json": {"structured_outputs": {"json": SCHEMA}}}
_PLAIN: dict[str, list[list[int]]] = {}


def constrained(server, prompts, kind: str) -> list[list[int]]:
    return completions(server, prompts, max_tokens=48, temperature=0.0, extra_body=CONSTRAINTS[kind])


@pytest.mark.parametrize("kind", sorted(CONSTRAINTS))
@pytest.mark.parametrize("mode", ["confidence", "sla"])
def test_constrained_greedy_equals_plain(servers, e2e_prompts, mode, kind):
    prompts = [p[-200:] for p in e2e_prompts[:NUM_PROMPTS]]
    if kind not in _PLAIN:
        _PLAIN[kind] = constrained(servers.get("plain"), prompts, kind)
    server = servers.get(mode)
    keys = ("vllm:spec_decode_num_draft_tokens_total", "dspark:draft_off_steps_total")
    before = server.metrics()
    got = constrained(server, prompts, kind)
    after = server.metrics()
    verified, gated = (after[k] - before[k] for k in keys)
    # Either path cuts the scheduled drafts on the worker (to the policy's lengths, or to none where the draft
    # gate leaves drafting off at this load), so the bitmask rows must follow the cut.
    assert verified > 0 or (mode == "sla" and gated > 0), (
        f"{mode}: no draft was verified (and no round was left without drafts): the test would not exercise trimming")
    mismatched = [i for i, (g, w) in enumerate(zip(got, _PLAIN[kind])) if g != w]
    assert not mismatched, f"mode {mode}, {kind}: requests {mismatched} differ from the plain server"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(servers.target))
    texts = [tok.decode(g, skip_special_tokens=True) for g in got]
    if kind == "regex":
        assert all(re.fullmatch(REGEX, t) for t in texts), texts
    for text in texts if kind == "json" else ():
        try:
            json.loads(text)
        except json.JSONDecodeError:  # cut by max_tokens: still an object's beginning
            assert text.lstrip().startswith("{"), text
