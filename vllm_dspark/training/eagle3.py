"""EAGLE-3 baseline: a one-layer autoregressive drafter over 3 target layers, trained with training-time test.

Architecture = vLLM's `llama_eagle3.Eagle3LlamaForCausalLM` (config `architectures = ["LlamaForCausalLMEagle3"]`,
weights `fc`, `midlayer.*`, `norm`, `lm_head`, `embed_tokens`; full vocabulary, so no d2t/t2d):
    g_t   = fc(concat of 3 target layer outputs at position t)                    # [H]
    layer input at step 0, position t:  [input_layernorm(emb(x_{t+1})) ; hidden_norm(g_t)], residual g_t
    r     = residual + o_proj(attn(q, k, v from the 2H input))   (no q/k norm, RoPE neox)
    r     = r + mlp(post_attention_layernorm(r))                  -> logits = lm_head(norm(r)) predict x_{t+2}
    step j >= 1 at position t+j: input [input_layernorm(emb(token j)) ; hidden_norm(r_{j-1})], residual r_{j-1}
The pre-norm stream r is what vLLM feeds to the next step (`hidden_prenorm`). Attention at step j of the chain that
starts at t sees the step-0 rows at positions <= t (vLLM's draft KV cache holds them for every verified position)
and the chain's own rows of steps 1..j (written at positions t+1..t+j this round): exactly the training mask below.

Alignment with the parallel drafters: for an anchor a (context rows < a, anchor token x_a), the chain starts at
t = a−1, and step j drafts x_{a+j+1} — the same label, target distribution and loss weight as DSpark's draft j.
Training-time test: step j's hidden input is the drafter's own output of step j−1; its token input is the data
token x_{a+j} (at inference, the drafted token; when it differs from the data the chain is rejected anyway).
Target layer ids use this package's convention (output of layer i); vLLM's `eagle_aux_hidden_state_layer_ids`
index layer inputs, so the config stores id + 1.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors.torch import save_file
from torch import nn
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import (
    Qwen3MLP,
    Qwen3RMSNorm,
    Qwen3RotaryEmbedding,
    apply_rotary_pos_emb,
)

from vllm_dspark.checkpoint import read_state_dict
from vllm_dspark.config import GREEDY_EPS, DrafterMismatchError
from vllm_dspark.decoding import GenerationResult, speculative_rounds
from vllm_dspark.model import DraftBlock, logits_to_probs, target_features

EAGLE3_ARCHITECTURE = "LlamaForCausalLMEagle3"


class Eagle3Config(BaseModel):
    model_config = ConfigDict(extra="allow")

    hidden_size: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_key_value_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    rope_parameters: dict[str, Any] = Field(default_factory=lambda: {"rope_type": "default", "rope_theta": 1e6})
    target_hidden_size: int = Field(gt=0)
    num_target_layers: int = Field(gt=0)
    target_layer_ids: list[int]  # output of layer i (this package's convention)
    block_size: int = Field(gt=0, description="γ: drafting steps per round")

    @model_validator(mode="after")
    def _check(self) -> "Eagle3Config":
        ids = self.target_layer_ids
        if len(ids) != 3:
            raise DrafterMismatchError(f"EAGLE-3 fuses exactly 3 target layers, got target_layer_ids={ids}")
        if any(b <= a for a, b in zip(ids, ids[1:])) or ids[0] < -1 or ids[-1] >= self.num_target_layers - 1:
            raise DrafterMismatchError(
                f"target_layer_ids={ids} must be strictly increasing in [-1, {self.num_target_layers - 2}] "
                "(the last layer's HF hidden state is final-normed)"
            )
        return self

    @classmethod
    def from_target(cls, target_config: Any, *, block_size: int = 7, target_layer_ids: list[int] | None = None):
        t = target_config.to_dict() if hasattr(target_config, "to_dict") else dict(target_config)
        n = t["num_hidden_layers"]
        if target_layer_ids is None:  # low / middle / high, as EAGLE-3 does; never the final-normed last layer
            for lo in (1, 0, -1):
                target_layer_ids = sorted({round(lo + i * (n - 2 - lo) / 2) for i in range(3)})
                if len(target_layer_ids) == 3:
                    break
        rope = dict(t.get("rope_parameters") or {"rope_type": "default", "rope_theta": t.get("rope_theta", 1e4)})
        return cls(
            hidden_size=t["hidden_size"], num_attention_heads=t["num_attention_heads"],
            num_key_value_heads=t.get("num_key_value_heads", t["num_attention_heads"]),
            head_dim=t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"],
            intermediate_size=t["intermediate_size"], vocab_size=t["vocab_size"],
            rms_norm_eps=t.get("rms_norm_eps", 1e-6), hidden_act=t.get("hidden_act", "silu"),
            max_position_embeddings=t.get("max_position_embeddings", 32768), rope_parameters=rope,
            target_hidden_size=t["hidden_size"], num_target_layers=n, target_layer_ids=list(target_layer_ids),
            block_size=block_size,
        )

    def to_vllm_dict(self) -> dict:
        aux = [i + 1 for i in self.target_layer_ids]
        d = self.model_dump()
        d.update(
            architectures=[EAGLE3_ARCHITECTURE],
            model_type="llama",
            num_hidden_layers=1,
            draft_vocab_size=self.vocab_size,
            tie_word_embeddings=False,
            attention_bias=False,
            rope_theta=self.rope_parameters.get("rope_theta", 1e6),
            eagle_aux_hidden_state_layer_ids=aux,
            eagle_config={"eagle_aux_hidden_state_layer_ids": aux, "use_aux_hidden_state": True},
        )
        return d

    @classmethod
    def from_json(cls, path: str | Path) -> "Eagle3Config":
        path = Path(path)
        d = json.loads((path / "config.json" if path.is_dir() else path).read_text())
        if EAGLE3_ARCHITECTURE not in (d.get("architectures") or []):
            raise DrafterMismatchError(f"{path} is not an EAGLE-3 drafter (architectures={d.get('architectures')})")
        if "target_layer_ids" not in d and d.get("eagle_aux_hidden_state_layer_ids"):
            d["target_layer_ids"] = [i - 1 for i in d["eagle_aux_hidden_state_layer_ids"]]
        for k in ("architectures", "model_type", "num_hidden_layers", "draft_vocab_size", "tie_word_embeddings",
                  "attention_bias", "rope_theta", "eagle_aux_hidden_state_layer_ids", "eagle_config"):
            d.pop(k, None)
        return cls.model_validate(d)


def _geometry(cfg: Eagle3Config) -> Qwen3Config:
    return Qwen3Config(
        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim, hidden_act=cfg.hidden_act, rms_norm_eps=cfg.rms_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings, rope_parameters=dict(cfg.rope_parameters),
        vocab_size=cfg.vocab_size, num_hidden_layers=1,
    )


class Eagle3Attention(nn.Module):
    def __init__(self, cfg: Eagle3Config):
        super().__init__()
        h, hd = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, hd
        self.q_proj = nn.Linear(2 * h, self.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(2 * h, self.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(2 * h, self.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(self.num_heads * hd, h, bias=False)


class Eagle3Layer(nn.Module):
    def __init__(self, cfg: Eagle3Config):
        super().__init__()
        self.input_layernorm = Qwen3RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.hidden_norm = Qwen3RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.self_attn = Eagle3Attention(cfg)
        self.post_attention_layernorm = Qwen3RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.mlp = Qwen3MLP(_geometry(cfg))


class Eagle3Drafter(nn.Module):
    def __init__(self, cfg: Eagle3Config):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.fc = nn.Linear(3 * cfg.target_hidden_size, cfg.hidden_size, bias=False)
        self.midlayer = Eagle3Layer(cfg)
        self.norm = Qwen3RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rotary_emb = Qwen3RotaryEmbedding(_geometry(cfg))

    def share_target_embeddings(self, target: nn.Module) -> None:
        emb, head = target.get_input_embeddings(), target.get_output_embeddings()
        want = (self.config.vocab_size, self.config.hidden_size)
        for name, module in (("input embedding", emb), ("LM head", head)):
            if tuple(module.weight.shape) != want:
                raise ValueError(f"target {name} has shape {tuple(module.weight.shape)}, the drafter needs {want}")
        self.embed_tokens, self.lm_head = emb, head
        for p in (*emb.parameters(), *head.parameters()):
            p.requires_grad_(False)

    # ------------------------------------------------------------------ one layer, two kinds of rows
    def _layer_input(self, token_ids: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        lay = self.midlayer
        emb = self.embed_tokens(token_ids).to(hidden.dtype)
        return torch.cat([lay.input_layernorm(emb), lay.hidden_norm(hidden)], dim=-1)  # [..., 2H]

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return x.view(*x.shape[:-1], n, self.config.head_dim).transpose(-3, -2)  # [N, heads, L, hd]

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        cos, sin = self.rotary_emb(x, positions)
        out, _ = apply_rotary_pos_emb(x, x, cos, sin)
        return out

    def context_kv(self, g: torch.Tensor, next_ids: torch.Tensor):
        """Step-0 keys/values of every context row: g [N, T, H], next_ids [N, T] (x_{t+1}) -> K, V [N, kv, T, hd]."""
        att = self.midlayer.self_attn
        x = self._layer_input(next_ids, g)
        positions = torch.arange(g.shape[1], device=g.device).expand(g.shape[0], -1)
        k = self._rope(self._heads(att.k_proj(x), att.num_kv_heads), positions)
        v = self._heads(att.v_proj(x), att.num_kv_heads)
        return k, v

    def chain_step(
        self,
        token_ids: torch.Tensor,  # [N, A] token input of this step
        hidden_in: torch.Tensor,  # [N, A, H] g_t at step 0, else the previous step's pre-norm output
        positions: torch.Tensor,  # [N, A] t + j
        ctx_k: torch.Tensor, ctx_v: torch.Tensor,  # [N, kv, T, hd] step-0 rows
        ctx_limit: torch.Tensor,  # [N, A] t: context keys at positions <= t are visible
        chain_k: list[torch.Tensor], chain_v: list[torch.Tensor],  # steps 1..j-1 of each chain, [N, kv, A, hd]
        is_step0: bool,
    ) -> torch.Tensor:
        """One drafting step for A chains; appends this step's K/V to chain_k/chain_v (except at step 0, whose row
        is already among the context rows). Returns the pre-norm output [N, A, H]."""
        att = self.midlayer.self_attn
        x = self._layer_input(token_ids, hidden_in)
        q = self._rope(self._heads(att.q_proj(x), att.num_heads), positions)  # [N, nh, A, hd]
        if not is_step0:
            chain_k.append(self._rope(self._heads(att.k_proj(x), att.num_kv_heads), positions))
            chain_v.append(self._heads(att.v_proj(x), att.num_kv_heads))
        rep = att.num_heads // att.num_kv_heads
        scale = 1.0 / math.sqrt(self.config.head_dim)
        kc, vc = ctx_k.repeat_interleave(rep, 1), ctx_v.repeat_interleave(rep, 1)
        scores = torch.einsum("nhad,nhtd->nhat", q, kc) * scale  # [N, nh, A, T]
        visible = torch.arange(kc.shape[2], device=q.device)[None, None, :] <= ctx_limit[:, :, None]
        scores = scores.masked_fill(~visible[:, None], float("-inf"))
        parts_s, parts_v = [scores], []
        for k_j, v_j in zip(chain_k, chain_v):  # the chain's own rows: one key per step, per chain
            parts_s.append((q * k_j.repeat_interleave(rep, 1)).sum(-1, keepdim=True) * scale)  # [N, nh, A, 1]
            parts_v.append(v_j.repeat_interleave(rep, 1))
        scores = torch.cat(parts_s, dim=-1)
        probs = torch.softmax(scores.float() if scores.element_size() < 4 else scores, dim=-1).to(q.dtype)
        out = torch.einsum("nhat,nhtd->nhad", probs[..., : kc.shape[2]], vc)
        for i, v_j in enumerate(parts_v):
            out = out + probs[..., kc.shape[2] + i, None] * v_j
        out = att.o_proj(out.transpose(1, 2).reshape(*token_ids.shape, -1))  # [N, A, H]
        r = hidden_in + out
        return r + self.midlayer.mlp(self.midlayer.post_attention_layernorm(r))

    def logits(self, r: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(r).to(self.lm_head.weight.dtype))

    # ------------------------------------------------------------------ training
    def forward(
        self,
        features: torch.Tensor,  # [N, T, 3·H_t]
        input_ids: torch.Tensor,  # [N, T]
        anchors: torch.Tensor,  # [N, A] anchor positions a (chains start at t = a-1)
        prev_ids: torch.Tensor,  # [N, A, γ]: x_{a+j}, the token input of step j
        slot_valid: torch.Tensor,  # [N, A, γ]
    ) -> tuple[torch.Tensor, None]:
        """Teacher-forced tokens, own hidden states (training-time test) -> logits [S, V] of the valid slots."""
        g = self.fc(features.to(self.fc.weight.dtype))  # [N, T, H]
        next_ids = torch.cat([input_ids[:, 1:], input_ids[:, -1:]], dim=1)  # x_{t+1}; the last row is never read
        ctx_k, ctx_v = self.context_kv(g, next_ids)
        t0 = anchors - 1
        hidden = torch.gather(g, 1, t0[..., None].expand(-1, -1, g.shape[-1]))
        chain_k: list[torch.Tensor] = []
        chain_v: list[torch.Tensor] = []
        out = []
        for j in range(prev_ids.shape[-1]):
            hidden = self.chain_step(prev_ids[..., j], hidden, t0 + j, ctx_k, ctx_v, t0, chain_k, chain_v, j == 0)
            out.append(hidden)
        r = torch.stack(out, dim=2)  # [N, A, γ, H]
        return self.logits(r[slot_valid]), None

    # ------------------------------------------------------------------ drafting (reference, no cache)
    @torch.no_grad()
    def draft(
        self,
        features: torch.Tensor,  # [1, C, 3·H_t] context rows 0..C-1
        token_ids: torch.Tensor,  # [1, C + 1] tokens x_0..x_C (x_C = the anchor)
        temperature: float,
        generator: torch.Generator | None,
        gamma: int | None = None,
    ) -> DraftBlock:
        gamma = gamma or self.config.block_size
        g = self.fc(features.to(self.fc.weight.dtype))
        ctx_k, ctx_v = self.context_kv(g, token_ids[:, 1:])
        c = g.shape[1]
        t0 = torch.tensor([[c - 1]], device=g.device)
        hidden, token = g[:, -1:], token_ids[:, -1:]
        chain_k: list[torch.Tensor] = []
        chain_v: list[torch.Tensor] = []
        tokens, probs, logits = [], [], []
        for j in range(gamma):
            hidden = self.chain_step(token, hidden, t0 + j, ctx_k, ctx_v, t0, chain_k, chain_v, j == 0)
            l_j = self.logits(hidden)[:, 0].float()  # [1, V]
            p_j = logits_to_probs(l_j, temperature)
            tok = l_j.argmax(-1) if temperature < GREEDY_EPS else torch.multinomial(p_j, 1, generator=generator).squeeze(-1)
            tokens.append(tok)
            probs.append(p_j)
            logits.append(l_j)
            token = tok[:, None]
        return DraftBlock(tokens=torch.stack(tokens, 1), probs=torch.stack(probs, 1), logits=torch.stack(logits, 1),
                          confidence_logits=None, confidence=None)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """HF-style init of a fresh drafter's trainable layers (norms stay at 1)."""
    for m in module.modules():
        if isinstance(m, nn.Linear) and m.weight.requires_grad:
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------- I/O
def save_eagle3(drafter: Eagle3Drafter, directory: str | Path, *, dtype: torch.dtype | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(drafter.config.to_vllm_dict(), indent=2, sort_keys=True) + "\n")
    state = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous().clone()
        for k, v in drafter.state_dict().items()
    }
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    bad = [k for k, v in read_state_dict(directory).items() if not torch.isfinite(v.float()).all()]
    if bad:
        raise RuntimeError(f"EAGLE-3 checkpoint written to {directory} has non-finite tensors {bad}")
    return directory


def load_eagle3(directory: str | Path, target: nn.Module | None = None, *, dtype: torch.dtype | None = None,
                device: str | torch.device = "cpu") -> Eagle3Drafter:
    cfg = Eagle3Config.from_json(directory)
    if target is not None:
        tc = target.config
        if tc.hidden_size != cfg.target_hidden_size or tc.vocab_size != cfg.vocab_size:
            raise DrafterMismatchError(
                f"EAGLE-3 drafter expects hidden_size={cfg.target_hidden_size}, vocab_size={cfg.vocab_size}; "
                f"target has {tc.hidden_size}, {tc.vocab_size}"
            )
    state = {k.removeprefix("model."): v for k, v in read_state_dict(directory).items()}
    drafter = Eagle3Drafter(cfg)
    missing, unexpected = drafter.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in ("embed_tokens.weight", "lm_head.weight") or target is None]
    if missing or unexpected:
        raise DrafterMismatchError(f"EAGLE-3 weights do not match the config: missing {missing}, unexpected {unexpected}")
    drafter.to(device=device, dtype=dtype or state["fc.weight"].dtype)
    if target is not None:
        drafter.share_target_embeddings(target)
    drafter.requires_grad_(False)
    return drafter.eval()


# ---------------------------------------------------------------------------------------------- reference loop
class _Eagle3Rounds:
    """EAGLE-3's side of `speculative_rounds`: the context is the target features and the tokens so far; a block is
    drafted one token at a time."""

    def __init__(self, drafter: Eagle3Drafter, hidden_states, prompt_ids: list[int], temperature: float, generator,
                 gamma: int | None):
        self.drafter, self.temperature, self.generator, self.gamma = drafter, temperature, generator, gamma
        self.layer_ids = drafter.config.target_layer_ids
        self.features = target_features(hidden_states, self.layer_ids)  # [1, n, 3H]
        self.tokens = list(prompt_ids)

    def draft(self, anchor: int, position: int) -> tuple[DraftBlock, int]:
        ids = torch.tensor([self.tokens + [anchor]], device=self.features.device)
        block = self.drafter.draft(self.features, ids, self.temperature, self.generator, self.gamma)
        return block, block.tokens.shape[1]

    def commit(self, hidden_states, anchor: int, accepted: list[int]) -> None:
        new_rows = target_features(hidden_states, self.layer_ids)[:, : len(accepted) + 1]
        self.features = torch.cat([self.features, new_rows], dim=1)
        self.tokens += [anchor] + accepted


def eagle3_generate(
    target: nn.Module,
    drafter: Eagle3Drafter,
    prompt_ids: list[int],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    stop_token_ids: set[int] | frozenset[int] = frozenset(),
    gamma: int | None = None,
) -> GenerationResult:
    """Speculative decoding with an EAGLE-3 drafter: the round loop and acceptance rule of `speculative_generate`."""
    return speculative_rounds(
        target, prompt_ids, lambda hidden: _Eagle3Rounds(drafter, hidden, prompt_ids, temperature, generator, gamma),
        max_new_tokens=max_new_tokens, temperature=temperature, generator=generator, stop_token_ids=stop_token_ids)
