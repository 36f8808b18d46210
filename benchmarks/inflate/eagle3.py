"""EAGLE-3 drafters (vLLM's `eagle3` layout): one midlayer over [emb ; g], see the package docstring."""
from __future__ import annotations

import math

import torch

from benchmarks.inflate.layers import Noise, build_linear, inflate_fc, inflate_head, inflate_norm, pad_columns, std_of
from benchmarks.inflate.maps import Index
from benchmarks.inflate.plan import Plan

EAGLE3_NORMS = ("midlayer.input_layernorm.weight", "midlayer.hidden_norm.weight",
                "midlayer.post_attention_layernorm.weight", "norm.weight")
EAGLE3_LINEARS = tuple(f"midlayer.{k}.weight" for k in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))


def inflate_eagle3_state(state: dict[str, torch.Tensor], plan: Plan, ix: Index, noise: Noise) -> dict:
    """vLLM `eagle3`-layout tensors (one midlayer over [emb ; g], see the package docstring) -> inflated tensors."""
    D, I = plan.dst.hidden_size, plan.dst.intermediate_size  # noqa: E741
    NH, NKV, HD = plan.dst.num_attention_heads, plan.dst.num_key_value_heads, plan.dst.head_dim  # noqa: N806
    dev = noise.device
    prefix = "model." if any(k.startswith("model.") for k in state) else ""
    src = {k.removeprefix("model."): v for k, v in state.items()}
    # embed_tokens / lm_head may be absent (a drafter stripped by shared_weights.py): vLLM then gives the drafter the
    # target's, which the inflated target pads exactly as they would be here.
    missing = [k for k in ("fc.weight", *EAGLE3_NORMS, *EAGLE3_LINEARS) if k not in src]
    if missing:
        raise ValueError(f"EAGLE-3 drafter lacks {missing}")
    every = lambda n: torch.ones(n, dtype=torch.bool, device=dev)  # noqa: E731
    # the 2D-wide midlayer input [input_layernorm(emb) ; hidden_norm(g)]: live at [0, d) and [D, D + d)
    in_nonzero = ix.hidden_nonzero.repeat(2)
    in_cols = torch.cat([ix.hidden, D + ix.hidden])
    # (must-be-exact rows, nonzero input columns, new rows, new cols, weight factor) per linear. q has no exact rows
    # beyond its source block: without a q_norm, q off the mapped positions only meets k's exact zeros there.
    plans = {
        "self_attn.q_proj": (None, in_nonzero, ix.q_rows, in_cols, math.sqrt(plan.s)),
        "self_attn.k_proj": (ix.k_must, in_nonzero, ix.kv_rows, in_cols, 1.0),
        "self_attn.v_proj": (every(NKV * HD), in_nonzero, ix.kv_rows, in_cols, 1.0),
        "self_attn.o_proj": (every(D), ix.attn_nonzero, ix.hidden, ix.q_rows, 1.0),
        "mlp.gate_proj": (ix.neurons_nonzero, ix.hidden_nonzero, ix.neurons, ix.hidden, 1.0),
        "mlp.up_proj": (every(I), ix.hidden_nonzero, ix.neurons, ix.hidden, 1.0),
        "mlp.down_proj": (every(D), ix.neurons_nonzero, ix.hidden, ix.neurons, 1.0),
    }
    out: dict[str, torch.Tensor] = {}
    for key, w in src.items():
        name = key.removeprefix("midlayer.").removesuffix(".weight")
        if key == "fc.weight":
            out[key] = inflate_fc(w, 3, plan, ix, noise)
        elif key == "embed_tokens.weight":  # the lookup feeds input_layernorm: padded coordinates must be zero
            out[key] = pad_columns(w, D, dev)
        elif key == "lm_head.weight":
            out[key] = inflate_head(w, plan, ix, noise)
        elif key in EAGLE3_NORMS:
            out[key] = inflate_norm(w, D, ix.hidden, plan.hidden_factor)
        elif key.startswith("midlayer.") and name in plans:
            must, cols_nonzero, rows, cols, factor = plans[name]
            n_out, n_in = (NH * HD if must is None else len(must)), len(cols_nonzero)
            if tuple(w.shape) != (len(rows), len(cols)):
                raise ValueError(f"{key} has shape {tuple(w.shape)}, expected {(len(rows), len(cols))}")
            live = (w.float() * factor, rows, cols)
            out[key] = build_linear(noise, (n_out, n_in), std_of(w), must, cols_nonzero, live)
        elif key in ("d2t", "t2d") and not w.is_floating_point():  # draft <-> target vocabulary maps: unchanged
            out[key] = w.to(dev)
        else:
            raise ValueError(f"drafter tensor {key} {tuple(w.shape)} is not part of vLLM's EAGLE-3 layout")
    return {prefix + k: v for k, v in out.items()}
