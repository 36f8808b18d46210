"""Patch: vLLM's V1 model runner builds our `DSparkProposer` where it would build `DFlashProposer`.

`gpu_model_runner` imports `DFlashProposer` by name from `vllm.v1.spec_decode.dflash`, creates the drafter with
`DFlashProposer(vllm_config, device, runner)` when `speculative_config.use_dflash()`, and checks
`isinstance(self.drafter, ... | DFlashProposer | ...)` in several places. Rebinding the name in the runner module
(only there: the class itself stays in `dflash`, as our base class) changes both consistently. The subclass
behaves exactly like its parent unless the drafter is a DSpark drafter.
"""
from __future__ import annotations

from types import ModuleType

from vllm_dspark.adapter.patches._import_hook import when_imported

MODULE = "vllm.v1.worker.gpu_model_runner"
ATTR = "DFlashProposer"
_original: type | None = None


def target(module: ModuleType) -> type:
    return getattr(module, ATTR)


def _patch(module: ModuleType) -> None:
    global _original
    from vllm_dspark.adapter.proposer import DSparkProposer

    current = target(module)
    if current is DSparkProposer:
        return
    if not (isinstance(current, type) and current.__name__ == "DFlashProposer"):
        raise RuntimeError(f"vllm-dspark: {MODULE}.{ATTR} is {current!r}, not vLLM's DFlashProposer; cannot patch")
    _original = current
    setattr(module, ATTR, DSparkProposer)


def apply() -> None:
    when_imported(MODULE, _patch)
