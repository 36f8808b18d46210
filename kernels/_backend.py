"""Backend choice shared by the ops: Triton on CUDA tensors when Triton imports, else the torch reference.

Force one with the `backend=` argument of an op or the environment variable `DSPARK_KERNEL_BACKEND`
(`auto`, `triton`, `torch`). `triton` on CPU tensors needs `TRITON_INTERPRET=1` set before Triton kernels are
defined (this is how the tests run the kernels without a GPU).
"""
from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("auto", "triton", "torch")
ENV_VAR = "DSPARK_KERNEL_BACKEND"


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "no Triton"
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """'triton' or 'torch' for an op whose tensors live on `device`."""
    choice = backend if backend is not None else os.environ.get(ENV_VAR, "auto")
    if choice not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {choice!r} (argument or ${ENV_VAR})")
    if choice == "torch":
        return "torch"
    if choice == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' was requested but `import triton` fails")
        if device.type != "cuda" and not interpreting():
            raise RuntimeError(
                f"backend='triton' on {device.type} tensors needs TRITON_INTERPRET=1 (set before the kernels load)"
            )
        return "triton"
    return "triton" if device.type == "cuda" and triton_available() else "torch"
