"""Build DeepSpec-layout drafters by hand: config.json the way DeepSpec's `build_draft_config` writes it and a
random state dict with exactly the keys and shapes of deepspec-format.md §2-3. Independent of vllm_dspark."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def deepspec_config(
    target_config,  # HF config object or dict
    *,
    target_layer_ids: list[int],
    mask_token_id: int,
    block_size: int = 7,
    num_draft_layers: int = 2,
    markov_rank: int = 16,
    markov_head_type: str = "vanilla",
    enable_confidence_head: bool = True,
    confidence_head_with_markov: bool = True,
) -> dict:
    """§2: a deep copy of the target config plus the drafter fields."""
    t = target_config.to_dict() if hasattr(target_config, "to_dict") else target_config
    cfg = copy.deepcopy(t)
    cfg.update(
        architectures=["Qwen3DSparkModel"],
        num_target_layers=t["num_hidden_layers"],
        num_hidden_layers=num_draft_layers,
        layer_types=["full_attention"] * num_draft_layers,
        block_size=block_size,
        tie_word_embeddings=False,
        mask_token_id=mask_token_id,
        target_layer_ids=list(target_layer_ids),
        num_anchors=512,
        enable_confidence_head=enable_confidence_head,
        markov_rank=markov_rank,
        dtype="bfloat16",
    )
    if enable_confidence_head:
        cfg["confidence_head_with_markov"] = confidence_head_with_markov
    if markov_rank > 0:
        cfg["markov_head_type"] = markov_head_type
    return cfg


def random_state_dict(cfg: dict, target=None, seed: int = 0) -> dict[str, torch.Tensor]:
    """§3 keys and shapes, float64. embed_tokens / lm_head are copies of the target's when `target` is given."""
    g = torch.Generator().manual_seed(seed)
    H, V = cfg["hidden_size"], cfg["vocab_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    inter, r, m = cfg["intermediate_size"], cfg.get("markov_rank", 0), len(cfg["target_layer_ids"])

    def lin(out_f, in_f, scale=1.0):
        return torch.randn(out_f, in_f, generator=g, dtype=torch.float64) * scale / in_f ** 0.5

    def norm(n):
        return 1.0 + 0.2 * torch.randn(n, generator=g, dtype=torch.float64)

    sd = {}
    if target is not None:
        sd["embed_tokens.weight"] = target.get_input_embeddings().weight.detach().to(torch.float64).clone()
        sd["lm_head.weight"] = target.get_output_embeddings().weight.detach().to(torch.float64).clone()
    else:
        sd["embed_tokens.weight"] = torch.randn(V, H, generator=g, dtype=torch.float64)
        sd["lm_head.weight"] = lin(V, H, 3.0)
    sd["fc.weight"] = lin(H, m * H)
    sd["hidden_norm.weight"] = norm(H)
    sd["norm.weight"] = norm(H)
    for i in range(cfg["num_hidden_layers"]):
        p = f"layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = lin(nh * hd, H, 2.0)
        sd[p + "self_attn.k_proj.weight"] = lin(nkv * hd, H, 2.0)
        sd[p + "self_attn.v_proj.weight"] = lin(nkv * hd, H)
        sd[p + "self_attn.o_proj.weight"] = lin(H, nh * hd)
        if cfg.get("attention_bias"):
            for name, n in (("q_proj", nh * hd), ("k_proj", nkv * hd), ("v_proj", nkv * hd), ("o_proj", H)):
                sd[p + f"self_attn.{name}.bias"] = 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
        sd[p + "self_attn.q_norm.weight"] = norm(hd)
        sd[p + "self_attn.k_norm.weight"] = norm(hd)
        sd[p + "mlp.gate_proj.weight"] = lin(inter, H)
        sd[p + "mlp.up_proj.weight"] = lin(inter, H)
        sd[p + "mlp.down_proj.weight"] = lin(H, inter)
        sd[p + "input_layernorm.weight"] = norm(H)
        sd[p + "post_attention_layernorm.weight"] = norm(H)
    if r > 0:
        kind = cfg["markov_head_type"].lower()
        sd["markov_head.markov_w1.weight"] = torch.randn(V, r, generator=g, dtype=torch.float64)
        sd["markov_head.markov_w2.weight"] = lin(V, r, 3.0)
        if kind == "gated":
            sd["markov_head.gate_proj.weight"] = lin(r, H + r, 2.0)
            sd["markov_head.gate_proj.bias"] = 0.5 * torch.randn(r, generator=g, dtype=torch.float64)
        elif kind == "rnn":
            sd["markov_head.joint_proj.weight"] = lin(3 * r, 2 * r + H, 2.0)
            sd["markov_head.joint_proj.bias"] = 0.5 * torch.randn(3 * r, generator=g, dtype=torch.float64)
    if cfg.get("enable_confidence_head"):
        width = H + (r if cfg.get("confidence_head_with_markov") else 0)
        sd["confidence_head.proj.weight"] = lin(1, width, 2.0)
        sd["confidence_head.proj.bias"] = torch.randn(1, generator=g, dtype=torch.float64)
    return sd


def write_checkpoint(directory, cfg: dict, sd: dict, dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    """config.json + model.safetensors as save_pretrained would write them; returns the stored tensors in float64
    (the exact values a loader must see)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    stored = {k: v.to(dtype).contiguous() for k, v in sd.items()}
    save_file(stored, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return {k: v.to(torch.float64) for k, v in stored.items()}
