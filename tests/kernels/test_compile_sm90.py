"""Every Triton launch our launchers make compiles for Hopper (sm_90), on a machine without a GPU.

The interpreter runs the kernels' semantics on CPU (the other tests) but not Triton's GPU compiler: a construct
that the interpreter accepts and the NVIDIA backend rejects (a type, a layout, too much shared memory) would
otherwise first fail on a GPU server. `aot.py` records the launches of the real launchers at the real shapes
(V = 151,936, r = 256, H = 4096; bf16 and fp32 weights; every head / output / draw-path variant) and compiles
each with Triton's NVIDIA backend, in a subprocess without TRITON_INTERPRET.
Needs no GPU, only the `triton` wheel (its ptxas).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# On a GPU the other kernel tests JIT-compile these launches for real (and aot.py follows the CPU CI's Triton).
pytestmark = [pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernel tests compile for real"),
              pytest.mark.slow]  # compiling every launch takes about a minute
AOT = Path(__file__).with_name("aot.py")
SM90_SHARED_LIMIT = 227 * 1024  # bytes of shared memory one block may use on H100


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "sm90.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(AOT), "--arch", "90", "--json", str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_launch_compiles_for_sm90(records):
    failed = [f"{r['name']}: {r['error']}" for r in records if not r["ok"]]
    assert not failed, "\n".join(failed)


def test_every_kernel_variant_was_recorded(records):
    kernels = {r["kernel"] for r in records}
    assert {"_tile_stats_kernel", "_select_kernel", "_normalize_kernel"} <= kernels
    draws = {r["constexprs"]["TILE_DRAW"] for r in records if r["kernel"] == "_tile_stats_kernel"}
    assert draws == {True, False}


def test_no_register_spills_in_the_hot_kernels(records):
    """The tile kernel streams W2 once per position: local-memory spills in its loop would cost bandwidth.
    A few dozen bytes (the in-tile draw's scan at 64 x 4 warps) are tolerated; kilobytes are not."""
    for r in records:
        if r["kernel"] in ("_tile_stats_kernel", "_select_kernel"):
            assert r["spill_bytes"] <= 256, r


def test_shared_memory_and_tensor_cores(records):
    for r in records:
        assert r["shared"] <= SM90_SHARED_LIMIT, r
        if r["kernel"] == "_tile_stats_kernel" and not r["constexprs"]["DOT_FP32"]:
            # The bf16 tile kernel runs two programs per SM (kernel._tile_config): each may use at most half.
            assert r["shared"] <= SM90_SHARED_LIMIT // 2, r
            assert r["wgmma"], f"the bias GEMM should use Hopper's warpgroup MMA: {r['name']}"
