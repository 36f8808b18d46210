"""Profile SPS(B) at engine start: time the model runner's dummy step at a grid of batch token counts B.

`GPUModelRunner._dummy_run(B)` runs the target on B tokens (through CUDA graphs where they were captured) and the
drafter's dummy pass, i.e. roughly one verification step of B tokens; the median of `repeats` timed runs per B
(after one warm-up) goes into a `CostTable`, which the online refit then corrects with real step times.
The grid spans what a verification step can hold: B <= min(max_num_batched_tokens, max_num_seqs × (γ + 1)); on a
slow engine (a CPU computes ~0.1 s per token at 449M params) its large end would take many minutes, so B past a time
budget is extrapolated instead.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from vllm_dspark.scheduling.cost import CostTable


def default_batch_tokens(max_tokens: int) -> list[int]:
    """1, 2, 4, ... up to max_tokens, and max_tokens itself (>= 2 points)."""
    max_tokens = max(2, int(max_tokens))
    grid = []
    b = 1
    while b < max_tokens:
        grid.append(b)
        b *= 2
    grid.append(max_tokens)
    return grid


def profile_steps(run_step: Callable[[int], object], batch_tokens: Sequence[int], repeats: int = 3,
                  synchronize: Callable[[], None] = lambda: None, device: str = "", meta: dict | None = None,
                  time_budget_s: float | None = None) -> CostTable:
    """CostTable from timing `run_step(B)` (one warm-up, then the median of `repeats`; B past `time_budget_s`
    seconds of timed steps extrapolated, see `CostTable.from_profile`)."""

    def measure(b: int) -> float:
        synchronize()
        t0 = time.perf_counter()
        run_step(b)
        synchronize()
        return time.perf_counter() - t0

    return CostTable.from_profile(measure, list(batch_tokens), repeats=repeats, warmup=1, device=device, meta=meta,
                                  time_budget_s=time_budget_s)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def profile_runner(runner, gamma: int, batch_tokens: Sequence[int] | None = None, repeats: int = 3,
                   time_budget_s: float | None = None) -> CostTable:
    """Profile a V1 model runner (a `GPUModelRunner` or its CPU subclass) after warm-up."""
    import vllm

    sched = runner.vllm_config.scheduler_config
    limit = min(int(sched.max_num_batched_tokens), int(sched.max_num_seqs) * (gamma + 1))
    grid = list(batch_tokens) if batch_tokens is not None else default_batch_tokens(limit)
    too_big = [b for b in grid if b > sched.max_num_batched_tokens]
    if too_big:
        raise ValueError(
            f"dspark.profile_batch_tokens: {too_big} exceed max_num_batched_tokens = {sched.max_num_batched_tokens}"
        )
    device = runner.device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    meta = {"source": "engine start (_dummy_run)", "vllm": vllm.__version__, "gamma": gamma,
            "model": runner.vllm_config.model_config.model}
    with torch.inference_mode():
        return profile_steps(lambda b: runner._dummy_run(b), grid, repeats, sync, device_name(device), meta,
                             time_budget_s)
