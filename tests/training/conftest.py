"""Session fixtures for the training tests (helpers live in train_helpers.py: several conftest modules exist)."""
from __future__ import annotations

from pathlib import Path

import pytest

from train_helpers import make_target, write_records


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory) -> Path:
    return make_target(tmp_path_factory.mktemp("tiny_target"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_records(tmp_path_factory.mktemp("data") / "train.jsonl", 24)
