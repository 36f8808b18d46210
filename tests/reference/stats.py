"""χ² goodness of fit against exact probabilities (scipy), shared by the sampling tests."""
from __future__ import annotations

import numpy as np
from scipy.stats import chisquare


def chi2_pvalue(observed, expected_probs, min_expected: float = 5.0) -> float:
    """p-value of counts `observed` against exact probabilities `expected_probs` (same shape); cells whose expected
    count is below `min_expected` are pooled into one cell so the χ² approximation holds."""
    observed = np.asarray(observed, dtype=float).ravel()
    expected = np.asarray(expected_probs, dtype=float).ravel()
    expected = expected / expected.sum() * observed.sum()
    small = expected < min_expected
    obs = np.append(observed[~small], observed[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    assert obs[~keep].sum() == 0, "counts in cells of probability 0"
    return float(chisquare(obs[keep], exp[keep]).pvalue)
