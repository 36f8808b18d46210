"""Online health of the scheduler while serving: are the confidences still calibrated, is the cost table right?

`SchedulerMonitor.record_step` takes what one engine step decided and what happened: the survivals the
scheduler used, the verification lengths, the drafts accepted, optionally the measured step time. It keeps
    - expected vs realized tokens (realized / expected ~ 1 when survivals are calibrated);
    - a binned reliability table of survival against "drafts 0..k all accepted", over *verified* positions only
      (unverified ones have no label; the sample leans to high survivals because the scheduler picks them);
    - optionally feeds the step time to CostTable.observe (online refit).
Pure numpy; the adapter exports `summary()` to vLLM's metrics.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vllm_dspark.scheduling.cost import CostTable

__all__ = ["SchedulerMonitor"]


def _host(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu").numpy()
    return np.asarray(x)


class SchedulerMonitor:
    def __init__(self, n_bins: int = 15, table: CostTable | None = None):
        self.n_bins = n_bins
        self.table = table
        self.steps = 0
        self.batch_tokens = 0
        self.expected_tokens = 0.0
        self.realized_tokens = 0
        self._count = np.zeros(n_bins)  # [n_bins] verified positions per survival bin
        self._sum_pred = np.zeros(n_bins)
        self._sum_event = np.zeros(n_bins)

    def record_step(self, survival, lengths, accepted, step_seconds: float | None = None) -> None:
        """survival [R, gamma], lengths [R] verified drafts, accepted [R] accepted drafts (<= lengths)."""
        s = _host(survival).astype(np.float64)
        lengths = _host(lengths).astype(np.int64).reshape(-1)
        accepted = _host(accepted).astype(np.int64).reshape(-1)
        if s.ndim != 2 or lengths.shape != (s.shape[0],) or accepted.shape != lengths.shape:
            raise ValueError(f"record_step: want survival [R, gamma], lengths [R], accepted [R]; got {s.shape}, "
                             f"{lengths.shape}, {accepted.shape}")
        if np.any(accepted > lengths) or np.any(accepted < 0) or np.any(lengths > s.shape[1]):
            raise ValueError(f"record_step: need 0 <= accepted <= lengths <= {s.shape[1]}, got accepted "
                             f"{accepted.tolist()}, lengths {lengths.tolist()}")
        positions = np.arange(s.shape[1])[None, :]
        verified = positions < lengths[:, None]  # [R, gamma]
        pred = s[verified]
        event = (positions < accepted[:, None])[verified].astype(np.float64)
        bins = np.minimum((pred * self.n_bins).astype(np.int64), self.n_bins - 1)
        self._count += np.bincount(bins, minlength=self.n_bins)
        self._sum_pred += np.bincount(bins, weights=pred, minlength=self.n_bins)
        self._sum_event += np.bincount(bins, weights=event, minlength=self.n_bins)
        b = int(s.shape[0] + lengths.sum())
        self.steps += 1
        self.batch_tokens += b
        self.expected_tokens += float(s.shape[0] + pred.sum())
        self.realized_tokens += int(s.shape[0] + accepted.sum())
        if step_seconds is not None and self.table is not None:
            self.table.observe(b, step_seconds)

    def summary(self) -> dict[str, Any]:
        n = self._count.sum()
        return {
            "steps": self.steps,
            "mean_batch_tokens": self.batch_tokens / self.steps if self.steps else float("nan"),
            "expected_tokens": self.expected_tokens,
            "realized_tokens": self.realized_tokens,
            "realized_over_expected": self.realized_tokens / self.expected_tokens if self.expected_tokens else float("nan"),
            "verified_positions": int(n),
            "survival_ece": float(np.abs(self._sum_event - self._sum_pred).sum() / n) if n else float("nan"),
        }
