"""Confidence scheduling (paper Algorithm 1 + our SLA mode), SPS(B) cost tables, STS calibration, and γ per batch
size for vLLM's dynamic speculative decoding.

Pure numpy / torch: nothing here imports vLLM. See cost.py, admission.py, calibrate.py, batch_schedule.py.
"""
from vllm_dspark.scheduling.admission import (
    MODE_ALIASES,
    MODES,
    SERVING_MODES,
    Admission,
    admit_sla,
    admit_static,
    admit_throughput,
    expected_throughput,
    survival_from_confidence,
    user_speeds,
    verify_lengths,
)
from vllm_dspark.scheduling.batch_schedule import acceptance_from_eval, as_vllm_schedule, gamma_by_batch_size
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
from vllm_dspark.scheduling.cost import CostTable, step_seconds_numpy, step_seconds_torch

__all__ = [
    "MODES", "SERVING_MODES", "MODE_ALIASES", "Admission", "admit_sla", "admit_static", "admit_throughput",
    "expected_throughput", "survival_from_confidence", "user_speeds", "verify_lengths",
    "apply_temperatures", "brier", "calibrated_survival", "calibration_report", "ece", "fit_sts",
    "plot_reliability", "reliability_curve", "roc_auc",
    "CostTable", "step_seconds_numpy", "step_seconds_torch",
    "acceptance_from_eval", "as_vllm_schedule", "gamma_by_batch_size",
]
