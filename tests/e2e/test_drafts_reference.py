"""vLLM's DSpark drafts equal the plain-torch reference drafter's on the same contexts (T = 0, float32).

The "confidence" server dumps every draft round (VLLM_DSPARK_DEBUG_DUMP): prompt ids, anchor position and token,
drafted tokens, confidence logits; `reference_drafts` redrafts each greedy round with `DSparkDrafter.draft`.
"""
from __future__ import annotations

from reference_drafts import assert_drafts_match_reference, greedy_sequences

NUM_PROMPTS = 4


def test_drafts_equal_reference(servers, e2e_prompts, e2e_target, e2e_drafter):
    sequences = greedy_sequences(servers.get("confidence"), e2e_prompts[:NUM_PROMPTS])
    assert_drafts_match_reference(servers.dump, sequences, e2e_target, e2e_drafter, min_rounds=3 * NUM_PROMPTS)
