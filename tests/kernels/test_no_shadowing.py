"""Our kernels folder never shadows another distribution's top-level `kernels` (Hugging Face's, which transformers
imports), also when Python runs from the repository root and finds `kernels/` first on `sys.path`."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_only_vllm_dspark_is_a_regular_package_at_the_repository_root():
    packages = sorted(d.name for d in REPO.iterdir() if (d / "__init__.py").is_file())
    assert packages == ["vllm_dspark"]


def test_another_kernels_distribution_wins_from_the_repository_root(tmp_path):
    fake = tmp_path / "site" / "kernels"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("class CUDAProperties:\n    pass\n")
    probe = textwrap.dedent("""
        import sys
        import kernels
        kernels.CUDAProperties  # what transformers imports from Hugging Face's `kernels`
        import vllm_dspark.kernels.graphs
        from vllm_dspark.kernels.markov_step import markov_block
        print(sys.path[0] == "", kernels.__file__, vllm_dspark.kernels.markov_step.__file__, sep="\\n")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path / "site")])}
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cwd_first, theirs, ours = proc.stdout.split()
    assert cwd_first == "True"  # `python -c` in the repository root: its folder (kernels/ included) comes first
    assert Path(theirs) == fake / "__init__.py"
    assert Path(ours) == REPO / "kernels" / "markov_step" / "__init__.py"
