"""vLLM's DSpark drafts equal the plain-torch reference drafter's on the same contexts (T = 0, float32).

The "confidence" server dumps every draft round (VLLM_DSPARK_DEBUG_DUMP): prompt ids, anchor position and token,
drafted tokens, confidence logits. For rounds of greedy requests we rebuild the context from the final token
sequence, run the target in transformers for its hidden states and `DSparkDrafter.draft` on them: the parallel
backbone over vLLM's paged context K/V, the DSpark block layout and the sequential head must all agree.
"""
from __future__ import annotations

import json

import torch

from clients import client

NUM_PROMPTS = 4


def test_drafts_equal_reference(servers, e2e_prompts, e2e_target, e2e_drafter):
    from transformers import AutoModelForCausalLM

    from vllm_dspark.checkpoint import load_drafter
    from vllm_dspark.config import DrafterMismatchError
    from vllm_dspark.model import target_features

    server = servers.get("confidence")
    c = client(server)
    model = c.models.list().data[0].id
    sequences = {}
    for prompt in e2e_prompts[:NUM_PROMPTS]:
        out = c.completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0.0,
                                   extra_body={"return_token_ids": True})
        choice = out.choices[0]
        sequences[tuple(choice.prompt_token_ids)] = list(choice.prompt_token_ids) + list(choice.token_ids)
    records = [json.loads(line) for line in servers.dump.read_text().splitlines()]
    records = [r for r in records if r["temperature"] == 0.0 and tuple(r["prompt_token_ids"] or ()) in sequences]
    # The last round of a request may start past the returned text (the step that reached max_tokens accepted
    # more tokens than were returned); those contexts are unknown here.
    records = [r for r in records if r["anchor_pos"] < len(sequences[tuple(r["prompt_token_ids"])])]
    assert len(records) >= 3 * NUM_PROMPTS, f"only {len(records)} dumped rounds for our prompts"

    target = AutoModelForCausalLM.from_pretrained(str(e2e_target), dtype=torch.float32).eval()
    try:  # checkpoints with their own embedding / LM head copies (vLLM keeps distinct ones)
        drafter = load_drafter(e2e_drafter, dtype=torch.float32)
    except DrafterMismatchError:  # native layout: both shared with the target, as vLLM does
        drafter = load_drafter(e2e_drafter, target, dtype=torch.float32)
    layer_ids = drafter.config.target_layer_ids
    same, conf_errors = 0, []
    for r in records:
        seq = sequences[tuple(r["prompt_token_ids"])]
        pos = r["anchor_pos"]
        assert seq[pos] == r["anchor"], "the dumped anchor is not the token at its position"
        with torch.no_grad():
            out = target(torch.tensor([seq[:pos]]), output_hidden_states=True)
            block = drafter.draft(target_features(out.hidden_states, layer_ids), torch.arange(pos)[None],
                                  torch.tensor([r["anchor"]]), torch.tensor([pos]), gamma=len(r["drafts"]))
        if block.tokens[0].tolist() == r["drafts"]:
            same += 1
            conf_errors.append((block.confidence_logits[0] - torch.tensor(r["conf_logits"])).abs().max().item())
    assert same >= 0.95 * len(records), f"{same}/{len(records)} rounds drafted the reference's tokens"
    assert max(conf_errors) < 1e-3, f"confidence logits differ by up to {max(conf_errors):.2e}"
