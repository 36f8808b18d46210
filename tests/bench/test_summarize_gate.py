"""benchmarks/serving/summarize_gate.py: ratios against the mean of the two no-spec runs, gate share, identity."""
from __future__ import annotations

import pytest

from benchmarks.serving import summarize_gate


def _point(c: int, tput: float, digests: list[str], metrics: dict | None = None) -> dict:
    return {"load": {"concurrency": c, "request_rate": None}, "output_throughput": tput, "server_metrics": metrics,
            "requests": [{"prompt_index": i, "output_sha256": d} for i, d in enumerate(digests)]}


def test_each_config_against_the_mean_of_both_no_spec_runs():
    a, b = "a" * 16, "b" * 16
    doc = {"runs": [
        {"label": "nospec", "points": [_point(1, 10.0, [a, b]), _point(16, 100.0, [a, b])]},
        {"label": "dspark-confidence", "points": [
            _point(1, 15.0, [a, b], {"dspark:length_decisions_total": 200, "dspark:draft_off_steps_total": 10}),
            _point(16, 98.0, [a, a], {"dspark:length_decisions_total": 10, "dspark:draft_off_steps_total": 90})]},
        {"label": "nospec-again", "points": [_point(1, 12.0, [a, b]), _point(16, 104.0, [a, b])]},
    ]}
    text, table = summarize_gate.summarize(doc)
    c1, c16 = table["loads"][1], table["loads"][16]
    assert c1["drift"] == pytest.approx(1.2) and c16["drift"] == pytest.approx(1.04)
    assert c1["configs"]["dspark-confidence"]["ratio"] == pytest.approx(15 / 11)
    assert c16["configs"]["dspark-confidence"]["ratio"] == pytest.approx(98 / 102)  # not 98 / 100: both runs count
    assert c16["configs"]["dspark-confidence"]["gate_off_share"] == pytest.approx(0.9)
    assert table["worst"]["dspark-confidence"] == {"ratio": pytest.approx(98 / 102), "concurrency": 16}
    assert "dspark-confidence: lowest 0.961× no-spec (c = 16): never lose (≥ 0.97×) MISS by 0.9%" in text
    assert (table["greedy_identical"], table["greedy_compared"]) == (3, 4)  # c = 16's second request differs


def test_a_run_without_a_reference_is_refused():
    with pytest.raises(SystemExit, match="no reference run"):
        summarize_gate.summarize({"runs": [{"label": "dspark-sla", "points": [_point(1, 5.0, [])]}]})


def test_drain_is_the_time_after_fewer_than_c_requests_are_left():
    # c = 2, four requests: the third to finish (at 9 s) leaves one in flight until the last ends at 10 s
    reqs = [{"start_s": s, "latency_s": e - s} for s, e in [(0, 4), (0, 5), (4, 9), (5, 10)]]
    point = {"load": {"concurrency": 2, "request_rate": None}, "requests": reqs}
    assert summarize_gate.drain_share(point) == pytest.approx(1 / 10)
    lockstep = [{"start_s": s, "latency_s": 5.0} for s in (0, 0, 5, 5)]
    assert summarize_gate.drain_share(dict(point, requests=lockstep)) == 0
    assert summarize_gate.drain_share(dict(point, requests=reqs[:2])) == pytest.approx(1 / 5)  # one wave
    assert summarize_gate.drain_share(dict(point, requests=reqs[:1])) is None  # never c in flight


def test_repeats_are_pooled_as_tokens_over_time():
    """REPEATS=2: each config's runs of a point pool their tokens over their time (not a mean of tok/s), against all
    no-spec runs pooled; each repeat's own ratio (to its own no-spec run) gives the range."""
    def point(tokens: int, seconds: float) -> dict:
        return dict(_point(16, tokens / seconds, []), output_tokens=tokens, duration_s=seconds)

    doc = {"runs": [
        {"label": "nospec", "points": [point(1000, 10.0)]},
        {"label": "dspark-sla", "points": [point(1000, 12.5)]},
        {"label": "nospec-r2", "points": [point(1000, 8.0)]},
        {"label": "dspark-sla-r2", "points": [point(1000, 8.0)]},
        {"label": "nospec-again", "points": [point(1000, 9.0)]},
    ]}
    text, table = summarize_gate.summarize(doc)
    entry = table["loads"][16]
    assert table["repeats"] == 2 and list(entry["configs"]) == ["dspark-sla"]
    sla = entry["configs"]["dspark-sla"]
    assert sla["tok_s"] == pytest.approx(2000 / 20.5)  # not the mean of 80 and 125 tok/s
    assert sla["ratio"] == pytest.approx((2000 / 20.5) / (3000 / 27.0))
    assert sla["repeat_ratios"] == pytest.approx([10 / 12.5, 1.0])
    assert entry["drift"] == pytest.approx(10 / 8)
    assert "[0.80–1.00]" in text


@pytest.mark.parametrize("label, base, repeat", [("dspark-sla-r3", "dspark-sla", 3), ("nospec", "nospec", 1),
                                                 ("nospec-again", "nospec-again", 1), ("cfg-rx", "cfg-rx", 1)])
def test_repeat_suffix(label, base, repeat):
    assert summarize_gate.base_name(label) == base and summarize_gate.repeat_of(label) == repeat


def test_waves_of_a_closed_loop_point():
    """c = 2, four requests of 4 tokens: the first two end at 4 and 5 s, the last starts at 5 s, the drain begins
    at the third end (9 s) and lasts to 10 s; tokens before it come from the chunk times."""
    spans = [(0, 4), (0, 5), (4, 9), (5, 10)]
    reqs = [{"start_s": s, "latency_s": e - s, "output_tokens": 4, "chunk_tokens": [1, 1, 1, 1],
             "chunk_times_s": [(e - s) * k / 4 for k in (1, 2, 3, 4)]} for s, e in spans]
    w = summarize_gate.waves({"load": {"concurrency": 2, "request_rate": None}, "requests": reqs})
    assert w["first_wave_end_s"] == [4, 5] and w["last_start_s"] == 5
    assert (w["drain_start_s"], w["drain_s"]) == (9, 1)
    # before 9 s: 4 + 4 + 4 (the third ends at 9) + 3 (the last's chunks at 6.25, 7.5, 8.75) = 15 tokens
    assert w["tok_s_before_drain"] == pytest.approx(15 / 9) and w["tok_s_in_drain"] == pytest.approx(1.0)
    no_chunks = [dict(r, chunk_times_s=None) for r in reqs]
    assert summarize_gate.waves({"load": {"concurrency": 2, "request_rate": None}, "requests": no_chunks}) is None
