"""The benchmark script runs end to end on CPU with tiny shapes and writes a JSON whose fields agree with each
other and with what was asked (keeps the script tested; timings themselves are not judged)."""
import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "kernels" / "bench_markov_step.py"
CPU_SMALL = {"vocab": 2053, "rank": 32, "hidden": 64, "gamma": 3}  # --cpu-small's shapes
BATCHES = (1, 4)  # --cpu-small's batch sizes


def round_megabytes(n: int, vocab: int, rank: int, hidden: int, gamma: int, elem: int) -> float:
    """The module docstring's MB: per position W2 [V, r] + W1[prev] [N, r] + U_k [N, V] + h_k [N, H] + the
    confidence weights [H + r], and per row a token (8 B), logprob, lse and confidence (4 B each)."""
    per_position = (vocab * rank + n * rank + n * vocab + n * hidden + hidden + rank) * elem + n * (8 + 4 + 4 + 4)
    return gamma * per_position / 1e6


@pytest.mark.parametrize("modes", ["greedy,sample", "sample"])
def test_bench_cpu_small_json_is_consistent(tmp_path, modes):
    spec = importlib.util.spec_from_file_location("bench_markov_step", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "bench.json"
    mod.main(["--cpu-small", "--reps", "1", "--modes", modes, "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["shapes"] == CPU_SMALL and data["dtype"] == "bf16" and data["backend"] == "torch"
    assert data["context"] == 64  # --context is capped at 64 on CPU
    asked = [(b, m) for b in BATCHES for m in modes.split(",")]
    assert [(r["batch"], r["mode"]) for r in data["rows"]] == asked  # one row per config asked, in order
    for b in BATCHES:  # what is measured once per batch size is the same in each of its rows
        rows = [r for r in data["rows"] if r["batch"] == b]
        for key in ("MB", "floor_ms", "tgt_ms", "tgt1_ms", "tgt_ctx_ms"):
            assert len({r[key] for r in rows}) == 1, (b, key)
    for row in data["rows"]:
        assert row["MB"] == pytest.approx(round_megabytes(row["batch"], **CPU_SMALL, elem=2))
        assert 0 < row["floor_ms"] <= min(row["eager_ms"], row["triton_ms"], row["graph_ms"])
        assert row["x_floor"] == pytest.approx(row["graph_ms"] / row["floor_ms"])
        assert row["GB/s"] == pytest.approx(row["MB"] / row["graph_ms"])
        assert row["head_pct"] == pytest.approx(100 * row["graph_ms"] / row["tgt_ms"])
        # The cost-realistic target (attention over a KV cache of --context tokens) ran.
        assert row["tgt_ctx_ms"] > 0
        assert row["head_pct_ctx"] == pytest.approx(100 * row["graph_ms"] / row["tgt_ctx_ms"])
    small, large = (next(r for r in data["rows"] if r["batch"] == b) for b in BATCHES)
    assert large["MB"] > small["MB"]
