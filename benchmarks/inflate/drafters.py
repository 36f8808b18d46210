"""Inflated drafters: the config checks and rewrite for every kind, the DSpark / DFlash (DeepSpec layout) tensors,
and the build that dispatches on the kind (EAGLE-3's tensors: `eagle3`)."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import torch

from benchmarks.inflate.eagle3 import inflate_eagle3_state
from benchmarks.inflate.layers import (
    Noise,
    build_device,
    inflate_fc,
    inflate_layer,
    inflate_norm,
    insert_hidden_columns,
    pad_columns,
)
from benchmarks.inflate.maps import Index
from benchmarks.inflate.plan import LAYER_KEYS, Plan, Shape, make_plan, shape_of
from benchmarks.inflate.shards import ShardWriter
from vllm_dspark.checkpoint import read_state_dict
from vllm_dspark.training.baselines import drafter_kind_of_config

GEOMETRY_FIELDS = ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size")


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
    new.update(plan.config_fields(dtype), num_target_layers=dst.num_hidden_layers, num_hidden_layers=num_layers)
    if drafter_kind_of_config(dcfg, strict=True) != "eagle3":  # EAGLE-3's one midlayer is causal: no layer_types
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
    device = build_device(device)
    dcfg = json.loads((draft_dir / "config.json").read_text())
    kind = drafter_kind_of_config(dcfg, strict=True)
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
