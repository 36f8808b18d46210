"""`--speculative-config` handling: every malformed configuration is refused with a message naming the problem."""
from __future__ import annotations

import json

import pytest

from vllm_dspark.adapter import spec_config as sc
from vllm_dspark.config import DSparkConfig

TARGET = {"hidden_size": 24, "vocab_size": 97, "num_hidden_layers": 4, "num_attention_heads": 2,
          "num_key_value_heads": 1, "head_dim": 12, "intermediate_size": 16}


def _drafter_cfg(**overrides) -> DSparkConfig:
    fields = dict(
        hidden_size=24, num_attention_heads=2, num_key_value_heads=1, head_dim=12, intermediate_size=16,
        vocab_size=97, num_hidden_layers=1, num_target_layers=4, block_size=5, mask_token_id=3,
        target_layer_ids=[0, 2], markov_rank=8, markov_head_type="vanilla", enable_confidence_head=True,
        confidence_head_with_markov=True,
    )
    fields.update(overrides)
    return DSparkConfig(**fields)


@pytest.fixture
def drafter_dir(tmp_path):
    path = tmp_path / "drafter"
    _drafter_cfg().save(path)
    return str(path)


@pytest.fixture
def other_dir(tmp_path):
    path = tmp_path / "eagle"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLMEagle3"]}))
    return str(path)


@pytest.mark.parametrize("raw,needle", [
    ({"mode": "confidance"}, "'dspark.mode'"),
    ({"foo": 1}, "unknown key 'dspark.foo'"),
    ({"mode": "sla"}, "needs sla_tokens_per_user"),
    ({"mode": "static", "sla_tokens_per_user": 20}, "only used by mode 'sla'"),
    ({"mode": "sla", "sla_tokens_per_user": -3}, "'dspark.sla_tokens_per_user'"),
    ({"profile_batch_tokens": [4, 2]}, "'dspark.profile_batch_tokens'"),
    ({"profile_repeats": 0}, "'dspark.profile_repeats'"),
    ({"gate_probe_every": 2}, "'dspark.gate_probe_every'"),
    ({"gate_min_gain": 1.5}, "'dspark.gate_min_gain'"),
    ({"cost_table": "/nonexistent/table.json"}, "is not a file"),
    ("confidence", "must be a JSON object"),
])
def test_bad_dspark_settings_are_refused_with_the_key(raw, needle):
    with pytest.raises(sc.DSparkConfigError) as e:
        sc.parse_settings(raw)
    assert needle in str(e.value), str(e.value)


def test_invalid_cost_table_file_is_refused(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"batch_tokens": [1, 2], "step_seconds": [0.2, 0.1]}))
    with pytest.raises(sc.DSparkConfigError, match="not a valid cost table.*non-decreasing"):
        sc.parse_settings({"cost_table": str(bad)})


def test_prepare_routes_a_dspark_drafter_to_dflash(drafter_dir):
    spec, settings = sc.prepare({"model": drafter_dir, "dspark": {"mode": "confidence"}})
    assert spec == {"model": drafter_dir, "method": "dflash", "num_speculative_tokens": 5}
    assert settings.mode == "confidence"
    spec, settings = sc.prepare({"model": drafter_dir, "num-speculative-tokens": 3})
    assert spec["method"] == "dflash" and spec["num_speculative_tokens"] == 3 and settings.mode is None


def test_prepare_leaves_other_configs_alone(other_dir, drafter_dir):
    raw = {"method": "eagle3", "model": other_dir, "num_speculative_tokens": 3}
    assert sc.prepare(raw) == (raw, None)
    native = {"method": "dspark", "model": drafter_dir, "num_speculative_tokens": 5}
    spec, settings = sc.prepare(native)
    assert spec["method"] == "dspark" and settings is None  # vLLM's native speculator, untouched


def test_prepare_refuses_dspark_settings_with_another_method_or_drafter(drafter_dir, other_dir):
    with pytest.raises(sc.DSparkConfigError, match='need "method": "dflash".*got "method": \'dspark\''):
        sc.prepare({"method": "dspark", "model": drafter_dir, "dspark": {}})
    with pytest.raises(sc.DSparkConfigError, match="need a DSpark drafter.*LlamaForCausalLMEagle3"):
        sc.prepare({"method": "dflash", "model": other_dir, "dspark": {}})


def test_resolve_defaults_the_mode_from_the_confidence_head():
    assert sc.resolve(None, _drafter_cfg(), 5, TARGET).mode == "confidence"
    no_head = _drafter_cfg(enable_confidence_head=False, confidence_head_with_markov=False)
    assert sc.resolve(None, no_head, 5, TARGET).mode == "static"
    with pytest.raises(sc.DSparkConfigError, match="'dspark.mode' = 'confidence' needs a drafter with a confidence"):
        sc.resolve(sc.parse_settings({"mode": "confidence"}), no_head, 5, TARGET)


def test_resolve_refuses_a_confidence_mode_without_any_cost_table():
    with pytest.raises(sc.DSparkConfigError, match="needs a cost table"):
        sc.resolve(sc.parse_settings({"mode": "confidence", "profile": False}), _drafter_cfg(), 5, TARGET)
    assert sc.resolve(sc.parse_settings({"mode": "static", "profile": False}), _drafter_cfg(), 5, TARGET).mode == "static"


def test_resolve_refuses_gamma_beyond_block_size():
    with pytest.raises(sc.DSparkConfigError, match="'num_speculative_tokens' = 6 exceeds the drafter's block_size = 5"):
        sc.resolve(None, _drafter_cfg(), 6, TARGET)


@pytest.mark.parametrize("target_overrides,needle", [
    ({"hidden_size": 32}, "hidden_size"),
    ({"vocab_size": 100}, "vocab_size"),
    ({"num_hidden_layers": 6}, "num_target_layers"),
])
def test_resolve_refuses_a_drafter_that_does_not_fit_the_target(target_overrides, needle):
    with pytest.raises(sc.DSparkConfigError, match=f"(?s)'model' drafter does not fit the target.*{needle}"):
        sc.resolve(None, _drafter_cfg(), 5, {**TARGET, **target_overrides})


def test_resolved_settings_round_trip_through_the_hf_config():
    class HF:  # stands in for the draft PretrainedConfig vLLM pickles to the engine processes
        pass

    resolved = sc.resolve(sc.parse_settings({"mode": "sla", "sla_tokens_per_user": 40}), _drafter_cfg(), 4, TARGET)
    hf = HF()
    sc.attach(hf, resolved)
    back = sc.read_attached(hf)
    assert back == resolved and back.mode == "sla" and back.sla_tokens_per_user == 40
    assert sc.read_attached(HF()) is None
