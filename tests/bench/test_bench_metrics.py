"""Prometheus parsing, per-point deltas and the speculative-decoding summary on hand-written /metrics text."""
import pytest

from vllm_dspark.bench.metrics_scrape import delta, parse_metrics, spec_decode_summary, totals


def _metrics(drafts, draft_tokens, accepted, per_pos, verify_sum, verify_count, running, engines=("0",)):
    """A /metrics text shaped like vLLM 0.32's (each engine reports the same values)."""
    lines = ["# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.",
             "# TYPE vllm:spec_decode_num_drafts_total counter"]
    lab = 'engine="{e}",model_name="/m"'
    for e in engines:
        lines.append(f'vllm:spec_decode_num_drafts_total{{{lab.format(e=e)}}} {drafts}')
    lines += ["# TYPE vllm:spec_decode_num_drafts_created gauge"]
    for e in engines:
        lines.append(f'vllm:spec_decode_num_drafts_created{{{lab.format(e=e)}}} 1.7e9')
    lines += ["# TYPE vllm:spec_decode_num_draft_tokens_total counter"]
    for e in engines:
        lines.append(f'vllm:spec_decode_num_draft_tokens_total{{{lab.format(e=e)}}} {draft_tokens}')
    lines += ["# TYPE vllm:spec_decode_num_accepted_tokens_total counter"]
    for e in engines:
        lines.append(f'vllm:spec_decode_num_accepted_tokens_total{{{lab.format(e=e)}}} {accepted}')
    lines += ["# TYPE vllm:spec_decode_num_accepted_tokens_per_pos_total counter"]
    for e in engines:
        for pos, value in enumerate(per_pos):
            lines.append(f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{{lab.format(e=e)},position="{pos}"}} '
                         f'{value}')
    lines += ["# TYPE vllm_dspark:verify_len histogram"]
    for e in engines:
        lines += [f'vllm_dspark:verify_len_bucket{{{lab.format(e=e)},le="4.0"}} {verify_count}',
                  f'vllm_dspark:verify_len_bucket{{{lab.format(e=e)},le="+Inf"}} {verify_count}',
                  f'vllm_dspark:verify_len_sum{{{lab.format(e=e)}}} {verify_sum}',
                  f'vllm_dspark:verify_len_count{{{lab.format(e=e)}}} {verify_count}']
    lines += ["# TYPE vllm_dspark:budget gauge"]
    for e in engines:
        lines.append(f'vllm_dspark:budget{{{lab.format(e=e)}}} {running}')
    lines += ["# TYPE vllm:num_requests_running gauge", f'vllm:num_requests_running{{{lab.format(e="0")}}} 3']
    return "\n".join(lines) + "\n"


def test_delta_over_a_point_and_spec_summary():
    before = parse_metrics(_metrics(10, 40, 20, [8, 6, 4, 2], 30.0, 10, running=5))
    after = parse_metrics(_metrics(30, 120, 70, [20, 20, 18, 12], 100.0, 30, running=7))
    d = delta(before, after)
    assert d["vllm:spec_decode_num_drafts_total"] == 20
    assert d["vllm:spec_decode_num_draft_tokens_total"] == 80
    assert d["vllm:spec_decode_num_accepted_tokens_total"] == 50
    assert d['vllm:spec_decode_num_accepted_tokens_per_pos_total{position="2"}'] == 14
    assert d["vllm_dspark:verify_len_sum"] == 70.0 and d["vllm_dspark:verify_len_count"] == 20
    assert d["vllm_dspark:verify_len_mean"] == pytest.approx(3.5)  # 70 / 20
    assert d["vllm_dspark:budget"] == 7  # a gauge keeps its value after the point
    assert not any(k.endswith(("_created", "_bucket")) or "_bucket{" in k for k in d)
    assert "vllm:num_requests_running" not in d  # not under a default prefix
    s = spec_decode_summary(d)
    assert s["num_drafts"] == 20 and s["num_draft_tokens"] == 80 and s["num_accepted_tokens"] == 50
    assert s["accepted_per_pos"] == [12, 14, 14, 10]
    assert s["acceptance_rate"] == pytest.approx(50 / 80)
    assert s["mean_accepted_length"] == pytest.approx(1 + 50 / 20)
    assert s["mean_verification_length"] == pytest.approx(80 / 20)
    assert s["acceptance_per_pos"] == pytest.approx([0.6, 0.7, 0.7, 0.5])
    assert s["mean_verification_length_all_steps"] is None  # no dspark:* counters in this text


def test_plugin_counters_give_verification_length_over_all_steps():
    text = ("# TYPE dspark:verified_tokens_total counter\ndspark:verified_tokens_total{engine=\"0\"} %d\n"
            "# TYPE dspark:request_steps_total counter\ndspark:request_steps_total{engine=\"0\"} %d\n"
            "# TYPE vllm:spec_decode_num_drafts_total counter\nvllm:spec_decode_num_drafts_total{engine=\"0\"} %d\n")
    d = delta(parse_metrics(text % (10, 10, 3)), parse_metrics(text % (70, 40, 23)))
    assert spec_decode_summary(d)["mean_verification_length_all_steps"] == pytest.approx(60 / 30)


def test_counters_are_summed_over_engines_and_gauges_averaged():
    snap = parse_metrics(_metrics(10, 40, 20, [8], 30.0, 10, running=5, engines=("0", "1")))
    assert snap["vllm:spec_decode_num_drafts_total"].value == 20
    assert snap["vllm_dspark:verify_len_count"].value == 20
    assert snap["vllm_dspark:budget"].value == 5


def test_totals_sum_the_labels_kept_in_the_keys():
    snap = parse_metrics(_metrics(10, 40, 20, [8, 5, 1], 30.0, 10, running=5, engines=("0", "1")))
    t = totals(snap)
    assert t["vllm:spec_decode_num_accepted_tokens_per_pos_total"] == 2 * (8 + 5 + 1)  # positions and engines
    assert t["vllm:spec_decode_num_drafts_total"] == 20 and t["vllm_dspark:budget"] == 5
    assert not any("{" in k for k in t)


def test_counter_first_seen_during_the_point_counts_from_zero():
    after = parse_metrics(_metrics(4, 16, 8, [], 0.0, 0, running=0))
    d = delta({}, after)
    assert d["vllm:spec_decode_num_drafts_total"] == 4
    assert "vllm_dspark:verify_len_mean" not in d  # no observations: no mean


def test_prefix_selection_and_no_spec_server():
    text = "# TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total{engine=\"0\"} 5\n"
    d = delta(parse_metrics(text), parse_metrics(text.replace(" 5", " 12")))
    assert d == {"vllm:generation_tokens_total": 7}
    assert spec_decode_summary(d) is None
    assert parse_metrics(text, prefixes=("vllm_dspark:",)) == {}
