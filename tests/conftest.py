"""Shared fixtures: tiny random transformers targets (several families), the pycode-23m target, and the oracles.

The oracles live in `tests/reference/` (import them as `from reference import deepspec_ref`): they are written
from shared/docs/deepspec-format.md alone, never from vllm_dspark.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Triton fixes at definition time whether a @triton.jit function (its standard library's included) is
    # interpreted, so the kernel tests' interpreter mode must be on before anything (vLLM, our kernels) imports triton.
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Small CPU ops: one intra-op thread avoids OpenMP oversubscription next to the vLLM servers some tests start
# (with two threads on two busy cores the pycode-23m decoding tests slow down by more than 10x).
torch.set_num_threads(1)

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # makes `reference` importable from every test folder
    sys.path.insert(0, str(TESTS_DIR))

REPO = TESTS_DIR.parent

from reference.tiny_targets import build_tiny_target  # noqa: E402  (needs the sys.path above)

MARKERS = {
    "e2e": "starts real vLLM servers (everything in tests/e2e, tests/bench/test_bench_live.py); also slow",
    "slow": "takes long on 2 CPU cores (e2e, statistical end-to-end runs, multi-process training, kernels under "
            "Triton's interpreter, ahead-of-time compiles); the fast default subset is -m 'not slow'",
    "gpu": "needs a CUDA GPU; skipped, saying so, without one",
}
E2E_DIR = TESTS_DIR / "e2e"


def pytest_configure(config):
    for name, doc in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {doc}")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by these markers
def pytest_collection_modifyitems(config, items):
    no_cuda = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if E2E_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)
        if item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():
            item.add_marker(no_cuda)


@pytest.fixture(scope="session")
def tiny_target():
    """Factory: tiny_target(family, seed=0, **config_overrides) -> float64 model (cached per arguments)."""
    cache = {}

    def make(family: str, seed: int = 0, **overrides):
        key = (family, seed, tuple(sorted(overrides.items())))
        if key not in cache:
            cache[key] = build_tiny_target(family, seed, **overrides)
        return cache[key]

    return make


def pycode_path() -> Path:
    return Path(os.environ.get("DSPARK_TEST_TARGET", REPO.parent / "shared" / "models" / "pycode-23m"))


@pytest.fixture(scope="session")
def pycode_dir() -> Path:
    path = pycode_path()
    if not (path / "config.json").is_file():
        pytest.skip(f"pycode-23m target not found at {path} (set DSPARK_TEST_TARGET)")
    return path


@pytest.fixture(scope="session")
def pycode_f64(pycode_dir):
    """pycode-23m in float64 (avoids near-tie flips between cached and uncached greedy paths)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(pycode_dir), dtype=torch.float64).eval()
    model.requires_grad_(False)
    return model


@pytest.fixture(scope="session")
def pycode_prompts(pycode_dir):
    """The first 48 prompts of eval_prompts.jsonl as token ids (tokenised when a line holds text)."""
    path = pycode_dir / "eval_prompts.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    rows = [json.loads(line) for line in path.read_text().splitlines()[:48] if line.strip()]
    tok = None
    prompts = []
    for row in rows:
        if "prompt_token_ids" in row:
            prompts.append(list(row["prompt_token_ids"]))
        else:
            if tok is None:
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(str(pycode_dir))
            prompts.append(tok(row["prompt"])["input_ids"])
    return prompts


@pytest.fixture(scope="session")
def drafter_pair(tiny_target):
    """Factory: drafter_pair(family, layer_ids=[...], seed=1, **drafter_fields) -> (target, drafter, sd, cfg_dict).

    `sd` / `cfg_dict` are a DeepSpec-layout state dict (float64) and config.json dict made by the independent writer;
    `drafter` is vllm_dspark's DSparkDrafter built from `DSparkConfig.from_target(target.config, ...)` with the same
    weights loaded (strict), in float64.
    """
    from reference.deepspec_writer import deepspec_config, random_state_dict

    def make(family: str, *, layer_ids, seed: int = 1, target_seed: int = 0, target_overrides=None, **fields):
        from vllm_dspark.config import DSparkConfig
        from vllm_dspark.model import DSparkDrafter

        target = tiny_target(family, target_seed, **(target_overrides or {}))
        fields = {"mask_token_id": 5, "block_size": 7, "num_draft_layers": 2, "markov_rank": 16,
                  "markov_head_type": "vanilla", "enable_confidence_head": True, "confidence_head_with_markov": True,
                  **fields}
        cfg_dict = deepspec_config(target.config, target_layer_ids=layer_ids, **fields)
        sd = random_state_dict(cfg_dict, target, seed)
        cfg = DSparkConfig.from_target(target.config, target_layer_ids=layer_ids, **fields)
        drafter = DSparkDrafter(cfg).to(torch.float64)
        drafter.load_state_dict(sd, strict=True)
        drafter.requires_grad_(False)
        return target, drafter.eval(), sd, cfg_dict

    return make
