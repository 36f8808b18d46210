"""The benchmark script runs end to end on CPU with tiny shapes and writes its JSON (keeps the script tested)."""
import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "kernels" / "bench_markov_step.py"


def test_bench_cpu_small_writes_json(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_markov_step", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "bench.json"
    mod.main(["--cpu-small", "--reps", "1", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["shapes"] == {"vocab": 2053, "rank": 32, "hidden": 64, "gamma": 3}
    assert [(r["batch"], r["mode"]) for r in data["rows"]] == [(1, "greedy"), (1, "sample"), (4, "greedy"),
                                                              (4, "sample")]
    for row in data["rows"]:
        assert row["MB"] > 0 and row["floor_ms"] > 0 and row["eager_ms"] > 0 and row["graph_ms"] > 0
        assert row["head_pct"] > 0
        # The cost-realistic target (attention over a KV cache of --context tokens, capped at 64 on CPU) ran.
        assert row["tgt_ctx_ms"] > 0 and row["head_pct_ctx"] > 0
    assert data["context"] == 64
