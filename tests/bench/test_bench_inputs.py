"""Prompt files, prompt selection and request bodies."""
import json

import pytest

from vllm_dspark.bench.client import SamplingSettings, build_payload
from vllm_dspark.bench.prompts import Prompt, builtin_prompts, load_prompts, select_prompts


def test_load_prompts_reads_text_and_token_ids(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "def f():"}\n\n{"prompt_token_ids": [5, 6, 7], "source": "x"}\n')
    prompts = load_prompts(path)
    assert prompts == [Prompt(index=0, text="def f():"), Prompt(index=1, token_ids=(5, 6, 7))]


@pytest.mark.parametrize("line, message", [
    ('{"text": "x"}', r"p.jsonl:2: needs a non-empty string 'prompt'.*\['text'\]"),
    ('{"prompt_token_ids": [1, "a"]}', "p.jsonl:2: 'prompt_token_ids' must be a non-empty list of ints"),
    ("[1, 2]", "p.jsonl:2: expected a JSON object, got list"),
    ("{oops", "p.jsonl:2: not valid JSON"),
])
def test_load_prompts_names_the_bad_line_and_field(tmp_path, line, message):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        load_prompts(path)


def test_select_prompts_is_seeded_and_cycles():
    prompts = builtin_prompts()  # 8 prompts
    a = select_prompts(prompts, 20, seed=3)
    assert a == select_prompts(prompts, 20, seed=3)
    assert len(a) == 20
    assert sorted(p.index for p in a[:8]) == list(range(8))  # each full pass is a permutation
    assert sorted(p.index for p in a[8:16]) == list(range(8))
    assert [p.index for p in select_prompts(prompts, 8, seed=4)] != [p.index for p in a[:8]]
    with pytest.raises(ValueError, match="num_prompts"):
        select_prompts(prompts, 0, seed=0)


def test_completions_payload_streams_with_usage_and_vllm_extensions():
    s = SamplingSettings(model="m", max_tokens=16, temperature=0.5, seed=100, extra_body={"top_k": 5})
    body = build_payload(s, Prompt(index=7, token_ids=(1, 2)))
    assert body["prompt"] == [1, 2] and body["max_tokens"] == 16 and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert body["ignore_eos"] is True and body["seed"] == 107 and body["top_k"] == 5
    json.dumps(body)  # serialisable


def test_chat_payload_and_its_limits():
    s = SamplingSettings(model="m", max_tokens=4, endpoint="chat")
    assert build_payload(s, Prompt(index=0, text="hi"))["messages"] == [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="prompt 3: the chat endpoint needs text"):
        build_payload(s, Prompt(index=3, token_ids=(1,)))


@pytest.mark.parametrize("kwargs, message", [({"endpoint": "x"}, "endpoint must be one of"),
                                             ({"max_tokens": 0}, "max_tokens must be >= 1"),
                                             ({"temperature": -1.0}, "temperature must be >= 0")])
def test_sampling_settings_validate(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingSettings(**{"model": "m", "max_tokens": 4, **kwargs})
