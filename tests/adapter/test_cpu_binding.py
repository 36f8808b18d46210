"""Worker CPU binding for tensor / pipeline parallelism on CPU: what vLLM's CPU executor accepts, and the fix named."""
from __future__ import annotations

import pytest

from vllm_dspark.adapter.cpu_binding import BIND_ENV, binding_problem, suggested_bind


@pytest.mark.parametrize("world,cpus,want", [
    (2, [0, 1], "0|1"),
    (2, list(range(16)), "0-7|8-15"),
    (2, [0, 2, 4, 6], "0,2|4,6"),
    (4, [3, 1, 2, 0], "0|1|2|3"),
    (3, [0, 1], None),
])
def test_suggested_bind_gives_each_worker_its_own_cpus(world, cpus, want):
    assert suggested_bind(world, cpus) == want


@pytest.mark.parametrize("world,bind,numa", [
    (1, None, 1),  # no parallelism: nothing to bind
    (2, "0|1", 1),  # one set per worker
    (2, "0-3|4-7", 1),
    (2, "nobind", 1),  # the user opted out of binding
    (2, None, 2),  # auto: one NUMA node per worker
    (2, "auto", 4),
])
def test_bindings_vllm_accepts_pass(world, bind, numa, monkeypatch):
    monkeypatch.delenv("VLLM_CPU_SIM_MULTI_NUMA", raising=False)
    assert binding_problem(world, bind, numa, [0, 1, 2, 3, 4, 5, 6, 7]) is None


def test_auto_binding_on_one_numa_node_names_the_fix(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_SIM_MULTI_NUMA", raising=False)
    problem = binding_problem(2, None, 1, [0, 1])
    assert "'auto'" in problem and "this host has 1" in problem
    assert f'{BIND_ENV}="0|1"' in problem


def test_wrong_number_of_cpu_sets_names_the_fix():
    problem = binding_problem(2, "0-1", 1, [0, 1])
    assert "lists 1 CPU set(s)" in problem and "for 2 CPU workers" in problem
    assert f'{BIND_ENV}="0|1"' in problem


def test_fewer_cpus_than_workers_suggests_nobind():
    assert f"{BIND_ENV}=nobind" in binding_problem(4, None, 1, [0, 1])
