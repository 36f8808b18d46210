"""`vllm-dspark regenerate` with the transformers backend: the target's own greedy continuation, read back."""
from __future__ import annotations

import json

import pytest
import torch

from vllm_dspark.cli import main as cli_main
from vllm_dspark.decoding import plain_generate
from vllm_dspark.target import load_target
from vllm_dspark.training.data import DataError, read_records, tokenizer_fingerprint


def test_greedy_regeneration_equals_the_target_and_reads_back(tmp_path, tiny_target):
    prompts = tmp_path / "p.jsonl"
    rows = [{"prompt": "w5 w17 w33", "id": 1}, {"prompt_token_ids": [9, 10, 11, 12, 13, 40]}, {"prompt": "w7"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "regen.jsonl"
    assert cli_main(["regenerate", "--target", str(tiny_target), "--prompts", str(prompts), "--out", str(out),
                     "--max-new-tokens", "10", "--temperature", "0", "--backend", "transformers",
                     "--batch-size", "2", "--device", "cpu"]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    target, tok = load_target(tiny_target, dtype=torch.float32, device=torch.device("cpu"))
    for row, rec in zip(rows, got):
        ids = row.get("prompt_token_ids") or tok(row["prompt"])["input_ids"]
        assert rec["prompt_token_ids"] == ids
        expected = plain_generate(target, ids, max_new_tokens=10, stop_token_ids={0})
        assert rec["response_token_ids"] == expected  # batched, left-padded generation == one at a time
        assert rec["finish_reason"] == ("stop" if expected[-1] == 0 else "length")
        assert rec["tokenizer"] == tokenizer_fingerprint(tok)
    assert got[0]["id"] == 1  # input fields are kept
    recs, _ = read_records(out, vocab_size=96, tokenizer=tok, max_seq_len=64)
    assert len(recs) == sum(len(r["response_token_ids"]) >= 2 for r in got)


def test_prompt_too_long_for_the_context(tmp_path, tiny_target):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt_token_ids": [5] * 120}) + "\n")
    with pytest.raises(DataError, match=r"p.jsonl:1: prompt has 120 tokens; with --max-new-tokens the target's "
                                        r"context allows 118"):
        cli_main(["regenerate", "--target", str(tiny_target), "--prompts", str(prompts), "--out",
                  str(tmp_path / "o.jsonl"), "--max-new-tokens", "10", "--backend", "transformers"])
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty"):
        cli_main(["regenerate", "--target", str(tiny_target), "--prompts", str(tmp_path / "empty.jsonl"), "--out",
                  str(tmp_path / "o.jsonl"), "--max-new-tokens", "10", "--backend", "transformers"])


def test_auto_backend_says_why_vllm_was_not_used(monkeypatch):
    import sys

    from vllm_dspark.training.regenerate import choose_backend

    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    backend, why = choose_backend("auto")
    assert backend == "transformers"
    assert why == ("backend auto: vLLM not used, `import vllm` failed "
                   "(ModuleNotFoundError: import of vllm halted; None in sys.modules)")
    assert choose_backend("transformers") == ("transformers", None)
