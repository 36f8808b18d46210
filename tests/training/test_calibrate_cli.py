"""`vllm-dspark calibrate` wiring, and STS lowering the ECE of synthetic over-confident scores."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vllm_dspark.cli import main as cli_main
from vllm_dspark.config import DSparkConfig
from vllm_dspark.scheduling.calibrate import ece, fit_sts
from vllm_dspark.training.trainer import train

from train_helpers import tiny_train_config


def test_sts_lowers_ece_of_overconfident_scores():
    rng = np.random.default_rng(0)
    n, gamma = 4000, 5
    true_logit = rng.normal(1.0, 1.5, size=(n, gamma))  # P(position k accepted | earlier accepted)
    ok = rng.random((n, gamma)) < 1 / (1 + np.exp(-true_logit))
    accepted = np.where(ok.all(1), gamma, np.argmin(ok, axis=1))  # first rejection
    raw = 3.0 * true_logit  # over-confident head
    temps = fit_sts(raw, accepted)
    for k in range(gamma):
        event = accepted >= k + 1
        before = ece(np.cumprod(1 / (1 + np.exp(-raw)), 1)[:, k], event)
        after = ece(np.cumprod(1 / (1 + np.exp(-raw / temps)), 1)[:, k], event)
        assert after < before / 2, (k, before, after)
    assert temps[0] == pytest.approx(3.0, rel=0.25)  # recovers the scale at the first position


def test_calibrate_cli_stores_temperatures_and_writes_report(tmp_path, tiny_target, tiny_data, capsys):
    draft = tmp_path / "dspark"
    train(tiny_train_config(tiny_target, tiny_data, draft, max_steps=2))
    prompts = tmp_path / "calib.jsonl"
    prompts.write_text("".join(json.dumps({"prompt_token_ids": [5 + i, 17, 33, 8 + i]}) + "\n" for i in range(3)))
    out = tmp_path / "calibrated"
    rc = cli_main(["calibrate", "--target", str(tiny_target), "--draft", str(draft), "--prompts", str(prompts),
                   "--out-draft", str(out), "--max-new-tokens", "12", "--device", "cpu"])
    assert rc == 0
    cfg = DSparkConfig.from_json(out)
    assert cfg.sts_temperatures is not None and len(cfg.sts_temperatures) == cfg.block_size
    assert DSparkConfig.from_json(draft).sts_temperatures is None  # the source is left alone with --out-draft
    report = json.loads((out / "calibration.json").read_text())
    assert report["temperatures"] == cfg.sts_temperatures and len(report["per_position"]) == cfg.block_size
    assert report["rounds"] > 0 and (out / "reliability.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "ECE before→after" in printed and "stored in" in printed


def test_calibrate_refuses_a_drafter_without_confidence_head(tmp_path, tiny_target, tiny_data):
    draft = tmp_path / "noconf"
    train(tiny_train_config(tiny_target, tiny_data, draft, max_steps=1, confidence_head=False))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt_token_ids": [5, 6, 7]}) + "\n")
    with pytest.raises(SystemExit, match="no confidence head"):
        cli_main(["calibrate", "--target", str(tiny_target), "--draft", str(draft), "--prompts", str(prompts),
                  "--device", "cpu"])
