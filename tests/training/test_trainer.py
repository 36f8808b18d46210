"""The training loop: a step lowers the loss, resume reproduces the run, DDP equals one process, outputs load."""
from __future__ import annotations

import json
import os
import shutil
import socket

import pytest
import torch
import torch.multiprocessing as mp

from vllm_dspark.checkpoint import read_state_dict
from vllm_dspark.target import load_target
from vllm_dspark.training.data import global_batch_indices, make_batch, read_records
from vllm_dspark.training.trainer import build_drafter, compute_loss, train
from vllm_dspark.training.parallel import ParallelDraftForward

from train_helpers import tiny_train_config


def _weights(out) -> dict[str, torch.Tensor]:
    return {k: v for k, v in read_state_dict(out).items() if k not in ("embed_tokens.weight", "lm_head.weight")}


@pytest.mark.parametrize("algo", ["dspark", "eagle3"])
def test_one_step_lowers_the_loss(tmp_path, tiny_target, tiny_data, algo):
    cfg = tiny_train_config(tiny_target, tiny_data, tmp_path / "out", algo=algo, max_steps=1, warmup_steps=1,
                            lr=1e-2)
    trained = train(cfg)["drafter"]
    target, _ = load_target(tiny_target, dtype=torch.float32, device=torch.device("cpu"))
    initial = build_drafter(cfg, target, mask_token_id=2)  # the same seed: the run's starting point
    records, _ = read_records(tiny_data, vocab_size=96, max_seq_len=128)
    batch = make_batch(records, global_batch_indices(len(records), cfg.batch_size, cfg.seed, 0), gamma=cfg.block_size,
                       num_anchors=cfg.num_anchors, region="response", seed=cfg.seed, step=0, pad_id=1)

    def loss(d):
        module = d if algo == "eagle3" else ParallelDraftForward(d, algo)
        with torch.no_grad():
            s = compute_loss(module, target, batch, list(d.config.target_layer_ids), cfg.block_size, cfg.loss, None)
        return (s.weighted / s.weight).item()

    before, after = loss(initial), loss(trained)
    assert after < before - 1e-3, (before, after)


def test_resume_reproduces_the_run(tmp_path, tiny_target, tiny_data):
    full = tiny_train_config(tiny_target, tiny_data, tmp_path / "full", max_steps=4, save_every=2)
    train(full)
    # the same run, interrupted after 2 steps (checkpoint written), then resumed
    part = tiny_train_config(tiny_target, tiny_data, tmp_path / "part", max_steps=4, save_every=2, stop_after_steps=2)
    first = train(part)
    assert first["stop_reason"] == "stop_after_steps" and first["steps"] == 2
    assert not (tmp_path / "part" / "model.safetensors").exists()
    resumed = train(tiny_train_config(tiny_target, tiny_data, tmp_path / "part", max_steps=4, save_every=2,
                                      resume=True))
    assert resumed["resumed_from"].endswith("step_0000002") and resumed["steps_this_run"] == 2
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # without resume the interrupted run would differ: the optimizer state matters
    fresh = tiny_train_config(tiny_target, tiny_data, tmp_path / "fresh", max_steps=2, save_every=0)
    train(fresh)
    assert any(not torch.equal(a[k], v) for k, v in _weights(tmp_path / "fresh").items())


def test_checkpoint_random_state_round_trips_through_weights_only_load(tmp_path):
    """What resume reads back is plain data (`weights_only=True`), and it restores every generator."""
    import random

    import numpy as np

    from vllm_dspark.training.trainer import _rng_state, _set_rng_state

    torch.save(_rng_state(), tmp_path / "rng.pt")
    want = (torch.rand(3).tolist(), random.random(), np.random.rand(3).tolist())
    _set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (torch.rand(3).tolist(), random.random(), np.random.rand(3).tolist()) == want


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, target: str, data: str, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    try:
        train(tiny_train_config(target, data, out, batch_size=2, max_steps=2, lr=1e-2, adam_eps=1.0))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow  # two torchrun-style processes, each importing torch: about a minute on 2 cores
def test_two_process_ddp_equals_one_process_on_the_concatenated_batch(tmp_path, tiny_target, tiny_data):
    # NOTE: adam_eps=1 keeps Adam's update proportional to the gradient; with eps=1e-8 a near-zero gradient's
    # sign (float rounding, reduction order) would flip an update of size lr, hiding the comparison.
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tiny_target), str(tiny_data), str(tmp_path / "ddp")), nprocs=2)
    train(tiny_train_config(tiny_target, tiny_data, tmp_path / "one", batch_size=4, max_steps=2, lr=1e-2,
                            adam_eps=1.0))
    a, b = _weights(tmp_path / "ddp"), _weights(tmp_path / "one")
    initial = tiny_train_config(tiny_target, tiny_data, tmp_path / "zero", batch_size=4, max_steps=1, lr=0.0)
    train(initial)
    z = _weights(tmp_path / "zero")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-8, msg=k)
    moved = {k: (a[k] - z[k]).abs().max().item() for k in a}
    for k in ("fc.weight", "layers.0.self_attn.q_proj.weight", "markov_head.markov_w2.weight", "confidence_head.proj.weight"):
        assert moved[k] > 1e-6, moved  # the comparison is not between two untouched initialisations
    log = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    one = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert log[0]["loss"] == pytest.approx(one[0]["loss"], rel=1e-5)


def test_outputs_load_and_decode_losslessly(tmp_path, tiny_target, tiny_data):
    from vllm_dspark.decoding import plain_generate
    from vllm_dspark.evaluate import Prompt
    from vllm_dspark.training.baselines import drafter_kind, evaluate_any, load_any_drafter

    target, _ = load_target(tiny_target, dtype=torch.float32, device=torch.device("cpu"))
    prompt = [5, 17, 33, 8, 41]
    reference = plain_generate(target, prompt, max_new_tokens=12)
    for algo in ("dspark", "dflash", "eagle3"):
        out = tmp_path / algo
        train(tiny_train_config(tiny_target, tiny_data, out, algo=algo, max_steps=2))
        assert drafter_kind(out) == algo
        cfg = json.loads((out / "config.json").read_text())
        drafter = load_any_drafter(out, target)
        res = evaluate_any(target, drafter, [Prompt(1, prompt)], temperature=0.0, max_new_tokens=12,
                           block_size=cfg["block_size"], seed=0, stop_token_ids=set(), progress=False)
        assert res["prompts"][0]["output_token_ids"] == reference, algo
        if algo == "dflash":  # vLLM's qwen3_dflash contract
            assert cfg["architectures"] == ["DFlashDraftModel"] and cfg["markov_rank"] == 0
            assert cfg["dflash_config"] == {"mask_token_id": 2, "target_layer_ids": cfg["target_layer_ids"]}
            assert set(cfg["layer_types"]) == {"full_attention"}
        if algo == "eagle3":  # vLLM's llama_eagle3 contract
            assert cfg["architectures"] == ["LlamaForCausalLMEagle3"] and cfg["num_hidden_layers"] == 1
            assert cfg["eagle_aux_hidden_state_layer_ids"] == [i + 1 for i in cfg["target_layer_ids"]]
            keys = set(read_state_dict(out))
            assert {"fc.weight", "midlayer.hidden_norm.weight", "midlayer.self_attn.q_proj.weight",
                    "midlayer.mlp.gate_proj.weight", "norm.weight", "lm_head.weight"} <= keys
            assert read_state_dict(out)["midlayer.self_attn.q_proj.weight"].shape[1] == 2 * cfg["hidden_size"]


def test_bf16_autocast_path_trains(tmp_path, tiny_target, tiny_data):
    """The GPU configuration (bf16 target, bf16 autocast, bf16 checkpoint), exercised on the CPU."""
    for algo in ("dspark", "eagle3"):
        out = tmp_path / algo
        s = train(tiny_train_config(tiny_target, tiny_data, out, algo=algo, max_steps=3, target_dtype="bfloat16",
                                    save_dtype="bfloat16"))
        assert s["target_dtype"] == "bfloat16" and torch.isfinite(torch.tensor(s["last_log"]["loss"]))
        assert all(v.dtype == torch.bfloat16 for v in read_state_dict(out).values())
