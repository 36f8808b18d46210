"""DFlash baseline: the DSpark backbone without sequential or confidence head, in vLLM's native `dflash` layout.

Differences from a DSpark drafter (markov_rank 0):
- block layout: vLLM's DFlash proposer queries [x_a, mask × γ] at positions a..a+γ and samples drafts from the γ
  mask slots (`v1/spec_decode/utils.py`, `copy_and_expand_dflash_inputs_kernel`: token indices skip the bonus
  slot), so mask slot k predicts the token at its own position a+k. DSpark's anchor slot is itself a prediction.
  `DFlashDrafter.block_hidden` runs γ+1 slots and returns the γ mask slots, so the reference loop
  (`vllm_dspark.decoding.speculative_generate`) and the evaluator run it unchanged.
- config.json: `architectures = ["DFlashDraftModel"]` (vLLM `qwen3_dflash.DFlashQwen3ForCausalLM`), with
  `dflash_config = {mask_token_id, target_layer_ids}` (ids are outputs of layer i; vLLM adds 1), all layers
  `full_attention` (non-causal drafting). `block_size` = γ = drafts per round = vLLM's num_speculative_tokens.
Weights: the same names as DSpark's backbone (`fc`, `hidden_norm`, `layers.*`, `norm`, `embed_tokens`,
`lm_head`); vLLM prefixes `model.` itself.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from vllm_dspark.checkpoint import load_drafter, save_drafter
from vllm_dspark.config import DrafterMismatchError, DSparkConfig
from vllm_dspark.model import DSparkDrafter

DFLASH_ARCHITECTURE = "DFlashDraftModel"


class DFlashDrafter(DSparkDrafter):
    """A DSpark drafter with no heads whose block is [anchor, mask × γ], drafts read from the mask slots."""

    def __init__(self, cfg: DSparkConfig):
        if cfg.markov_rank or cfg.enable_confidence_head:
            raise DrafterMismatchError(
                f"a DFlash drafter has no sequential or confidence head; got markov_rank={cfg.markov_rank}, "
                f"enable_confidence_head={cfg.enable_confidence_head}"
            )
        super().__init__(cfg)

    def block_hidden(self, ctx, ctx_positions, anchor_ids, anchor_positions, ctx_valid=None, gamma=None):
        gamma = gamma or self.config.block_size
        hidden = super().block_hidden(ctx, ctx_positions, anchor_ids, anchor_positions, ctx_valid, gamma + 1)
        return hidden[:, 1:]  # [N, γ, H]: the mask slots


def dflash_config_dict(cfg: DSparkConfig) -> dict:
    d = cfg.to_dict()
    d["architectures"] = [DFLASH_ARCHITECTURE]
    for key in ("markov_head_type", "confidence_head_with_markov", "sts_temperatures"):
        d.pop(key, None)
    d.update(markov_rank=0, enable_confidence_head=False)
    return d


def is_dflash(directory: str | Path) -> bool:
    cfg = json.loads((Path(directory) / "config.json").read_text())
    return DFLASH_ARCHITECTURE in (cfg.get("architectures") or [])


def save_dflash(drafter: DFlashDrafter, directory: str | Path, *, dtype: torch.dtype | None = None) -> Path:
    directory = save_drafter(drafter, directory, include_shared=True, dtype=dtype)
    (directory / "config.json").write_text(json.dumps(dflash_config_dict(drafter.config), indent=2, sort_keys=True) + "\n")
    return directory


def load_dflash(directory: str | Path, target: torch.nn.Module | None = None, **kwargs) -> DFlashDrafter:
    if not is_dflash(directory):
        raise DrafterMismatchError(f"{directory} is not a DFlash drafter (architectures lacks {DFLASH_ARCHITECTURE})")
    drafter = load_drafter(directory, target, **kwargs)
    drafter.__class__ = DFlashDrafter  # adds no parameters, only the block layout
    return drafter
