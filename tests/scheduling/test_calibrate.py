"""Calibration metrics against hand-computed cases and naive formulas; STS on synthetic miscalibrated heads."""
import math

import numpy as np
import pytest
import torch

from vllm_dspark.scheduling.calibrate import (
    apply_temperatures,
    brier,
    calibrated_survival,
    calibration_report,
    ece,
    fit_sts,
    plot_reliability,
    reliability_curve,
    roc_auc,
)


# ----- naive references -----
def naive_ece(p, e, n_bins):
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [(pi, ei) for pi, ei in zip(p, e) if lo <= pi < hi or (b == n_bins - 1 and pi == 1.0)]
        if members:
            mean_p = sum(m[0] for m in members) / len(members)
            mean_e = sum(m[1] for m in members) / len(members)
            total += len(members) / len(p) * abs(mean_e - mean_p)
    return total


def naive_auc(p, e):
    pos = [pi for pi, ei in zip(p, e) if ei == 1]
    neg = [pi for pi, ei in zip(p, e) if ei == 0]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def synthetic_rounds(rng, n, true_temps, proposed_min=1):
    """True conditional acceptance c_k = sigmoid(z_k); the head reports z_k * T_k (so T_k recalibrates it)."""
    gamma = len(true_temps)
    z = rng.normal(1.0, 1.5, size=(n, gamma))
    accept = rng.random((n, gamma)) < 1 / (1 + np.exp(-z))
    first_reject = np.argmin(np.concatenate([accept, np.zeros((n, 1), bool)], axis=1), axis=1)
    proposed = rng.integers(proposed_min, gamma + 1, size=n)
    accepted = np.minimum(first_reject, proposed)
    logits = z * np.asarray(true_temps)
    logits[np.arange(gamma)[None, :] >= proposed[:, None]] = np.nan  # never proposed: garbage
    return logits, accepted, proposed


# ----- metrics -----
def test_ece_hand_case_and_naive():
    # bin [0, .5): p .1, .2 -> mean .15, events 0, 1 -> .5: gap .35, weight 1/2; bin [.5, 1]: .85 vs 1: .15 * 1/2.
    assert ece([0.1, 0.2, 0.8, 0.9], [0, 1, 1, 1], n_bins=2) == pytest.approx(0.25)
    assert ece([1.0, 0.0], [1, 0], n_bins=15) == 0.0
    rng = np.random.default_rng(0)
    p = rng.uniform(size=500)
    e = (rng.uniform(size=500) < p ** 2).astype(float)
    for n_bins in (1, 7, 15):
        assert ece(p, e, n_bins) == pytest.approx(naive_ece(p, e, n_bins), abs=1e-12)
    assert ece(torch.tensor(p), torch.tensor(e)) == pytest.approx(naive_ece(p, e, 15), abs=1e-12)


def test_brier_and_auc():
    assert brier([0.25, 1.0], [0, 1]) == pytest.approx(0.0625 / 2)
    # positives .8 and .4, negatives .4 and .1: pairs (.8>.4) 1, (.8>.1) 1, (.4=.4) .5, (.4>.1) 1 -> 3.5 / 4
    assert roc_auc([0.8, 0.4, 0.4, 0.1], [1, 1, 0, 0]) == pytest.approx(0.875)
    rng = np.random.default_rng(1)
    p = rng.integers(0, 10, size=200) / 10  # many ties
    e = (rng.uniform(size=200) < p).astype(float)
    assert roc_auc(p, e) == pytest.approx(naive_auc(p, e), abs=1e-12)
    assert math.isnan(roc_auc([0.2, 0.9], [1, 1]))
    with pytest.raises(ValueError, match="event"):
        brier([0.5], [2])
    with pytest.raises(ValueError, match="prob"):
        ece([1.5], [1])
    with pytest.raises(ValueError, match="2 values"):
        roc_auc([0.5, 0.4], [1])


def test_reliability_curve():
    curve = reliability_curve([0.1, 0.2, 0.9], [0, 1, 1], n_bins=4)
    assert curve["count"].tolist() == [2, 0, 0, 1]
    assert curve["mean_prob"][0] == pytest.approx(0.15) and curve["frequency"][0] == pytest.approx(0.5)
    assert np.isnan(curve["frequency"][1]) and curve["frequency"][3] == 1.0
    assert curve["edges"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_apply_temperatures_numpy_and_torch():
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, -4.0]])
    temps = np.array([2.0, 0.5, 1.0])
    expected = 1 / (1 + np.exp(-logits / temps))
    np.testing.assert_allclose(apply_temperatures(logits, temps), expected, rtol=1e-14)
    got = apply_temperatures(torch.tensor(logits, dtype=torch.float32), temps)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    surv = calibrated_survival(logits, temps, proposed_len=[3, 1])
    np.testing.assert_allclose(surv[0], np.cumprod(expected[0]), rtol=1e-14)
    assert surv[1, 0] == pytest.approx(expected[1, 0]) and np.isnan(surv[1, 1:]).all()


# ----- STS -----
def test_sts_recovers_temperatures_and_lowers_ece():
    true_temps = [2.0, 0.5, 1.5, 3.0]
    logits, accepted, proposed = synthetic_rounds(np.random.default_rng(2), 40000, true_temps, proposed_min=3)
    temps = fit_sts(logits, accepted, proposed)  # NaN logits past proposed_len must not be read
    # ECE is flat in T_k where the survival is small, so late positions are pinned down more loosely.
    log_err = np.abs(np.log(temps / np.array(true_temps)))
    assert np.all(log_err[:2] < np.log(1.1)) and np.all(log_err < np.log(1.3)), temps
    report = calibration_report(logits, accepted, temps, proposed)
    for row in report:
        assert row["ece_after"] < row["ece_before"] and row["ece_after"] < 0.025, row
        assert row["brier_after"] < row["brier_before"], row
    # position 1 uses every round; position 4 only rounds that proposed 4 drafts
    assert report[0]["rounds"] == 40000 and report[3]["rounds"] == int((proposed >= 4).sum())
    # temperature scaling is monotone per position: the AUC of position 1 cannot change
    assert report[0]["auc_after"] == pytest.approx(report[0]["auc_before"])


def test_sts_is_sequential_and_handles_unproposed_positions():
    logits, accepted, proposed = synthetic_rounds(np.random.default_rng(3), 4000, [2.0, 1.0, 1.0])
    temps = fit_sts(logits, accepted, proposed)
    changed = logits.copy()
    changed[:, 1:] *= 5.0  # later positions do not influence earlier temperatures
    assert fit_sts(changed, accepted, proposed)[0] == temps[0]
    # nobody proposed position 3: its temperature stays 1
    short = np.minimum(proposed, 2)
    temps_short = fit_sts(logits, np.minimum(accepted, short), short)
    assert temps_short[2] == 1.0 and temps_short[0] == temps[0]


def test_sts_leaves_positions_without_enough_events_at_one():
    # A weak drafter: position 3 is never accepted. Its raw logits are overconfident (positive for some rounds);
    # with no survival to calibrate against, its temperature must stay 1 rather than run to the grid's edge.
    rng = np.random.default_rng(5)
    logits, accepted, proposed = synthetic_rounds(rng, 4000, [2.0, 1.0, 1.0])
    accepted = np.minimum(accepted, 2)
    logits[:, 2] = rng.normal(1.0, 1.0, size=len(logits))
    temps = fit_sts(logits, accepted, proposed)
    assert temps[2] == 1.0 and temps[0] != 1.0
    unguarded = fit_sts(logits, accepted, proposed, min_events=0)[2]
    assert unguarded <= 0.06 or unguarded >= 19  # what the guard prevents: the grid's edge (0.05 or 20)


def test_sts_calibrated_logits_stay_put():
    # The head is already calibrated: STS should keep temperatures near 1.
    logits, accepted, proposed = synthetic_rounds(np.random.default_rng(4), 20000, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(fit_sts(logits, accepted, proposed), 1.0, rtol=0.15)


def test_sts_input_validation():
    logits = np.zeros((3, 2))
    with pytest.raises(ValueError, match="accepted_len"):
        fit_sts(logits, [0, 1], None)
    with pytest.raises(ValueError, match="exceeds proposed_len"):
        fit_sts(logits, [0, 2, 1], [2, 1, 1])
    with pytest.raises(ValueError, match="integers"):
        fit_sts(logits, [0, 3, 1])
    with pytest.raises(ValueError, match="grid"):
        fit_sts(logits, [0, 1, 1], grid=[0.0, 1.0])
    with pytest.raises(ValueError, match="non-finite"):
        fit_sts(np.full((3, 2), np.nan), [0, 1, 1])


def test_plot_reliability_writes_a_png(tmp_path):
    logits, accepted, proposed = synthetic_rounds(np.random.default_rng(5), 3000, [2.0, 0.7, 1.3])
    temps = fit_sts(logits, accepted, proposed)
    path = plot_reliability(logits, accepted, temps, tmp_path / "plots" / "rel.png", proposed, title="test")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    import matplotlib.image

    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 600 and pixels[..., :3].std() > 0.05
