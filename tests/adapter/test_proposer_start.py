"""DSparkProposer at engine start: a mode that needs a cost table refuses to serve without one."""
from __future__ import annotations

import pytest

pytest.importorskip("vllm")
from vllm_dspark.adapter import profile  # noqa: E402
from vllm_dspark.adapter.policy import VerifyLengthPolicy  # noqa: E402
from vllm_dspark.adapter.proposer import DSparkProposer  # noqa: E402
from vllm_dspark.adapter.spec_config import DSparkConfigError, ResolvedServing  # noqa: E402


def _warm_proposer(**serving) -> DSparkProposer:
    """Only the state `on_engine_warm` reads (building a real one needs a whole vLLM engine config)."""
    s = ResolvedServing(num_speculative_tokens=4, block_size=4, has_confidence_head=True, **serving)
    p = DSparkProposer.__new__(DSparkProposer)
    p.is_dspark, p._warm_done, p.serving, p.num_speculative_tokens = True, False, s, 4
    p.policy = VerifyLengthPolicy(s.mode, 4, sla_tokens_per_user=s.sla_tokens_per_user)
    p._capture_draft_round = lambda: None
    p._counters, p._round = None, None
    return p


@pytest.mark.parametrize("mode,extra", [("confidence", {}), ("sla", {"sla_tokens_per_user": 20.0})])
def test_no_cost_table_in_a_table_mode_is_an_error_at_start(monkeypatch, mode, extra):
    # Settings that skipped resolve()'s check (profile off, no table) ...
    with pytest.raises(DSparkConfigError, match=r"'dspark\.cost_table' is not set .*'dspark\.profile'"):
        _warm_proposer(mode=mode, profile=False, **extra).on_engine_warm(runner=None)
    # ... and profiling that produced nothing.
    monkeypatch.setattr(profile, "profile_runner", lambda *a, **k: None)
    with pytest.raises(DSparkConfigError, match=f"mode '{mode}' needs a cost table"):
        _warm_proposer(mode=mode, **extra).on_engine_warm(runner=None)


def test_static_mode_starts_without_a_cost_table():
    p = _warm_proposer(mode="static", profile=False)
    p.on_engine_warm(runner=None)
    assert p.policy.table is None and p._warm_done
