"""SPS(B) cost table: step time of the engine against B, the number of tokens verified in one step.

The scheduler (admission.py) needs SPS(B), steps per second, for every B it considers. We store measured
points (batch_tokens, step_seconds) and interpolate the *step time* piecewise-linearly (clamped below the first
point, extrapolated linearly from the last two points beyond the end); SPS = 1 / step time.

Differences from vLLM 0.33's adaptive-verification tables: we keep one curve over verified tokens (not separate
draft / verify costs), persist it as JSON, and refit it online from observed step times (`CostTable.observe`),
so a table profiled with the wrong context length or on a busy machine converges to what the engine really does.

Online refit, in short: each node j carries a correction ratio r_j = y_j / prior_j. An observed step (B, t) is a
linear equation t / prior(B) = sum_j a_j r_j (a = interpolation weights scaled by the prior), so we keep the
normal equations with exponential forgetting (recursive least squares with a memory of `memory` observations),
regularised by (a) a smoothness penalty on neighbouring ratios, so unobserved nodes follow the observed ones, and
(b) a weak pull of every ratio towards 1 (the prior), which is all that is left where nothing was observed.
The solution is projected onto non-decreasing step times (weighted isotonic regression).
"""
from __future__ import annotations

import bisect
import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

__all__ = ["CostTable", "step_seconds_numpy", "step_seconds_torch"]


def step_seconds_numpy(batch_tokens: np.ndarray, table_x: np.ndarray, table_y: np.ndarray) -> np.ndarray:
    """Piecewise-linear step time at `batch_tokens` (float64), clamped below table_x[0], extrapolated above.

    NOTE: written as the same arithmetic as `step_seconds_torch` (not np.interp) so that both give bitwise
    equal times and the greedy and tensor schedulers make identical decisions.
    """
    b = np.asarray(batch_tokens, dtype=np.float64)
    x = np.asarray(table_x, dtype=np.float64)
    y = np.asarray(table_y, dtype=np.float64)
    hi = np.clip(np.searchsorted(x, b, side="right"), 1, len(x) - 1)
    lo = hi - 1
    t = y[lo] + (b - x[lo]) * ((y[hi] - y[lo]) / (x[hi] - x[lo]))
    return np.where(b <= x[0], y[0], t)


def step_seconds_torch(batch_tokens: torch.Tensor, table_x: torch.Tensor, table_y: torch.Tensor) -> torch.Tensor:
    """Same as `step_seconds_numpy` for tensors (any device; float64 math, no host sync)."""
    b = batch_tokens.to(torch.float64)
    x = table_x.to(device=b.device, dtype=torch.float64)
    y = table_y.to(device=b.device, dtype=torch.float64)
    hi = torch.searchsorted(x, b.contiguous(), right=True).clamp(1, x.numel() - 1)
    lo = hi - 1
    t = y[lo] + (b - x[lo]) * ((y[hi] - y[lo]) / (x[hi] - x[lo]))
    return torch.where(b <= x[0], y[0], t)


def _isotonic_non_decreasing(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted least-squares projection onto non-decreasing sequences (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for v, w in zip(values.tolist(), weights.tolist()):
        blocks.append([v, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, n2 = blocks.pop()
            m1, w1, n1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return np.concatenate([np.full(n, m) for m, _, n in blocks])


def _validate_points(batch_tokens: Sequence[float], step_seconds: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(batch_tokens, dtype=np.float64).reshape(-1)
    y = np.asarray(step_seconds, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"cost table: batch_tokens has {x.size} points but step_seconds has {y.size}")
    if x.size < 2:
        raise ValueError(f"cost table: need at least 2 points to interpolate, got {x.size}")
    if not np.all(np.isfinite(x)) or np.any(x < 1) or np.any(x != np.round(x)):
        raise ValueError(f"cost table: batch_tokens must be integers >= 1, got {x.tolist()}")
    if np.any(np.diff(x) <= 0):
        raise ValueError(f"cost table: batch_tokens must be strictly increasing, got {x.astype(int).tolist()}")
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError(f"cost table: step_seconds must be finite and > 0, got {y.tolist()}")
    bad = np.nonzero(np.diff(y) < 0)[0]
    if bad.size:
        j = int(bad[0])
        raise ValueError(
            f"cost table: step_seconds must be non-decreasing in batch_tokens, got {y[j + 1]:.6g}s at "
            f"B={int(x[j + 1])} after {y[j]:.6g}s at B={int(x[j])} (use CostTable.from_profile, which smooths "
            f"measurements, or fix the file)")
    return x.astype(np.int64), y


def _line_through_last_two(xs: Sequence[int], ys: Sequence[float], b: int) -> float:
    """Step seconds at B on the line through the last two (B, seconds) points, never below the last one."""
    (x0, y0), (x1, y1) = (xs[-2], ys[-2]), (xs[-1], ys[-1])
    slope = max(0.0, (y1 - y0) / (x1 - x0))
    return y1 + slope * (b - x1)


class CostTable:
    """Step time against verified tokens per step, with online refit from observed steps.

    Attributes:
        batch_tokens: [P] int64, strictly increasing.
        prior_seconds: [P] float64, the profiled (or loaded) step times.
        step_seconds: [P] float64, the current curve: the prior refit to the observations (== prior without any).
        device, meta: free-form description saved with the table.

    Refit knobs: `memory` (observations; forgetting factor 1 - 1/memory), `prior_strength` (how many
    observations' worth of pull towards the prior each node has), `smoothness` (penalty on the difference of
    neighbouring correction ratios, same unit).
    """

    def __init__(self, batch_tokens: Sequence[int], step_seconds: Sequence[float], device: str = "",
                 meta: dict[str, Any] | None = None, *, memory: float = 512.0, prior_strength: float = 0.25,
                 smoothness: float = 1.0):
        x, y = _validate_points(batch_tokens, step_seconds)
        if not memory >= 1:
            raise ValueError(f"cost table: memory must be >= 1 observation, got {memory}")
        if not (prior_strength > 0 and smoothness >= 0):
            raise ValueError(f"cost table: need prior_strength > 0 and smoothness >= 0, got {prior_strength}, {smoothness}")
        self.batch_tokens = x
        self.prior_seconds = y
        self.device = str(device)
        self.meta = dict(meta or {})
        self.memory = float(memory)
        self.prior_strength = float(prior_strength)
        self.smoothness = float(smoothness)
        self.num_observations = 0
        p = len(x)
        self._gram = np.zeros((p, p))  # [P, P] forgetting normal equations of the correction ratios
        self._rhs = np.zeros(p)  # [P]
        self._fitted = y.copy()
        self._dirty = False
        self._x_list = x.astype(np.float64).tolist()  # the per-step path reads these as Python floats
        self._prior_list = y.tolist()
        self._fitted_list = self._prior_list

    # ----- evaluation -----
    @property
    def step_seconds(self) -> np.ndarray:
        if self._dirty:
            self._refit()
        return self._fitted

    def step_time(self, batch_tokens):
        """Step seconds at B (scalar, numpy array or torch tensor; returns the same kind)."""
        if isinstance(batch_tokens, torch.Tensor):
            x, y = self.as_tensors(batch_tokens.device)
            return step_seconds_torch(batch_tokens, x, y)
        out = step_seconds_numpy(batch_tokens, self.batch_tokens, self.step_seconds)
        return float(out) if np.ndim(out) == 0 else out

    def step_time_as_fitted(self, batch_tokens: float) -> float:
        """Step seconds at B on the curve as last refit, without refitting first: for per-step checks that a curve
        a few observations old serves as well (the refit solves a P × P system; a server whose rounds do not draft
        reads the curve only to screen its observations, and must not pay for a refit every step)."""
        b, x, y = float(batch_tokens), self._x_list, self._fitted_list
        if b <= x[0]:
            return y[0]
        hi = min(max(bisect.bisect_right(x, b), 1), len(x) - 1)
        return y[hi - 1] + (b - x[hi - 1]) * ((y[hi] - y[hi - 1]) / (x[hi] - x[hi - 1]))

    def as_tensors(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(table_x [P] float64, table_y [P] float64 step seconds) for tensor batch sizes (`step_time` on a tensor)."""
        x = torch.as_tensor(self.batch_tokens, dtype=torch.float64, device=device)
        y = torch.as_tensor(self.step_seconds, dtype=torch.float64, device=device)
        return x, y

    # ----- online refit -----
    def _features(self, b: float) -> tuple[int, float, float]:
        """Interpolation weights of node values at B as (lo, w_lo, w_hi): w_hi weighs node lo + 1 (the lower
        weight is negative beyond the end). Pure Python: a server calls it every engine step."""
        x = self._x_list
        if b <= x[0]:
            return 0, 1.0, 0.0
        hi = min(max(bisect.bisect_right(x, b), 1), len(x) - 1)
        u = (b - x[hi - 1]) / (x[hi] - x[hi - 1])
        return hi - 1, 1.0 - u, u

    def observe(self, batch_tokens, seconds) -> None:
        """Record measured step times (scalars or equal-length arrays) for the refit."""
        bs = np.atleast_1d(np.asarray(batch_tokens, dtype=np.float64)).reshape(-1)
        ts = np.atleast_1d(np.asarray(seconds, dtype=np.float64)).reshape(-1)
        if bs.shape != ts.shape:
            raise ValueError(f"observe: batch_tokens has {bs.size} values but seconds has {ts.size}")
        if not (np.all(np.isfinite(bs)) and np.all(bs >= 1)):
            raise ValueError(f"observe: batch_tokens must be >= 1, got {bs.tolist()}")
        if not (np.all(np.isfinite(ts)) and np.all(ts > 0)):
            raise ValueError(f"observe: seconds must be finite and > 0, got {ts.tolist()}")
        for b, t in zip(bs.tolist(), ts.tolist()):
            self._observe_valid(b, t)

    def observe_one(self, batch_tokens: float, seconds: float) -> None:
        """`observe` for one step (the per-step path: a few scalar updates, no array temporaries)."""
        b, t = float(batch_tokens), float(seconds)
        if not (math.isfinite(b) and b >= 1):
            raise ValueError(f"observe: batch_tokens must be >= 1, got {batch_tokens}")
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"observe: seconds must be finite and > 0, got {seconds}")
        self._observe_valid(b, t)

    def _observe_valid(self, b: float, t: float) -> None:
        lo, w_lo, w_hi = self._features(b)
        prior = self._prior_list
        a_lo = w_lo * prior[lo]
        a_hi = w_hi * prior[lo + 1] if w_hi else 0.0
        prior_b = a_lo + a_hi
        a_lo, a_hi = a_lo / prior_b, a_hi / prior_b  # relative features: they sum to 1, unit-free residuals
        rho = 1.0 - 1.0 / self.memory
        gram, rhs = self._gram, self._rhs
        gram *= rho
        rhs *= rho
        gram[lo, lo] += a_lo * a_lo
        rhs[lo] += a_lo * (t / prior_b)
        if a_hi:
            gram[lo, lo + 1] += a_lo * a_hi
            gram[lo + 1, lo] += a_lo * a_hi
            gram[lo + 1, lo + 1] += a_hi * a_hi
            rhs[lo + 1] += a_hi * (t / prior_b)
        self.num_observations += 1
        self._dirty = True

    def _refit(self) -> None:
        p = len(self.batch_tokens)
        diff = np.diff(np.eye(p), axis=0)  # [P-1, P] first differences
        lhs = self._gram + self.prior_strength * np.eye(p) + self.smoothness * diff.T @ diff
        ratio = np.linalg.solve(lhs, self._rhs + self.prior_strength)
        ratio = np.clip(ratio, 1e-3, 1e3)  # a wild observation must never make a step free or infinite
        info = np.diag(self._gram) + self.prior_strength
        self._fitted = _isotonic_non_decreasing(ratio * self.prior_seconds, info)
        self._fitted_list = self._fitted.tolist()
        self._dirty = False

    # ----- construction and persistence -----
    @classmethod
    def from_profile(cls, measure: Callable[[int], float], batch_tokens: Sequence[int], repeats: int = 5,
                     warmup: int = 1, device: str = "", meta: dict[str, Any] | None = None,
                     time_budget_s: float | None = None, **kwargs) -> "CostTable":
        """Build a table by calling `measure(B) -> seconds of one step` (e.g. a dummy engine step).

        Each B is measured `warmup + repeats` times; the median of the last `repeats` is kept. Medians are then
        projected onto non-decreasing step times (noise or padding can make a larger B measure faster); the raw
        medians are kept in meta["raw_step_seconds"].

        `time_budget_s` bounds the seconds spent in `measure` (a slow engine would otherwise profile for many
        minutes at its largest B): once the next B's calls, predicted by the line through the last two measured
        points, would overrun it, that B and the larger ones are extrapolated on that line instead of measured
        (at least two points are always measured); meta["extrapolated_batch_tokens"] lists them.
        """
        if repeats < 1 or warmup < 0:
            raise ValueError(f"from_profile: need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
        xs = [int(b) for b in batch_tokens]
        if len(xs) < 2 or any(b2 <= b1 for b1, b2 in zip(xs, xs[1:])) or xs[0] < 1:
            raise ValueError(f"from_profile: batch_tokens must be >= 2 strictly increasing integers >= 1, got {xs}")
        if time_budget_s is not None and not time_budget_s > 0:
            raise ValueError(f"from_profile: time_budget_s must be > 0, got {time_budget_s}")
        raw: list[float] = []
        spent = 0.0
        for b in xs:
            if time_budget_s is not None and len(raw) >= 2:
                predicted = _line_through_last_two(xs[:len(raw)], raw, b)
                if spent + (warmup + repeats) * predicted > time_budget_s:
                    break
            calls = [float(measure(b)) for _ in range(warmup + repeats)]
            spent += sum(calls)
            samples = calls[warmup:]
            if not all(math.isfinite(s) and s > 0 for s in samples):
                raise ValueError(f"from_profile: measure({b}) returned non-positive or non-finite times {samples}")
            raw.append(float(np.median(samples)))
        measured = len(raw)
        curve = raw + [_line_through_last_two(xs[:measured], raw, b) for b in xs[measured:]]
        smooth = _isotonic_non_decreasing(np.asarray(curve), np.ones(len(curve)))
        full_meta = {"repeats": repeats, "warmup": warmup, "raw_step_seconds": raw, **(meta or {})}
        if measured < len(xs):
            full_meta["extrapolated_batch_tokens"] = xs[measured:]
        return cls(xs, smooth, device=device, meta=full_meta, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of the *current* curve (the refit one once observations exist)."""
        meta = dict(self.meta)
        if self.num_observations:
            meta["prior_step_seconds"] = self.prior_seconds.tolist()
            meta["num_observations"] = self.num_observations
        return {"batch_tokens": self.batch_tokens.tolist(), "step_seconds": self.step_seconds.tolist(),
                "device": self.device, "meta": meta}

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs) -> "CostTable":
        if not isinstance(data, dict):
            raise ValueError(f"cost table: expected a JSON object, got {type(data).__name__}")
        missing = [k for k in ("batch_tokens", "step_seconds") if k not in data]
        if missing:
            raise ValueError(f"cost table: missing field(s) {missing}; have {sorted(data)}")
        meta = data.get("meta") or {}
        if not isinstance(meta, dict):
            raise ValueError(f"cost table: 'meta' must be an object, got {type(meta).__name__}")
        return cls(data["batch_tokens"], data["step_seconds"], device=str(data.get("device", "")), meta=meta, **kwargs)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path, **kwargs) -> "CostTable":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"cost table {path}: not valid JSON ({e})") from e
        try:
            return cls.from_dict(data, **kwargs)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e

    def __repr__(self) -> str:
        return (f"CostTable(P={len(self.batch_tokens)}, B={int(self.batch_tokens[0])}..{int(self.batch_tokens[-1])}, "
                f"device={self.device!r}, observations={self.num_observations})")
