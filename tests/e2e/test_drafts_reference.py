"""vLLM's DSpark drafts equal the plain-torch reference drafter's on the same contexts (T = 0, float32).

The "confidence" server dumps every draft round (VLLM_DSPARK_DEBUG_DUMP): prompt ids, anchor position and token,
drafted tokens, confidence logits; `reference_drafts` redrafts each greedy round with `DSparkDrafter.draft`. The
"dynamic" server does too: its rounds after steps without drafts check the context K/V those steps held back.
"""
from __future__ import annotations

import json

from clients import completions
from reference_drafts import assert_drafts_match_reference, greedy_sequences

NUM_PROMPTS = 4


def test_drafts_equal_reference(servers, e2e_prompts, e2e_target, e2e_drafter):
    sequences = greedy_sequences(servers.get("confidence"), e2e_prompts[:NUM_PROMPTS])
    assert_drafts_match_reference(servers.dump, sequences, e2e_target, e2e_drafter, min_rounds=3 * NUM_PROMPTS)


def test_short_blocks_equal_reference(servers, e2e_prompts, e2e_target, e2e_drafter):
    """Where the policy verified only short prefixes lately at a load (under the fixed table, with many requests in
    flight a draft must survive with probability ~0.5 to be verified), the backbone runs a block only one slot past the
    longest of them (a synchronous engine takes fewer than γ drafts per request). A shorter block is not a prefix
    of the full one (the block attends to itself both ways): its drafts must equal the reference drafter's run on
    a block of that width."""
    server, dump = servers.get("confidence"), servers.dump
    greedy_sequences(server, e2e_prompts[:4])  # one at a time: the low loads (the ramp's and drain's) decide too
    offset = dump.stat().st_size if dump.exists() else 0
    out = completions(server, e2e_prompts, max_tokens=48, ignore_eos=True, with_prompt_ids=True, temperature=0.0)
    sequences = {tuple(p): p + g for p, g in out}
    with open(dump, "rb") as f:
        f.seek(offset)
        rounds = [json.loads(line) for line in f.read().decode().splitlines()]
    # rounds inside the returned text (not after a partial prefill chunk, not past the last returned token)
    short = [r for r in rounds if r["block"] < servers.gamma
             and len(r["prompt_token_ids"]) <= r["anchor_pos"] < len(sequences[tuple(r["prompt_token_ids"])])]
    widths = sorted({r["block"] for r in rounds})
    assert len(short) >= 4, f"{len(short)} of {len(rounds)} rounds ran a block shorter than γ (widths {widths})"
    assert all(len(r["drafts"]) == r["block"] for r in short)  # the sequential head walked the whole short block
    run_dump = dump.with_name("confidence_short_blocks.jsonl")
    run_dump.write_text("".join(json.dumps(r) + "\n" for r in short))
    assert_drafts_match_reference(run_dump, sequences, e2e_target, e2e_drafter, min_rounds=4)


def test_drafts_after_rounds_without_drafts_equal_reference(servers, e2e_prompts, e2e_target, e2e_drafter):
    """The dynamic server drafts nothing while all 16 requests run (γ = 0: the rounds only keep the drafter's
    context K/V, held back and written in one batch before the next drafting round) and drafts again as requests
    finish. Those drafts read the context of the steps without drafts, so they equal the reference's only if it
    was all written, in order, before they ran."""
    server, dump = servers.get("dynamic"), servers.dumps["dynamic"]
    offset = dump.stat().st_size if dump.exists() else 0
    # requests finish one by one (γ 0, then 2, then 4), the first only after every prompt's prefill: with a drafter
    # that accepts well, a request 8 tokens long would finish before the last prompt is in and 16 never run together
    limits = [24 + 2 * i for i in range(len(e2e_prompts))]
    out = completions(server, e2e_prompts, max_tokens=limits, ignore_eos=True, with_prompt_ids=True,
                      temperature=0.0)
    sequences = {tuple(p): p + g for p, g in out}
    with open(dump, "rb") as f:
        f.seek(offset)
        rounds = [json.loads(line) for line in f.read().decode().splitlines()]
    # rounds after a partial prefill chunk draft from a token vLLM discards; the rest continue the text
    rounds = [r for r in rounds if r["anchor_pos"] >= len(r["prompt_token_ids"])]
    by_request: dict[tuple[int, ...], list[dict]] = {}
    for r in rounds:
        by_request.setdefault(tuple(r["prompt_token_ids"]), []).append(r)
    # A round advances its request by at most γ + 1 tokens, so a longer gap between two rounds was steps without
    # drafts. Every round after such a gap reads context K/V that those steps held back: check those rounds.
    after_gap = []
    for req_rounds in by_request.values():
        req_rounds.sort(key=lambda r: r["anchor_pos"])
        gaps = [b["anchor_pos"] - a["anchor_pos"] > servers.gamma + 1 for a, b in zip(req_rounds, req_rounds[1:])]
        if any(gaps):
            after_gap += req_rounds[1 + gaps.index(True):]
    resumed = {tuple(r["prompt_token_ids"]) for r in after_gap}
    assert len(resumed) >= 2, (
        f"only {len(resumed)} of {len(e2e_prompts)} requests drafted again after steps without drafts")
    run_dump = dump.with_name("dynamic_drafts_after_gaps.jsonl")
    run_dump.write_text("".join(json.dumps(r) + "\n" for r in after_gap))
    assert_drafts_match_reference(run_dump, sequences, e2e_target, e2e_drafter, min_rounds=len(resumed))
