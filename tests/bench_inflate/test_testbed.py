"""benchmarks.serving.testbed: a testbed part is rebuilt exactly when one of its recorded inputs changed."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from benchmarks.serving import testbed

REPO = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("DSPARK_TEST_TARGET", REPO.parent / "shared" / "models" / "pycode-23m"))

pytestmark = pytest.mark.skipif(not (TARGET / "config.json").is_file(), reason=f"no target model at {TARGET}")
# the source shape plus one layer: the cheapest inflation that still writes every tensor
TINY = ["--hidden", "512", "--layers", "7", "--heads", "8", "--kv-heads", "4", "--head-dim", "64",
        "--intermediate", "1536", "--dtype", "float32", "--device", "cpu"]


def run(capsys, *args) -> str:
    assert testbed.main([*map(str, args), *TINY]) == 0
    return capsys.readouterr().out


def test_rebuilds_only_when_an_input_changes(tmp_path, capsys):
    src = tmp_path / "small"
    shutil.copytree(TARGET, src)
    out = tmp_path / "bed"
    assert "built" in run(capsys, "--target", src, "--out", out)
    weights = out / "target" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    meta = json.loads((out / "target" / "inflate_meta.json").read_text())
    assert meta["inputs"]["shape"]["num_hidden_layers"] == 7 and meta["shape"]["num_hidden_layers"] == 7

    assert "kept (same inputs)" in run(capsys, "--target", src, "--out", out)
    assert weights.stat().st_mtime_ns == stamp

    assert "built" in run(capsys, "--target", src, "--out", out, "--seed", "5")  # another noise seed
    assert json.loads((out / "target" / "inflate_meta.json").read_text())["seed"] == 5

    config = json.loads((src / "config.json").read_text())  # the source changed: same path, other content
    (src / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 2e-6}))
    assert "built" in run(capsys, "--target", src, "--out", out, "--seed", "5")
    assert not (out / "target.partial").exists()


def test_drafter_folders_must_have_distinct_names(tmp_path, capsys):
    with pytest.raises(SystemExit, match="distinct names"):
        run(capsys, "--target", TARGET, "--out", tmp_path / "bed", "--drafter", tmp_path / "a" / "dspark",
            "--drafter", tmp_path / "b" / "dspark")
