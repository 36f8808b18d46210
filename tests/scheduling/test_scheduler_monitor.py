"""SchedulerMonitor: expected vs realized tokens and online survival calibration, on simulated steps."""
import numpy as np
import pytest
import torch

from vllm_dspark.scheduling import CostTable, SchedulerMonitor, admit_throughput, survival_from_confidence


def test_hand_counted_step():
    mon = SchedulerMonitor(n_bins=2)
    surv = np.array([[0.9, 0.6, 0.3], [0.4, 0.2, 0.1]])
    mon.record_step(surv, lengths=[2, 1], accepted=[1, 1])
    out = mon.summary()
    # expected = 2 bonus + .9 + .6 + .4 = 3.9; realized = 2 + 1 + 1 = 4; verified positions (0,0), (0,1), (1,0)
    assert out["expected_tokens"] == pytest.approx(3.9) and out["realized_tokens"] == 4
    assert out["verified_positions"] == 3 and out["mean_batch_tokens"] == 5
    # bin [0, .5): pred .4, event 1 -> |1 - .4| = .6; bin [.5, 1]: preds .9 + .6, events 1 + 0 -> |1 - 1.5| = .5
    assert out["survival_ece"] == pytest.approx((0.6 + 0.5) / 3)


def test_calibrated_simulation_and_cost_observation():
    rng = np.random.default_rng(0)
    table = CostTable([1, 16, 64], [0.010, 0.012, 0.030])
    mon = SchedulerMonitor(table=table)
    for _ in range(400):
        conf = rng.uniform(0.3, 1.0, size=(8, 5))
        surv = survival_from_confidence(conf)
        lengths = admit_throughput(conf, np.full(8, 5), table)
        accept = rng.random(conf.shape) < conf  # drafts are accepted with the stated conditional probability
        first_reject = np.argmin(np.concatenate([accept, np.zeros((8, 1), bool)], axis=1), axis=1)
        mon.record_step(torch.tensor(surv), torch.tensor(lengths), np.minimum(first_reject, lengths),
                        step_seconds=0.02)
    out = mon.summary()
    assert out["realized_over_expected"] == pytest.approx(1.0, abs=0.03)
    assert out["survival_ece"] < 0.03
    assert table.num_observations == 400


def test_rejects_inconsistent_inputs():
    with pytest.raises(ValueError, match="accepted"):
        SchedulerMonitor().record_step(np.full((1, 2), 0.5), [1], [2])
