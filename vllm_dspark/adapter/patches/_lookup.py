"""Find our proposer on vLLM's objects, or fail naming the attribute that moved (never switch a patch off)."""
from __future__ import annotations

from vllm_dspark.adapter import spec_config


def dspark_drafter(runner, needed_for: str):
    """`runner.drafter` when the engine serves a DSpark drafter, else None. Raises when it serves one but the
    proposer is not there (patch_dflash_proposer rebinds `DFlashProposer` in the runner module, which builds it)."""
    if not spec_config.serves_dspark(runner.vllm_config):
        return None
    drafter = getattr(runner, "drafter", None)
    if not getattr(drafter, "is_dspark", False):
        raise RuntimeError(f"vllm-dspark: `{type(runner).__name__}.drafter` is {type(drafter).__name__}, not the "
                           f"DSpark proposer; this vLLM builds its drafter elsewhere, so vllm-dspark cannot "
                           f"{needed_for}")
    return drafter
