"""Sequential Temperature Scaling (STS) of the confidence head, and the calibration metrics it is judged by.

Data of one held-out round n: conf_logits[n, k] (the head's logit for draft k, k = 0..gamma-1), proposed_len[n]
(drafts proposed that round) and accepted_len[n] (drafts accepted, excluding the bonus token). The event of
position k (1-based) is "the first k drafts were all accepted" = accepted_len >= k, predicted by the survival
S_k = prod_{j<=k} sigmoid(logit_j / T_j). Rounds that proposed fewer than k drafts say nothing about position k
and are excluded there (their logits past proposed_len are never read, they may be garbage).

STS (paper): for k = 1..gamma in order, T_k minimises the ECE of S_k with T_1..T_{k-1} fixed; a log-spaced grid
then a finer grid around the best point. Metrics: ECE (equal-width bins, weighted by bin size), Brier score,
ROC-AUC (Mann-Whitney, ties count one half; nan with a single class).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

__all__ = [
    "ece", "brier", "roc_auc", "reliability_curve", "sigmoid", "apply_temperatures", "calibrated_survival",
    "fit_sts", "calibration_report", "plot_reliability", "DEFAULT_GRID",
]

DEFAULT_GRID = np.geomspace(0.05, 20.0, 61)  # temperatures; ~10% apart, refined locally by fit_sts


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _pair(prob, event) -> tuple[np.ndarray, np.ndarray]:
    p, e = _np(prob).reshape(-1), _np(event).reshape(-1)
    if p.shape != e.shape:
        raise ValueError(f"prob has {p.size} values but event has {e.size}")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"prob must lie in [0, 1], got min {np.nanmin(p) if p.size else None}, max {np.nanmax(p) if p.size else None}")
    if not np.all((e == 0) | (e == 1)):
        raise ValueError(f"event must be 0/1, got values {np.unique(e)[:10].tolist()}")
    return p, e


def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin b holds p in [b/n, (b+1)/n); p == 1 goes to the last bin."""
    return np.minimum((p * n_bins).astype(np.int64), n_bins - 1)


def _ece_rows(prob: np.ndarray, event: np.ndarray, n_bins: int) -> np.ndarray:
    """ECE of each row of prob [G, n] against the same event [n]. sum_b |sum_e - sum_p| / n == weighted gaps."""
    g, n = prob.shape
    flat = (np.arange(g)[:, None] * n_bins + _bin_index(prob, n_bins)).reshape(-1)
    sum_p = np.bincount(flat, weights=prob.reshape(-1), minlength=g * n_bins).reshape(g, n_bins)
    sum_e = np.bincount(flat, weights=np.broadcast_to(event, prob.shape).reshape(-1), minlength=g * n_bins)
    return np.abs(sum_e.reshape(g, n_bins) - sum_p).sum(axis=1) / n


def ece(prob, event, n_bins: int = 15) -> float:
    """Expected calibration error: sum over equal-width bins of (n_b / N) * |mean(event_b) - mean(prob_b)|."""
    p, e = _pair(prob, event)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    return float(_ece_rows(p[None, :], e, n_bins)[0]) if p.size else float("nan")


def brier(prob, event) -> float:
    """Mean squared error of the probability against the 0/1 event."""
    p, e = _pair(prob, event)
    return float(np.mean((p - e) ** 2)) if p.size else float("nan")


def roc_auc(prob, event) -> float:
    """P(score of a random positive > score of a random negative), ties count 1/2; nan with a single class."""
    p, e = _pair(prob, event)
    n_pos = int(e.sum())
    n_neg = e.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1  # 1-based rank of each distinct value's first occurrence
    avg_rank = (first_rank + (counts - 1) / 2.0)[inverse]  # tied values share their average rank
    return float((avg_rank[e == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def reliability_curve(prob, event, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per bin: mean predicted probability, observed frequency (nan where empty), count, bin edges [n_bins+1]."""
    p, e = _pair(prob, event)
    idx = _bin_index(p, n_bins)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(idx, weights=p, minlength=n_bins) / count
        frequency = np.bincount(idx, weights=e, minlength=n_bins) / count
    return {"mean_prob": mean_prob, "frequency": frequency, "count": count.astype(np.int64),
            "edges": np.linspace(0.0, 1.0, n_bins + 1)}


def sigmoid(x):
    """Numerically stable logistic function (numpy or torch)."""
    if isinstance(x, torch.Tensor):
        return torch.sigmoid(x)
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def apply_temperatures(conf_logits, temps):
    """Calibrated confidences sigmoid(logit_k / T_k); temps [gamma] broadcast over the last dim (numpy or torch)."""
    if isinstance(conf_logits, torch.Tensor):
        t = torch.as_tensor(temps, dtype=conf_logits.dtype, device=conf_logits.device)
        return torch.sigmoid(conf_logits / t)
    return sigmoid(np.asarray(conf_logits, dtype=np.float64) / np.asarray(temps, dtype=np.float64))


def _check_rounds(conf_logits, accepted_len, proposed_len) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    logits = _np(conf_logits)
    if logits.ndim != 2:
        raise ValueError(f"conf_logits must be [N, gamma], got shape {logits.shape}")
    n, gamma = logits.shape
    acc = _np(accepted_len).reshape(-1)
    prop = np.full(n, gamma, dtype=np.float64) if proposed_len is None else _np(proposed_len).reshape(-1)
    for name, v in (("accepted_len", acc), ("proposed_len", prop)):
        if v.shape[0] != n:
            raise ValueError(f"{name} has {v.shape[0]} rounds but conf_logits has {n}")
        if not np.all((v == np.round(v)) & (v >= 0) & (v <= gamma)):
            raise ValueError(f"{name} must be integers in [0, {gamma}], got {np.unique(v)[:10].tolist()}")
    if np.any(acc > prop):
        i = int(np.argmax(acc > prop))
        raise ValueError(f"accepted_len[{i}] = {int(acc[i])} exceeds proposed_len[{i}] = {int(prop[i])}")
    proposed = np.arange(gamma)[None, :] < prop[:, None]  # [N, gamma]
    if not np.all(np.isfinite(logits[proposed])):
        raise ValueError("conf_logits has non-finite values at proposed positions")
    return np.where(proposed, logits, 0.0), acc.astype(np.int64), prop.astype(np.int64)


def calibrated_survival(conf_logits, temps, proposed_len=None) -> np.ndarray:
    """S[n, k] = prod_{j<=k} sigmoid(logit[n, j] / T_j); nan where k >= proposed_len[n]. [N, gamma]"""
    logits, _, prop = _check_rounds(conf_logits, np.zeros(len(_np(conf_logits))), proposed_len)
    s = np.cumprod(apply_temperatures(logits, temps), axis=1)
    return np.where(np.arange(logits.shape[1])[None, :] < prop[:, None], s, np.nan)


def _grid_argmin(temps: np.ndarray, scores: np.ndarray) -> int:
    """Lowest score; among (numerically) equal scores the temperature closest to 1 (least change)."""
    tied = np.nonzero(scores <= scores.min() + 1e-12)[0]
    return int(tied[np.argmin(np.abs(np.log(temps[tied])))])


def fit_sts(conf_logits, accepted_len, proposed_len=None, grid: Sequence[float] | None = None, n_bins: int = 15,
            refine_points: int = 41, min_events: int = 10) -> np.ndarray:
    """Sequential Temperature Scaling. Returns temps [gamma] (float64; 1.0 where no round proposed position k, and
    where position k has fewer than `min_events` survivals or fewer than `min_events` failures: there the ECE is
    noise, and a weak drafter's deep positions, never accepted, would otherwise drive T to the grid's edge and turn
    any positive logit into certainty).

    Args:
        conf_logits: [N, gamma] confidence-head logits of held-out rounds.
        accepted_len: [N] drafts accepted per round, excluding the bonus token.
        proposed_len: [N] drafts proposed per round (default gamma); rounds with fewer than k are left out at k.
        grid: candidate temperatures (> 0); default DEFAULT_GRID (0.05..20, log-spaced). Then a second grid of
            `refine_points` log-spaced values between the best point's neighbours (0 disables refinement).
    """
    logits, acc, prop = _check_rounds(conf_logits, accepted_len, proposed_len)
    grid = np.sort(np.asarray(DEFAULT_GRID if grid is None else grid, dtype=np.float64))
    if grid.size < 1 or np.any(grid <= 0) or not np.all(np.isfinite(grid)):
        raise ValueError(f"grid must be finite temperatures > 0, got {grid.tolist()}")
    n, gamma = logits.shape
    temps = np.ones(gamma)
    prefix = np.ones(n)  # calibrated survival of positions before k, with the temperatures chosen so far
    for k in range(gamma):
        rows = prop >= k + 1
        if not rows.any():
            continue
        event = (acc[rows] >= k + 1).astype(np.float64)
        if min(event.sum(), (1.0 - event).sum()) >= min_events:

            def scores(candidates: np.ndarray) -> np.ndarray:
                probs = prefix[rows][None, :] * sigmoid(logits[rows, k][None, :] / candidates[:, None])  # [G, n_k]
                return _ece_rows(probs, event, n_bins)

            temps[k] = _search_temperature(scores, grid, refine_points)
        prefix = prefix * sigmoid(logits[:, k] / temps[k])
    return temps


def _search_temperature(scores: Callable[[np.ndarray], np.ndarray], grid: np.ndarray, refine_points: int) -> float:
    """The grid temperature with the lowest score, refined between its neighbours when that scores lower."""
    coarse = scores(grid)
    j = _grid_argmin(grid, coarse)
    best_t = grid[j]
    if refine_points > 0 and grid.size > 1:
        fine = np.geomspace(grid[max(j - 1, 0)], grid[min(j + 1, grid.size - 1)], refine_points)
        fine_scores = scores(fine)
        jf = _grid_argmin(fine, fine_scores)
        if fine_scores[jf] < coarse[j]:
            best_t = fine[jf]
    return float(best_t)


def calibration_report(conf_logits, accepted_len, temps, proposed_len=None, n_bins: int = 15) -> list[dict[str, Any]]:
    """Per position k (1-based): rounds used, event rate, ECE / Brier / ROC-AUC of raw and calibrated survival."""
    logits, acc, prop = _check_rounds(conf_logits, accepted_len, proposed_len)
    gamma = logits.shape[1]
    temps = np.asarray(temps, dtype=np.float64).reshape(-1)
    if temps.shape != (gamma,) or np.any(temps <= 0):
        raise ValueError(f"temps must be {gamma} positive values, got {temps.tolist()}")
    raw = np.cumprod(sigmoid(logits), axis=1)
    cal = np.cumprod(apply_temperatures(logits, temps), axis=1)
    report = []
    for k in range(gamma):
        rows = prop >= k + 1
        event = (acc[rows] >= k + 1).astype(np.float64)
        entry: dict[str, Any] = {"position": k + 1, "temperature": float(temps[k]), "rounds": int(rows.sum()),
                                 "event_rate": float(event.mean()) if rows.any() else float("nan")}
        for tag, s in (("before", raw[rows, k]), ("after", cal[rows, k])):
            entry[f"ece_{tag}"] = ece(s, event, n_bins) if rows.any() else float("nan")
            entry[f"brier_{tag}"] = brier(s, event)
            entry[f"auc_{tag}"] = roc_auc(s, event)
        report.append(entry)
    return report


def plot_reliability(conf_logits, accepted_len, temps, path: str | Path, proposed_len=None, n_bins: int = 15,
                     title: str | None = None) -> Path:
    """Reliability diagrams of the raw and calibrated survival, one panel per position, written as a PNG."""
    from matplotlib.figure import Figure  # Figure + savefig uses Agg; no pyplot, no global backend change

    logits, acc, prop = _check_rounds(conf_logits, accepted_len, proposed_len)
    gamma = logits.shape[1]
    raw = np.cumprod(sigmoid(logits), axis=1)
    cal = np.cumprod(apply_temperatures(logits, temps), axis=1)
    cols = min(gamma, 4)
    rows_n = (gamma + cols - 1) // cols
    fig = Figure(figsize=(3.2 * cols, 3.2 * rows_n), dpi=100)
    for k in range(gamma):
        ax = fig.add_subplot(rows_n, cols, k + 1)
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1)
        rows = prop >= k + 1
        event = (acc[rows] >= k + 1).astype(np.float64)
        if rows.any():
            for tag, s, color in (("raw", raw[rows, k], "tab:red"), ("STS", cal[rows, k], "tab:blue")):
                curve = reliability_curve(s, event, n_bins)
                keep = curve["count"] > 0
                ax.plot(curve["mean_prob"][keep], curve["frequency"][keep], marker="o", markersize=3, color=color,
                        label=f"{tag} ECE {ece(s, event, n_bins):.3f}")
        ax.set(xlim=(0, 1), ylim=(0, 1), title=f"position {k + 1} (n={int(rows.sum())})",
               xlabel="predicted survival", ylabel="observed frequency")
        ax.legend(loc="upper left", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
