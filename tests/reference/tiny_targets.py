"""Tiny random transformers targets of several families (odd sizes, GQA and not), float64 by default."""
from __future__ import annotations

import torch


def _tiny_configs():
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    # Odd sizes on purpose; head_dim must stay even for RoPE. initializer_range is large so that logits are peaked
    # (near-uniform logits would make acceptance tests powerless).
    common = dict(max_position_embeddings=512, initializer_range=0.25, tie_word_embeddings=False)
    return {
        # GQA 4:2, head_dim 10 with hidden 44 (q width != hidden), tied embeddings.
        "qwen3": lambda: Qwen3Config(
            vocab_size=61, hidden_size=44, intermediate_size=37, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=10, rms_norm_eps=1e-6, **{**common, "tie_word_embeddings": True},
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        # GQA 6:3, head_dim 6 (derived), llama3 rope scaling with a short original context so all three
        # frequency bands (kept, interpolated, divided) occur.
        "llama": lambda: LlamaConfig(
            vocab_size=53, hidden_size=36, intermediate_size=29, num_hidden_layers=4, num_attention_heads=6,
            num_key_value_heads=3, rms_norm_eps=1e-5, rope_theta=500000.0,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 16},
            **common,
        ),
        # MQA 3:1, no head_dim field in the config.
        "qwen2": lambda: Qwen2Config(
            vocab_size=47, hidden_size=30, intermediate_size=23, num_hidden_layers=3, num_attention_heads=3,
            num_key_value_heads=1, rms_norm_eps=1e-6, **common,
        ),
        # No GQA (4:4), explicit head_dim 14, a sliding window the drafter must ignore.
        "mistral": lambda: MistralConfig(
            vocab_size=59, hidden_size=28, intermediate_size=31, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=4, head_dim=14, rms_norm_eps=1e-5, sliding_window=4096, **common,
        ),
    }


TINY_FAMILIES = ("qwen3", "llama", "qwen2", "mistral")


def build_tiny_target(family: str, seed: int = 0, dtype: torch.dtype = torch.float64, **overrides):
    """A random transformers causal LM of the given family, eval mode, no grad."""
    from transformers import AutoModelForCausalLM

    cfg = _tiny_configs()[family]()
    for k, v in overrides.items():
        setattr(cfg, k, v)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).to(dtype).eval()
    model.requires_grad_(False)
    return model
