"""The inflated target: its config, its tensor names and shapes, and the layer-by-layer build."""
from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from benchmarks.inflate.layers import Noise, build_device, inflate_head, inflate_layer, inflate_norm, pad_columns
from benchmarks.inflate.maps import Index
from benchmarks.inflate.plan import LAYER_KEYS, Plan, Shape, count_params, make_plan
from benchmarks.inflate.shards import ShardWriter
from vllm_dspark.checkpoint import read_state_dict

TOKENIZER_FILES = re.compile(
    r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|vocab\..*|merges\.txt|.*\.jinja"
    r"|generation_config\.json)$"
)


def inflated_target_config(config: dict, plan: Plan, dtype: torch.dtype) -> dict:
    new = dict(config)
    dst = plan.dst
    new.update(plan.config_fields(dtype), num_hidden_layers=dst.num_hidden_layers, architectures=["Qwen3ForCausalLM"])
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
    device = build_device(device)
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
