"""benchmarks/serving/near_ties.py on a tiny random Qwen3: a planted real difference, a constructed near-tie, identity.

The expected logits come from the test's own forward pass of the saved model (transformers, bf16), and the planted
tokens are chosen from them: the script must find the position, read the same logits and judge by rank and gap.
"""
from __future__ import annotations

import json

import pytest
import torch
from reference.tiny_targets import build_tiny_target

from benchmarks.serving import near_ties

PROMPT = [7, 3, 21, 40, 9, 14]
PREFIX = [5, 33, 2]  # the output both configs agree on before the difference
TAIL_A, TAIL_B = [1, 2, 3], [4, 5, 6]  # what follows the differing token (not read by the script)


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen3")
    build_tiny_target("qwen3", seed=0, dtype=torch.float32).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def bf16_logits(target_dir):
    """The target's bf16 next-token logits after PROMPT + PREFIX, [vocab] float32."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(target_dir), dtype=torch.bfloat16).eval()
    with torch.no_grad():
        return model(torch.tensor([PROMPT + PREFIX])).logits[0, -1].float()


def _run(label: str, outputs: dict[int, list[int]]) -> dict:
    """A results.json run: one closed-loop point per concurrency, one request (prompt 0) each."""
    return {"label": label, "points": [
        {"load": {"concurrency": c, "request_rate": None},
         "requests": [{"prompt_index": 0, "prompt_token_ids": PROMPT, "output_token_ids": ids}]}
        for c, ids in outputs.items()]}


def _analyse(tmp_path, target_dir, baseline: list[int], config_outputs: dict[int, list[int]], *flags: str):
    """Write a results.json (nospec emits `baseline` at every load) and run the script; (exit code, JSON report)."""
    doc = {"runs": [_run("nospec", {c: baseline for c in config_outputs}), _run("dspark", config_outputs)]}
    results, report = tmp_path / "results.json", tmp_path / "near_ties.json"
    results.write_text(json.dumps(doc))
    code = near_ties.main([str(results), "--target", str(target_dir), "--json", str(report), *flags])
    return code, json.loads(report.read_text())


@pytest.fixture(scope="module")
def order(bf16_logits) -> list[int]:
    """Token ids by decreasing bf16 logit after PROMPT + PREFIX."""
    order = bf16_logits.argsort(descending=True).tolist()
    # Distinct top-1 > top-2 > top-3 in bf16, so "the top two" is unambiguous for the planted tokens.
    assert bf16_logits[order[0]] > bf16_logits[order[1]] > bf16_logits[order[2]], "pick another PROMPT"
    return order


def test_a_token_outside_the_top_two_is_a_real_difference(tmp_path, target_dir, bf16_logits, order):
    top1, worst = order[0], order[-1]
    baseline = PREFIX + [top1] + TAIL_A
    # Identical at c=1; at c=4 the config emits the target's least likely token after the common prefix.
    code, report = _analyse(tmp_path, target_dir, baseline, {1: baseline, 4: PREFIX + [worst] + TAIL_B},
                            "--tolerance", "1e9")  # even a huge tolerance: the rank decides
    assert code == 1 and report["compared"] == 2
    (row,) = report["rows"]
    assert (row["config"], row["load"], row["position"]) == ("dspark", "c=4", len(PREFIX))
    assert (row["baseline_token"], row["config_token"]) == (top1, worst)
    assert row["verdict"] == "REAL DIFFERENCE"
    assert row["rank_bf16"] == {"baseline": 0, "config": int((bf16_logits > bf16_logits[worst]).sum())}
    assert row["rank_bf16"]["config"] > 1
    assert row["logit_bf16"]["config"] == float(bf16_logits[worst])


def test_the_top_two_within_the_tolerance_are_a_near_tie(tmp_path, target_dir, bf16_logits, order):
    top1, top2 = order[:2]
    gap = float(bf16_logits[top1] - bf16_logits[top2])  # > 0 by the `order` check
    baseline, config = PREFIX + [top1] + TAIL_A, PREFIX + [top2] + TAIL_B
    code, report = _analyse(tmp_path, target_dir, baseline, {2: config}, "--tolerance", str(gap * 1.5))
    (row,) = report["rows"]
    assert code == 0 and row["verdict"] == "near-tie"
    assert row["logit_bf16"] == {"baseline": float(bf16_logits[top1]), "config": float(bf16_logits[top2])}
    assert row["rank_bf16"] == {"baseline": 0, "config": 1}
    assert row["pair_gap_bf16"] == pytest.approx(gap) and row["top_gap_bf16"] == pytest.approx(gap)
    # The same pair with a tolerance under their gap is not a near-tie.
    code, report = _analyse(tmp_path, target_dir, baseline, {2: config}, "--tolerance", str(gap * 0.5))
    assert code == 1 and report["rows"][0]["verdict"] == "REAL DIFFERENCE"


def test_identical_outputs_give_no_rows(tmp_path, target_dir, capsys):
    same = PREFIX + TAIL_A
    code, report = _analyse(tmp_path, target_dir, same, {1: same, 4: same})
    assert code == 0 and report["rows"] == [] and report["compared"] == 2
    assert "2 requests compared with nospec: 0 differ" in capsys.readouterr().out


def test_first_difference():
    assert near_ties.first_difference([1, 2, 3], [1, 2, 3]) is None
    assert near_ties.first_difference([1, 2, 3], [1, 9, 3]) == 1
    assert near_ties.first_difference([1, 2, 3], [1, 2]) == 2  # a prefix: the shorter length


def test_default_tolerance_is_two_bf16_ulps_of_the_larger_logit():
    assert near_ties.default_tolerance(16.0, -3.0) == 2 * 2**-7 * 16  # 0.25; bf16 spacing in [16, 32) is 0.125
    assert near_ties.default_tolerance(-0.5, 0.25) == 2 * 2**-7 * 0.5


def test_without_prompt_ids_or_token_ids_nothing_is_proven(tmp_path, capsys):
    no_prompt = {"runs": [_run("nospec", {1: [1, 2, 3]}), _run("dspark", {1: [1, 4, 3]})]}
    for run in no_prompt["runs"]:
        run["points"][0]["requests"][0].pop("prompt_token_ids")
    results = tmp_path / "results.json"
    results.write_text(json.dumps(no_prompt))
    # No context to run the target on: the model folder is never opened.
    assert near_ties.main([str(results), "--target", str(tmp_path / "absent")]) == 1
    assert "UNCHECKED" in capsys.readouterr().out
    for run in no_prompt["runs"]:
        run["points"][0]["requests"][0]["output_token_ids"] = None
    results.write_text(json.dumps(no_prompt))
    assert near_ties.main([str(results), "--target", str(tmp_path / "absent")]) == 2
    assert "--keep-token-ids" in capsys.readouterr().err
