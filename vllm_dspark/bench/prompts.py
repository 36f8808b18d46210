"""Benchmark prompts: a JSONL file (`{"prompt": "..."}` or `{"prompt_token_ids": [...]}` per line) or a built-in set."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from vllm_dspark.jsonl import iter_objects


@dataclass(frozen=True)
class Prompt:
    index: int  # position in the source (line order), kept in the results to trace a request to its prompt
    text: str | None = None
    token_ids: tuple[int, ...] | None = None


# Short code prompts so a run works without a data file; code completions keep drafters' acceptance realistic.
BUILTIN_PROMPTS = [
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "import numpy as np\n\n\ndef normalize(x, axis=-1):\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
    "def read_jsonl(path):\n    with open(path) as f:\n",
    "def quicksort(values):\n    if len(values) <= 1:\n        return values\n",
    "import argparse\n\n\ndef main():\n    parser = argparse.ArgumentParser()\n",
    "def is_prime(n: int) -> bool:\n",
    "from dataclasses import dataclass\n\n\n@dataclass\nclass Point:\n    x: float\n    y: float\n\n"
    "    def norm(self):\n",
]


def builtin_prompts() -> list[Prompt]:
    return [Prompt(index=i, text=t) for i, t in enumerate(BUILTIN_PROMPTS)]


def load_prompts(path: str | Path) -> list[Prompt]:
    """Read prompts from JSONL(.gz); each non-blank line needs a string `prompt` or an int list `prompt_token_ids`."""
    prompts = []
    for line_no, row in iter_objects(path, ValueError, "prompt file"):
        ids = row.get("prompt_token_ids")
        if ids is not None:
            if not isinstance(ids, list) or not ids or not all(isinstance(t, int) for t in ids):
                raise ValueError(f"{path}:{line_no}: 'prompt_token_ids' must be a non-empty list of ints")
            prompts.append(Prompt(index=len(prompts), token_ids=tuple(ids)))
        elif isinstance(row.get("prompt"), str) and row["prompt"]:
            prompts.append(Prompt(index=len(prompts), text=row["prompt"]))
        else:
            raise ValueError(
                f"{path}:{line_no}: needs a non-empty string 'prompt' or a list 'prompt_token_ids' "
                f"(keys present: {sorted(row)})"
            )
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def select_prompts(prompts: list[Prompt], num_prompts: int, seed: int) -> list[Prompt]:
    """`num_prompts` prompts drawn with a seeded shuffle; cycles through the set when it is smaller.

    The same selection is used for every load point and every compared configuration, so points differ only in load.
    """
    if num_prompts < 1:
        raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
    rng = random.Random(seed)
    chosen: list[Prompt] = []
    while len(chosen) < num_prompts:
        batch = list(prompts)
        rng.shuffle(batch)
        chosen.extend(batch[: num_prompts - len(chosen)])
    return chosen
