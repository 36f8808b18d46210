"""benchmarks/gpu/first_gpu_run.py: the commands it would run on a GPU and in the CPU dry run, the runner on toy
steps (deadline, failures, what OUT holds), and gpu_check's verdict helpers. No server starts here; the dry run
itself (`python3 benchmarks/gpu/first_gpu_run.py --dry-run`) takes longer than the slow tier allows."""
from __future__ import annotations

import json
import shlex
import sys
import tarfile
import time
from pathlib import Path

import pytest

from benchmarks.gpu import first_gpu_run
from benchmarks.gpu.plan import Plan, Settings, Step, build_plan
from benchmarks.gpu.runner import Runner
from vllm_dspark.bench.server import start_failure

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
import gpu_check  # noqa: E402


def _settings(tmp_path, **kw) -> Settings:
    return Settings(repo=REPO, out=tmp_path / "out", work=tmp_path / "work", target=tmp_path / "small", **kw)


def _frontier_configs(plan: Plan) -> dict[str, str]:
    argv = plan.frontier[1].argv
    return dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--config")


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _spec(config: str) -> dict:
    words = shlex.split(config)
    return json.loads(_option(words, "--speculative-config"))


def test_gpu_plan_stages_installs_and_runs_both_lanes_at_once(tmp_path):
    plan = build_plan(_settings(tmp_path, bundle=tmp_path / "p3"), deadline=time.time() + 540)
    assert [s.name for s in plan.setup] == ["stage", "install", "versions", "drafters"]
    assert plan.setup[0].argv == ["bash", str(tmp_path / "p3" / "stage.sh")]
    assert "-e" in plan.setup[1].argv and "--no-index" in plan.setup[1].argv
    assert [s.name for s in plan.checks] == ["gpu_check"] and [s.name for s in plan.frontier] == ["testbed", "frontier"]
    assert plan.overlap
    assert plan.env["PYTHONPATH"].endswith(":/tmp/site")
    assert plan.env["VLLM_USE_FLASHINFER_SAMPLER"] == "0" and plan.env["VLLM_USE_V2_MODEL_RUNNER"] == "0"
    assert plan.env["TORCHINDUCTOR_COMPILE_THREADS"] == "2"
    check = plan.checks[0].argv
    assert "--cpu" not in check and "--servers" not in check  # every server, native DSpark included
    assert _option(check, "--out") == str(tmp_path / "out" / "gpu_check.json")
    testbed = plan.frontier[0].argv
    assert (_option(testbed, "--hidden"), _option(testbed, "--layers"), _option(testbed, "--dtype")) == (
        "2560", "36", "bfloat16")


def test_gpu_frontier_has_the_five_configurations(tmp_path):
    plan = build_plan(_settings(tmp_path), deadline=time.time() + 540)
    configs = _frontier_configs(plan)
    assert list(configs) == ["nospec", "dflash-native", "dspark-static", "dspark-confidence", "dspark-sla"]
    assert configs["nospec"] == ""
    drafters = tmp_path / "work" / "testbed" / "drafters"
    assert _spec(configs["dflash-native"]) == {"method": "dflash", "model": str(drafters / "dflash"),
                                               "num_speculative_tokens": 4}
    for mode in ("static", "confidence", "sla"):
        spec = _spec(configs[f"dspark-{mode}"])
        assert spec["model"] == str(drafters / "dspark") and spec["dspark"]["mode"] == mode
    assert _spec(configs["dspark-sla"])["dspark"]["sla_tokens_per_user"] == 150
    argv = plan.frontier[1].argv
    serve = _option(argv, "--serve")
    assert "--async-scheduling" in serve and "--kv-cache-memory-bytes" in serve and "-O0" not in serve
    assert _option(argv, "--after") == str(plan.done_flag)
    assert "--concurrency 1 4 16" in _option(argv, "--bench")


def test_dry_run_plan_is_the_same_steps_on_cpu(tmp_path):
    plan = build_plan(_settings(tmp_path, dry_run=True, bundle=tmp_path / "p3"), deadline=time.time() + 3600)
    assert [s.name for s in plan.setup] == ["versions", "drafters"]  # nothing staged or installed on CPU
    assert not plan.overlap and plan.env["VLLM_CPU_KVCACHE_SPACE"] == "1" and "/tmp/site" not in plan.env["PYTHONPATH"]
    check = plan.checks[0].argv
    assert "--cpu" in check
    assert _option(check, "--servers").split(",") == ["plain", "dspark_static", "dspark_confidence", "dspark_sla"]
    testbed = plan.frontier[0].argv
    assert (_option(testbed, "--device"), _option(testbed, "--dtype")) == ("cpu", "float32")
    assert list(_frontier_configs(plan)) == ["nospec", "dflash-native", "dspark-static", "dspark-confidence",
                                             "dspark-sla"]
    assert "-O0" in _option(plan.frontier[1].argv, "--serve")


def test_trained_drafters_set_gamma_and_a_missing_dflash_leaves_its_config_out(tmp_path):
    (tmp_path / "trained" / "dspark").mkdir(parents=True)
    (tmp_path / "trained" / "dspark" / "config.json").write_text(json.dumps({"block_size": 7}))
    plan = build_plan(_settings(tmp_path, drafters=tmp_path / "trained"), deadline=time.time() + 540)
    assert "drafters" not in [s.name for s in plan.setup]
    configs = _frontier_configs(plan)
    assert "dflash-native" not in configs
    assert _spec(configs["dspark-confidence"])["num_speculative_tokens"] == 7
    assert _option(plan.checks[0].argv, "--drafter") == str(tmp_path / "trained" / "dspark")


def _toy_plan(tmp_path, setup, checks, frontier) -> Plan:
    return Plan(setup=setup, checks=checks, frontier=frontier, overlap=True, env={},
                done_flag=tmp_path / "work" / "done")


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_runner_records_every_step_and_packs_out_into_few_files(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    write_check = _py(f"import json; open({str(out / 'gpu_check.json')!r}, 'w').write(json.dumps("
                      "{'servers': {'plain': {'verdict': 'PASS'}, 'dspark_sla': {'verdict': 'REFUSED at start: x'}}}))")
    plan = _toy_plan(tmp_path, [Step("setup", _py("print('ok')"), 30)], [Step("gpu_check", write_check, 30)],
                     [Step("slow", _py("import time; time.sleep(60)"), 2), Step("fails", _py("raise SystemExit(3)"), 30)])
    rc = Runner(plan, REPO, out, work, deadline=time.time() + 120).run()
    assert rc == 1
    steps = {s["name"]: s for s in json.loads((out / "steps.json").read_text())["steps"]}
    assert steps["setup"]["rc"] == 0 and steps["gpu_check"]["rc"] == 0
    assert steps["slow"]["rc"] == "timeout" and steps["slow"]["seconds"] < 30
    assert "fails" not in steps  # a failed step ends its lane
    assert plan.done_flag.exists()
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu_check.json", "logs.tar.gz", "steps.json", "summary.md"]
    with tarfile.open(out / "logs.tar.gz") as tar:
        assert {"logs/setup.log", "logs/gpu_check.log", "logs/slow.log"} <= set(tar.getnames())
    summary = (out / "summary.md").read_text()
    assert "| slow | timeout |" in summary and "REFUSED at start: x" in summary


def test_runner_stops_after_a_failed_setup_step_and_skips_past_the_deadline(tmp_path):
    plan = _toy_plan(tmp_path, [Step("stage", _py("raise SystemExit(2)"), 30), Step("never", _py(""), 30)], [], [])
    assert Runner(plan, REPO, tmp_path / "out", tmp_path / "work", deadline=time.time() + 60).run() == 1
    assert [s["name"] for s in json.loads((tmp_path / "out" / "steps.json").read_text())["steps"]] == ["stage"]
    late = _toy_plan(tmp_path, [Step("late", _py(""), 30)], [], [])
    assert Runner(late, REPO, tmp_path / "out2", tmp_path / "work2", deadline=time.time() + 10).run() == 1
    assert json.loads((tmp_path / "out2" / "steps.json").read_text())["steps"][0]["rc"] == "skipped: no time left"


def test_main_refuses_a_target_without_eval_prompts(tmp_path, capsys):
    assert first_gpu_run.main(["--print-plan", "--target", str(tmp_path)]) == 2
    assert "eval_prompts.jsonl" in capsys.readouterr().err


def test_gpu_check_servers_run_every_mode_with_async_scheduling_and_cuda_graphs(tmp_path):
    pool = gpu_check.servers(tmp_path, tmp_path / "d", tmp_path / "logs", cpu=False, sla_floor=150.0)
    assert list(pool) == ["plain", "dspark_static", "dspark_confidence", "dspark_sla", "native_dspark"]
    for name, server in pool.items():
        assert "--async-scheduling" in server.args and "-O0" not in server.args and "--enforce-eager" not in server.args
    for name, mode in gpu_check.MODES.items():
        spec = json.loads(_option(pool[name].args, "--speculative-config"))
        assert spec["dspark"]["mode"] == mode
    assert json.loads(_option(pool["dspark_sla"].args, "--speculative-config"))["dspark"]["sla_tokens_per_user"] == 150
    assert pool["native_dspark"].env == {"VLLM_USE_V2_MODEL_RUNNER": "1"}


def test_gpu_check_names_the_refusal_of_a_server_that_stopped_at_start():
    log = ("(APIServer pid=1) INFO starting\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
           "vllm_dspark.adapter.spec_config.DSparkConfigError: --speculative-config: 'dspark.mode' = 'sla' trims "
           "drafts\nRuntimeError: Engine core initialization failed. See root cause above.\n")
    assert start_failure(log).startswith("DSparkConfigError: --speculative-config: 'dspark.mode' = 'sla'")
    assert start_failure("ValueError: bad\n") == "ValueError: bad"
    entry = {"refused": start_failure(log)}
    assert gpu_check.verdict("dspark_sla", entry, 16).startswith("REFUSED at start (exited before serving): DSparkConfigError")


def _metrics(**kw) -> dict:
    m = {"vllm:spec_decode_num_drafts_total": 10.0, "vllm:spec_decode_num_draft_tokens_total": 30.0,
         "vllm:spec_decode_num_accepted_tokens_total": 12.0, "dspark:scheduler_info": 1.0,
         "dspark:verified_tokens_total": 30.0, "dspark:mean_verify_length": 3.0, "dspark:length_decisions_total": 5.0}
    return {**m, **kw}


@pytest.mark.parametrize("name,metrics,failed", [
    ("plain", {}, []),
    ("plain", {"vllm:spec_decode_num_drafts_total": 3.0}, ["no draft rounds"]),
    ("dspark_confidence", _metrics(), []),
    ("dspark_confidence", _metrics(**{"dspark:length_decisions_total": 0.0}), ["lengths decided by the policy"]),
    ("dspark_static", _metrics(**{"dspark:mean_verify_length": 4.0}), []),
    ("dspark_static", _metrics(), ["mean verify length == 4"]),
    ("dspark_sla", _metrics(**{"dspark:verified_tokens_total": 29.0}), ["dspark verified == vLLM draft tokens"]),
    ("native_dspark", {"vllm:spec_decode_num_drafts_total": 0.0}, ["draft rounds ran"]),
])
def test_gpu_check_metrics_checks(name, metrics, failed):
    checks = gpu_check.metrics_checks(name, metrics)
    assert [k for k, ok in checks.items() if not ok] == failed


def test_gpu_check_verdict_needs_every_greedy_request_equal():
    entry = {"completions_equal": 16, "chat_equal": 15, "metrics_checks": {"draft rounds ran": True}}
    assert gpu_check.verdict("dspark_static", entry, 16).startswith("FAIL: greedy equal 16/16 completions, 15/16")
    entry["chat_equal"] = 16
    assert gpu_check.verdict("dspark_static", entry, 16) == "PASS"
