"""DSparkProposer at engine start: a mode that needs a cost table refuses to serve without one; the drafter's
feature width is checked against the target before any request."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("vllm")
from vllm_dspark.adapter import profile  # noqa: E402
from vllm_dspark.adapter.spec_config import DSparkConfigError  # noqa: E402
from vllm_dspark.config import DrafterMismatchError  # noqa: E402

from proposer_factory import HIDDEN, make_proposer  # noqa: E402


@pytest.mark.parametrize("mode,extra", [("confidence", {}), ("sla", {"sla_tokens_per_user": 20.0})])
def test_no_cost_table_in_a_table_mode_is_an_error_at_start(monkeypatch, mode, extra):
    # Settings that skipped resolve()'s check (profile off, no table) ...
    p = make_proposer(monkeypatch, mode=mode, **extra)
    p.serving = p.serving.model_copy(update={"profile": False})
    with pytest.raises(DSparkConfigError, match=r"'dspark\.cost_table' is not set .*'dspark\.profile'"):
        p.on_engine_warm(runner=None)
    # ... and profiling that produced nothing.
    monkeypatch.setattr(profile, "profile_runner", lambda *a, **k: None)
    with pytest.raises(DSparkConfigError, match=f"mode '{mode}' needs a cost table"):
        make_proposer(monkeypatch, mode=mode, **extra).on_engine_warm(runner=None)


def test_static_mode_starts_without_a_cost_table(monkeypatch):
    p = make_proposer(monkeypatch, mode="static", profile=False)
    p.on_engine_warm(runner=None)
    assert p.policy.table is None and p._warm_done


def _with_fc(p, fc):
    p.model = SimpleNamespace(model=SimpleNamespace(fc=fc))
    return p


def test_drafter_features_are_checked_at_load(monkeypatch):
    """target_layer_ids [0, 2] of a target with hidden size 24: fc must take 2 × 24 features."""
    p = make_proposer(monkeypatch, mode="static")
    _with_fc(p, SimpleNamespace(input_size=2 * HIDDEN))._check_target_features()  # fits
    assert p.draft_model_config.hf_config.eagle_aux_hidden_state_layer_ids == [1, 3]  # pinned for the runner
    with pytest.raises(DrafterMismatchError, match="fc takes 72 features, but 2 target layers"):
        _with_fc(p, SimpleNamespace(input_size=3 * HIDDEN))._check_target_features()


@pytest.mark.parametrize("fc", [None, SimpleNamespace(weight=None)])
def test_drafter_feature_check_is_never_skipped(monkeypatch, fc):
    p = _with_fc(make_proposer(monkeypatch, mode="static"), fc)
    with pytest.raises(RuntimeError, match=r"\.model\.fc\.input_size"):
        p._check_target_features()
