"""`vllm.general_plugins` entry point: runs in every vLLM process (API server, engine core, workers).

register() is idempotent (vLLM may call it more than once per process) and does three things:
1. refuses a vLLM outside the supported range (0.26.x to 0.33.x) with a message naming both;
2. registers our drafter model class under `DFlashQwen3DSparkModel`, the architecture vLLM derives from a
   `Qwen3DSparkModel` drafter under `"method": "dflash"` (a lazy string: nothing is imported until vLLM builds it);
3. applies the version-gated patches of `vllm_dspark.adapter.patches` (the catalog lists each).
Set `VLLM_DSPARK_DISABLE=1` to make it a no-op (vLLM then runs as if vllm-dspark were not installed).
"""
from __future__ import annotations

import os

from vllm_dspark.adapter import compat

logger = compat.get_logger(__name__)

DISABLE_ENV = "VLLM_DSPARK_DISABLE"
_registered = False


def register() -> None:
    global _registered
    if _registered or os.environ.get(DISABLE_ENV, "0") not in ("", "0"):
        return
    compat.check_supported()
    from vllm import ModelRegistry

    from vllm_dspark.adapter import patches

    if compat.ROUTED_ARCH not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(compat.ROUTED_ARCH, compat.MODEL_CLASS_PATH)
    applied = patches.apply()
    _registered = True
    logger.debug("vllm-dspark registered (vLLM %s); patches: %s", compat.vllm_version(), applied)
