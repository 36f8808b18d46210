"""Fused sequential-head step: corrected logits L = U + W2s·z, greedy/sampled choice, draft log-prob, lse,
confidence logit; one position or a whole block.

Dispatch: the Triton kernels (kernel.py) on CUDA tensors when Triton imports, else the torch reference
(reference.py, also the test oracle; `markov_block` takes its leaner twin fast_torch.py, the CPU serving path);
force either with `backend="triton" | "torch"` or $DSPARK_KERNEL_BACKEND. `launch` (kernel.LaunchOptions: tile config,
tile order, in-tile draws) only reaches the Triton path; the benchmark's ablations and sweeps set it.
Semantics and the sampling contract: common.py.
"""
from __future__ import annotations

import os

import torch

from vllm_dspark.config import GREEDY_EPS

from .._backend import ENV_VAR, resolve_backend
from . import fast_torch, reference
from .common import (
    DRAFT_KEY_XOR,
    KEY_MASK,
    SAMPLE_GROUP,
    BlockOutput,
    ConfidenceWeights,
    MarkovWeights,
    StepOutput,
    draft_key,
    head_inputs,
)

__all__ = [
    "GREEDY_EPS",
    "SAMPLE_GROUP",
    "BlockOutput",
    "ConfidenceWeights",
    "DRAFT_KEY_XOR",
    "KEY_MASK",
    "MarkovWeights",
    "StepOutput",
    "block_backend",
    "draft_key",
    "head_inputs",
    "markov_block",
    "markov_step",
]


def _impl(backend: str | None, device: torch.device):
    if resolve_backend(backend, device) == "triton":
        from . import kernel  # imported lazily: Triton kernels are defined only when needed

        return kernel
    return reference


def markov_step(base_logits, prev_ids, weights: MarkovWeights, temperature, seeds, offsets=None, *, step=0,
                z=None, hidden=None, conf: ConfidenceWeights | None = None, output="none", backend=None,
                compute_dtype=torch.float32, all_greedy: bool = False, launch=None) -> StepOutput:
    """One draft position over the whole vocabulary. See reference.markov_step for arguments.

    all_greedy: the caller knows every temperature is < GREEDY_EPS (a speed hint for the Triton path; results are
    the same either way)."""
    impl = _impl(backend, base_logits.device)
    return impl.markov_step(
        base_logits, prev_ids, weights, temperature, seeds, offsets, step=step, z=z, hidden=hidden, conf=conf,
        output=output, compute_dtype=compute_dtype, **_triton_only(impl, all_greedy, launch))


def markov_block(base_logits, hidden, anchor, weights: MarkovWeights, temperature, seeds, offsets=None, *,
                 conf: ConfidenceWeights | None = None, output="none", backend=None,
                 compute_dtype=torch.float32, all_greedy: bool = False, launch=None) -> BlockOutput:
    """All γ positions of a draft block: base_logits [N, γ, V], hidden [N, γ, H], anchor [N] ->
    tokens / logprobs / lse / conf_logits [N, γ] (+ logits or probs [N, γ, V]). See reference.markov_block;
    all_greedy as in markov_step."""
    impl = _block_impl(backend, base_logits.device)
    return impl.markov_block(
        base_logits, hidden, anchor, weights, temperature, seeds, offsets, conf=conf, output=output,
        compute_dtype=compute_dtype, **_triton_only(impl, all_greedy, launch))


def _block_impl(backend: str | None, device: torch.device):
    impl = _impl(backend, device)
    return fast_torch if impl is reference else impl  # the reference's results with fewer ops (CPU serving path)


def block_backend(device: torch.device, backend: str | None = None) -> tuple[str, str]:
    """(name, reason) of the implementation `markov_block` runs on tensors of `device`: "triton" (kernel.py) or
    "torch" (fast_torch.py, the reference's results with fewer ops). Logged once at engine start."""
    device = torch.device(device)
    impl = _block_impl(backend, device)
    name = "torch" if impl is fast_torch else "triton"
    if backend is not None:
        return name, f"backend={backend!r} argument"
    forced = os.environ.get(ENV_VAR, "auto")
    if forced != "auto":
        return name, f"${ENV_VAR}={forced}"
    if name == "triton":
        return name, "CUDA tensors and Triton imports"
    if device.type != "cuda":
        return name, f"{device.type} tensors (the Triton kernels need CUDA)"
    return name, "CUDA tensors but `import triton` fails"


def _triton_only(impl, all_greedy: bool, launch) -> dict:
    # Only the Triton path takes the hint (the torch paths check the temperatures themselves) and launch options.
    if impl in (reference, fast_torch):
        return {}
    return {"all_greedy": all_greedy} | ({"launch": launch} if launch is not None else {})
