"""The fast CPU training paths: cached target features, bf16 autocast with an fp32 target, warm start."""
from __future__ import annotations

import json

import pytest
import torch

from vllm_dspark.target import load_target
from vllm_dspark.training.data import global_batch_indices, make_batch, read_records
from vllm_dspark.training.features import FeatureCache, FeatureCacheError
from vllm_dspark.training.online_target import run_target
from vllm_dspark.training.parallel import ParallelDraftForward
from vllm_dspark.training.trainer import build_drafter, compute_loss, train
from vllm_dspark.training.warm_start import copy_target_layer

from train_helpers import tiny_train_config

LAYERS = [0, 1, 2]


@pytest.fixture(scope="module")
def setup(tiny_target, tiny_data):
    target, _ = load_target(tiny_target, dtype=torch.float32, device=torch.device("cpu"))
    records, _ = read_records(tiny_data, vocab_size=96, max_seq_len=128)
    return target, records


def _batch(records, step=0, n=5):
    idx = global_batch_indices(len(records), n, 0, step)
    return idx, make_batch(records, idx, gamma=4, num_anchors=6, region="all", seed=0, step=step, pad_id=1)


def _online_and_cached(target, records, cache, step=0):
    idx, b = _batch(records, step)
    t = b.input_ids.shape[1]
    positions = b.target_positions.clamp_max(t - 1).view(len(idx), -1)
    online = run_target(target, b.input_ids, b.attention_mask, LAYERS, positions)
    cached = cache.target_pass(target, idx, t, positions)
    real = b.attention_mask.bool()
    valid = b.slot_valid.view(len(idx), -1)
    return (online.features[real], cached.features[real]), (online.logits[valid], cached.logits[valid])


def test_cached_features_equal_the_online_pass(tmp_path, setup):
    target, records = setup
    # small batches: the cache is built in other groupings (by length) than the training batches read it
    cache = FeatureCache.build(tmp_path / "c", target, records, LAYERS, batch_tokens=64)
    assert cache.rows.dtype == torch.float32 and cache.rows.shape[0] == sum(len(r.token_ids) for r in records)
    for step in range(3):
        (f_on, f_c), (l_on, l_c) = _online_and_cached(target, records, cache, step)
        assert f_on.abs().max() > 0.1 and l_on.abs().max() > 0.1  # not trivially zero
        torch.testing.assert_close(f_c, f_on, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(l_c, l_on, rtol=1e-5, atol=1e-5)
    # opened again (another process, a resumed run): the same rows, no rebuild
    again = FeatureCache.build(tmp_path / "c", target, records, LAYERS)
    assert torch.equal(again.rows, cache.rows)


def test_bf16_cache_is_close_to_fp32(tmp_path, setup):
    target, records = setup
    cache = FeatureCache.build(tmp_path / "c", target, records, LAYERS, dtype="bfloat16")
    assert cache.rows.dtype == torch.bfloat16
    fp32_bytes = FeatureCache.nbytes(dict(cache.meta, dtype="float32"))
    assert (tmp_path / "c" / "rows.npy").stat().st_size < 0.6 * fp32_bytes  # half the disk
    (f_on, f_c), (l_on, l_c) = _online_and_cached(target, records, cache)
    scale = f_on.abs().max()
    assert (f_c - f_on).abs().max() <= 1e-2 * scale  # bf16 keeps 8 significant bits
    assert (l_c - l_on).abs().max() <= 3e-2 * l_on.abs().max()


def test_cache_refuses_other_inputs_and_the_disk_bound(tmp_path, setup):
    target, records = setup
    FeatureCache.build(tmp_path / "c", target, records, LAYERS)
    with pytest.raises(FeatureCacheError, match="layer_ids"):
        FeatureCache.build(tmp_path / "c", target, records, [0, 1, 3])
    with pytest.raises(FeatureCacheError, match="records"):
        FeatureCache.build(tmp_path / "c", target, records[:-1], LAYERS)
    with pytest.raises(FeatureCacheError, match="over the bound"):
        FeatureCache.build(tmp_path / "small", target, records, LAYERS, max_bytes=1000)
    assert not (tmp_path / "small").exists()


@pytest.mark.parametrize("algo", ["dspark", "eagle3"])
def test_training_from_the_cache_equals_online_training(tmp_path, tiny_target, tiny_data, algo):
    online = train(tiny_train_config(tiny_target, tiny_data, tmp_path / "on", max_steps=3, algo=algo))
    cached = train(tiny_train_config(tiny_target, tiny_data, tmp_path / "ca", max_steps=3, algo=algo,
                                     feature_cache=str(tmp_path / "cache")))
    assert (tmp_path / "cache" / "meta.json").is_file()
    logs = [[json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in ("on", "ca")]
    assert len(logs[0]) == len(logs[1]) == 3
    for a, b in zip(*logs):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    for (k, v), w in zip(online["drafter"].state_dict().items(), cached["drafter"].state_dict().values()):
        torch.testing.assert_close(w, v, rtol=1e-3, atol=1e-5, msg=k)


def test_bf16_autocast_with_fp32_target_is_close_to_fp32(tmp_path, tiny_target, tiny_data, setup):
    """The CPU fast path (fp32 target and weights, bf16 compute) against the fp32 reference, same drafter."""
    target, records = setup
    cfg = tiny_train_config(tiny_target, tiny_data, tmp_path / "x", target_layer_ids=LAYERS)
    drafter = build_drafter(cfg, target, mask_token_id=2)
    with torch.no_grad():  # a drafter away from its zero-initialised heads
        for p in drafter.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    module = ParallelDraftForward(drafter)
    _, b = _batch(records)
    losses = {}
    for name, ac in (("fp32", None), ("bf16", torch.autocast("cpu", dtype=torch.bfloat16))):
        drafter.zero_grad()
        s = compute_loss(module, target, b, LAYERS, 4, cfg.loss, ac)
        loss = s.weighted / s.weight
        loss.backward()
        losses[name] = (loss.item(), drafter.fc.weight.grad.clone())
    assert losses["bf16"][0] == pytest.approx(losses["fp32"][0], rel=2e-2)
    g32, g16 = losses["fp32"][1], losses["bf16"][1]
    assert torch.nn.functional.cosine_similarity(g32.flatten(), g16.flatten(), dim=0) > 0.98
    s = train(tiny_train_config(tiny_target, tiny_data, tmp_path / "run", max_steps=2, autocast="bf16"))
    assert s["target_dtype"] == "float32" and torch.isfinite(torch.tensor(s["last_log"]["loss"]))


def test_warm_start_copies_the_target_layer(setup, tiny_target, tiny_data, tmp_path):
    target, _ = setup
    cfg = tiny_train_config(tiny_target, tiny_data, tmp_path / "x", num_draft_layers=2)
    drafter = build_drafter(cfg, target, mask_token_id=2)
    copy_target_layer(drafter, target, -1)
    top = target.get_decoder().layers[-1].state_dict()
    for layer in drafter.layers:
        for k, v in layer.state_dict().items():
            assert torch.equal(v, top[k]), k
    assert not torch.equal(drafter.layers[0].mlp.up_proj.weight, target.get_decoder().layers[0].mlp.up_proj.weight)
    with pytest.raises(ValueError, match="does not exist"):
        copy_target_layer(drafter, target, 9)
    eagle = build_drafter(tiny_train_config(tiny_target, tiny_data, tmp_path / "e", algo="eagle3"), target, 2)
    with pytest.raises(ValueError, match="EAGLE-3"):
        copy_target_layer(eagle, target, -1)
