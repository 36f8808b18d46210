"""A malformed `--speculative-config` stops a real server at start with a message naming the key.

(Each refusal's message is checked in process in tests/adapter/test_spec_config.py and test_engine_args.py;
this runs the actual CLI once.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys


def test_server_refuses_unknown_dspark_key(e2e_target, e2e_drafter):
    spec = {"method": "dflash", "model": str(e2e_drafter), "dspark": {"mode": "confidence", "sla_floor": 20}}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(e2e_target),
           "--max-model-len", "512", "--speculative-config", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    assert proc.returncode != 0
    assert "unknown key 'dspark.sla_floor'" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]


def test_server_refuses_cpu_tensor_parallelism_without_a_worker_binding(e2e_target, e2e_drafter):
    """One CPU set for two workers: vLLM's CPU executor would stop deep in the engine; we refuse at start."""
    spec = {"method": "dflash", "model": str(e2e_drafter), "dspark": {"mode": "confidence"}}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(e2e_target),
           "--max-model-len", "512", "--tensor-parallel-size", "2", "--speculative-config", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0"})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "VLLM_CPU_OMP_THREADS_BIND='0' lists 1 CPU set(s) ('|'-separated) for 2 CPU workers" in out, out[-3000:]
    assert 'set VLLM_CPU_OMP_THREADS_BIND="' in out, out[-3000:]
