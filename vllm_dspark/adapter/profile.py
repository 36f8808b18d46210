"""Profile the verification cost at engine start: time the target on verification-shaped batches of B tokens.

A verification step of B tokens runs the target on R requests × (1 + drafts) tokens over their contexts, and the
LM head on every one of those tokens. `verification_step` reproduces that with the model runner's dummy step:
`_dummy_run(B, uniform_decode=True)` (R = ⌈B / (1 + γ)⌉ requests of 1 + γ tokens; one request below 1 + γ),
`force_attention=True` with every sequence `context_len` tokens long (without it a dummy step skips attention),
then `compute_logits` on the B hidden states. The drafter does not run (its round is timed apart, every round,
while serving: policy.draft_seconds). The median of `repeats` timed runs per B (after one warm-up) goes into a
`CostTable`, which the online refit then corrects with real verification times.
The grid spans what a verification step can hold: B <= min(max_num_batched_tokens, max_num_seqs × (γ + 1)); on a
slow engine (a CPU computes ~0.1 s per token at 449M params) its large end would take many minutes, so B past a time
budget is extrapolated instead.
"""
from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence

import torch

from vllm_dspark.adapter import compat
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
        # tensor parallelism: every rank keeps rank 0's times, so all stop profiling at the same size (each
        # dummy step is a collective) and hold the same table
        return compat.tp_agree(time.perf_counter() - t0)

    return CostTable.from_profile(measure, list(batch_tokens), repeats=repeats, warmup=1, device=device, meta=meta,
                                  time_budget_s=time_budget_s)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def verification_step(runner, gamma: int, context_len: int | None) -> Callable[[int], object]:
    """run_step(B) for `profile_steps`: the target (and LM head) on a verification-shaped dummy batch of B tokens.
    Options a vLLM release's `_dummy_run` lacks are left out (the profile is then coarser, never wrong)."""
    params = inspect.signature(runner._dummy_run).parameters
    drafter = getattr(runner, "drafter", None)
    target_only = getattr(drafter, "target_only_dummy_runs", None)
    if target_only is None:
        raise RuntimeError("vllm-dspark: the runner's drafter is not DSpark's proposer; cannot profile its target")

    def run(b: int):
        kwargs = {}
        if "force_attention" in params:
            kwargs["force_attention"] = True
        if "uniform_decode" in params and b >= gamma + 1:
            kwargs["uniform_decode"] = True
        if context_len and "profile_seq_lens" in params:
            kwargs["profile_seq_lens"] = context_len
        with target_only():
            out = runner._dummy_run(b, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
        return runner.model.compute_logits(hidden[:b])

    return run


def profile_runner(runner, gamma: int, batch_tokens: Sequence[int] | None = None, repeats: int = 3,
                   time_budget_s: float | None = None, context_len: int | None = None) -> CostTable:
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
    if context_len is not None:
        context_len = max(gamma + 1, min(int(context_len), int(runner.vllm_config.model_config.max_model_len)))
    device = runner.device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    meta = {"source": "engine start (verification-shaped _dummy_run + LM head, drafter excluded)",
            "vllm": vllm.__version__, "gamma": gamma, "context_len": context_len,
            "model": runner.vllm_config.model_config.model}
    with torch.inference_mode():
        return profile_steps(verification_step(runner, gamma, context_len), grid, repeats, sync,
                             device_name(device), meta, time_budget_s)
