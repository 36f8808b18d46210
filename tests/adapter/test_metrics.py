"""DSparkStatLogger: what reaches Prometheus from vLLM's per-step spec-decoding stats."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

pytest.importorskip("vllm")
from vllm.v1.metrics.stats import SchedulerStats  # noqa: E402
from vllm.v1.spec_decode.metrics import SpecDecodingStats  # noqa: E402

from vllm_dspark.adapter import compat  # noqa: E402
from vllm_dspark.adapter.metrics import DSparkStatLogger  # noqa: E402


def _vllm_config(arch: str, mode="confidence"):
    hf = SimpleNamespace(architectures=[arch])
    if arch == compat.ROUTED_ARCH:
        hf.dspark_serving = {"mode": mode, "num_speculative_tokens": 4, "block_size": 4, "has_confidence_head": True}
    spec = SimpleNamespace(num_speculative_tokens=4, draft_model_config=SimpleNamespace(hf_config=hf))
    return SimpleNamespace(speculative_config=spec)


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
