"""A drafter written as DeepSpec writes it (config.json names its layers only as `target_layer_ids`) serves
with the embedding output (-1), layer 0 and the last legal layer (L-2) among its target layers.

vLLM's V1 runner reads the layers to capture from other keys and used to fall back to the target's EAGLE-3
defaults, so such a drafter started and then killed the engine on its first request (a feature-width mismatch).
Here the served drafts and confidences must equal the reference drafter's on those exact layers, and greedy
output must equal the plain server's.
"""
from __future__ import annotations

import json

import pytest
import torch

from clients import completions
from reference_drafts import assert_drafts_match_reference, greedy_sequences
from server import COMMON_ARGS, Server

NUM_PROMPTS = 4
GAMMA = 4


def layer_ids(num_target_layers: int) -> list[int]:
    """-1, 0, a middle layer and L-2 (the deepest layer whose output is not final-normed)."""
    return sorted({-1, 0, (num_target_layers - 2) // 2, num_target_layers - 2})


@pytest.fixture(scope="module")
def deepspec_drafter(e2e_target, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from reference.deepspec_writer import deepspec_config, random_state_dict, write_checkpoint

    target = AutoModelForCausalLM.from_pretrained(str(e2e_target), dtype=torch.float32)
    cfg = deepspec_config(target.config, target_layer_ids=layer_ids(target.config.num_hidden_layers),
                          mask_token_id=3, block_size=GAMMA, num_draft_layers=1, markov_rank=64)
    out = tmp_path_factory.mktemp("deepspec_layers")
    write_checkpoint(out, cfg, random_state_dict(cfg, target, seed=0))
    assert "dflash_config" not in cfg and "eagle_aux_hidden_state_layer_ids" not in cfg
    return out


@pytest.fixture(scope="module")
def layers_server(e2e_target, deepspec_drafter, tmp_path_factory):
    work = tmp_path_factory.mktemp("layers_server")
    spec = {"method": "dflash", "model": str(deepspec_drafter), "num_speculative_tokens": GAMMA,
            "dspark": {"mode": "static"}}
    server = Server("layers", [*COMMON_ARGS, "--speculative-config", json.dumps(spec)],
                    {"VLLM_DSPARK_DEBUG_DUMP": str(work / "drafts.jsonl")}, work / "layers.log")
    server.start(e2e_target)
    try:
        server.wait_ready()
        yield server, work / "drafts.jsonl"
    finally:
        server.stop()


def test_deepspec_layers_draft_as_reference(layers_server, e2e_prompts, e2e_target, deepspec_drafter):
    server, dump = layers_server
    sequences = greedy_sequences(server, e2e_prompts[:NUM_PROMPTS])
    assert_drafts_match_reference(dump, sequences, e2e_target, deepspec_drafter, min_rounds=3 * NUM_PROMPTS)


def test_deepspec_layers_greedy_equal_plain(layers_server, servers, e2e_prompts):
    server, _ = layers_server
    got = completions(server, e2e_prompts, temperature=0.0)
    want = completions(servers.get("plain"), e2e_prompts, temperature=0.0)
    mismatched = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not mismatched, f"requests {mismatched} differ from the plain server"
