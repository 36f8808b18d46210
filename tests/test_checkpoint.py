"""Checkpoint I/O: DeepSpec-layout folders written by hand (tests/reference/deepspec_writer.py, from the spec) load
and match the float64 oracle; save/convert round trips are exact; vLLM-native spellings load; misfits are refused
with messages naming the field and both values."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from reference import deepspec_ref as ref
from reference.deepspec_writer import deepspec_config, random_state_dict, write_checkpoint

ATOL = 1e-4
LAYER_IDS = [-1, 0, 2]  # tiny qwen3 target has 4 layers: -1 (embeddings) included, last layer (3) excluded
HEADS = [  # (markov_rank, markov_head_type, enable_confidence_head, confidence_head_with_markov)
    (8, "vanilla", True, True), (8, "vanilla", True, False), (8, "gated", True, True), (8, "gated", False, False),
    (8, "rnn", True, True), (8, "rnn", True, False), (0, None, True, False), (0, None, False, False),
]


def _fields(rank=8, kind="vanilla", conf=True, conf_markov=True, **kw):
    f = dict(target_layer_ids=LAYER_IDS, mask_token_id=5, block_size=5, num_draft_layers=2, markov_rank=rank,
             markov_head_type=kind, enable_confidence_head=conf, confidence_head_with_markov=conf_markov)
    f.update(kw)
    return f


def write_deepspec(path, target, seed=0, **fields):
    """A DeepSpec checkpoint folder; returns (config dict, the stored tensors as float64)."""
    cfg = deepspec_config(target.config, **_fields(**fields))
    stored = write_checkpoint(path, cfg, random_state_dict(cfg, target, seed))
    return cfg, stored


def _features(target, layer_ids, n=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, target.config.vocab_size, (1, n), generator=g)
    return ref.context_features(target(ids, output_hidden_states=True).hidden_states, layer_ids)


def ours(drafter, feats, anchor=3):
    n = feats.shape[0]
    return drafter.draft(feats[None].to(drafter.fc.weight.dtype), torch.arange(n)[None], torch.tensor([anchor]),
                         torch.tensor([n]))


def assert_matches_oracle(drafter, stored, cfg, feats, anchor=3):
    block = ours(drafter, feats, anchor)
    expected = ref.draft_round(stored, cfg, feats, anchor)
    assert block.tokens[0].tolist() == expected.tokens.tolist()
    torch.testing.assert_close(block.logits[0].double(), expected.corrected_logits, rtol=0, atol=ATOL)
    if expected.confidence_logits is None:
        assert block.confidence_logits is None
    else:
        torch.testing.assert_close(block.confidence_logits[0].double(), expected.confidence_logits, rtol=0, atol=ATOL)


def with_target_embeddings(stored, target):
    """The oracle's weights when the drafter shares the target's embedding / LM head instead of the bf16 copies."""
    return {**stored, "embed_tokens.weight": target.get_input_embeddings().weight.double(),
            "lm_head.weight": target.get_output_embeddings().weight.double()}


def assert_identical(a, b):
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logits, b.logits) and torch.equal(a.probs, b.probs)
    assert (a.confidence_logits is None) == (b.confidence_logits is None)
    if a.confidence_logits is not None:
        assert torch.equal(a.confidence_logits, b.confidence_logits)


@pytest.fixture
def target(tiny_target):
    return tiny_target("qwen3")


# ------------------------------------------------------------------------------------------------ DeepSpec layout
@pytest.mark.parametrize("rank,kind,conf,conf_markov", HEADS)
def test_deepspec_checkpoint_matches_oracle(tmp_path, target, rank, kind, conf, conf_markov):
    from vllm_dspark.checkpoint import load_drafter

    cfg, stored = write_deepspec(tmp_path, target, rank=rank, kind=kind, conf=conf, conf_markov=conf_markov)
    feats = _features(target, LAYER_IDS)
    # Without a target: the stored embed/lm_head copies are used.
    assert_matches_oracle(load_drafter(tmp_path, dtype=torch.float64), stored, cfg, feats)
    # With the target: its (equal) embedding and LM head are shared.
    with_target = load_drafter(tmp_path, target, dtype=torch.float64)
    assert with_target.embed_tokens.weight.data_ptr() == target.get_input_embeddings().weight.data_ptr()
    assert_matches_oracle(with_target, with_target_embeddings(stored, target), cfg, feats)


def test_default_load_keeps_stored_bf16_weights_exactly(tmp_path, target):
    from vllm_dspark.checkpoint import load_drafter

    write_deepspec(tmp_path, target, kind="rnn")
    stored = load_file(str(tmp_path / "model.safetensors"))
    drafter = load_drafter(tmp_path)
    assert drafter.fc.weight.dtype == torch.bfloat16
    sd = drafter.state_dict()
    for k, v in stored.items():
        assert torch.equal(sd[k], v), k


def test_bf16_load_keeps_rope_frequencies_exact(tmp_path, target):
    """DeepSpec loads with `from_pretrained(dtype=bfloat16)`, which keeps RoPE's inv_freq in float32. Casting the
    buffer to bf16 (8-bit mantissa) shifts every rotation angle by up to 0.4 %: about 4 rad at position 1000 for
    the fastest frequency, so long-context drafts differ from DeepSpec's."""
    from vllm_dspark.checkpoint import load_drafter

    write_deepspec(tmp_path, target)
    drafter = load_drafter(tmp_path)
    inv = drafter.rotary_emb.inv_freq
    want = ref.inv_freq(json.loads((tmp_path / "config.json").read_text()))
    torch.testing.assert_close(inv.double(), want, rtol=1e-6, atol=0)


def test_sharded_checkpoint_with_index(tmp_path, target):
    from vllm_dspark.checkpoint import load_drafter

    cfg, stored = write_deepspec(tmp_path / "one", target, kind="gated")
    tensors = load_file(str(tmp_path / "one" / "model.safetensors"))
    keys = sorted(tensors)
    shard = tmp_path / "sharded"
    shard.mkdir()
    shutil.copy(tmp_path / "one" / "config.json", shard / "config.json")
    weight_map = {}
    for i, part in enumerate((keys[::2], keys[1::2])):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, str(shard / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    (shard / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert_matches_oracle(load_drafter(shard, dtype=torch.float64), stored, cfg, _features(target, LAYER_IDS))


# ------------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("kind", ["vanilla", "gated", "rnn"])
def test_save_load_round_trip_is_exact(tmp_path, target, kind):
    from vllm_dspark.checkpoint import load_drafter, save_drafter

    write_deepspec(tmp_path / "src", target, kind=kind)
    first = load_drafter(tmp_path / "src", dtype=torch.float64)
    save_drafter(first, tmp_path / "saved")
    again = load_drafter(tmp_path / "saved", dtype=torch.float64)
    feats = _features(target, LAYER_IDS)
    assert_identical(ours(first, feats), ours(again, feats))
    a, b = first.state_dict(), again.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    # bf16 load -> save -> load keeps the bits too.
    bf = load_drafter(tmp_path / "src")
    save_drafter(bf, tmp_path / "saved_bf16")
    assert all(torch.equal(v, load_file(str(tmp_path / "src" / "model.safetensors"))[k])
               for k, v in load_file(str(tmp_path / "saved_bf16" / "model.safetensors")).items())


@pytest.mark.parametrize("kind,conf_markov", [("vanilla", True), ("rnn", False)])
def test_deepspec_to_native_to_ours(tmp_path, target, kind, conf_markov):
    from vllm_dspark.checkpoint import convert, load_drafter

    cfg, stored = write_deepspec(tmp_path / "ds", target, kind=kind, conf_markov=conf_markov)
    convert(tmp_path / "ds", tmp_path / "native", layout="native", target=target)
    native_keys = set(load_file(str(tmp_path / "native" / "model.safetensors")))
    assert "embed_tokens.weight" not in native_keys and "lm_head.weight" not in native_keys
    native_cfg = json.loads((tmp_path / "native" / "config.json").read_text())
    assert native_cfg["architectures"][0] == "Qwen3DSparkModel" and native_cfg["mask_token_id"] == 5
    assert native_cfg["markov_rank"] == 8 and native_cfg["block_size"] == 5
    feats = _features(target, LAYER_IDS)
    direct = ours(load_drafter(tmp_path / "ds", target, dtype=torch.float64), feats)
    assert_identical(direct, ours(load_drafter(tmp_path / "native", target, dtype=torch.float64), feats))
    # ... and back to DeepSpec's layout (copies restored from the target).
    convert(tmp_path / "native", tmp_path / "back", layout="deepspec", target=target)
    back_tensors = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert {t.dtype for t in back_tensors.values()} == {torch.bfloat16}  # one dtype, copies included
    torch.testing.assert_close(back_tensors["embed_tokens.weight"],
                               target.get_input_embeddings().weight.to(torch.bfloat16), rtol=0, atol=0)
    back = load_drafter(tmp_path / "back", target, dtype=torch.float64)
    assert_identical(direct, ours(back, feats))
    assert_matches_oracle(back, with_target_embeddings(stored, target), cfg, feats)


# ------------------------------------------------------------------------------------------------ vLLM-native
def test_vllm_native_spellings_load(tmp_path, target):
    """`eagle_aux_hidden_state_layer_ids` (DeepSpec id + 1) and `dflash_config` instead of `target_layer_ids` /
    `mask_token_id`, no embed/lm_head (the target's are shared), an unused `mask_embedding` tensor."""
    from vllm_dspark.checkpoint import load_drafter

    cfg, stored = write_deepspec(tmp_path / "ds", target, kind="gated")
    native_cfg = {k: v for k, v in cfg.items() if k not in ("target_layer_ids", "mask_token_id")}
    native_cfg["eagle_aux_hidden_state_layer_ids"] = [i + 1 for i in LAYER_IDS]
    native_cfg["dflash_config"] = {"mask_token_id": 5}
    tensors = load_file(str(tmp_path / "ds" / "model.safetensors"))
    del tensors["embed_tokens.weight"], tensors["lm_head.weight"]
    tensors["mask_embedding"] = torch.zeros(cfg["hidden_size"], dtype=torch.bfloat16)
    d = tmp_path / "native"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(native_cfg))
    save_file(tensors, str(d / "model.safetensors"))
    assert_matches_oracle(load_drafter(d, target, dtype=torch.float64), with_target_embeddings(stored, target), cfg,
                          _features(target, LAYER_IDS))


def test_native_without_shared_weights_needs_the_target(tmp_path, target):
    from vllm_dspark.checkpoint import convert, load_drafter

    write_deepspec(tmp_path / "ds", target)
    convert(tmp_path / "ds", tmp_path / "native", layout="native", target=target)
    with pytest.raises(ValueError, match="embed_tokens"):
        load_drafter(tmp_path / "native")


# ------------------------------------------------------------------------------------------------ misfits
def _expect_refusal(fn, *words):
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        fn()
    msg = str(err.value)
    for w in words:
        assert str(w) in msg, f"{w!r} not named in: {msg}"
    return msg


def test_refuses_target_with_other_hidden_size(tmp_path, target, tiny_target):
    from vllm_dspark.checkpoint import load_drafter

    write_deepspec(tmp_path, target)
    other = tiny_target("qwen3", hidden_size=48)
    _expect_refusal(lambda: load_drafter(tmp_path, other), "hidden_size", 44, 48)


def test_refuses_target_with_other_vocab(tmp_path, target, tiny_target):
    from vllm_dspark.checkpoint import load_drafter

    write_deepspec(tmp_path, target)
    _expect_refusal(lambda: load_drafter(tmp_path, tiny_target("qwen3", vocab_size=67)), "vocab_size", 61, 67)


def test_refuses_layer_id_out_of_range(tmp_path, target, tiny_target):
    from vllm_dspark.checkpoint import load_drafter

    write_deepspec(tmp_path / "a", target, target_layer_ids=[0, 4])
    _expect_refusal(lambda: load_drafter(tmp_path / "a"), "target_layer_ids", 4, 3)
    # In range for the drafter's recorded target (4 layers) but not for a 2-layer target.
    write_deepspec(tmp_path / "b", target, target_layer_ids=[0, 2])
    _expect_refusal(lambda: load_drafter(tmp_path / "b", tiny_target("qwen3", num_hidden_layers=2)),
                    "target_layer_ids", 2, "num_target_layers", 4)


def test_refuses_the_last_target_layer_with_target(tmp_path, target):
    from vllm_dspark.checkpoint import load_drafter

    write_deepspec(tmp_path, target, target_layer_ids=[0, 3])
    _expect_refusal(lambda: load_drafter(tmp_path, target), "target_layer_ids", "last", 3)


def test_refuses_the_last_target_layer_without_target(tmp_path, target):
    """config.json records num_target_layers, so the final-normed last layer can be refused without the target
    too (deepspec-format.md §4, §10.3)."""
    from vllm_dspark.checkpoint import load_drafter

    write_deepspec(tmp_path, target, target_layer_ids=[0, 3])
    _expect_refusal(lambda: load_drafter(tmp_path), "target_layer_ids", 3)


def test_refuses_mask_id_outside_vocab(tmp_path, target):
    from vllm_dspark.checkpoint import load_drafter

    write_deepspec(tmp_path, target, mask_token_id=61)
    _expect_refusal(lambda: load_drafter(tmp_path), "mask_token_id", 61, "vocab_size")


def test_refuses_rank_mismatch(tmp_path, target):
    from vllm_dspark.checkpoint import load_drafter

    cfg, _ = write_deepspec(tmp_path, target, rank=8)
    cfg["markov_rank"] = 16
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    # The field is markov_rank: config says 16, the stored tensors have rank 8.
    _expect_refusal(lambda: load_drafter(tmp_path), "markov_rank", "16", "8")


@pytest.mark.parametrize("stored_kind,config_kind,extra_weight", [
    ("gated", "vanilla", "gate_proj"), ("rnn", "vanilla", "joint_proj"), ("rnn", "gated", "joint_proj")])
def test_refuses_head_type_mismatch(tmp_path, target, stored_kind, config_kind, extra_weight):
    from vllm_dspark.checkpoint import load_drafter

    cfg, _ = write_deepspec(tmp_path, target, kind=stored_kind)
    cfg["markov_head_type"] = config_kind
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    _expect_refusal(lambda: load_drafter(tmp_path), "markov_head_type", config_kind, extra_weight)


def test_refuses_confidence_head_variant_mismatch(tmp_path, target):
    from vllm_dspark.checkpoint import load_drafter

    cfg, _ = write_deepspec(tmp_path, target, conf_markov=True)
    cfg["confidence_head_with_markov"] = False
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    _expect_refusal(lambda: load_drafter(tmp_path), "confidence_head.proj.weight", "(1, 52)", "(1, 44)")


def test_refuses_missing_files(tmp_path, target):
    from vllm_dspark.checkpoint import load_drafter

    write_deepspec(tmp_path / "ok", target)
    (tmp_path / "no_weights").mkdir()
    shutil.copy(tmp_path / "ok" / "config.json", tmp_path / "no_weights" / "config.json")
    _expect_refusal(lambda: load_drafter(tmp_path / "no_weights"), "model.safetensors", "no_weights")
    (tmp_path / "no_config").mkdir()
    shutil.copy(tmp_path / "ok" / "model.safetensors", tmp_path / "no_config" / "model.safetensors")
    _expect_refusal(lambda: load_drafter(tmp_path / "no_config"), "config.json", "no_config")
    _expect_refusal(lambda: load_drafter(tmp_path / "absent"), "absent")


def test_llama_target_with_legacy_rope_spelling(tmp_path, tiny_target):
    """A config.json copied from an older target config: `rope_theta` + `rope_scaling` (llama3) instead of
    `rope_parameters`. The drafter must use the scaled frequencies."""
    from vllm_dspark.checkpoint import load_drafter

    llama = tiny_target("llama")
    cfg = deepspec_config(llama.config, **_fields(target_layer_ids=[0, 2], kind="gated"))
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope.pop("rope_theta")
    cfg["rope_scaling"] = rope
    assert rope["rope_type"] == "llama3"
    stored = write_checkpoint(tmp_path, cfg, random_state_dict(cfg, llama, 0))
    drafter = load_drafter(tmp_path, dtype=torch.float64)
    torch.testing.assert_close(drafter.rotary_emb.inv_freq.double(), ref.inv_freq(cfg), rtol=1e-6, atol=0)
    feats = _features(llama, [0, 2], n=30)  # positions past original_max_position_embeddings (16)
    assert_matches_oracle(drafter, stored, cfg, feats)
