"""Shapes and the plan: how a source Qwen3 geometry maps into a bigger one (pure arithmetic, no weights)."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int


SHAPES = {
    "qwen3-4b": Shape(2560, 36, 32, 8, 128, 9728),
    "qwen3-8b": Shape(4096, 36, 32, 8, 128, 12288),
}

LAYER_KEYS = (  # suffixes of one decoder layer, in write order
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "self_attn.q_norm.weight",
    "self_attn.k_norm.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)


def shape_of(config: dict) -> Shape:
    return Shape(
        config["hidden_size"],
        config["num_hidden_layers"],
        config["num_attention_heads"],
        config["num_key_value_heads"],
        config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"],
        config["intermediate_size"],
    )


@dataclass(frozen=True)
class Plan:
    """How a source Qwen3 geometry maps into a bigger one; pure shape arithmetic, no weights."""

    src: Shape
    dst: Shape
    rms_norm_eps: float  # the source's

    @property
    def s(self) -> int:  # head_dim ratio
        return self.dst.head_dim // self.src.head_dim

    @property
    def g(self) -> int:
        return self.src.num_attention_heads // self.src.num_key_value_heads

    @property
    def G(self) -> int:  # noqa: N802 (paper-style name)
        return self.dst.num_attention_heads // self.dst.num_key_value_heads

    @property
    def hidden_factor(self) -> float:
        """sqrt(d/D): hidden RMSNorm weights are multiplied by it (see the package docstring, 2.)."""
        return math.sqrt(self.src.hidden_size / self.dst.hidden_size)

    @property
    def new_eps(self) -> float:
        return self.rms_norm_eps * self.src.hidden_size / self.dst.hidden_size

    @property
    def layer_map(self) -> list[int]:
        """New index of source layer i (original layers first in their segment, identities after)."""
        return [i * self.dst.num_hidden_layers // self.src.num_hidden_layers for i in range(self.src.num_hidden_layers)]

    def source_layer(self, j: int) -> tuple[int, bool]:
        """(source layer whose weights new layer j copies or imitates, whether j is an identity layer)."""
        i = max(k for k, p in enumerate(self.layer_map) if p <= j)
        return i, self.layer_map[i] != j

    def map_layer_id(self, i: int) -> int:
        """A target_layer_ids entry (output of layer i, -1 = embedding) in the inflated target."""
        if i == -1:
            return -1
        if not 0 <= i < self.src.num_hidden_layers:
            raise ValueError(f"target_layer_ids entry {i} is outside [-1, {self.src.num_hidden_layers - 1}]")
        return self.layer_map[i]

    def config_fields(self, dtype) -> dict:
        """config.json fields that every inflated model (target or drafter) takes from the plan."""
        geometry = ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size")
        return {**{f: getattr(self.dst, f) for f in geometry}, "rms_norm_eps": self.new_eps,
                "dtype": str(dtype).removeprefix("torch.")}

    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        D, I = self.dst.hidden_size, self.dst.intermediate_size  # noqa: E741
        q, kv = self.dst.num_attention_heads * self.dst.head_dim, self.dst.num_key_value_heads * self.dst.head_dim
        return {
            "input_layernorm.weight": (D,),
            "self_attn.q_proj.weight": (q, D),
            "self_attn.k_proj.weight": (kv, D),
            "self_attn.v_proj.weight": (kv, D),
            "self_attn.o_proj.weight": (D, q),
            "self_attn.q_norm.weight": (self.dst.head_dim,),
            "self_attn.k_norm.weight": (self.dst.head_dim,),
            "post_attention_layernorm.weight": (D,),
            "mlp.gate_proj.weight": (I, D),
            "mlp.up_proj.weight": (I, D),
            "mlp.down_proj.weight": (D, I),
        }


def make_plan(config: dict, dst: Shape) -> Plan:
    """Validate that `config` (a Qwen3 HF config dict) can be inflated to `dst`; errors name field and values."""
    if config.get("model_type") != "qwen3":
        raise ValueError(f"model_type: only qwen3 is supported, got {config.get('model_type')!r}")
    if config.get("attention_bias"):
        raise ValueError("attention_bias: true is not supported (Qwen3 has no attention biases)")
    if config.get("use_sliding_window"):
        raise ValueError("use_sliding_window: true is not supported")
    src = shape_of(config)
    problems = []
    for field in Shape.__dataclass_fields__:
        a, b = getattr(src, field), getattr(dst, field)
        if b < a:
            problems.append(f"{field}: target shape {b} is smaller than the source's {a}")
    if src.head_dim % 2:
        problems.append(f"head_dim: source {src.head_dim} is odd (RoPE needs pairs)")
    if dst.head_dim % src.head_dim:
        problems.append(f"head_dim: {dst.head_dim} is not a multiple of the source's {src.head_dim}")
    if dst.num_attention_heads % dst.num_key_value_heads:
        problems.append(
            f"num_attention_heads: {dst.num_attention_heads} is not a multiple of "
            f"num_key_value_heads {dst.num_key_value_heads}"
        )
    elif src.num_attention_heads % src.num_key_value_heads == 0:
        g, G = src.num_attention_heads // src.num_key_value_heads, dst.num_attention_heads // dst.num_key_value_heads
        if G < g:
            problems.append(f"num_attention_heads/num_key_value_heads: group size {G} < the source's {g}")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if dst.head_dim != src.head_dim and rope_type != "default":
        problems.append(f"rope_type: {rope_type!r} with a changed head_dim; only 'default' RoPE is supported")
    if rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) != 1.0:
        problems.append("partial_rotary_factor: only 1.0 is supported")
    if problems:
        raise ValueError("cannot inflate:\n  " + "\n  ".join(problems))
    return Plan(src, dst, float(config["rms_norm_eps"]))


def count_params(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes.values())

