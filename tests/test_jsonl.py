"""The shared JSONL reader and the prompt readers built on it: gzip, blank lines, and errors naming file and line."""
import gzip
import json

import pytest

from vllm_dspark.bench.prompts import load_prompts
from vllm_dspark.evaluate import PromptFileError, read_prompts
from vllm_dspark.jsonl import iter_objects


class _Tok:
    chat_template = None

    def __call__(self, text):
        return {"input_ids": [len(w) for w in text.split()]}


def _write(path, lines):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


@pytest.mark.parametrize("name", ["p.jsonl", "p.jsonl.gz"])
def test_plain_and_gzip_skip_blank_lines(tmp_path, name):
    path = tmp_path / name
    _write(path, [json.dumps({"prompt": "ab cde"}), "", "  ", json.dumps({"prompt_token_ids": [5, 6]})])
    assert [n for n, _ in iter_objects(path)] == [1, 4]
    assert [p.token_ids for p in read_prompts(path, _Tok())] == [[2, 3], [5, 6]]
    assert [p.line for p in read_prompts(path, _Tok())] == [1, 4]
    bench = load_prompts(path)
    assert bench[0].text == "ab cde" and bench[1].token_ids == (5, 6)


@pytest.mark.parametrize("line, message", [
    ("{not json", r"p.jsonl:2: not valid JSON"),
    ("[1, 2]", r"p.jsonl:2: expected a JSON object, got list"),
    ('{"text": "x"}', r'p.jsonl:2: expected an object with "prompt" or "prompt_token_ids"'),
    ('{"prompt_token_ids": [1, -2]}', r"p.jsonl:2: prompt_token_ids must be a list of non-negative ints"),
])
def test_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "p.jsonl"
    _write(path, [json.dumps({"prompt": "a"}), line])
    with pytest.raises(PromptFileError, match=message):
        read_prompts(path, _Tok())


def test_missing_file_empty_file_and_chat_without_template(tmp_path):
    with pytest.raises(PromptFileError, match="prompt file .*nope.jsonl does not exist"):
        read_prompts(tmp_path / "nope.jsonl", _Tok())
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(PromptFileError, match="no prompts"):
        read_prompts(empty, _Tok())
    with pytest.raises(ValueError, match="no prompts"):
        load_prompts(empty)
    path = tmp_path / "c.jsonl"
    _write(path, [json.dumps({"prompt": "a"})])
    with pytest.raises(PromptFileError, match="c.jsonl:1: chat data needs a tokenizer with a chat template"):
        read_prompts(path, _Tok(), chat=True)
