"""benchmarks/serving/cost_fit.py: prediction errors and draft shares per load from a step trace."""
from __future__ import annotations

import json

import pytest

from benchmarks.serving import cost_fit


def step(requests, verify, predicted, prior, draft=0.0, tokens=None):
    return {"requests": requests, "drafted_requests": requests, "drafted": draft > 0,
            "batch_tokens": tokens or requests, "period_s": verify + draft, "draft_s": draft, "verify_s": verify,
            "predicted_verify_s": predicted, "prior_verify_s": prior, "predicted_draft_s": draft}


def test_errors_per_load_and_half(tmp_path):
    # load 1: predictions 20% high, then exact (the refit converged); load 4: drafted, round 25 ms of a 125 ms step
    trace = [step(1, 0.100, 0.120, 0.120), step(1, 0.100, 0.120, 0.120), step(1, 0.100, 0.100, 0.120),
             step(1, 0.100, 0.100, 0.120), step(4, 0.100, 0.090, 0.080, draft=0.025, tokens=12)]
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in trace) + "\n")
    rows = {r["requests"]: r for r in cost_fit.summarize(cost_fit.load(path))}
    one, four = rows[1], rows[4]
    assert one["steps"] == 4 and one["drafted_steps"] == 0 and one["draft_ms"] is None
    assert one["prior_error"] == pytest.approx(0.2)
    assert one["error_first_half"] == pytest.approx(0.2) and one["error_last_half"] == pytest.approx(0.0)
    assert one["predicted_verify_ms"] == pytest.approx(110.0)
    assert four["error_first_half"] is None and four["error_last_half"] == pytest.approx(0.1)
    assert four["draft_ms"] == pytest.approx(25.0) and four["draft_share"] == pytest.approx(0.2)
    assert four["mean_batch_tokens"] == 12
    assert one["draft_parts_ms"] is None


def test_draft_round_parts():
    r = step(4, 0.100, 0.1, 0.1, draft=0.030, tokens=12)
    r["draft_phases_s"] = {"inputs": 0.002, "context_kv": 0.003, "round": 0.015, "lm_head": 0.005}
    (row,) = cost_fit.summarize([r])
    assert row["draft_parts_ms"] == pytest.approx({"inputs": 2.0, "context_kv": 3.0, "backbone_and_rest": 10.0,
                                                   "lm_head": 5.0, "sequential_heads": 10.0})


def test_cli_writes_json_and_refuses_an_empty_trace(tmp_path, capsys):
    path = tmp_path / "trace.jsonl"
    path.write_text(json.dumps(step(2, 0.05, 0.05, 0.06)) + "\n")
    assert cost_fit.main([str(path), "--json", str(tmp_path / "fit.json")]) == 0
    assert json.loads((tmp_path / "fit.json").read_text())["loads"][0]["requests"] == 2
    assert "| 2 | 1 (0) |" in capsys.readouterr().out
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SystemExit, match="no steps traced"):
        cost_fit.main([str(empty)])


def test_time_split_counts_prefill_steps_apart(tmp_path):
    """Prefill steps are traced (marked) but kept out of the per-load table; the time split accounts for them."""
    pre = {**step(4, 0.300, 0.3, 0.3, tokens=90), "prefill": True}
    trace = [pre, {**step(4, 0.100, 0.1, 0.1, draft=0.02, tokens=12), "gate_gain": 1.3},
             {**step(16, 0.090, 0.1, 0.1), "gate_gain": 0.97}, {**step(16, 0.090, 0.1, 0.1), "gate_gain": 1.02}]
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in trace) + "\n")
    assert len(cost_fit.load(path)) == 3 and len(cost_fit.load(path, prefill=True)) == 4
    split = cost_fit.time_split(cost_fit.load(path, prefill=True))
    assert split["prefill"] == {"steps": 1, "seconds": pytest.approx(0.3)}
    assert split["decode_drafted"] == {"steps": 1, "seconds": pytest.approx(0.12)}
    assert split["decode_undrafted"] == {"steps": 2, "seconds": pytest.approx(0.18)}
    assert split["gate_gain"] == {4: 1.3, 16: 1.02} and split["timeline"] == "pD.."


def test_decode_rates_per_load_bucket():
    """Tokens/s the decoding steps generated, with and without drafts, per load bucket (prefill steps and records
    without a count left out)."""
    trace = [{**step(16, 0.30, 0.3, 0.3, tokens=120), "prefill": True, "generated_tokens": None},
             {**step(16, 0.18, 0.1, 0.1, draft=0.02, tokens=40), "generated_tokens": 30},  # 150 tok/s
             {**step(15, 0.10, 0.1, 0.1, draft=0.02, tokens=40), "generated_tokens": 12},  # bucket 16 too
             {**step(16, 0.10, 0.1, 0.1), "generated_tokens": 16},
             {**step(2, 0.05, 0.1, 0.1), "generated_tokens": 2}, step(2, 0.05, 0.1, 0.1)]
    split = cost_fit.time_split(trace)
    assert split["decode_rates"][16] == pytest.approx([42 / 0.32, 160.0])
    assert split["decode_rates"][2] == [None, pytest.approx(40.0)]
    # median decoding step with / without drafts (every decoding step counts, with a token count or not)
    assert split["decode_median_ms"][16] == pytest.approx([160.0, 100.0])
    assert split["decode_median_ms"][2] == [None, pytest.approx(50.0)]
