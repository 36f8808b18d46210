"""benchmarks/serving/step_overhead.py on pycode-23m: per-step timings of an engine whose drafter never pays."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # builds a vLLM engine (profiled at start) in a subprocess


def test_times_the_rounds_without_drafts(pycode_dir, tmp_path):
    drafter = tmp_path / "random-dspark"
    subprocess.run([sys.executable, str(REPO / "examples/serve_pycode/make_drafter.py"), str(pycode_dir),
                    str(drafter)], check=True, capture_output=True)
    out = tmp_path / "gate-off.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks/serving/step_overhead.py"), "--config", "gate-off",
                    "--target", str(pycode_dir), "--drafter", str(drafter), "--prompts",
                    str(pycode_dir / "eval_prompts.jsonl"), "--max-tokens", "48", "--repeats", "1",
                    "--json", str(out)], check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    ms = result["ms_per_step"]
    assert result["config"] == "gate-off" and result["steps"] >= 40
    # a random drafter never pays: after its exploration the gate leaves rounds without drafts, which are timed
    assert ms["DSparkProposer._skip_round"] > 0
    # nested parts never exceed what contains them; the rounds without drafts are decided before vLLM prepares a
    # drafting round's inputs (patch_round_without_inputs), so they skip `propose` and its preparation
    proposal = ms["CPUModelRunner.propose_draft_token_ids"]
    assert ms["CPUModelRunner.sample_tokens"] >= proposal >= ms["DSparkProposer.propose"]
    assert proposal >= ms["DSparkProposer._skip_round"]
    calls = result["calls_per_step"]
    # the drafter is asked first in every proposal; `propose` runs only for the rounds that draft (probes) and
    # those after a step that verified drafts
    assert calls["DSparkProposer.round_without_inputs"] == calls["CPUModelRunner.propose_draft_token_ids"]
    assert calls["DSparkProposer.propose"] < 0.5 <= calls["DSparkProposer._skip_round"]
