"""Supported vLLM range, and the plugin's refusal of anything else."""
from __future__ import annotations

import pytest

from vllm_dspark.adapter import compat


@pytest.mark.parametrize("version,ok", [
    ("0.25.9", False), ("0.26.0", True), ("0.32.0", True), ("0.32.0+cpu", True), ("0.33.7", True),
    ("0.34.0", False), ("0.34.0rc1", False), ("1.0.0", False),
])
def test_supported_range(version, ok):
    assert compat.is_supported(version) is ok


def test_unsupported_version_is_refused_with_both_versions_named():
    with pytest.raises(compat.UnsupportedVLLMVersion, match=r"vLLM >= 0.26 and < 0.34.*installed vLLM is 0.25.0"):
        compat.check_supported("0.25.0")


def test_installed_vllm_is_supported():
    pytest.importorskip("vllm")
    assert compat.is_supported(compat.vllm_version())


def test_plugin_refuses_an_unsupported_vllm(monkeypatch):
    pytest.importorskip("vllm")
    from packaging.version import Version

    from vllm_dspark.adapter import plugin

    monkeypatch.setattr(plugin, "_registered", False)
    monkeypatch.setattr(compat, "vllm_version", lambda: Version("0.35.0"))
    with pytest.raises(compat.UnsupportedVLLMVersion, match="installed vLLM is 0.35.0"):
        plugin.register()


def test_draft_graph_batch_sizes_from_vllm_configs():
    """Built from vLLM's own config classes, so a renamed field fails here rather than silently disabling graphs."""
    pytest.importorskip("vllm")
    from types import SimpleNamespace

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
