"""DSparkConfig: derivation from targets of several families, the spellings it reads, and what it refuses."""
from __future__ import annotations

import pytest

from reference.tiny_targets import TINY_FAMILIES
from reference import deepspec_ref as ref
from reference.deepspec_writer import deepspec_config


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_from_target_copies_geometry(tiny_target, family):
    from vllm_dspark.config import DSparkConfig

    t = tiny_target(family).config
    cfg = DSparkConfig.from_target(t, mask_token_id=3, block_size=5, target_layer_ids=[-1, 1], num_draft_layers=2,
                                   markov_rank=8, markov_head_type="gated")
    want_hd = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (
        t.hidden_size, t.num_attention_heads, t.num_key_value_heads, want_hd)
    assert (cfg.intermediate_size, cfg.vocab_size) == (t.intermediate_size, t.vocab_size)
    assert cfg.rms_norm_eps == t.rms_norm_eps
    assert cfg.num_hidden_layers == 2 and cfg.num_target_layers == t.num_hidden_layers
    assert cfg.target_layer_ids == [-1, 1] and cfg.block_size == 5 and cfg.mask_token_id == 3
    # The rope (incl. llama3 scaling) must be the target's: compare the resulting frequencies with the oracle's.
    assert ref.inv_freq(cfg.model_dump()).tolist() == pytest.approx(ref.inv_freq(t.to_dict()).tolist(), rel=1e-12)


def test_llama3_rope_reaches_the_drafter(tiny_target):
    """The llama3 scaling must change the drafter's frequencies (else the check above would be vacuous)."""
    from vllm_dspark.config import DSparkConfig
    from vllm_dspark.model import DSparkDrafter

    t = tiny_target("llama").config
    cfg = DSparkConfig.from_target(t, mask_token_id=3, target_layer_ids=[0], markov_rank=4)
    plain = ref.inv_freq({**t.to_dict(), "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
                          "rope_scaling": None})
    scaled = ref.inv_freq(t.to_dict())
    assert (plain - scaled).abs().max() > 1e-3
    ours = DSparkDrafter(cfg).rotary_emb.inv_freq.double()
    assert ours.tolist() == pytest.approx(scaled.tolist(), rel=1e-6)


def test_default_layer_ids_avoid_the_last_layer():
    from vllm_dspark.config import default_target_layer_ids

    for n in range(2, 50):
        ids = default_target_layer_ids(n)
        assert ids and ids == sorted(set(ids)) and all(0 <= i <= n - 2 for i in ids), (n, ids)


def test_default_layer_ids_reproduce_deepspec_shipped_choices():
    """`default_target_layer_ids` says it follows DeepSpec; its shipped configs (deepspec-format.md §2) use
    [1, 9, 17, 25, 33] for 36 target layers and [1, 10, 19, 28, 37] for 40 (evenly from 1 to L - 3)."""
    from vllm_dspark.config import default_target_layer_ids

    assert default_target_layer_ids(36) == [1, 9, 17, 25, 33]
    assert default_target_layer_ids(40) == [1, 10, 19, 28, 37]


def test_reads_a_deepspec_config_dict(tiny_target):
    from vllm_dspark.config import DSparkConfig

    d = deepspec_config(tiny_target("qwen3").config, target_layer_ids=[-1, 2], mask_token_id=4, block_size=3,
                        num_draft_layers=1, markov_rank=6, markov_head_type="RNN")  # case-insensitive (§2)
    cfg = DSparkConfig.from_dict(d)
    assert cfg.markov_head_type == "rnn" and cfg.target_layer_ids == [-1, 2] and cfg.num_hidden_layers == 1
    assert cfg.num_target_layers == 4 and cfg.enable_confidence_head and cfg.confidence_head_with_markov


def _base(tiny_target, **changes):
    d = deepspec_config(tiny_target("qwen3").config, target_layer_ids=[0, 2], mask_token_id=4, block_size=3,
                        num_draft_layers=1, markov_rank=6)
    d.update(changes)
    return d


def test_vllm_native_layer_spellings(tiny_target):
    """vLLM's `eagle_aux_hidden_state_layer_ids` index a layer's input (= DeepSpec id + 1); `dflash_config` and
    `dspark_target_layer_ids` use DeepSpec ids (vllm-notes.md)."""
    from vllm_dspark.config import DSparkConfig

    base = _base(tiny_target)
    del base["target_layer_ids"]
    assert DSparkConfig.from_dict({**base, "eagle_aux_hidden_state_layer_ids": [1, 3]}).target_layer_ids == [0, 2]
    assert DSparkConfig.from_dict({**base, "eagle_aux_hidden_state_layer_ids": [0, 3]}).target_layer_ids == [-1, 2]
    assert DSparkConfig.from_dict({**base, "dspark_target_layer_ids": [0, 2]}).target_layer_ids == [0, 2]
    no_mask = {k: v for k, v in base.items() if k != "mask_token_id"}
    cfg = DSparkConfig.from_dict({**no_mask, "dflash_config": {"target_layer_ids": [0, 2], "mask_token_id": 4}})
    assert cfg.target_layer_ids == [0, 2] and cfg.mask_token_id == 4
    with pytest.raises(ValueError, match="target_layer_ids"):  # two spellings that disagree
        DSparkConfig.from_dict({**base, "target_layer_ids": [0, 2], "eagle_aux_hidden_state_layer_ids": [0, 2]})


def test_to_dict_round_trip_and_native_fields(tiny_target):
    from vllm_dspark.config import DSparkConfig

    cfg = DSparkConfig.from_dict(_base(tiny_target, markov_head_type="gated"))
    d = cfg.to_dict()
    assert d["architectures"] == ["Qwen3DSparkModel"] and d["model_type"] == "qwen3"
    assert d["tie_word_embeddings"] is False and d["layer_types"] == ["full_attention"]
    assert d["dflash_config"] == {"mask_token_id": 4, "target_layer_ids": [0, 2]}
    again = DSparkConfig.from_dict(d)
    fields = list(DSparkConfig.model_fields)
    assert again.model_dump(include=set(fields)) == cfg.model_dump(include=set(fields))


@pytest.mark.parametrize("changes,words", [
    ({"target_layer_ids": [0, 4]}, ["target_layer_ids", "4", "[-1, 3]"]),
    ({"target_layer_ids": [-2, 1]}, ["target_layer_ids", "-2"]),
    ({"target_layer_ids": [2, 1]}, ["strictly increasing", "[2, 1]"]),
    ({"target_layer_ids": []}, ["target_layer_ids"]),
    ({"mask_token_id": 61}, ["mask_token_id", "61", "vocab_size", "61"]),
    ({"num_attention_heads": 4, "num_key_value_heads": 3}, ["num_key_value_heads", "3", "4"]),
    ({"markov_head_type": "lstm"}, ["markov_head_type", "lstm"]),
    ({"markov_rank": 0, "confidence_head_with_markov": True, "markov_head_type": None}, ["confidence_head_with_markov",
                                                                                         "markov_rank"]),
])
def test_bad_configs_are_refused_by_name(tiny_target, changes, words):
    from vllm_dspark.config import DSparkConfig

    with pytest.raises(ValueError) as err:
        DSparkConfig.from_dict(_base(tiny_target, **changes))
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_missing_required_field(tiny_target):
    from vllm_dspark.config import DSparkConfig

    d = _base(tiny_target)
    del d["block_size"]
    with pytest.raises(ValueError, match="block_size"):
        DSparkConfig.from_dict(d)


@pytest.mark.parametrize("typo,field", [("enable_confidence_heads", "enable_confidence_head"),
                                        ("markov_rnak", "markov_rank"), ("target_layers_ids", "target_layer_ids")])
def test_misspelt_drafter_key_is_refused_with_the_field_it_resembles(tiny_target, typo, field):
    from vllm_dspark.config import DSparkConfig

    with pytest.raises(ValueError, match=rf"unknown key\(s\) '{typo}' \(did you mean '{field}'\?\)"):
        DSparkConfig.from_dict(_base(tiny_target, **{typo: 1}))


def test_other_unknown_keys_are_listed_in_one_warning(tiny_target, caplog):
    from vllm_dspark.config import DSparkConfig

    with caplog.at_level("WARNING", logger="vllm_dspark.config"):
        DSparkConfig.from_dict(_base(tiny_target, my_note="x", another_field=2))
    warned = [r.getMessage() for r in caplog.records if r.name == "vllm_dspark.config"]
    assert warned == ["drafter config: key(s) another_field, my_note are not read by vllm-dspark (ignored)"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="vllm_dspark.config"):  # a DeepSpec / target config warns about nothing
        DSparkConfig.from_dict(_base(tiny_target))
        DSparkConfig.from_dict(DSparkConfig.from_dict(_base(tiny_target)).to_dict())
    assert not [r for r in caplog.records if r.name == "vllm_dspark.config"]
