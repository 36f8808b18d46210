"""benchmarks/serving/summarize_campaign.py: the greedy-identity lines and the per-concurrency targets."""
from __future__ import annotations

from benchmarks.serving import summarize_campaign


def _run(label: str, digests: dict[int, list[str | None]]) -> dict:
    return {"label": label, "points": [
        {"load": {"concurrency": c, "request_rate": None},
         "requests": [{"prompt_index": i, "output_sha256": d} for i, d in enumerate(ds)]}
        for c, ds in digests.items()]}


def test_greedy_identity_compares_each_request_with_the_reference_at_the_same_load():
    ref = _run("nospec", {1: ["a" * 16, "b" * 16], 4: ["a" * 16, "c" * 16]})
    same = _run("ngram", {1: ["a" * 16, "b" * 16], 4: ["a" * 16, "c" * 16]})
    # Right digests at the wrong load (c=4's second prompt is "c" for the reference) must not count.
    swapped = _run("dspark", {1: ["a" * 16, "b" * 16], 4: ["a" * 16, "b" * 16]})
    failed = _run("broken", {1: [None, None]})
    doc = {"settings": {"temperature": 0.0}, "runs": [ref, same, swapped, failed]}
    runs = {r["label"]: r for r in doc["runs"]}
    lines = summarize_campaign.greedy_identity(doc, runs, "nospec")
    assert "- ngram: 4/4 requests identical to nospec: identical" in lines
    assert "- dspark: 3/4 requests identical to nospec: DIFFERENT" in lines
    assert any(line.startswith("- broken: not compared") for line in lines)
    assert not any(line.startswith("- nospec") for line in lines)
    # Sampled runs are not compared token by token.
    assert summarize_campaign.greedy_identity(dict(doc, settings={"temperature": 1.0}), runs, "nospec") == []


def _tput_run(label: str, tputs: dict[int, float]) -> dict:
    return {"label": label, "points": [{"load": {"concurrency": c, "request_rate": None}, "output_throughput": t}
                                       for c, t in tputs.items()]}


def test_per_concurrency_targets():
    runs = {r["label"]: r for r in [
        _tput_run("nospec", {1: 10.0, 4: 40.0, 16: 60.0}),
        _tput_run("ngram", {1: 14.0, 4: 38.0}),
        _tput_run("static-a", {1: 13.0, 4: 30.0, 16: 45.0}),
        _tput_run("static-b", {1: 12.0, 4: 36.0, 16: 50.0}),
        _tput_run("dspark", {1: 16.0, 4: 39.0, 16: 59.0}),
    ]}
    lines = summarize_campaign.per_concurrency_targets("dspark", runs, ["static-a", "static-b"], "nospec", "ngram")
    # best static: 13 / 36 / 50 -> dspark's ratios 1.23 / 1.08 / 1.18: worst at c = 4, passes
    assert lines[0] == "- dspark: T5 ≥ best static at every concurrency (worst c=4): PASS (1.08× vs 1×)"
    assert lines[1] == "- dspark: T6 ≥ 1.5× no-spec at c=1: PASS (1.60× vs 1.5×); ≥ ngram: PASS (1.14× vs 1×)"
    assert lines[2] == "- dspark: T6 ≥ 1.5× no-spec at c=4: MISS (0.97× vs 1.5×); ≥ ngram: PASS (1.03× vs 1×)"
    assert lines[3] == "- dspark: T6 ≥ 1.2× no-spec at c=16: MISS (0.98× vs 1.2×)"
    assert len(lines) == 4  # no c = 2 point: no line for it
