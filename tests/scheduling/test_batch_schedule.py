"""γ per batch size for vLLM's dynamic speculative decoding, against a brute force over `expected_throughput`."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vllm_dspark.scheduling.admission import expected_throughput
from vllm_dspark.scheduling.batch_schedule import acceptance_from_eval, as_vllm_schedule, gamma_by_batch_size
from vllm_dspark.scheduling.cost import CostTable


def _brute_force(table, acceptance, gamma, max_batch):
    """For each R: the first K maximising Theta of R identical requests all verifying K drafts (admission.py)."""
    out = []
    for r in range(1, max_batch + 1):
        survival = np.tile(np.asarray(acceptance[:gamma], dtype=np.float64), (r, 1))
        thetas = [expected_throughput(survival, [k] * r, table) for k in range(gamma + 1)]
        out.append(int(np.argmax(thetas)))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_on_random_tables(seed):
    rng = np.random.default_rng(seed)
    xs = np.unique(rng.integers(1, 600, size=8))
    ys = np.sort(rng.uniform(2e-3, 60e-3, size=xs.size))  # step time non-decreasing in B
    table = CostTable(xs.tolist(), ys.tolist())
    gamma = int(rng.integers(1, 9))
    acceptance = np.minimum.accumulate(rng.uniform(0, 1, size=gamma)).tolist()
    got = gamma_by_batch_size(table, acceptance, gamma, 48)
    assert got.tolist() == _brute_force(table, acceptance, gamma, 48)


def test_long_drafts_when_idle_short_under_load():
    """Linear step time a + b·B: the fixed cost makes long drafts free at one request, the slope dominates later."""
    xs = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
    table = CostTable(xs, [10e-3 + 0.5e-3 * x for x in xs])
    acceptance = [0.8, 0.6, 0.45, 0.3, 0.2, 0.1, 0.05]
    ks = gamma_by_batch_size(table, acceptance, 7, 256)
    assert ks[0] >= 5 and ks[-1] == 0
    assert np.all(np.diff(ks) <= 0), ks.tolist()


def test_vllm_schedule_round_trips_through_vllms_own_parser():
    ks = [7, 7, 4, 4, 4, 1, 0, 0]
    schedule = as_vllm_schedule(ks)
    assert schedule == [[1, 2, 7], [3, 5, 4], [6, 6, 1], [7, 8, 0]]
    utils = pytest.importorskip("vllm.v1.spec_decode.dynamic.utils")
    lookup = utils.build_dynamic_sd_schedule_lookup(schedule, vllm_max_batch_size=len(ks),
                                                    vllm_num_speculative_tokens=7)
    assert [lookup[r] for r in range(1, len(ks) + 1)] == ks


def test_acceptance_from_eval_and_bad_inputs(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"summary": {"per_position_acceptance": [0.6, 0.3, None]}, "prompts": []}))
    assert acceptance_from_eval(path) == [0.6, 0.3, 0.0]
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="per_position_acceptance"):
        acceptance_from_eval(tmp_path / "other.json")
    table = CostTable([1, 8], [1e-3, 2e-3])
    with pytest.raises(ValueError, match="fewer than γ = 3"):
        gamma_by_batch_size(table, [0.5, 0.2], 3, 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        gamma_by_batch_size(table, [1.5, 0.2], 2, 4)
    # Measured rates may wobble upwards at late positions: treated as the running minimum.
    assert gamma_by_batch_size(table, [0.5, 0.6], 2, 3).tolist() == gamma_by_batch_size(table, [0.5, 0.5], 2, 3).tolist()


def test_cli_prints_and_writes_the_schedule(tmp_path, capsys):
    from vllm_dspark.cli import main

    table = tmp_path / "table.json"
    xs = [1, 4, 16, 64, 256]
    table.write_text(json.dumps({"batch_tokens": xs, "step_seconds": [10e-3 + 0.5e-3 * x for x in xs]}))
    ev = tmp_path / "eval.json"
    ev.write_text(json.dumps({"summary": {"per_position_acceptance": [0.8, 0.6, 0.4, 0.2]}}))
    out = tmp_path / "schedule.json"
    assert main(["schedule", "--cost-table", str(table), "--eval", str(ev), "--max-batch", "64", "--json", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    written = json.loads(out.read_text())
    assert printed["num_speculative_tokens_per_batch_size"] == written["num_speculative_tokens_per_batch_size"]
    ks = gamma_by_batch_size(CostTable.load(table), [0.8, 0.6, 0.4, 0.2], 4, 64)
    assert written["num_speculative_tokens_per_batch_size"] == as_vllm_schedule(ks)
    assert written["num_speculative_tokens_per_batch_size"][-1][1] == 64


def test_cli_says_why_when_no_gamma_pays(tmp_path, capsys):
    """A compute-bound engine (step time proportional to tokens) gets γ = 0 everywhere and a note saying why."""
    from vllm_dspark.cli import main

    table = tmp_path / "table.json"
    xs = [1, 2, 4, 8, 16]
    table.write_text(json.dumps({"batch_tokens": xs, "step_seconds": [0.1 * x for x in xs]}))
    ev = tmp_path / "eval.json"
    ev.write_text(json.dumps({"summary": {"per_position_acceptance": [0.3, 0.1]}}))
    assert main(["schedule", "--cost-table", str(table), "--eval", str(ev), "--max-batch", "8"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["num_speculative_tokens_per_batch_size"] == [[1, 8, 0]]
    assert "no γ pays" in captured.err and "2.00x a plain step" in captured.err and "1.30 tokens" in captured.err
    # A table where verification is nearly free keeps speculation on, without the note.
    table.write_text(json.dumps({"batch_tokens": xs, "step_seconds": [0.1 + 1e-3 * x for x in xs]}))
    assert main(["schedule", "--cost-table", str(table), "--eval", str(ev), "--max-batch", "8"]) == 0
    captured = capsys.readouterr()
    assert "no γ pays" not in captured.err
    schedule = json.loads(captured.out.strip().splitlines()[-1])["num_speculative_tokens_per_batch_size"]
    assert all(k > 0 for _, _, k in schedule)
