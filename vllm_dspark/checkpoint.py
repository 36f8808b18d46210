"""Drafter checkpoints: read DeepSpec and vLLM-native layouts, write either, convert, and check what was written.

Both layouts are an HF folder (config.json + model.safetensors, or shards with an index) whose tensor names have no
prefix (deepspec-format.md §3). They differ in:
- `deepspec`: stores copies of the target's `embed_tokens` / `lm_head`; config names layers `target_layer_ids`.
- `native` (vLLM `Qwen3DSparkModel`): may omit `embed_tokens` / `lm_head` (vLLM shares the target's), may carry an
  unused `mask_embedding`, and may name layers `eagle_aux_hidden_state_layer_ids` (+1) or `dflash_config`.
We write the union that all readers accept (see `DSparkConfig.to_dict`), with or without the shared copies.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from vllm_dspark.config import DrafterMismatchError, DSparkConfig, check_fits_target
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

from vllm_dspark.model import DSparkDrafter
from vllm_dspark.model.backbone import qwen3_geometry

Layout = Literal["deepspec", "native"]
SHARED_KEYS = ("embed_tokens.weight", "lm_head.weight")
IGNORED_KEYS = ("mask_embedding", "t2d")  # native placeholders we never use
STRIPPED_PREFIXES = ("_orig_mod.", "model.")


def read_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"no model.safetensors (or index) in {directory}")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(directory / name)))
    return state


def _normalise_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for prefix in STRIPPED_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        if any(key.startswith(ignored) for ignored in IGNORED_KEYS):
            continue
        if key.startswith("d2t"):
            raise DrafterMismatchError("checkpoint has a d2t table: reduced-vocabulary drafters are not supported")
        out[key] = value
    return out


def load_drafter(
    directory: str | Path,
    target: torch.nn.Module | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> DSparkDrafter:
    """Load a DeepSpec / native / vllm-dspark drafter folder.

    With `target` (a transformers causal LM), the drafter is checked against it and shares its embedding and LM
    head; without it the checkpoint must carry copies of both.
    """
    cfg = DSparkConfig.from_json(directory)
    if target is not None:
        check_fits_target(cfg, target.config)
    state = _normalise_keys(read_state_dict(directory))
    with torch.device("meta"):
        drafter = DSparkDrafter(cfg)
    expected = drafter.state_dict()
    missing = [k for k in expected if k not in state and k not in SHARED_KEYS]
    unexpected = [k for k in state if k not in expected]
    shared_missing = [k for k in SHARED_KEYS if k not in state]
    if missing or unexpected:
        raise DrafterMismatchError(
            f"drafter weights do not match its config (markov_rank={cfg.markov_rank}, "
            f"markov_head_type={cfg.markov_head_type if cfg.markov_rank else None}, "
            f"enable_confidence_head={cfg.enable_confidence_head}, "
            f"confidence_head_with_markov={cfg.confidence_head_with_markov}, "
            f"num_hidden_layers={cfg.num_hidden_layers}): missing {missing[:6]}, unexpected {unexpected[:6]}"
        )
    w1 = state.get("markov_head.markov_w1.weight")
    if w1 is not None and w1.shape[-1] != cfg.markov_rank:
        raise DrafterMismatchError(f"markov_rank: config says {cfg.markov_rank}, checkpoint tensors have rank {w1.shape[-1]}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise DrafterMismatchError(
                f"tensor {key}: checkpoint shape {tuple(value.shape)}, config implies {tuple(expected[key].shape)}"
            )
    if shared_missing and target is None:
        raise DrafterMismatchError(
            f"checkpoint omits {shared_missing} (vLLM-native drafters share them with the target): pass the target"
        )
    drafter.load_state_dict(state, strict=False, assign=True)
    # Non-persistent rotary buffers were built on the meta device: rebuild them for real.
    drafter.rotary_emb = Qwen3RotaryEmbedding(qwen3_geometry(cfg))
    if target is not None:
        # The target's modules replace copies (equal by construction) after the cast, which must not touch them.
        drafter.embed_tokens = drafter.lm_head = None
    drafter.to(device=device, dtype=dtype or state["fc.weight"].dtype)
    if target is not None:
        drafter.share_target_embeddings(target)
    drafter.requires_grad_(False)
    return drafter.eval()


def save_drafter(
    drafter: DSparkDrafter,
    directory: str | Path,
    *,
    include_shared: bool = True,
    dtype: torch.dtype | None = torch.bfloat16,
    verify: bool = True,
) -> Path:
    """Write config.json + model.safetensors. `include_shared=False` drops embed/lm_head (vLLM-native style)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    drafter.config.save(directory)
    state = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
        for k, v in drafter.state_dict().items()
        if include_shared or k not in SHARED_KEYS
    }
    # A tied target shares one tensor between embed and lm_head; safetensors refuses aliased storage.
    state = {k: v.clone() for k, v in state.items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    if verify:
        reread = read_state_dict(directory)
        bad = [k for k, v in reread.items() if v.is_floating_point() and not torch.isfinite(v.float()).all()]
        if set(reread) != set(state) or bad:
            raise RuntimeError(f"checkpoint written to {directory} does not read back cleanly (non-finite: {bad})")
    return directory


def detect_layout(directory: str | Path) -> Layout:
    state_keys = set(_normalise_keys(read_state_dict(directory)))
    return "deepspec" if all(k in state_keys for k in SHARED_KEYS) else "native"


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    layout: Layout,
    target: torch.nn.Module | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Read any supported layout and write `layout` (`deepspec` keeps embed/lm_head copies, `native` drops them)."""
    drafter = load_drafter(src, target)
    # One dtype for every tensor: shared copies taken from an fp32 target must not sit beside bf16 weights.
    return save_drafter(drafter, dst, include_shared=layout == "deepspec", dtype=dtype or drafter.fc.weight.dtype)

