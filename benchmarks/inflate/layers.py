"""Weight construction: noise fill, norms, linears with an exact source block, whole decoder layers, heads, fc."""
from __future__ import annotations

import math

import torch

from benchmarks.inflate.maps import Index
from benchmarks.inflate.plan import LAYER_KEYS, Plan


def build_device(device: str | torch.device | None) -> torch.device:
    """The device to build (and check) on: the one asked for, else cuda when there is one."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


class Noise:
    """Reproducible N(0, std²) fill on the build device."""

    def __init__(self, seed: int, device: torch.device):
        self.device = device
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)

    def __call__(self, shape: tuple[int, ...], std: float) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen, device=self.device, dtype=torch.float32) * std


def std_of(w: torch.Tensor) -> float:
    return float(w.float().std()) or 0.02


def build_linear(
    noise: Noise,
    shape: tuple[int, int],
    std: float,
    must_rows: torch.Tensor | None,  # [out] bool: outputs that must be exact; None = no output is read
    nonzero_cols: torch.Tensor,  # [in] bool: inputs that can be nonzero
    live: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,  # (source weight, new rows, new cols)
) -> torch.Tensor:
    """Noise everywhere, zero where a possibly-nonzero input meets a must-be-exact row, the source block on top."""
    w = noise(shape, std)
    if must_rows is not None:
        w.masked_fill_(must_rows[:, None] & nonzero_cols[None, :], 0.0)
    if live is not None:
        src, rows, cols = live
        w[rows[:, None], cols[None, :]] = src.to(w.device, torch.float32)
    return w


def inflate_norm(w: torch.Tensor, size: int, live: torch.Tensor, factor: float) -> torch.Tensor:
    """Norm weight: source values × factor at `live`; the rest (which only ever multiplies zeros, or feeds
    unread outputs) the mean, so it looks like a real norm."""
    w = w.to(live.device, torch.float32) * factor
    out = torch.full((size,), float(w.mean()), device=live.device)
    out[live] = w
    return out


def inflate_layer(src: dict[str, torch.Tensor], plan: Plan, ix: Index, noise: Noise, identity: bool) -> dict:
    """One big decoder layer from a source layer's weights (suffix keys, see LAYER_KEYS).

    identity=False: the source layer embedded exactly. identity=True: a layer whose residual update is exactly
    zero, with realistic nonzero weights and activations; `src` then only sets magnitudes.
    """
    shapes = plan.layer_shapes()
    every_row = lambda n: torch.ones(n, dtype=torch.bool, device=ix.pos.device)  # noqa: E731
    D, I = plan.dst.hidden_size, plan.dst.intermediate_size  # noqa: E741
    out = {
        "input_layernorm.weight": inflate_norm(src["input_layernorm.weight"], D, ix.hidden, plan.hidden_factor),
        "post_attention_layernorm.weight": inflate_norm(
            src["post_attention_layernorm.weight"], D, ix.hidden, plan.hidden_factor
        ),
        "self_attn.q_norm.weight": inflate_norm(
            src["self_attn.q_norm.weight"], plan.dst.head_dim, ix.pos, 1 / math.sqrt(plan.s)
        ),
        "self_attn.k_norm.weight": inflate_norm(src["self_attn.k_norm.weight"], plan.dst.head_dim, ix.pos, 1.0),
    }

    def lin(key, must_rows, nonzero_cols, rows=None, cols=None):
        w = src[key]
        live = None if identity else (w, rows, cols)
        out[key] = build_linear(noise, shapes[key], std_of(w), must_rows, nonzero_cols, live)

    h_nz = ix.hidden_nonzero
    if identity:
        lin("self_attn.q_proj.weight", None, h_nz)
        lin("self_attn.k_proj.weight", None, h_nz)
        lin("self_attn.v_proj.weight", ix.id_v_must, h_nz)
        lin("self_attn.o_proj.weight", every_row(D), ix.id_attn_nonzero)
        lin("mlp.gate_proj.weight", None, h_nz)
        lin("mlp.up_proj.weight", ix.id_up_must, h_nz)
        lin("mlp.down_proj.weight", every_row(D), ix.id_act_nonzero)
    else:
        kv_n = plan.dst.num_key_value_heads * plan.dst.head_dim
        gate_must = ix.neurons_nonzero
        lin("self_attn.q_proj.weight", ix.q_must, h_nz, ix.q_rows, ix.hidden)
        lin("self_attn.k_proj.weight", ix.k_must, h_nz, ix.kv_rows, ix.hidden)
        lin("self_attn.v_proj.weight", every_row(kv_n), h_nz, ix.kv_rows, ix.hidden)
        lin("self_attn.o_proj.weight", every_row(D), ix.attn_nonzero, ix.hidden, ix.q_rows)
        lin("mlp.gate_proj.weight", gate_must, h_nz, ix.neurons, ix.hidden)
        lin("mlp.up_proj.weight", every_row(I), h_nz, ix.neurons, ix.hidden)
        lin("mlp.down_proj.weight", every_row(D), ix.neurons_nonzero, ix.hidden, ix.neurons)
    return {k: out[k] for k in LAYER_KEYS}


def inflate_head(w: torch.Tensor, plan: Plan, ix: Index, noise: Noise) -> torch.Tensor:
    """An untied LM head [V, d] -> [V, D]: it reads h, whose padded coordinates are zero -> noise columns."""
    every = torch.ones(w.shape[0], dtype=torch.bool, device=noise.device)
    rows = torch.arange(w.shape[0], device=noise.device)
    return build_linear(noise, (w.shape[0], plan.dst.hidden_size), std_of(w), every, ix.hidden_nonzero,
                        (w, rows, ix.hidden))


def inflate_fc(w: torch.Tensor, m: int, plan: Plan, ix: Index, noise: Noise) -> torch.Tensor:
    """A drafter's fc [d, m·d] -> [D, m·D]; input block j holds target feature j (padded with exact zeros)."""
    d, D, dev = plan.src.hidden_size, plan.dst.hidden_size, noise.device
    if tuple(w.shape) != (d, m * d):
        raise ValueError(f"fc.weight has shape {tuple(w.shape)}, expected {(d, m * d)} for {m} target features")
    cols_nonzero = (torch.arange(m * D, device=dev) % D) < d
    live_cols = (torch.arange(m, device=dev)[:, None] * D + ix.hidden[None, :]).reshape(-1)
    every = torch.ones(D, dtype=torch.bool, device=dev)
    return build_linear(noise, (D, m * D), std_of(w), every, cols_nonzero, (w, ix.hidden, live_cols))


def pad_columns(w: torch.Tensor, new_cols: int, device: torch.device) -> torch.Tensor:
    """[rows, d] -> [rows, D] with zero padding (embeddings: the looked-up rows must be zero there)."""
    out = torch.zeros(w.shape[0], new_cols, device=device)
    out[:, : w.shape[1]] = w.to(device, torch.float32)
    return out


def insert_hidden_columns(w: torch.Tensor, at: int, plan: Plan, noise: Noise) -> torch.Tensor:
    """Widen the h block [at, at+d) of a head's input to D: the new columns read h's padded (zero) coordinates."""
    d, D = plan.src.hidden_size, plan.dst.hidden_size
    w = w.to(noise.device, torch.float32)
    pad = noise((w.shape[0], D - d), std_of(w))
    return torch.cat([w[:, : at + d], pad, w[:, at + d :]], dim=1)
