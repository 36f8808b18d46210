"""`vllm-dspark bench` argument handling and failure reporting that need no model server."""
import argparse
import json
import shlex
import sys

import pytest

from vllm_dspark.cli import bench as bench_cli
from vllm_dspark.cli import main


def _parse(argv):
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_configs_append_to_the_common_serve_args():
    args = _parse(["--serve", "--model m --max-model-len 64", "--config", "nospec=",
                   "--config", "ngram=--speculative-config.method ngram"])
    assert bench_cli._run_specs(args) == [("nospec", "--model m --max-model-len 64"),
                                          ("ngram", "--model m --max-model-len 64 --speculative-config.method ngram")]


@pytest.mark.parametrize("flags, keep", [([], False), (["--keep-token-ids"], True)])
def test_keep_token_ids_reaches_the_request_settings(flags, keep):
    settings = bench_cli.sampling_settings(_parse(["--url", "http://x", *flags]), "m")
    assert settings.keep_token_ids is keep and settings.model == "m"


def test_min_tokens_draws_each_prompts_length_once_for_every_config_and_load():
    settings = bench_cli.sampling_settings(_parse(["--url", "http://x", "--max-tokens", "96", "--min-tokens", "32"]),
                                           "m")
    lengths = [settings.max_tokens_for(i) for i in range(200)]
    assert all(32 <= n <= 96 for n in lengths) and len(set(lengths)) > 30  # spread over the range
    again = bench_cli.sampling_settings(_parse(["--url", "http://y", "--max-tokens", "96", "--min-tokens", "32",
                                                "--seed", "5"]), "other")
    assert [again.max_tokens_for(i) for i in range(200)] == lengths  # by prompt index alone
    fixed = bench_cli.sampling_settings(_parse(["--url", "http://x", "--max-tokens", "96"]), "m")
    assert {fixed.max_tokens_for(i) for i in range(20)} == {96}


@pytest.mark.parametrize("argv, message", [
    (["--url", "http://x", "--serve", "--model m"], "--url cannot be combined"),
    ([], "give --url, --serve or --config"),
    (["--url", "http://x", "--concurrency", "1", "--request-rate", "2"], "exclusive"),
    (["--url", "http://x", "--concurrency", "0"], "--concurrency values must be >= 1"),
    (["--url", "http://x", "--num-prompts", "0"], "--num-prompts must be >= 1"),
    (["--url", "http://x", "--max-tokens", "8", "--min-tokens", "9"], "--min-tokens must be in [1, --max-tokens = 8]"),
    (["--serve", "--model m", "--config", "a=", "--config", "a=--x"], "--config names must be unique"),
])
def test_inconsistent_arguments_are_refused_by_name(argv, message, capsys):
    assert main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err


def test_chat_with_token_id_prompts_is_refused(tmp_path, capsys):
    prompts = tmp_path / "ids.jsonl"
    prompts.write_text('{"prompt_token_ids": [1, 2, 3]}\n')
    argv = ["bench", "--url", "http://127.0.0.1:9", "--endpoint", "chat", "--prompts", str(prompts)]
    assert main(argv + ["--out-dir", str(tmp_path)]) == 2
    assert "--endpoint chat needs text prompts" in capsys.readouterr().err


def test_server_that_fails_to_start_is_reported(tmp_path):
    # A launcher that prints and exits 3: the configurable launcher, the server log and the failure record.
    launcher = f"{shlex.quote(sys.executable)} -c 'import sys; print(\"boom from launcher\"); sys.exit(3)'"
    rc = main(["bench", "--serve", "--model m", "--launcher", launcher, "--concurrency", "1", "--num-prompts", "1",
               "--no-progress", "--server-timeout", "60", "--out-dir", str(tmp_path)])
    assert rc == 1
    doc = json.loads((tmp_path / "results.json").read_text())
    (run,) = doc["runs"]
    assert run["points"] == [] and "exited with code 3" in run["error"] and "boom from launcher" in run["error"]
    assert run["server"]["command"][-6:] == ["--model", "m", "--port", run["url"].rsplit(":", 1)[1],
                                             "--host", "127.0.0.1"]
    assert doc["error"].startswith("run 'serve' failed after 0 points")
    assert doc["finished_utc"] is not None and doc["plots"] == {}


def _point(speed, tput):
    dist = {"mean": speed, "p10": speed, "p50": speed, "p90": speed}
    return {"load": {"concurrency": 1, "request_rate": None}, "num_requests": 1, "completed": 1, "failed": 0,
            "duration_s": 1.0, "output_tokens": 1, "output_throughput": tput, "per_user_speed": dist,
            "per_user_speed_vllm": tput, "per_user_speed_tpot": {"speed_from_mean_tpot": speed}, "ttft_s": dist,
            "spec_decode": None, "server_metrics": None, "errors": []}


def _write_results(path, label, points):
    path.parent.mkdir(parents=True)
    run = {"label": label, "points": [_point(s, t) for s, t in points], "frontier": None}
    path.write_text(json.dumps({"schema_version": 1, "kind": "vllm-dspark.bench.throughput_vs_sla", "runs": [run]}))


def test_compare_only_mode_reads_baselines(tmp_path):
    a, b = tmp_path / "a" / "results.json", tmp_path / "b" / "results.json"
    _write_results(a, "x", [(50, 300), (100, 100)])
    _write_results(b, "x", [(60, 400), (120, 200)])
    out = tmp_path / "cmp"
    assert main(["bench", "--baseline", str(a), "--baseline", str(b), "--sla", "80", "--no-plots",
                 "--out-dir", str(out)]) == 0
    cmp = json.loads((out / "results.json").read_text())["comparison"]
    assert cmp["reference"] == "x [a]"  # same labels get their folder names
    (row,) = cmp["sla"]
    assert row["throughput"]["x [a]"] == pytest.approx(300 - 200 * 30 / 50)  # 180 on (50, 300)-(100, 100)
    assert row["throughput"]["x [b]"] == pytest.approx(400 - 200 * 20 / 60)  # 333.3 on (60, 400)-(120, 200)
    assert row["ratio"]["x [b]"] == pytest.approx((400 - 200 * 20 / 60) / 180)


def test_baseline_of_another_format_is_refused_before_measuring(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "other"}')
    # The URL is never contacted: the baseline is checked first.
    assert main(["bench", "--url", "http://127.0.0.1:9", "--baseline", str(bad), "--out-dir", str(tmp_path)]) == 2
    assert "bad.json: not a bench results file" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()
