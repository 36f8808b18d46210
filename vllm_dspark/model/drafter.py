"""The DSpark drafter and one draft round in plain torch (the reference every fast path is checked against).

A round: the parallel backbone maps [anchor, mask × (γ−1)] at positions [start, start+γ) plus the context rows to
block hidden states h and base logits U = lm_head(h); then the sequential head walks left to right, adding a
prefix-dependent bias to U_k before choosing token k, and the confidence head scores each position.
State-dict keys equal DeepSpec's (no prefix), so checkpoints load without renaming.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vllm_dspark.config import GREEDY_EPS, DSparkConfig
from vllm_dspark.model.backbone import ParallelBackbone
from vllm_dspark.model.heads import build_heads, calibrated_confidence, logits_to_probs


@dataclass
class DraftBlock:
    tokens: torch.Tensor  # [N, γ] int64, chosen draft tokens
    probs: torch.Tensor  # [N, γ, V] float32, the draft distribution each token was drawn from
    logits: torch.Tensor  # [N, γ, V], corrected logits U + B
    confidence_logits: torch.Tensor | None  # [N, γ], raw confidence-head logits (None without a head)
    confidence: torch.Tensor | None  # [N, γ], σ(logit / T_sts): P(slot k accepted | slots < k accepted)

    @property
    def survival(self) -> torch.Tensor | None:
        """S_k = Π_{j≤k} c_j, the estimated probability that the first k+1 drafts are all accepted."""
        return None if self.confidence is None else torch.cumprod(self.confidence, dim=-1)


class DSparkDrafter(ParallelBackbone):
    def __init__(self, cfg: DSparkConfig):
        super().__init__(cfg)
        self.config = cfg
        # Shared with the target and frozen; checkpoints may carry copies (DeepSpec does).
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.markov_head, self.confidence_head = build_heads(cfg)

    # ----------------------------------------------------------------- sharing
    def share_target_embeddings(self, target: nn.Module) -> None:
        """Use the target's input embedding and LM head (same objects, frozen) instead of copies."""
        emb, head = target.get_input_embeddings(), target.get_output_embeddings()
        want = (self.config.vocab_size, self.config.hidden_size)
        for name, module in (("input embedding", emb), ("LM head", head)):
            if tuple(module.weight.shape) != want:
                raise ValueError(
                    f"target {name} has shape {tuple(module.weight.shape)}, the drafter needs "
                    f"(vocab_size, hidden_size) = {want}"
                )
        if getattr(head, "bias", None) is not None:
            raise ValueError("target LM head has a bias; DSpark drafters share a bias-free LM head")
        self.embed_tokens, self.lm_head = emb, head
        for p in (*emb.parameters(), *head.parameters()):
            p.requires_grad_(False)

    # ----------------------------------------------------------------- backbone
    def block_input_ids(self, anchor_ids: torch.Tensor, gamma: int | None = None) -> torch.Tensor:
        """[N] anchors -> [N, γ] = [anchor, mask, ..., mask]."""
        gamma = gamma or self.config.block_size
        ids = anchor_ids.new_full((anchor_ids.shape[0], gamma), self.config.mask_token_id)
        ids[:, 0] = anchor_ids
        return ids

    def block_hidden(
        self,
        ctx: torch.Tensor,  # [N, C, H] projected context rows
        ctx_positions: torch.Tensor,  # [N, C]
        anchor_ids: torch.Tensor,  # [N]
        anchor_positions: torch.Tensor,  # [N]
        ctx_valid: torch.Tensor | None = None,  # [N, C] bool; False = padding
        gamma: int | None = None,
    ) -> torch.Tensor:
        gamma = gamma or self.config.block_size
        ids = self.block_input_ids(anchor_ids, gamma)
        positions = anchor_positions[:, None] + torch.arange(gamma, device=ids.device)
        mask = None
        if ctx_valid is not None and not bool(ctx_valid.all()):
            block_valid = ctx_valid.new_ones(ids.shape)
            mask = torch.cat([ctx_valid, block_valid], dim=1)[:, None, :].expand(-1, gamma, -1)
        return self(self.embed_tokens(ids), positions, ctx, ctx_positions, mask)

    # ----------------------------------------------------------------- sequential stage
    def sample_block(
        self,
        hidden: torch.Tensor,  # [N, γ, H]
        anchor_ids: torch.Tensor,  # [N]
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> DraftBlock:
        base_logits = self.lm_head(hidden.to(self.lm_head.weight.dtype))  # [N, γ, V]
        prev, state = anchor_ids, None
        tokens, probs, logits, conf = [], [], [], []
        head = self.markov_head
        if head is not None:
            state = head.init_state(anchor_ids.shape[0], hidden)
        for k in range(hidden.shape[1]):
            h_k, w1_prev = hidden[:, k], None
            l_k = base_logits[:, k]
            if head is not None:
                bias, w1_prev, state = head.step(prev, h_k, state)
                l_k = l_k + bias
            if self.confidence_head is not None:
                conf.append(self.confidence_head(h_k, w1_prev))
            p_k = logits_to_probs(l_k, temperature)
            if temperature < GREEDY_EPS:
                tok = l_k.argmax(-1)
            else:
                tok = torch.multinomial(p_k, 1, generator=generator).squeeze(-1)
            tokens.append(tok)
            probs.append(p_k)
            logits.append(l_k)
            prev = tok
        conf_logits = torch.stack(conf, 1) if conf else None
        return DraftBlock(
            tokens=torch.stack(tokens, 1),
            probs=torch.stack(probs, 1),
            logits=torch.stack(logits, 1),
            confidence_logits=conf_logits,
            confidence=None
            if conf_logits is None
            else calibrated_confidence(conf_logits.float(), self.config.sts_temperatures),
        )

    @torch.no_grad()
    def draft(
        self,
        features: torch.Tensor,  # [N, C, m·H_t] concatenated target features of the context
        ctx_positions: torch.Tensor,  # [N, C]
        anchor_ids: torch.Tensor,  # [N]
        anchor_positions: torch.Tensor,  # [N]
        ctx_valid: torch.Tensor | None = None,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
        gamma: int | None = None,
    ) -> DraftBlock:
        ctx = self.project_context(features)
        hidden = self.block_hidden(ctx, ctx_positions, anchor_ids, anchor_positions, ctx_valid, gamma)
        return self.sample_block(hidden, anchor_ids, temperature, generator)


def target_features(hidden_states: tuple[torch.Tensor, ...], layer_ids: list[int]) -> torch.Tensor:
    """HF `output_hidden_states` -> concatenated features: id i is hidden_states[i + 1], -1 is hidden_states[0]."""
    return torch.cat([hidden_states[i + 1] for i in layer_ids], dim=-1)
