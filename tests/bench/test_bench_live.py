"""`vllm-dspark bench` against real vLLM servers of the tiny pycode-23m model (CPU, no mocks).

Two servers boot in parallel (a start is mostly one core's work): one with ngram speculation shared by the module
through `--url` (ngram makes chunks carry several tokens and fills the acceptance counters), and one that
`vllm-dspark bench --serve` starts itself and that a watcher kills during the second load point.
"""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from vllm_dspark.bench.server import ServerError, ServerProcess
from vllm_dspark.cli import main

jsonschema = pytest.importorskip("jsonschema")
from vllm_dspark.bench.schema import validate  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODEL = Path(os.environ.get("DSPARK_TEST_TARGET", REPO.parent / "shared" / "models" / "pycode-23m"))
PROMPTS = MODEL / "eval_prompts.jsonl"
# --enforce-eager skips the CPU torch.compile warm-up and the uni executor the worker process: the server is up in
# ~25 s instead of ~55 s on 2 idle cores.
BASE_ARGS = ["--model", str(MODEL), "--max-model-len", "1024", "--gpu-memory-utilization", "0.2", "--enforce-eager",
             "--distributed-executor-backend", "uni"]
NGRAM_ARGS = ["--speculative-config.method", "ngram", "--speculative-config.num_speculative_tokens", "4",
              "--speculative-config.prompt_lookup_max", "4"]
# The bench talks to any server; keep the plugin under development (our vllm.general_plugins entry) out of it.
SERVER_ENV = {"VLLM_PLUGINS": ""}
NUM_PROMPTS, MAX_TOKENS = 4, 16
pytestmark = pytest.mark.e2e  # real vLLM servers (tests/conftest.py adds slow)


def _skip_reason() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed"
    if not (MODEL / "config.json").exists() or not PROMPTS.exists():
        return f"test model not found at {MODEL} (set DSPARK_TEST_TARGET)"
    return None


def _kill_server_after_first_point(results: Path, proc: subprocess.Popen, killed: dict) -> None:
    """Watch the results file of a --serve run; SIGKILL its server's process group once one point is written."""
    while proc.poll() is None:
        try:
            run = json.loads(results.read_text())["runs"][0]
        except (OSError, ValueError, IndexError, KeyError):
            run = None
        if run and run["points"]:
            os.killpg(run["server"]["pid"], signal.SIGKILL)
            killed["after_points"] = len(run["points"])
            return
        time.sleep(0.1)


@pytest.fixture(scope="module")
def serve_run(tmp_path_factory):
    """A `--serve` run (no speculation) whose server gets killed mid-run; started first to boot in parallel."""
    if reason := _skip_reason():
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("serve_run")
    cmd = [sys.executable, "-m", "vllm_dspark", "bench", "--serve", " ".join(BASE_ARGS), "--label", "nospec",
           # The second point trickles 8 requests in at 0.5/s (~14 s, seeded), so the watcher has seconds to kill
           # the server in it, not the ~1 s a closed-loop point of this tiny model lasts.
           "--request-rate", "inf", "0.5", "--max-concurrency", "2", "--num-prompts", "8", "--max-tokens", "32",
           "--warmup", "0", "--no-progress",
           "--no-plots", "--server-timeout", "300", "--server-env", "VLLM_PLUGINS=", "--out-dir", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed: dict = {}
    watcher = threading.Thread(target=_kill_server_after_first_point, args=(out / "results.json", proc, killed),
                               daemon=True)
    watcher.start()
    yield proc, out, killed
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def server(serve_run, tmp_path_factory):
    srv = ServerProcess(BASE_ARGS + NGRAM_ARGS, log_path=tmp_path_factory.mktemp("server") / "server.log",
                        env=SERVER_ENV).start()
    try:
        srv.wait_healthy(timeout=300)
    except ServerError as e:
        srv.stop()
        pytest.fail(f"could not start the test server: {e}")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def sweep(server, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    rc = main(["bench", "--url", server.url, "--concurrency", "1", "4", "--num-prompts", str(NUM_PROMPTS),
               "--max-tokens", str(MAX_TOKENS), "--prompts", str(PROMPTS), "--warmup", "1", "--sla", "50", "100",
               "--no-progress", "--out-dir", str(out)])
    return rc, json.loads((out / "results.json").read_text()), out


def test_sweep_results_follow_the_schema(sweep):
    rc, doc, _ = sweep
    assert rc == 0, doc["error"]
    validate(doc)
    assert doc["error"] is None and doc["finished_utc"] is not None
    (run,) = doc["runs"]
    assert run["error"] is None
    assert [p["load"] for p in run["points"]] == [{"concurrency": 1, "request_rate": None},
                                                  {"concurrency": 4, "request_rate": None}]
    assert run["server_info"]["version"]["version"]  # /version answered


def test_token_counts_match_the_server_count(sweep):
    _, doc, _ = sweep
    for point in doc["runs"][0]["points"]:
        assert (point["completed"], point["failed"]) == (NUM_PROMPTS, 0)
        # ignore_eos fixes every output at max_tokens; the server counts generated tokens independently.
        assert point["output_tokens"] == NUM_PROMPTS * MAX_TOKENS
        assert point["server_metrics"]["vllm:generation_tokens_total"] == NUM_PROMPTS * MAX_TOKENS
        for req in point["requests"]:
            assert req["output_tokens"] == MAX_TOKENS and req["finish_reason"] == "length"
            assert req["token_count_source"] == "continuous_usage"
            assert sum(req["chunk_tokens"]) == MAX_TOKENS
            times = req["chunk_times_s"]
            assert times == sorted(times)
            assert req["ttft_s"] == times[0] and req["latency_s"] == times[-1]
    # ngram speculation delivers several tokens in one chunk: one-chunk-one-token counting would be wrong.
    assert max(r["max_tokens_per_chunk"] for p in doc["runs"][0]["points"] for r in p["requests"]) > 1


def test_greedy_output_digests_repeat_across_loads(sweep):
    """T = 0: each prompt's text digest is the same at concurrency 1 and 4, and the prompts' digests differ."""
    _, doc, _ = sweep
    c1, c4 = ({r["prompt_index"]: r["output_sha256"] for r in p["requests"]} for p in doc["runs"][0]["points"])
    assert c1 == c4 and len(c1) == NUM_PROMPTS
    assert len(set(c1.values())) == NUM_PROMPTS and all(len(d) == 16 for d in c1.values())


def test_throughput_and_per_user_speed_are_plausible(sweep):
    _, doc, _ = sweep
    for point in doc["runs"][0]["points"]:
        assert point["output_throughput"] > 0
        assert point["output_throughput"] == pytest.approx(point["output_tokens"] / point["duration_s"])
        for req in point["requests"]:
            tokens, times = req["chunk_tokens"], req["chunk_times_s"]
            assert req["per_user_speed"] == pytest.approx((sum(tokens) - tokens[0]) / (times[-1] - times[0]))
        speed = point["per_user_speed"]
        assert speed["p50"] > 1.0 and speed["p10"] <= speed["p50"] <= speed["p90"]
        # vLLM's throughput / concurrency also counts TTFT and idle users, so it cannot exceed our per-request
        # speed by more than n / (n - 1) = 16 / 15. No upper bound: on a starved machine the client reads
        # whole bursts of chunks at once and measured speeds get arbitrarily high.
        assert speed["mean"] >= 0.9 * point["per_user_speed_vllm"]
        assert point["ttft_s"]["mean"] > 0


def test_acceptance_metrics_are_scraped(sweep):
    _, doc, _ = sweep
    for point in doc["runs"][0]["points"]:
        spec = point["spec_decode"]
        assert spec is not None and spec["num_drafts"] > 0
        assert len(spec["accepted_per_pos"]) == 4  # num_speculative_tokens
        assert 1.0 <= spec["mean_accepted_length"] <= 5.0
        assert 0.0 < spec["mean_verification_length"] <= 4.0
        assert spec["num_accepted_tokens"] <= spec["num_draft_tokens"]


def test_plots_are_non_trivial(sweep):
    import matplotlib.image

    _, doc, out = sweep
    assert set(doc["plots"]) == {"frontier", "throughput_vs_load", "acceptance_vs_load"}
    for path in doc["plots"].values():
        assert Path(path).parent == out and Path(path).stat().st_size > 10_000
        pixels = matplotlib.image.imread(path)[..., :3]  # [H, W, 3] floats in [0, 1]
        assert pixels.std() > 0.05
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # lines, text, markers in several colours


def test_rate_mode_chat_run_compared_against_a_baseline(server, sweep, tmp_path):
    _, _, first = sweep
    rc = main(["bench", "--url", server.url, "--label", "again", "--endpoint", "chat", "--request-rate", "inf",
               "--max-concurrency", "2", "--num-prompts", "2", "--max-tokens", "8", "--warmup", "0",
               "--baseline", str(first / "results.json"), "--no-progress", "--out-dir", str(tmp_path)])
    doc = json.loads((tmp_path / "results.json").read_text())
    assert rc == 0, doc["error"]
    validate(doc)
    (point,) = doc["runs"][0]["points"]
    assert point["load"] == {"concurrency": 2, "request_rate": "inf"} and point["output_tokens"] == 2 * 8
    cmp = doc["comparison"]
    assert cmp["reference"] == f"default [{first.name}]"  # the first baseline's run
    assert set(cmp["sla"][0]["throughput"]) == {cmp["reference"], "again"}
    assert len(cmp["matched_throughput"]) == len(doc["baselines"][0]["runs"][0]["frontier"]["points"])
    assert "requests" not in doc["baselines"][0]["runs"][0]["points"][0]


def test_killed_server_of_a_serve_run_keeps_finished_points(serve_run):
    proc, out, killed = serve_run
    output, _ = proc.communicate(timeout=300)
    doc = json.loads((out / "results.json").read_text())
    assert killed.get("after_points") == 1, f"the server was not killed after the first point:\n{output}"
    assert proc.returncode == 1, output
    validate(doc)
    (run,) = doc["runs"]
    assert run["server"]["command"][-4:-2] == ["--port", run["url"].rsplit(":", 1)[1]]
    assert Path(run["server"]["log"]).stat().st_size > 0 and run["server"]["env"] == SERVER_ENV
    (point,) = run["points"]  # the finished point is kept, the interrupted one is not
    assert point["load"] == {"concurrency": 2, "request_rate": "inf"}
    assert point["completed"] == 8 and point["output_tokens"] == 8 * 32
    assert point["spec_decode"] is None  # no speculation configured
    assert "ServerDied" in run["error"] and "rate=0.5,c<=2" in run["error"]
    assert doc["error"].startswith("run 'nospec' failed after 1 points") and doc["finished_utc"]
    with pytest.raises(ProcessLookupError):
        os.killpg(run["server"]["pid"], 0)  # nothing of the server's process group is left


def test_ctrl_c_keeps_finished_points(server, tmp_path):
    cmd = [sys.executable, "-m", "vllm_dspark", "bench", "--url", server.url, "--concurrency", "2", "1",
           "--num-prompts", "8", "--max-tokens", "32", "--warmup", "0", "--no-progress", "--no-plots",
           "--out-dir", str(tmp_path)]
    # A background job of a non-interactive shell (`pytest ... &`) starts with SIGINT ignored, and Python then keeps
    # it ignored, as would the child: give the child the default disposition, so it sees Ctrl-C as a user would.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    results = tmp_path / "results.json"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if results.exists() and json.loads(results.read_text())["runs"][0]["points"]:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    doc = json.loads(results.read_text())
    validate(doc)
    (run,) = doc["runs"]
    assert len(run["points"]) == 1 and run["points"][0]["completed"] == 8
    assert run["error"] == doc["error"] == "interrupted by user (Ctrl-C)"


def test_stopped_server_leaves_no_process_and_its_url_fails_cleanly(server, tmp_path):
    """Runs last: stops the shared server."""
    server.stop()
    assert not server.alive()
    with pytest.raises(ProcessLookupError):
        os.killpg(server.pid, 0)
    rc = main(["bench", "--url", server.url, "--concurrency", "1", "--num-prompts", "1", "--no-progress",
               "--out-dir", str(tmp_path)])
    doc = json.loads((tmp_path / "results.json").read_text())
    assert rc == 1 and doc["runs"][0]["points"] == [] and "ConnectError" in doc["runs"][0]["error"]
