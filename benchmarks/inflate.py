"""Inflate a small Qwen3 target (and its DSpark drafter) to a realistic serving shape without changing its function.

Why: pycode-23m (hidden 512, 6 layers) is launch-bound on a GPU, so its speculation economics are unlike a real
model's. The inflated checkpoint has the shapes of e.g. Qwen3-4B (hidden 2560, 36 layers, 32/8 heads × 128,
MLP 9728) and the greedy outputs of the small model, so acceptance carries over while the cost becomes realistic.

    python benchmarks/inflate.py --target SMALL --out BIG --shape qwen3-4b [--draft D --draft-out D_BIG] [--check 3]

Notation: small d, L, nh, nkv, hd, I, eps; big D, L', NH, NKV, HD, I'; s = HD/hd, g = nh/nkv, G = NH/NKV.
The construction is exact in real arithmetic (only the bf16 rounding of the rescaled norm weights and a q/k-norm
eps shift of < 1e-6 relative, see 3., differ):
1. Residual stream x' = [x, 0]: its padded coordinates stay exactly zero, because every weight row writing into
   them is zero on every input that can be nonzero. The embedding (tied to the LM head) is [E, 0].
2. RMSNorm over D sees mean(x'^2) = (d/D)·mean(x^2). With rms_norm_eps' = eps·d/D and w' = w·sqrt(d/D):
   x'·w'/sqrt((d/D)(ms + eps)) = [x·w/sqrt(ms + eps), 0] exactly (hidden, drafter, final norms).
3. head_dim: HD = s·hd, kept realistic (128). Original head dim i goes to position s·i (i < hd/2) or
   HD/2 + s·(i - hd/2) (i >= hd/2): Qwen3's rotate_half pair (i, i + hd/2) lands on the pair (s·i, s·i + HD/2),
   whose frequency θ^(-2(s·i)/HD) equals θ^(-2i/hd) (the same float: both exponents are correctly rounded quotients
   of one rational). The other positions are zero in q and k of original heads. q_norm/k_norm then see
   ms/s and the eps' of 2., i.e. they output sqrt(s)·q/sqrt(ms + s·eps'); the q_norm weight w_q/sqrt(s) removes
   one sqrt(s) and the softmax scale HD^-1/2 = hd^-1/2/sqrt(s) the other (the k side). The q/k norms' effective
   eps becomes s·eps·d/D (0.4·eps for qwen3-4b): the rms changes by <= |1 - s·d/D|·eps/(2·ms_q) relative,
   6e-7 for pycode-23m (ms_q >= 0.5 measured). Not corrected on purpose: the correction (q/k_proj times
   sqrt(s·d/D)) would round every q/k weight in bf16, a far larger change.
4. Original kv head k -> new kv head k; q head k·g + r -> k·G + r (so GQA groups stay intact). Extra q heads
   in original groups read real V: their o_proj columns are zero. Extra kv heads get V = 0 (their q/k are noise).
5. MLP: neurons [I, I') have noise gate rows and up rows that are zero on live inputs, so silu(gate)·up = 0.
6. Layers: original layer i -> new layer i·L'//L; the layers between are identities: their input norms, q, k,
   gate and half of v/up are realistic noise (nonzero activations), the other half of v/up is zero on live
   inputs, and o_proj/down_proj are zero exactly on the columns whose activations are nonzero.
   target_layer_ids of a drafter are remapped by the same map (-1 stays -1).
7. Noise: weights are never padded with zeros where a zero would not be needed. Every entry that multiplies an
   exact zero (padded inputs) or only feeds an output nobody reads is N(0, std of the original tensor), so the
   kernels read realistic data and the function is still exactly preserved (0·finite = 0, no tiny-noise
   approximation anywhere). Exact zeros remain only where a nonzero input meets a row whose output must be
   exact, plus the embedding's padded columns (tied embedding: the lookup output must be zero there).

Drafters are inflated with the same maps; the kind is read from config.json `architectures`:
- DSpark (`Qwen3DSparkModel`, DeepSpec layout, deepspec-format.md §2-3) and DFlash (`DFlashDraftModel`, vLLM's
  native `dflash` layout: the same tensors without heads): fc takes m padded target features, its layers/norms
  follow 2.-6., Markov/confidence heads get noise columns for the padded part of h.
- EAGLE-3 (`LlamaForCausalLMEagle3`, vLLM's native `eagle3` layout): fc [d, 3d] -> [D, 3D] like DSpark's fc; the
  midlayer's q/k/v read [input_layernorm(emb) ; hidden_norm(g)] of width 2D, whose live coordinates are [0, d) and
  [D, D + d); heads, GQA and MLP follow 3.-5. The midlayer has no q/k norm, so the sqrt(s) of the softmax scale
  (HD^-1/2 = hd^-1/2/sqrt(s)) goes into the q_proj rows (exact in real arithmetic; in bf16 it is one rounding of
  each live q weight, relative <= 2^-9, unless s is a power of 4), and q is noise everywhere off the source block
  (k is exactly zero off the mapped positions of original heads). Its own lm_head gets noise columns (it reads h);
  d2t/t2d (a reduced draft vocabulary), when present, are copied.
In every kind, target_layer_ids (and vLLM's dflash_config / eagle_aux_hidden_state_layer_ids spellings) are
remapped by the target's layer map of 6.
Output: HF folders (config.json, model.safetensors or shards + index, tokenizer files, generation_config.json,
inflate_meta.json) written layer by layer, so a 4B-shaped target needs no more than one layer in device memory.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


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
TOKENIZER_FILES = re.compile(
    r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|vocab\..*|merges\.txt|.*\.jinja"
    r"|generation_config\.json)$"
)
WEIGHT_FILES = re.compile(r"^model.*\.safetensors(\.index\.json)?$")


def shape_of(config: dict) -> Shape:
    return Shape(
        config["hidden_size"],
        config["num_hidden_layers"],
        config["num_attention_heads"],
        config["num_key_value_heads"],
        config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"],
        config["intermediate_size"],
    )


# ----------------------------------------------------------------------------------------------------- the plan
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
        """sqrt(d/D): hidden RMSNorm weights are multiplied by it (see module docstring, 2.)."""
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


def inflated_target_config(config: dict, plan: Plan, dtype: torch.dtype) -> dict:
    new = dict(config)
    dst = plan.dst
    new.update(
        hidden_size=dst.hidden_size,
        num_hidden_layers=dst.num_hidden_layers,
        num_attention_heads=dst.num_attention_heads,
        num_key_value_heads=dst.num_key_value_heads,
        head_dim=dst.head_dim,
        intermediate_size=dst.intermediate_size,
        rms_norm_eps=plan.new_eps,
        dtype=str(dtype).removeprefix("torch."),
        architectures=["Qwen3ForCausalLM"],
    )
    if "layer_types" in config:
        new["layer_types"] = [config["layer_types"][plan.source_layer(j)[0]] for j in range(dst.num_hidden_layers)]
    new.pop("torch_dtype", None)
    return new


def target_tensor_shapes(config: dict, plan: Plan) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the inflated target's state dict, in write order (HF Qwen3ForCausalLM names)."""
    V, D = config["vocab_size"], plan.dst.hidden_size
    shapes = {"model.embed_tokens.weight": (V, D)}
    for j in range(plan.dst.num_hidden_layers):
        shapes.update({f"model.layers.{j}.{k}": v for k, v in plan.layer_shapes().items()})
    shapes["model.norm.weight"] = (D,)
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (config["vocab_size"], D)
    return shapes


# ----------------------------------------------------------------------------------------------------- index sets
class Index:
    """Index tensors / masks (on one device) describing where the source lives inside the big shapes."""

    def __init__(self, plan: Plan, device: torch.device):
        src, dst = plan.src, plan.dst
        hd, HD, s = src.head_dim, dst.head_dim, plan.s
        arange = lambda n: torch.arange(n, device=device)  # noqa: E731
        i = arange(hd)
        self.pos = torch.where(i < hd // 2, s * i, HD // 2 + s * (i - hd // 2))  # [hd] position inside a big head
        mapped = torch.zeros(HD, dtype=torch.bool, device=device)
        mapped[self.pos] = True
        self.hidden = arange(src.hidden_size)  # live hidden coordinates (identity map)
        self.hidden_nonzero = arange(dst.hidden_size) < src.hidden_size  # [D]
        self.neurons = arange(src.intermediate_size)
        self.neurons_nonzero = arange(dst.intermediate_size) < src.intermediate_size  # [I']

        h = arange(src.num_attention_heads)
        new_q_head = (h // plan.g) * plan.G + h % plan.g  # [nh]
        self.q_rows = (new_q_head[:, None] * HD + self.pos[None, :]).reshape(-1)  # [nh·hd]
        self.kv_rows = (arange(src.num_key_value_heads)[:, None] * HD + self.pos[None, :]).reshape(-1)  # [nkv·hd]
        q_orig = torch.zeros(dst.num_attention_heads, dtype=torch.bool, device=device)
        q_orig[new_q_head] = True
        kv_orig = arange(dst.num_key_value_heads) < src.num_key_value_heads
        # rows of q/k that must be exact: all positions of heads hosting an original head (padded ones must be 0)
        self.q_must = q_orig.repeat_interleave(HD)  # [NH·HD]
        self.k_must = kv_orig.repeat_interleave(HD)  # [NKV·HD]
        # attention output that can be nonzero: mapped positions of every q head whose kv head is original
        kv_of_q = arange(dst.num_attention_heads) // plan.G
        self.attn_nonzero = (kv_orig[kv_of_q][:, None] & mapped[None, :]).reshape(-1)  # [NH·HD]
        # identity layers: v is free (nonzero) on the first half of each head's positions, zero on the second
        first_half = arange(HD) < HD // 2
        self.id_v_must = (~first_half).repeat(dst.num_key_value_heads)  # [NKV·HD]
        self.id_attn_nonzero = first_half.repeat(dst.num_attention_heads)  # [NH·HD]
        self.id_up_must = arange(dst.intermediate_size) >= dst.intermediate_size // 2  # [I']
        self.id_act_nonzero = ~self.id_up_must


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


# ----------------------------------------------------------------------------------------------------- writing
class ShardWriter:
    """Writes tensors in a planned order into safetensors shards as soon as each shard is complete."""

    def __init__(self, directory: Path, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, max_shard_bytes: int):
        self.dir, self.shapes, self.dtype = directory, shapes, dtype
        itemsize = torch.empty((), dtype=dtype).element_size()
        groups: list[list[str]] = [[]]
        size = 0
        for key, shape in shapes.items():
            nbytes = math.prod(shape) * itemsize
            if groups[-1] and size + nbytes > max_shard_bytes:
                groups.append([])
                size = 0
            groups[-1].append(key)
            size += nbytes
        n = len(groups)
        self.names = [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)] if n > 1 else ["model.safetensors"]
        self.shard_of = {key: k for k, group in enumerate(groups) for key in group}
        self.groups = groups
        self.pending: dict[str, torch.Tensor] = {}
        self.order = iter(shapes)
        self.total_bytes = sum(math.prod(s) for s in shapes.values()) * itemsize
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.iterdir():  # an older run's shards would shadow or confuse the new ones
            if WEIGHT_FILES.match(stale.name):
                stale.unlink()

    def add(self, key: str, tensor: torch.Tensor) -> None:
        expected = next(self.order, None)
        if key != expected or tuple(tensor.shape) != self.shapes[key]:
            planned = f"{expected} {self.shapes.get(expected)}"
            raise RuntimeError(f"writer got {key} {tuple(tensor.shape)}, planned {planned}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise RuntimeError(f"{key} has non-finite values")
        cast = tensor.to(self.dtype) if tensor.is_floating_point() else tensor  # d2t/t2d index tensors stay ints
        self.pending[key] = cast.to("cpu").contiguous()
        k = self.shard_of[key]
        if key == self.groups[k][-1]:
            save_file({n: self.pending.pop(n) for n in self.groups[k]}, str(self.dir / self.names[k]), {"format": "pt"})

    def finish(self) -> None:
        if next(self.order, None) is not None or self.pending:
            raise RuntimeError("writer finished before every planned tensor was written")
        if len(self.names) > 1:
            index = {
                "metadata": {"total_size": self.total_bytes},
                "weight_map": {key: self.names[k] for key, k in self.shard_of.items()},
            }
            (self.dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"no model.safetensors (or index) in {directory}")
    state = {}
    for name in files:
        state.update(load_file(str(directory / name)))
    return state


def count_params(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes.values())


# ----------------------------------------------------------------------------------------------------- target
def inflate_target(
    src_dir: str | Path,
    out_dir: str | Path,
    shape: Shape,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device | None = None,
    seed: int = 0,
    max_shard_bytes: int = 4 << 30,
) -> dict:
    """Write the inflated target to out_dir; returns a summary dict (also saved as inflate_meta.json)."""
    t0 = time.perf_counter()
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config = json.loads((src_dir / "config.json").read_text())
    plan = make_plan(config, shape)
    state = {k.removeprefix("model."): v.to(device) for k, v in read_state_dict(src_dir).items()}
    ix, noise = Index(plan, device), Noise(seed, device)
    shapes = target_tensor_shapes(config, plan)
    writer = ShardWriter(out_dir, shapes, dtype, max_shard_bytes)

    D = plan.dst.hidden_size
    writer.add("model.embed_tokens.weight", pad_columns(state["embed_tokens.weight"], D, device))
    for j in range(plan.dst.num_hidden_layers):
        i, identity = plan.source_layer(j)
        layer = {k: state[f"layers.{i}.{k}"] for k in LAYER_KEYS}
        for k, w in inflate_layer(layer, plan, ix, noise, identity).items():
            writer.add(f"model.layers.{j}.{k}", w)
    writer.add("model.norm.weight", inflate_norm(state["norm.weight"], D, ix.hidden, plan.hidden_factor))
    if "lm_head.weight" in shapes:
        writer.add("lm_head.weight", inflate_head(state["lm_head.weight"], plan, ix, noise))
    writer.finish()

    (out_dir / "config.json").write_text(json.dumps(inflated_target_config(config, plan, dtype), indent=2) + "\n")
    for f in src_dir.iterdir():
        if f.is_file() and TOKENIZER_FILES.match(f.name):
            shutil.copy(f, out_dir / f.name)
    summary = {
        "source": str(src_dir),
        "source_shape": asdict(plan.src),
        "shape": asdict(plan.dst),
        "params_before": sum(v.numel() for v in state.values()),
        "params_after": count_params(shapes),
        "layer_map": plan.layer_map,
        "rms_norm_eps": [plan.rms_norm_eps, plan.new_eps],
        "dtype": str(dtype),
        "seed": seed,
        "shards": len(writer.names),
        "seconds": round(time.perf_counter() - t0, 2),
        "device": str(device),
    }
    (out_dir / "inflate_meta.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ----------------------------------------------------------------------------------------------------- drafter
GEOMETRY_FIELDS = ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size")
DRAFTER_KINDS = {  # config.json `architectures` entry -> layout
    "Qwen3DSparkModel": "dspark",
    "DFlashDraftModel": "dflash",
    "LlamaForCausalLMEagle3": "eagle3",
}


def drafter_kind(dcfg: dict) -> str:
    """'dspark', 'dflash' or 'eagle3', from config.json `architectures`."""
    kinds = {DRAFTER_KINDS[a] for a in dcfg.get("architectures") or [] if a in DRAFTER_KINDS}
    if len(kinds) != 1:
        raise ValueError(f"architectures: {dcfg.get('architectures')} names none (or several) of the drafter "
                         f"layouts this tool inflates: {sorted(DRAFTER_KINDS)}")
    return kinds.pop()


def inflated_drafter_config(dcfg: dict, target_config: dict, plan: Plan, num_layers: int, dtype) -> dict:
    problems = [
        f"{f}: drafter {dcfg.get(f)}, target {target_config.get(f)}"
        for f in GEOMETRY_FIELDS
        if dcfg.get(f) != target_config.get(f)
    ]
    if shape_of(dcfg).head_dim != plan.src.head_dim:
        problems.append(f"head_dim: drafter {shape_of(dcfg).head_dim}, target {plan.src.head_dim}")
    if float(dcfg.get("rms_norm_eps", 1e-6)) != plan.rms_norm_eps:
        problems.append(f"rms_norm_eps: drafter {dcfg.get('rms_norm_eps')}, target {plan.rms_norm_eps}")
    if dcfg.get("num_target_layers", plan.src.num_hidden_layers) != plan.src.num_hidden_layers:
        problems.append(f"num_target_layers: drafter {dcfg['num_target_layers']}, target {plan.src.num_hidden_layers}")
    if dcfg.get("target_hidden_size") not in (None, plan.src.hidden_size):
        problems.append(f"target_hidden_size: drafter {dcfg['target_hidden_size']}, target {plan.src.hidden_size}")
    if problems:
        raise ValueError("drafter does not match the target it is inflated with:\n  " + "\n  ".join(problems))
    dst = plan.dst
    new = dict(dcfg)
    new.update(
        hidden_size=dst.hidden_size,
        num_attention_heads=dst.num_attention_heads,
        num_key_value_heads=dst.num_key_value_heads,
        head_dim=dst.head_dim,
        intermediate_size=dst.intermediate_size,
        rms_norm_eps=plan.new_eps,
        num_target_layers=dst.num_hidden_layers,
        num_hidden_layers=num_layers,
        dtype=str(dtype).removeprefix("torch."),
    )
    if drafter_kind(dcfg) != "eagle3":  # EAGLE-3's one midlayer is causal and has no layer_types
        new["layer_types"] = ["full_attention"] * num_layers
    for key in ("target_layer_ids", "dspark_target_layer_ids"):
        if new.get(key):
            new[key] = [plan.map_layer_id(i) for i in new[key]]
    if new.get("dflash_config", {}).get("target_layer_ids"):
        new["dflash_config"] = dict(new["dflash_config"])
        ids = new["dflash_config"]["target_layer_ids"]
        new["dflash_config"]["target_layer_ids"] = [plan.map_layer_id(i) for i in ids]
    # vLLM's EAGLE-3 ids name layer *inputs* (= output of the layer before + 1), at top level and in eagle_config
    if isinstance(new.get("eagle_config"), dict):
        new["eagle_config"] = dict(new["eagle_config"])  # not the source's dict
    for holder in (new, new.get("eagle_config")):
        if isinstance(holder, dict) and holder.get("eagle_aux_hidden_state_layer_ids"):
            aux = holder["eagle_aux_hidden_state_layer_ids"]
            holder["eagle_aux_hidden_state_layer_ids"] = [plan.map_layer_id(a - 1) + 1 for a in aux]
    if new.get("target_hidden_size") is not None:
        new["target_hidden_size"] = dst.hidden_size
    new.pop("torch_dtype", None)
    return new


def inflate_drafter_state(
    state: dict[str, torch.Tensor], dcfg: dict, plan: Plan, ix: Index, noise: Noise, num_layers: int
) -> dict[str, torch.Tensor]:
    """DeepSpec-layout drafter tensors -> inflated tensors (same keys, plus identity layers if num_layers grows)."""
    D, dev = plan.dst.hidden_size, noise.device
    m = len(dcfg["target_layer_ids"])
    r = int(dcfg.get("markov_rank", 0) or 0)
    n_src = dcfg["num_hidden_layers"]
    if num_layers < n_src:
        raise ValueError(f"--draft-layers {num_layers} is fewer than the drafter's num_hidden_layers {n_src}")
    out: dict[str, torch.Tensor] = {}
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for key, w in state.items():
        key = key.removeprefix("_orig_mod.")
        if (mt := re.fullmatch(r"layers\.(\d+)\.(.+)", key)) and mt.group(2) in LAYER_KEYS:
            layers.setdefault(int(mt.group(1)), {})[mt.group(2)] = w
        elif key in ("embed_tokens.weight", "lm_head.weight"):
            # Copies of the target's (tied) embedding: padded exactly like the target's, so they stay equal.
            out[key] = pad_columns(w, D, dev)
        elif key == "fc.weight":
            out[key] = inflate_fc(w, m, plan, ix, noise)
        elif key in ("hidden_norm.weight", "norm.weight"):
            out[key] = inflate_norm(w, D, ix.hidden, plan.hidden_factor)
        elif key in ("markov_head.markov_w1.weight", "markov_head.markov_w2.weight") or key.endswith(".bias"):
            out[key] = w.to(dev, torch.float32)
        elif key == "markov_head.gate_proj.weight":  # input [h ; W1[prev]]
            out[key] = insert_hidden_columns(w, 0, plan, noise)
        elif key == "markov_head.joint_proj.weight":  # input [s ; W1[prev] ; h]
            out[key] = insert_hidden_columns(w, 2 * r, plan, noise)
        elif key == "confidence_head.proj.weight":  # input [h (; W1[prev])]
            out[key] = insert_hidden_columns(w, 0, plan, noise)
        else:
            raise ValueError(f"drafter tensor {key} {tuple(w.shape)} is not part of the DeepSpec Qwen3 layout")
    if sorted(layers) != list(range(n_src)):
        raise ValueError(f"drafter has layers {sorted(layers)}, config num_hidden_layers={n_src}")
    for j in range(num_layers):
        src = layers[min(j, n_src - 1)]
        missing = [k for k in LAYER_KEYS if k not in src]
        if missing:
            raise ValueError(f"drafter layer {min(j, n_src - 1)} lacks {missing}")
        for k, w in inflate_layer(src, plan, ix, noise, identity=j >= n_src).items():
            out[f"layers.{j}.{k}"] = w
    return out


EAGLE3_NORMS = ("midlayer.input_layernorm.weight", "midlayer.hidden_norm.weight",
                "midlayer.post_attention_layernorm.weight", "norm.weight")
EAGLE3_LINEARS = tuple(f"midlayer.{k}.weight" for k in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))


def inflate_eagle3_state(state: dict[str, torch.Tensor], plan: Plan, ix: Index, noise: Noise) -> dict:
    """vLLM `eagle3`-layout tensors (one midlayer over [emb ; g], see the module docstring) -> inflated tensors."""
    D, I = plan.dst.hidden_size, plan.dst.intermediate_size  # noqa: E741
    NH, NKV, HD = plan.dst.num_attention_heads, plan.dst.num_key_value_heads, plan.dst.head_dim  # noqa: N806
    dev = noise.device
    prefix = "model." if any(k.startswith("model.") for k in state) else ""
    src = {k.removeprefix("model."): v for k, v in state.items()}
    missing = [k for k in ("fc.weight", "embed_tokens.weight", *EAGLE3_NORMS, *EAGLE3_LINEARS) if k not in src]
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


def inflate_drafter(
    draft_dir: str | Path,
    out_dir: str | Path,
    target_config: dict,
    shape: Shape,
    *,
    num_layers: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device | None = None,
    seed: int = 1,
    max_shard_bytes: int = 4 << 30,
) -> dict:
    """Inflate a DSpark / DFlash / EAGLE-3 drafter of `target_config` consistently with `inflate_target(..., shape)`."""
    t0 = time.perf_counter()
    draft_dir, out_dir = Path(draft_dir), Path(out_dir)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dcfg = json.loads((draft_dir / "config.json").read_text())
    kind = drafter_kind(dcfg)
    plan = make_plan(target_config, shape)
    if kind == "eagle3" and num_layers not in (None, dcfg["num_hidden_layers"]):
        raise ValueError(f"--draft-layers {num_layers}: an EAGLE-3 drafter keeps its one midlayer")
    num_layers = num_layers or dcfg["num_hidden_layers"]
    new_cfg = inflated_drafter_config(dcfg, target_config, plan, num_layers, dtype)
    state = read_state_dict(draft_dir)
    ix, noise = Index(plan, device), Noise(seed, device)
    if kind == "eagle3":
        tensors = inflate_eagle3_state(state, plan, ix, noise)
    else:
        tensors = inflate_drafter_state(state, dcfg, plan, ix, noise, num_layers)
    writer = ShardWriter(out_dir, {k: tuple(v.shape) for k, v in tensors.items()}, dtype, max_shard_bytes)
    for k, v in tensors.items():
        writer.add(k, v)
    writer.finish()
    (out_dir / "config.json").write_text(json.dumps(new_cfg, indent=2) + "\n")
    summary = {
        "source": str(draft_dir),
        "kind": kind,
        "params_before": sum(v.numel() for v in state.values()),
        "params_after": sum(v.numel() for v in tensors.values()),
        "target_layer_ids": [dcfg.get("target_layer_ids"), new_cfg.get("target_layer_ids")],
        "num_hidden_layers": [dcfg["num_hidden_layers"], num_layers],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (out_dir / "inflate_meta.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ----------------------------------------------------------------------------------------------------- checks
def load_prompts(path: Path, n: int, tokenizer, max_tokens: int) -> list[torch.Tensor]:
    rows = [json.loads(line)["prompt"] for line in path.read_text().splitlines()[:n] if line.strip()]
    return [tokenizer(p, return_tensors="pt").input_ids[:, :max_tokens] for p in rows]


def greedy_agreement(a, b, prompt_len: int) -> tuple[int, int, float]:
    """(tokens equal before the first mismatch, tokens, max |logit diff| while the inputs were still equal)."""
    ta, tb = a.sequences[0, prompt_len:], b.sequences[0, prompt_len:]
    differ = ta != tb
    first = int(differ.int().argmax()) if bool(differ.any()) else len(ta)
    steps = list(zip(a.logits, b.logits))[: first + 1]  # step `first` still had equal inputs
    return first, len(ta), max(float((la.float() - lb.float()).abs().max()) for la, lb in steps)


@torch.no_grad()
def check_target(src_dir: Path, out_dir: Path, prompts_file: Path, n: int, new_tokens: int, device, dtype) -> dict:
    """Greedy tokens and logits of the inflated target vs the source (transformers, same dtype, same device).

    Below float32 the source is also compared with itself in float32: a baseline for how often rounding alone
    flips a greedy near-tie.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src_dir)
    load = lambda d, dt: AutoModelForCausalLM.from_pretrained(d, dtype=dt).to(device).eval()  # noqa: E731
    models = {"source": load(src_dir, dtype), "inflated": load(out_dir, dtype)}
    if dtype != torch.float32:
        models["source_fp32"] = load(src_dir, torch.float32)
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
              return_dict_in_generate=True, output_logits=True, pad_token_id=tok.pad_token_id)
    totals = {"inflated": [0, 0, 0.0], "source_fp32": [0, 0, 0.0]}
    for ids in load_prompts(prompts_file, n, tok, 128):
        ids = ids.to(device)
        out = {name: m.generate(ids, **kw) for name, m in models.items()}
        for name in [k for k in totals if k in out]:
            same, total, diff = greedy_agreement(out["source"], out[name], ids.shape[1])
            t = totals[name]
            t[0], t[1], t[2] = t[0] + same, t[1] + total, max(t[2], diff)
    del models
    result = {"dtype": str(dtype), "greedy_tokens_equal_before_first_mismatch": "{}/{}".format(*totals["inflated"][:2]),
              "max_abs_logit_diff": totals["inflated"][2]}
    if dtype != torch.float32:
        result["baseline_source_vs_source_fp32"] = {
            "greedy_tokens_equal_before_first_mismatch": "{}/{}".format(*totals["source_fp32"][:2]),
            "max_abs_logit_diff": totals["source_fp32"][2],
        }
    return result


def load_any_drafter(directory: Path, dtype: torch.dtype, device) -> tuple[str, torch.nn.Module]:
    """(kind, drafter) with the project's own class for the layout (vllm_dspark, or its training baselines)."""
    kind = drafter_kind(json.loads((Path(directory) / "config.json").read_text()))
    if kind == "eagle3":
        from vllm_dspark.training.eagle3 import load_eagle3 as load
    elif kind == "dflash":
        from vllm_dspark.training.dflash import load_dflash as load
    else:
        from vllm_dspark.checkpoint import load_drafter as load
    return kind, load(directory, dtype=dtype, device=device)


@torch.no_grad()
def draft_on_prompt(target, kind: str, drafter, ids: torch.Tensor):
    """One greedy draft block for the anchor ids[:, -1], the context ids[:, :-1] run through `target`."""
    from vllm_dspark.model import target_features

    hs = target(ids, output_hidden_states=True).hidden_states
    feats = target_features(hs, drafter.config.target_layer_ids)[:, :-1]  # context rows: all but the anchor
    if kind == "eagle3":
        return drafter.draft(feats, ids, 0.0, None)
    c = feats.shape[1]
    pos = torch.arange(c, device=ids.device)[None]
    return drafter.draft(feats, pos, ids[:, -1], torch.tensor([c], device=ids.device))


@torch.no_grad()
def check_drafter(src_dir, out_dir, draft_dir, draft_out, prompts_file, n, device, dtype) -> dict:
    """Drafter outputs (corrected logits, tokens, confidence) on target features, small pair vs inflated pair."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = load_prompts(prompts_file, n, AutoTokenizer.from_pretrained(src_dir), 128)
    blocks = []
    for t_dir, d_dir in ((src_dir, draft_dir), (out_dir, draft_out)):
        target = AutoModelForCausalLM.from_pretrained(t_dir, dtype=dtype).to(device).eval()
        kind, drafter = load_any_drafter(d_dir, dtype, device)
        blocks.append([draft_on_prompt(target, kind, drafter, ids.to(device)) for ids in prompts])
        del target, drafter
    # Slot k's logits/confidence depend on the token chosen at k-1 (Markov head), so after the first differing
    # draft token (a near-tie flipped by rounding) the two blocks are no longer comparable: stop there.
    result = {"max_abs_logit_diff": 0.0, "max_abs_confidence_logit_diff": 0.0, "tokens_equal": 0, "tokens": 0}
    for a, b in zip(*blocks):
        differ = (a.tokens != b.tokens)[0]
        first = int(differ.int().argmax()) if bool(differ.any()) else differ.numel()
        upto = min(first + 1, differ.numel())  # slot `first` itself still has the same previous token
        diff = float((a.logits[:, :upto].float() - b.logits[:, :upto].float()).abs().max())
        result["max_abs_logit_diff"] = max(result["max_abs_logit_diff"], diff)
        if a.confidence_logits is not None:
            diff = float((a.confidence_logits[:, :upto].float() - b.confidence_logits[:, :upto].float()).abs().max())
            result["max_abs_confidence_logit_diff"] = max(result["max_abs_confidence_logit_diff"], diff)
        result["tokens_equal"] += first
        result["tokens"] += differ.numel()
    return result


# ----------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, type=Path, help="small Qwen3 HF folder")
    p.add_argument("--out", required=True, type=Path, help="output folder for the inflated target")
    p.add_argument("--draft", type=Path, help="drafter folder of --target: DSpark (DeepSpec layout), or vLLM-native "
                   "DFlash / EAGLE-3 (kind read from its config.json architectures)")
    p.add_argument("--draft-out", type=Path, help="output folder for the inflated drafter")
    p.add_argument("--draft-layers", type=int, help="draft layers after inflation (extra ones are identities)")
    p.add_argument("--shape", choices=[*SHAPES, "custom"], default="qwen3-4b")
    for name in ("hidden", "layers", "heads", "kv-heads", "head-dim", "intermediate"):
        p.add_argument(f"--{name}", type=int, help="custom shape (overrides the preset's value)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    p.add_argument("--device", help="build device (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-shard-gb", type=float, default=4.0)
    p.add_argument("--check", type=int, default=0, metavar="N", help="compare with the source on N eval prompts")
    p.add_argument("--check-tokens", type=int, default=32)
    p.add_argument("--prompts", type=Path, help="jsonl with a 'prompt' field (default: TARGET/eval_prompts.jsonl)")
    p.add_argument("--json", type=Path, help="also write the summary here")
    args = p.parse_args(argv)
    if (args.draft is None) != (args.draft_out is None):
        p.error("--draft and --draft-out go together")
    return args


def resolve_shape(args: argparse.Namespace) -> Shape:
    base = SHAPES.get(args.shape)
    names = {"hidden": "hidden_size", "layers": "num_hidden_layers", "heads": "num_attention_heads",
             "kv_heads": "num_key_value_heads", "head_dim": "head_dim", "intermediate": "intermediate_size"}
    values = {field: getattr(args, arg) for arg, field in names.items()}
    if base is None:
        missing = [f"--{a.replace('_', '-')}" for a, f in names.items() if values[f] is None]
        if missing:
            raise SystemExit(f"--shape custom needs {' '.join(missing)}")
        return Shape(**values)
    return Shape(**{f: v if v is not None else getattr(base, f) for f, v in values.items()})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dtype = getattr(torch, args.dtype)
    shape = resolve_shape(args)
    shard = int(args.max_shard_gb * (1 << 30))
    summary = {"target": inflate_target(args.target, args.out, shape, dtype=dtype, device=args.device,
                                        seed=args.seed, max_shard_bytes=shard)}
    t = summary["target"]
    print(f"target: {t['params_before'] / 1e6:.1f}M -> {t['params_after'] / 1e6:.1f}M params, {shape}, "
          f"layers {t['layer_map']} (others identities), {t['shards']} shard(s), {t['seconds']} s on {t['device']}")
    target_config = json.loads((args.target / "config.json").read_text())
    if args.draft:
        summary["drafter"] = inflate_drafter(
            args.draft, args.draft_out, target_config, shape, num_layers=args.draft_layers, dtype=dtype,
            device=args.device, seed=args.seed + 1, max_shard_bytes=shard,
        )
        dd = summary["drafter"]
        print(f"drafter: {dd['params_before'] / 1e6:.1f}M -> {dd['params_after'] / 1e6:.1f}M params, "
              f"target_layer_ids {dd['target_layer_ids'][0]} -> {dd['target_layer_ids'][1]}, "
              f"layers {dd['num_hidden_layers'][0]} -> {dd['num_hidden_layers'][1]}, {dd['seconds']} s")
    if args.check:
        prompts = args.prompts or args.target / "eval_prompts.jsonl"
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        summary["check"] = []
        for check_dtype in dict.fromkeys([dtype, torch.float32]):
            c = check_target(args.target, args.out, prompts, args.check, args.check_tokens, device, check_dtype)
            summary["check"].append(c)
            print(f"check target ({c['dtype']}): greedy tokens equal before first mismatch "
                  f"{c['greedy_tokens_equal_before_first_mismatch']}, max |logit diff| {c['max_abs_logit_diff']:.3g}")
            if "baseline_source_vs_source_fp32" in c:
                base = c["baseline_source_vs_source_fp32"]
                print(f"  baseline, source {c['dtype']} vs source float32: "
                      f"{base['greedy_tokens_equal_before_first_mismatch']}, "
                      f"max |logit diff| {base['max_abs_logit_diff']:.3g}")
            if args.draft:
                try:
                    dc = check_drafter(args.target, args.out, args.draft, args.draft_out, prompts, args.check, device,
                                       check_dtype)
                except ImportError as e:
                    print(f"check drafter skipped: {e}")
                else:
                    dc["dtype"] = str(check_dtype)
                    summary["check"].append({"drafter": dc})
                    print(f"check drafter ({check_dtype}): draft tokens equal before first mismatch "
                          f"{dc['tokens_equal']}/{dc['tokens']}, "
                          f"max |logit diff| {dc['max_abs_logit_diff']:.3g}, "
                          f"max |confidence logit diff| {dc['max_abs_confidence_logit_diff']:.3g}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
