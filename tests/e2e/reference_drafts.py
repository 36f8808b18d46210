"""Check a server's dumped draft rounds (VLLM_DSPARK_DEBUG_DUMP) against the plain-torch reference drafter.

For rounds of greedy requests the context is rebuilt from the final token sequence; the target runs in
transformers for its hidden states and `DSparkDrafter.draft` drafts on them: the parallel backbone over vLLM's
paged context K/V, the target layers feeding it, the DSpark block layout and the sequential head must all agree.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from clients import client, model_id


def greedy_sequences(server, prompts: list[str], max_tokens: int = 24) -> dict[tuple[int, ...], list[int]]:
    """prompt ids -> prompt + generated ids, one T = 0 completion per prompt."""
    c = client(server)
    model = model_id(server)
    sequences = {}
    for prompt in prompts:
        out = c.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0,
                                   extra_body={"return_token_ids": True})
        choice = out.choices[0]
        sequences[tuple(choice.prompt_token_ids)] = list(choice.prompt_token_ids) + list(choice.token_ids)
    return sequences


def assert_drafts_match_reference(dump: Path, sequences: dict, target_dir: Path, drafter_dir: Path,
                                  min_rounds: int) -> None:
    from transformers import AutoModelForCausalLM

    from vllm_dspark.checkpoint import load_drafter
    from vllm_dspark.config import DrafterMismatchError
    from vllm_dspark.model import target_features

    records = [json.loads(line) for line in Path(dump).read_text().splitlines()]
    records = [r for r in records if r["temperature"] == 0.0 and tuple(r["prompt_token_ids"] or ()) in sequences]
    # The last round of a request may start past the returned text (the step that reached max_tokens accepted
    # more tokens than were returned); those contexts are unknown here.
    records = [r for r in records if r["anchor_pos"] < len(sequences[tuple(r["prompt_token_ids"])])]
    assert len(records) >= min_rounds, f"only {len(records)} dumped rounds for our prompts"
    assert all(r["conf_logits"] is not None for r in records), "the dump has no confidence logits"

    target = AutoModelForCausalLM.from_pretrained(str(target_dir), dtype=torch.float32).eval()
    try:  # checkpoints with their own embedding / LM head copies (vLLM keeps distinct ones)
        drafter = load_drafter(drafter_dir, dtype=torch.float32)
    except DrafterMismatchError:  # native layout: both shared with the target, as vLLM does
        drafter = load_drafter(drafter_dir, target, dtype=torch.float32)
    layer_ids = drafter.config.target_layer_ids
    same, conf_errors = 0, []
    for r in records:
        seq = sequences[tuple(r["prompt_token_ids"])]
        pos = r["anchor_pos"]
        assert seq[pos] == r["anchor"], "the dumped anchor is not the token at its position"
        with torch.no_grad():
            out = target(torch.tensor([seq[:pos]]), output_hidden_states=True)
            # the backbone ran a block of r["block"] slots; the sequential head may have stopped early (shorter drafts)
            block = drafter.draft(target_features(out.hidden_states, layer_ids), torch.arange(pos)[None],
                                  torch.tensor([r["anchor"]]), torch.tensor([pos]), gamma=r["block"])
        depth = len(r["drafts"])
        if block.tokens[0, :depth].tolist() == r["drafts"]:
            same += 1
            conf_errors.append((block.confidence_logits[0, :depth] - torch.tensor(r["conf_logits"])).abs().max().item())
    assert same >= 0.95 * len(records), f"{same}/{len(records)} rounds drafted the reference's tokens"
    assert max(conf_errors) < 1e-3, f"confidence logits differ by up to {max(conf_errors):.2e}"
