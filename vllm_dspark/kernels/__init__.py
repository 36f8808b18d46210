"""Fused kernels for DSpark's sequential stage.

Each op is a folder of the repository's top-level `kernels/`: `reference.py` (torch; the CPU path and the test
oracle), `kernel.py` (Triton + launcher), `__init__.py` (dispatch between them). Importing this package never
imports vLLM, and imports Triton only when a Triton path is actually taken.

Import them only as `vllm_dspark.kernels.<op>`. `kernels/` has no `__init__.py` on purpose: run from the
repository root (where Python puts the current directory first on `sys.path`), a regular package named `kernels`
would shadow Hugging Face's `kernels` distribution, which transformers imports; a folder without one is at most a
namespace portion, which any installed `kernels` package takes precedence over. setup.py installs `kernels/` as
this package; in a checkout (editable install, or `PYTHONPATH` at the repository root) this module adds the folder
to the package's path.
"""
from pathlib import Path

_root = Path(__file__).resolve().parents[2]
if (_root / "setup.py").is_file() and (_root / "kernels" / "_backend.py").is_file():  # a checkout, not a wheel
    __path__.append(str(_root / "kernels"))
