"""Warm start: the drafter's layers begin as a copy of one target decoder layer instead of random weights.

A DSpark/DFlash draft layer has a Qwen3 decoder layer's parameters under the same names (input_layernorm,
self_attn.{q,k,v,o}_proj, q_norm, k_norm, post_attention_layernorm, mlp.*), and the drafter shares the target's
width, so the target's top layer (already tuned to predict the next tokens) is a better starting point than noise.
"""
from __future__ import annotations

import torch
from torch import nn


def copy_target_layer(drafter: nn.Module, target: nn.Module, layer: int) -> None:
    """Copy target decoder layer `layer` (negative = from the top) into every layer of `drafter.layers`."""
    layers = getattr(drafter, "layers", None)
    if layers is None:
        raise ValueError("warm start from a target layer needs a DSpark/DFlash drafter (EAGLE-3 has another layout)")
    source_layers = target.get_decoder().layers
    if not -len(source_layers) <= layer < len(source_layers):
        raise ValueError(f"target layer {layer} does not exist: the target has {len(source_layers)} layers")
    source = source_layers[layer].state_dict()
    for draft_layer in layers:
        own = draft_layer.state_dict()
        bad = {k: (tuple(v.shape), tuple(source[k].shape)) for k, v in own.items()
               if k not in source or source[k].shape != v.shape}
        if bad:
            raise ValueError(f"target layer {layer} does not fit the draft layer: {bad} (drafter vs target shape)")
        with torch.no_grad():
            for k, v in own.items():
                v.copy_(source[k].to(v.dtype))
