"""OpenAI-client helpers for the e2e tests: many requests in flight at once, token ids back."""
from __future__ import annotations

import concurrent.futures as cf

from openai import OpenAI

from vllm_dspark.bench.sweep import discover_model

MAX_TOKENS = 32


def client(server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=600)


def model_id(server) -> str:
    return discover_model(server.url)


def completions(server, prompts: list[str], max_tokens: int | list[int] = MAX_TOKENS, ignore_eos: bool = False,
                with_prompt_ids: bool = False, extra_body: dict | None = None, **kw) -> list:
    """All prompts in flight at once; returns the generated token ids of each ((prompt ids, generated ids) with
    `with_prompt_ids`). `max_tokens`: one for all, or one per prompt. `extra_body`: more vLLM request fields (e.g.
    structured_outputs)."""
    c, model = client(server), model_id(server)
    extra = {"return_token_ids": True, **({"ignore_eos": True} if ignore_eos else {}), **(extra_body or {})}
    limits = [max_tokens] * len(prompts) if isinstance(max_tokens, int) else list(max_tokens)
    assert len(limits) == len(prompts), f"{len(limits)} max_tokens for {len(prompts)} prompts"

    def one(prompt, limit):
        choice = c.completions.create(model=model, prompt=prompt, max_tokens=limit, extra_body=extra,
                                      **kw).choices[0]
        out = list(choice.token_ids)
        return (list(choice.prompt_token_ids), out) if with_prompt_ids else out

    with cf.ThreadPoolExecutor(len(prompts)) as ex:
        return list(ex.map(one, prompts, limits))


def chats(server, prompts: list[str], max_tokens: int = 24) -> list[list[int]]:
    c, model = client(server), model_id(server)

    def one(prompt):
        out = c.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt[-300:]}], max_tokens=max_tokens,
            temperature=0.0, extra_body={"return_token_ids": True})
        return list(out.choices[0].token_ids)

    with cf.ThreadPoolExecutor(len(prompts)) as ex:
        return list(ex.map(one, prompts))
