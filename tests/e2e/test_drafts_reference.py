"""vLLM's DSpark drafts equal the plain-torch reference drafter's on the same contexts (T = 0, float32).

The "confidence" server dumps every draft round (VLLM_DSPARK_DEBUG_DUMP): prompt ids, anchor position and token,
drafted tokens, confidence logits; `reference_drafts` redrafts each greedy round with `DSparkDrafter.draft`. The
"dynamic" server does too: its rounds after steps without drafts check the context K/V those steps held back.
"""
from __future__ import annotations

import collections
import json

from clients import completions
from reference_drafts import assert_drafts_match_reference, greedy_sequences
from server import COMMON_ARGS, Server

NUM_PROMPTS = 4
GAMMA = 4  # conftest's


def test_drafts_equal_reference(servers, e2e_prompts, e2e_target, e2e_drafter):
    sequences = greedy_sequences(servers.get("confidence"), e2e_prompts[:NUM_PROMPTS])
    assert_drafts_match_reference(servers.dump, sequences, e2e_target, e2e_drafter, min_rounds=3 * NUM_PROMPTS)


def test_short_blocks_equal_reference(e2e_prompts, e2e_target, e2e_drafter, tmp_path):
    """Where the policy verified only short prefixes lately at a load, the backbone runs a block only one slot past
    the longest of them (a synchronous engine takes fewer than γ drafts per request). A shorter block is not a
    prefix of the full one (the block attends to itself both ways): its drafts must equal the reference drafter's
    run on a block of that width. Here a cost table on which every verified draft costs a second makes every
    length 0, so after the first round at each load the block is the narrowest, 2 slots (anchor and one mask)."""
    table = tmp_path / "steep.json"
    xs = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    table.write_text(json.dumps({"batch_tokens": xs, "step_seconds": [0.01 + (x - 1) for x in xs]}))
    spec = {"method": "dflash", "model": str(e2e_drafter), "num_speculative_tokens": GAMMA,
            "dspark": {"mode": "confidence", "cost_table": str(table), "online_refit": False, "draft_gate": False}}
    dump = tmp_path / "drafts.jsonl"
    server = Server("narrow", [*COMMON_ARGS, "--speculative-config", json.dumps(spec)],
                    {"VLLM_DSPARK_DEBUG_DUMP": str(dump)}, tmp_path / "narrow.log")
    server.start(e2e_target)
    try:
        server.wait_ready()
        sequences = greedy_sequences(server, e2e_prompts[:NUM_PROMPTS])
    finally:
        server.stop()
    rounds = [json.loads(line) for line in dump.read_text().splitlines()]
    widths = collections.Counter(r["block"] for r in rounds)
    assert widths[2] >= 0.8 * len(rounds), f"block widths {dict(widths)}: expected 2 after each load's first round"
    short = [r for r in rounds if r["block"] == 2]
    assert all(len(r["drafts"]) == 1 for r in short)  # and the sequential head stops one past the lengths (0)
    run_dump = tmp_path / "short_blocks.jsonl"
    run_dump.write_text("".join(json.dumps(r) + "\n" for r in short))
    assert_drafts_match_reference(run_dump, sequences, e2e_target, e2e_drafter, min_rounds=3 * NUM_PROMPTS)


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
