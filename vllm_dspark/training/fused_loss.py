"""CE and TV of the DSpark loss over the vocabulary, a block of rows at a time, with the gradient written by hand.

Per row (z = draft logits, t = target logits, y = data token, p_d = softmax(z), p_t = softmax(t)):
    ce = logsumexp(z) − z_y            tv = ‖p_d − p_t‖₁
    ∂ce/∂z = p_d − onehot(y)           ∂tv/∂z = p_d ⊙ (s − ⟨s, p_d⟩),  s = sign(p_d − p_t)
(the same subgradient as autograd's: sign(0) = 0). Autograd over `losses.slot_losses` keeps about ten [S, V]
float32 tensors alive and walks each of them from memory, forward and backward; here each block of rows is read,
used and dropped while it is still in the core's cache. The forward keeps the two partial derivatives (in the
logits' dtype) and the backward only weighs them by the upstream gradients.
Values and gradients equal the autograd ones to float rounding (tests/training/test_fused_loss.py).
"""
from __future__ import annotations

import torch

ROWS_PER_BLOCK = 32  # 32 rows × 8192 vocab × 4 bytes = 1 MiB per float32 temporary: several fit in a 2-4 MiB L2


def _block_probs(z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """-> (z, logsumexp(z), p_d, p_t) in float32."""
    z = z.float()
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    p_d = (z - lse).exp_()
    p_t = torch.softmax(t.float(), dim=-1)
    return z, lse, p_d, p_t


class _CeTv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, draft_logits, target_logits, labels, rows_per_block):
        s = draft_logits.shape[0]
        ce = draft_logits.new_empty(s, dtype=torch.float32)
        tv = draft_logits.new_empty(s, dtype=torch.float32)
        # ∂ce/∂z + onehot and ∂tv/∂z, in the logits' dtype (what the gradient is stored in anyway): the backward
        # then only combines them with the upstream gradients.
        d_ce = torch.empty_like(draft_logits)
        d_tv = torch.empty_like(draft_logits)
        for i in range(0, s, rows_per_block):
            j = slice(i, i + rows_per_block)
            z, lse, p_d, p_t = _block_probs(draft_logits[j], target_logits[j])
            ce[j] = (lse - z.gather(-1, labels[j, None])).squeeze(-1)
            sign = p_t.sub_(p_d).neg_()  # p_d − p_t, in place of p_t
            tv[j] = sign.abs().sum(-1)
            sign.sign_()
            d_ce[j] = p_d
            d_tv[j] = sign.sub_((sign * p_d).sum(-1, keepdim=True)).mul_(p_d)  # p_d ⊙ (s − ⟨s, p_d⟩)
        ctx.save_for_backward(d_ce, d_tv, labels)
        ctx.rows_per_block = rows_per_block
        return ce, tv

    @staticmethod
    def backward(ctx, g_ce, g_tv):
        d_ce, d_tv, labels = ctx.saved_tensors
        grad = torch.empty_like(d_ce)
        g_ce = g_ce.float()[:, None]
        g_tv = g_tv.float()[:, None]
        for i in range(0, d_ce.shape[0], ctx.rows_per_block):
            j = slice(i, i + ctx.rows_per_block)
            block = d_ce[j].float().mul_(g_ce[j]).add_(d_tv[j].float().mul_(g_tv[j]))
            block.scatter_add_(-1, labels[j, None], -g_ce[j])
            grad[j] = block
        return grad, None, None, None


def ce_tv(
    draft_logits: torch.Tensor,  # [S, V] (float32 or bf16)
    target_logits: torch.Tensor,  # [S, V], no gradient
    labels: torch.Tensor,  # [S]
    rows_per_block: int = ROWS_PER_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (ce [S], tv [S]) float32; the gradient flows to draft_logits only."""
    return _CeTv.apply(draft_logits, target_logits.detach(), labels, rows_per_block)
