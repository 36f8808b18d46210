"""examples/train_pycode/shared_weights.py: stripping a trained drafter's copies of the target's embedding / LM head
and restoring them from the target gives back the same tensors (what copying stripped drafters between machines
relies on)."""
import runpy
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from train_helpers import tiny_train_config
from vllm_dspark.training.trainer import train

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "train_pycode" / "shared_weights.py"


def _run(monkeypatch, *args):
    """The script's command line, in this process (a subprocess would import torch again for each call)."""
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *map(str, args)])
    runpy.run_path(str(SCRIPT), run_name="__main__")


def test_strip_then_restore_is_identity(tmp_path, tiny_target, tiny_data, monkeypatch):
    trained = tmp_path / "dspark"
    train(tiny_train_config(tiny_target, tiny_data, trained, algo="dspark", max_steps=1))
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    original = load_file(str(trained / "model.safetensors"))
    assert {"embed_tokens.weight", "lm_head.weight"} <= original.keys()

    _run(monkeypatch, "strip", copy)
    stripped = load_file(str(copy / "model.safetensors"))
    assert not {"embed_tokens.weight", "lm_head.weight"} & stripped.keys()
    assert stripped.keys() == original.keys() - {"embed_tokens.weight", "lm_head.weight"}

    _run(monkeypatch, "restore", copy, "--target", tiny_target)
    restored = load_file(str(copy / "model.safetensors"))
    assert restored.keys() == original.keys()
    for k, v in original.items():
        assert restored[k].dtype == v.dtype and torch.equal(restored[k], v), k
