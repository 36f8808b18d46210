"""benchmarks/serving/summarize_campaign.py: the greedy-identity lines it adds to the campaign table."""
from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serving" / "summarize_campaign.py"
spec = importlib.util.spec_from_file_location("summarize_campaign", SCRIPT)
summarize_campaign = importlib.util.module_from_spec(spec)
spec.loader.exec_module(summarize_campaign)


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
