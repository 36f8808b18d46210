"""DSparkStatLogger: what reaches Prometheus from vLLM's per-step spec-decoding stats and the worker's counters."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

pytest.importorskip("vllm")
from vllm.v1.metrics.stats import SchedulerStats  # noqa: E402
from vllm.v1.spec_decode.metrics import SpecDecodingStats  # noqa: E402

from vllm_dspark.adapter import compat  # noqa: E402
from vllm_dspark.adapter.metrics import DSparkStatLogger  # noqa: E402
from vllm_dspark.adapter.shared_counters import FIELDS, SharedCounters, path_for  # noqa: E402


def _vllm_config(arch: str, mode="confidence", instance_id="test"):
    hf = SimpleNamespace(architectures=[arch])
    if arch == compat.ROUTED_ARCH:
        hf.dspark_serving = {"mode": mode, "num_speculative_tokens": 4, "block_size": 4, "has_confidence_head": True}
    spec = SimpleNamespace(num_speculative_tokens=4, draft_model_config=SimpleNamespace(hf_config=hf))
    return SimpleNamespace(speculative_config=spec, instance_id=instance_id)


def _value(name, **labels):
    return REGISTRY.get_sample_value(name, labels)


def _step(verified_per_request: list[int], accepted: list[int], running: int) -> SchedulerStats:
    spec = SpecDecodingStats.new(4)
    for n, a in zip(verified_per_request, accepted):
        spec.observe_draft(n, a)
    return SchedulerStats(num_running_reqs=running, spec_decoding_stats=spec)


def test_records_verification_lengths_and_mode():
    logger = DSparkStatLogger(_vllm_config(compat.ROUTED_ARCH), engine_index=7)
    assert _value("dspark:scheduler_info", mode="confidence", gamma="4", sla_tokens_per_user="", engine="7") == 1
    logger.record(_step([4, 2, 1], [1, 0, 1], running=4), None, engine_idx=7)  # one request had length 0
    logger.record(_step([3], [3], running=1), None, engine_idx=7)
    assert _value("dspark:verify_rounds_total", engine="7") == 4
    assert _value("dspark:verified_tokens_total", engine="7") == 10
    assert _value("dspark:request_steps_total", engine="7") == 5
    assert _value("dspark:accepted_tokens_total", engine="7") == 5
    assert _value("dspark:mean_verify_length", engine="7") == pytest.approx(10 / 4)
    assert _value("dspark:last_verify_length", engine="7") == 3
    assert [_value("dspark:verified_tokens_per_pos_total", engine="7", position=str(k)) for k in range(4)] == [
        4, 3, 2, 1]


def test_silent_for_other_drafters():
    logger = DSparkStatLogger(_vllm_config("Eagle3LlamaForCausalLM"), engine_index=8)
    logger.record(_step([2], [1], running=1), None, engine_idx=8)
    assert not logger.enabled
    assert _value("dspark:verified_tokens_total", engine="8") is None
    assert not DSparkStatLogger(SimpleNamespace(speculative_config=None)).enabled


def test_worker_counters_reach_prometheus(tmp_path, monkeypatch):
    """The worker's shared counters (SLA fallbacks, eager draft rounds, graphs on/off) become dspark:* series on
    the engine's `record` calls: counters follow the worker's values, gauges appear once its file exists."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    logger = DSparkStatLogger(_vllm_config(compat.ROUTED_ARCH, instance_id="inst-a"), engine_index=3)
    # Counters exist at 0 from construction: a scrape before the first step (or of a counter that never moved)
    # finds the series.
    for name in ("verify_rounds", "accepted_tokens", "request_steps", "length_decisions", "sla_fallbacks",
                 "draft_eager_fallbacks", "draft_off_steps", "draft_probe_steps"):
        assert _value(f"dspark:{name}_total", engine="3") == 0, name
    logger.record(_step([2], [1], running=1), None, engine_idx=3)  # before the worker started: no error
    assert _value("dspark:sla_fallbacks_total", engine="3") == 0
    assert _value("dspark:draft_cuda_graphs", engine="3") is None  # a gauge waits for the worker's value
    writer = SharedCounters.create(path_for("inst-a", 3))
    assert writer.path.parent == tmp_path and writer.read() == dict.fromkeys(FIELDS, 0)
    logger.record(_step([2], [1], running=1), None, engine_idx=3)
    for name in ("length_decisions", "sla_fallbacks", "draft_eager_fallbacks"):
        assert _value(f"dspark:{name}_total", engine="3") == 0
    assert _value("dspark:draft_cuda_graphs", engine="3") == 0
    writer.set(length_decisions=10, sla_fallbacks=4, draft_cuda_graphs=1, draft_eager_fallbacks=2)
    logger.record(_step([2], [1], running=1), None, engine_idx=3)
    writer.set(length_decisions=15, sla_fallbacks=7)
    logger.record(_step([1], [0], running=1), None, engine_idx=3)
    logger.record(SchedulerStats(num_running_reqs=0), None, engine_idx=3)  # a step without drafts
    assert _value("dspark:length_decisions_total", engine="3") == 15
    assert _value("dspark:sla_fallbacks_total", engine="3") == 7
    assert _value("dspark:draft_eager_fallbacks_total", engine="3") == 2
    assert _value("dspark:draft_cuda_graphs", engine="3") == 1
    # Another engine of the same server reads its own file.
    SharedCounters.create(path_for("inst-a", 4)).set(sla_fallbacks=1)
    logger.record(_step([2], [1], running=1), None, engine_idx=4)
    assert _value("dspark:sla_fallbacks_total", engine="4") == 1
    assert _value("dspark:sla_fallbacks_total", engine="3") == 7


def test_shared_counters_reader_waits_for_a_complete_file(tmp_path):
    path = tmp_path / "c.counters"
    assert SharedCounters.open(path) is None
    path.write_bytes(b"\0" * 3)  # a partial file is never mapped
    assert SharedCounters.open(path) is None
    writer = SharedCounters.create(path)
    writer.set(sla_fallbacks=5)
    assert SharedCounters.open(path).read()["sla_fallbacks"] == 5
    assert not list(tmp_path.glob("*.tmp"))
