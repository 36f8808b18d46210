"""Torch reference of the admission kernels: survival products and greedy verification lengths.

The lengths are `vllm_dspark.scheduling.admission.admit_torch` (the paper's Algorithm 1 with early stop, already
free of host syncs); this module only fixes the signatures shared with kernel.py.
"""
from __future__ import annotations

import torch

from vllm_dspark.scheduling.admission import admit_torch


def survival(confidence: torch.Tensor) -> torch.Tensor:
    """S[i, k] = prod_{j<=k} c[i, j]: confidence [R, γ] -> float64 [R, γ]."""
    _check_2d("confidence", confidence)
    return torch.cumprod(confidence.to(torch.float64), dim=-1)


def admission_lengths(survival: torch.Tensor, max_len: torch.Tensor, table_x: torch.Tensor,
                      table_y: torch.Tensor) -> torch.Tensor:
    """Verification lengths [R] int64 from survival [R, γ], max_len [R], cost table (table_x, table_y) [P]."""
    _check_2d("survival", survival)
    return admit_torch(survival, max_len, table_x, table_y)


def admit(confidence: torch.Tensor, max_len: torch.Tensor, table_x: torch.Tensor, table_y: torch.Tensor):
    """(survival [R, γ] float64, lengths [R] int64) from confidences."""
    s = survival(confidence)
    return s, admission_lengths(s, max_len, table_x, table_y)


def _check_2d(name, t):
    if t.dim() != 2:
        raise ValueError(f"{name} must be [R, gamma], got shape {tuple(t.shape)}")
