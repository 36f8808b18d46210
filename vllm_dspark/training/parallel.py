"""Training forward of the parallel drafters (DSpark, DFlash): many anchor blocks of a sequence in ONE forward.

The context is `project_context` of the whole sequence's target features; each anchor a contributes a block of
queries, and a boolean mask gives every block exactly what it sees at inference (deepspec-format.md §5): context
rows at positions < a (the anchor's own features are not known yet when it is drafted) and the rows of its own
block, bidirectionally; nothing of other blocks. Positions: the block of anchor a sits at a, a+1, ...

Two block layouts, both drafting γ tokens per round:
- DSpark (DeepSpec): [x_a, mask × (γ−1)]; slot k predicts x_{a+k+1} (the anchor slot is a prediction).
- DFlash (vLLM's native `dflash`): [x_a, mask × γ]; slot k >= 1 predicts x_{a+k}, the anchor slot's output is
  unused. Draft j (0-based) is slot j+1 — so draft j has the same label, target distribution and loss weight in
  both layouts.
Teacher-forced sequential-head inputs (DeepSpec `modeling.py`): prev of draft j is x_{a+j}: the anchor, then the
data tokens.
"""
from __future__ import annotations

import torch
from torch import nn

from vllm_dspark.model import DSparkDrafter


def block_attention_mask(
    anchors: torch.Tensor,  # [N, A]
    block_len: int,
    num_ctx: int,
) -> torch.Tensor:
    """[N, A·G, C + A·G] bool, True = attend: context key j iff j < anchor; block key iff same anchor."""
    n, a = anchors.shape
    ctx = torch.arange(num_ctx, device=anchors.device)
    ctx_mask = ctx[None, None, :] < anchors[:, :, None]  # [N, A, C]
    ctx_mask = ctx_mask[:, :, None, :].expand(n, a, block_len, num_ctx).reshape(n, a * block_len, num_ctx)
    owner = torch.arange(a, device=anchors.device).repeat_interleave(block_len)  # [A·G]
    blk_mask = (owner[:, None] == owner[None, :])[None].expand(n, -1, -1)
    return torch.cat([ctx_mask, blk_mask], dim=-1)


class ParallelDraftForward(nn.Module):
    """Wraps a drafter so that one `forward` (what DDP hooks) yields every trained output of a batch."""

    def __init__(self, drafter: DSparkDrafter, layout: str = "dspark"):
        super().__init__()
        if layout not in ("dspark", "dflash"):
            raise ValueError(f"layout must be dspark or dflash, got {layout!r}")
        self.drafter = drafter
        self.layout = layout

    @property
    def gamma(self) -> int:
        return self.drafter.config.block_size

    def forward(
        self,
        features: torch.Tensor,  # [N, T, m·H_t]
        anchor_ids: torch.Tensor,  # [N, A] token at each anchor
        anchors: torch.Tensor,  # [N, A] anchor positions
        prev_ids: torch.Tensor,  # [N, A, γ] teacher-forced previous tokens
        slot_valid: torch.Tensor,  # [N, A, γ]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (corrected logits [S, V], confidence logits [S] or None) of the S valid slots, in [N, A, γ] order."""
        d, gamma = self.drafter, self.gamma
        n, a = anchors.shape
        block_len = gamma + (self.layout == "dflash")
        ctx = d.project_context(features)  # [N, T, H]
        t = ctx.shape[1]
        ctx_positions = torch.arange(t, device=ctx.device).expand(n, t)
        ids = anchor_ids.new_full((n, a, block_len), d.config.mask_token_id)
        ids[:, :, 0] = anchor_ids
        positions = anchors[:, :, None] + torch.arange(block_len, device=anchors.device)  # [N, A, G]
        mask = block_attention_mask(anchors, block_len, t)
        hidden = d(d.embed_tokens(ids.view(n, -1)), positions.view(n, -1), ctx, ctx_positions, mask)
        hidden = hidden.view(n, a, block_len, -1)
        if self.layout == "dflash":
            hidden = hidden[:, :, 1:]
        hidden = hidden.reshape(n * a, gamma, -1)  # [N·A, γ, H]
        # Vocabulary-sized outputs only for the valid slots: selecting the hidden rows first skips the LM head of
        # invalid slots and a copy of the [N·A·γ, V] logits (forward and backward).
        valid = slot_valid.view(n * a, gamma)
        rows = hidden[valid]  # [S, H]
        logits = d.lm_head(rows.to(d.lm_head.weight.dtype))  # [S, V]
        w1_prev = None
        head = d.markov_head
        if head is not None and head.head_type == "rnn":  # recurrent over the block: run it on whole blocks
            bias, w1_prev = head.teacher_forced(prev_ids.view(n * a, gamma), hidden)
            bias, w1_prev = bias[valid], w1_prev[valid]
        elif head is not None:
            bias, w1_prev, _ = head.step(prev_ids.view(n * a, gamma)[valid], rows)
        if head is not None:
            logits = logits + bias
        conf = d.confidence_head(rows, w1_prev) if d.confidence_head is not None else None  # [S]
        return logits, conf
