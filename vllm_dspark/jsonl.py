"""JSONL(.gz) input shared by the prompt and training-data readers: one object per non-blank line, errors that name
the file and line, and the one way prompts are tokenized (plain, or through the chat template)."""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Iterator


def open_text(path: str | Path):
    path = Path(path)
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def iter_objects(path: str | Path, error: type[Exception] = ValueError, what: str = "file"
                 ) -> Iterator[tuple[int, dict]]:
    """(1-based line number, object) per non-blank line; anything else raises `error` naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    with open_text(path) as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise error(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def render_chat(tokenizer: Any, messages: list[dict], error: type[Exception] = ValueError,
                where: str = "prompt") -> list[int]:
    """Token ids of `messages` through the tokenizer's chat template, ending with the assistant's turn opening."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise error(f"{where}: chat data needs a tokenizer with a chat template; this one has none")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def encode_prompt(tokenizer: Any, text: str, chat: bool, error: type[Exception] = ValueError,
                  where: str = "prompt") -> list[int]:
    if chat:
        return render_chat(tokenizer, [{"role": "user", "content": text}], error, where)
    return list(tokenizer(text)["input_ids"])
