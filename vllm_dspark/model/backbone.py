"""The parallel backbone: draft layers over a block, with target features injected as extra keys/values.

Differs from a Qwen3 decoder layer in one place: attention keys/values are [context ; block], where the context rows
are the projected target features (not layer-normed again) and only the block rows have queries. With no mask the
block is bidirectional (DeepSpec inference); training passes a mask so that many anchors share one forward.
RoPE, RMSNorm and the MLP are transformers' Qwen3 modules, configured from the target's geometry.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import (
    Qwen3MLP,
    Qwen3RMSNorm,
    Qwen3RotaryEmbedding,
    apply_rotary_pos_emb,
)

from vllm_dspark.config import DSparkConfig


def qwen3_geometry(cfg: DSparkConfig) -> Qwen3Config:
    """A Qwen3Config with the drafter's geometry, for transformers' building blocks."""
    return Qwen3Config(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        hidden_act=cfg.hidden_act,
        rms_norm_eps=cfg.rms_norm_eps,
        attention_bias=cfg.attention_bias,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters=dict(cfg.rope_parameters),
        vocab_size=cfg.vocab_size,
        num_hidden_layers=cfg.num_hidden_layers,
    )


class DraftAttention(nn.Module):
    def __init__(self, cfg: DSparkConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        h, bias = cfg.hidden_size, cfg.attention_bias
        self.q_proj = nn.Linear(h, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(h, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(h, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, h, bias=bias)
        self.q_norm = Qwen3RMSNorm(self.head_dim, eps=cfg.rms_norm_eps)
        self.k_norm = Qwen3RMSNorm(self.head_dim, eps=cfg.rms_norm_eps)

    def _heads(self, x: torch.Tensor, n_heads: int) -> torch.Tensor:
        return x.view(*x.shape[:-1], n_heads, self.head_dim).transpose(1, 2)  # [N, heads, L, hd]

    def forward(
        self,
        block: torch.Tensor,  # [N, Q, H], layer-normed block hidden
        ctx: torch.Tensor,  # [N, C, H], projected target features
        rope_q: tuple[torch.Tensor, torch.Tensor],  # cos, sin [N, Q, hd]
        rope_kv: tuple[torch.Tensor, torch.Tensor],  # cos, sin [N, C+Q, hd]
        mask: torch.Tensor | None,  # [N, Q, C+Q] bool (True = attend) or None = attend to all
    ) -> torch.Tensor:
        kv_in = torch.cat([ctx, block], dim=1)
        q = self.q_norm(self._heads(self.q_proj(block), self.num_heads))
        k = self.k_norm(self._heads(self.k_proj(kv_in), self.num_kv_heads))
        v = self._heads(self.v_proj(kv_in), self.num_kv_heads)
        q, _ = apply_rotary_pos_emb(q, q, *rope_q)
        k, _ = apply_rotary_pos_emb(k, k, *rope_kv)
        attn_mask = None if mask is None else mask[:, None]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, enable_gqa=self.num_heads != self.num_kv_heads
        )  # [N, nh, Q, hd]
        return self.o_proj(out.transpose(1, 2).reshape(*block.shape[:2], -1))


class DraftLayer(nn.Module):
    def __init__(self, cfg: DSparkConfig, geometry: Qwen3Config):
        super().__init__()
        self.input_layernorm = Qwen3RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.self_attn = DraftAttention(cfg)
        self.post_attention_layernorm = Qwen3RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.mlp = Qwen3MLP(geometry)

    def forward(self, x, ctx, rope_q, rope_kv, mask):
        x = x + self.self_attn(self.input_layernorm(x), ctx, rope_q, rope_kv, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class ParallelBackbone(nn.Module):
    """fc + hidden_norm over target features, the draft layers, and the final norm (DeepSpec's parameter names)."""

    def __init__(self, cfg: DSparkConfig):
        super().__init__()
        geometry = qwen3_geometry(cfg)
        self.fc = nn.Linear(cfg.feature_size, cfg.hidden_size, bias=False)
        self.hidden_norm = Qwen3RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.layers = nn.ModuleList(DraftLayer(cfg, geometry) for _ in range(cfg.num_hidden_layers))
        self.norm = Qwen3RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.rotary_emb = Qwen3RotaryEmbedding(geometry)

    def _apply(self, fn, recurse=True):
        # RoPE frequencies stay float32 whatever the weights are cast to (transformers' from_pretrained keeps them
        # so); a bf16 inv_freq is off by up to ~1 rad at position 1000.
        rotary = getattr(self, "rotary_emb", None)
        fp32 = None if rotary is None else (rotary.inv_freq.detach().float().cpu(), rotary.original_inv_freq.float().cpu())
        super()._apply(fn, recurse)
        if fp32 is not None and self.rotary_emb.inv_freq.device.type != "meta" and fp32[0].device.type != "meta":
            device = self.rotary_emb.inv_freq.device
            self.rotary_emb.inv_freq = fp32[0].to(device)
            self.rotary_emb.original_inv_freq = fp32[1].to(device)
        return self

    def project_context(self, features: torch.Tensor) -> torch.Tensor:
        """Concatenated target features [..., m·H_t] -> context rows [..., H]."""
        return self.hidden_norm(self.fc(features.to(self.fc.weight.dtype)))

    def forward(
        self,
        block_embeds: torch.Tensor,  # [N, Q, H]
        block_positions: torch.Tensor,  # [N, Q]
        ctx: torch.Tensor,  # [N, C, H] from project_context
        ctx_positions: torch.Tensor,  # [N, C]
        mask: torch.Tensor | None = None,  # [N, Q, C+Q] bool
    ) -> torch.Tensor:
        x = block_embeds.to(self.fc.weight.dtype)
        rope_q = self.rotary_emb(x, block_positions)
        rope_kv = self.rotary_emb(x, torch.cat([ctx_positions, block_positions], dim=1))
        for layer in self.layers:
            x = layer(x, ctx, rope_q, rope_kv, mask)
        return self.norm(x)  # [N, Q, H]
