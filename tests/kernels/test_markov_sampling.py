"""Sampled tokens follow softmax((U + W2s·W1[prev]) / T): χ² goodness of fit, for the kernel and the reference.

Each row of one call is an independent draw (same logits, different Philox seeds). Seeds are fixed, so the tests
are deterministic; the same χ² test must reject deliberately wrong distributions (bias dropped, T ignored).
Kernel sample counts are small because the Triton interpreter runs ~30 ms per row; the reference runs 20,000.
"""
import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from markov_checks import random_weights
from vllm_dspark.kernels._backend import interpreting
from vllm_dspark.kernels.markov_step import markov_step
from vllm_dspark.kernels.markov_step.kernel import LaunchOptions

P_ACCEPT = 1e-3  # correct distribution: p-value above this
P_REJECT = 1e-6  # wrong distribution: p-value below this


def _case(v, peaks, device):
    """Logits with a few peaks (spread across sampling groups when v > 128) and a low floor."""
    gen = torch.Generator().manual_seed(v)
    w = random_weights(v, 16, 8, device=device, gen=gen, bias_scale=0.12)
    u = torch.full((v,), -4.0)
    u[peaks] = torch.linspace(0.0, 1.5, len(peaks))
    prev = 5
    logits = u.double() + w.w2.double().cpu() @ w.w1[prev].double().cpu()
    return w, u.to(device), prev, logits


def _bins(tokens, peaks, v):
    """Counts over the peak tokens plus one 'everything else' bin."""
    counts = np.bincount(tokens.cpu().numpy(), minlength=v).astype(float)
    return counts if len(peaks) == v else np.append(counts[peaks], counts.sum() - counts[peaks].sum())


def _expected(p, peaks, n):
    p = p.numpy()
    return n * (p if len(peaks) == len(p) else np.append(p[peaks], 1.0 - p[peaks].sum()))


def _draw(w, u, prev, temp, n, backend, device, launch):
    seeds = torch.arange(n, device=device) * 7919 + 3
    return markov_step(u.expand(n, -1).contiguous(), torch.full((n,), prev, device=device), w,
                       torch.full((n,), temp, device=device), seeds, step=1, backend=backend, launch=launch).tokens


def _merge_rare(counts, expected, min_expected=5.0):
    """Pool bins expected to get < min_expected draws (χ² needs ~5 per bin); same pooling for any `counts`."""
    rare = expected < min_expected
    if not rare.any():
        return counts
    pooled = np.append(counts[~rare], counts[rare].sum())
    if expected[rare].sum() < min_expected:  # still too small: fold into the last regular bin
        pooled[-2] += pooled[-1]
        pooled = pooled[:-1]
    return pooled


def _chi2_p(observed, expected, right):
    expected = expected * observed.sum() / expected.sum()
    return chisquare(_merge_rare(observed, right), _merge_rare(expected, right)).pvalue


# triton-tile: in-group draw in the tile kernel (default); triton-reread: LaunchOptions(tile_draw=False) (the select
# kernel re-reads the drawn group's W2 rows). The torch backend has one path. Under the interpreter (no GPU) a
# Triton case takes ~10 s: slow.
_INTERPRETED = [pytest.mark.slow] if interpreting() else []


@pytest.mark.parametrize("path,n", [pytest.param("triton-tile", 500, marks=_INTERPRETED),
                                    pytest.param("triton-reread", 500, marks=_INTERPRETED), ("torch", 20000)])
@pytest.mark.parametrize("v,peaks", [(7, list(range(7))), (300, [3, 100, 127, 128, 200, 256, 299])])
def test_sample_distribution_chi2(path, n, v, peaks, device):
    backend = path.split("-")[0]
    launch = LaunchOptions(tile_draw=path != "triton-reread") if backend == "triton" else None
    temp = 0.5
    w, u, prev, logits = _case(v, peaks, device)
    observed = _bins(_draw(w, u, prev, temp, n, backend, device, launch), peaks, v)
    right = _expected(torch.softmax(logits / temp, 0), peaks, n)
    assert len(_merge_rare(right, right)) >= 5, "test design: too few bins with >= 5 expected draws"
    assert _chi2_p(observed, right, right) > P_ACCEPT
    wrong_no_bias = _expected(torch.softmax(u.double().cpu() / temp, 0), peaks, n)
    wrong_no_temp = _expected(torch.softmax(logits, 0), peaks, n)
    assert _chi2_p(observed, wrong_no_bias, right) < P_REJECT
    assert _chi2_p(observed, wrong_no_temp, right) < P_REJECT

