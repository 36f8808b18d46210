"""Confidence-scheduled admission on the device: survival S = cumprod(c) and the paper's greedy verification
lengths (Algorithm 1 with early stop), with no host sync.

Dispatch as in markov_step: Triton (kernel.py) on CUDA tensors, else the torch reference (reference.py, which is
`vllm_dspark.scheduling.admission.admit_torch`). Force with `backend=` or $DSPARK_KERNEL_BACKEND.
"""
from __future__ import annotations

import torch

from .._backend import resolve_backend
from . import reference

__all__ = ["admission_lengths", "admit", "survival"]


def _impl(backend, device):
    if resolve_backend(backend, device) == "triton":
        from . import kernel

        return kernel
    return reference


def survival(confidence: torch.Tensor, *, backend=None) -> torch.Tensor:
    """confidence [R, γ] -> survival [R, γ] float64."""
    return _impl(backend, confidence.device).survival(confidence)


def admission_lengths(survival: torch.Tensor, max_len: torch.Tensor, table_x: torch.Tensor, table_y: torch.Tensor,
                      *, backend=None) -> torch.Tensor:
    """survival [R, γ], max_len [R], cost table [P] x2 -> verification lengths [R] int64 (= admit_torch)."""
    return _impl(backend, survival.device).admission_lengths(survival, max_len, table_x, table_y)


def admit(confidence: torch.Tensor, max_len: torch.Tensor, table_x: torch.Tensor, table_y: torch.Tensor, *,
          backend=None) -> tuple[torch.Tensor, torch.Tensor]:
    """confidence [R, γ] -> (survival [R, γ] float64, lengths [R] int64)."""
    return _impl(backend, confidence.device).admit(confidence, max_len, table_x, table_y)
