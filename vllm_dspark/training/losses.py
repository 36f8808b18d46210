"""The DSpark objective (paper §4; DeepSpec `deepspec/modeling/dspark/loss.py`), per draft slot k (0-based):

    loss_k = α_ce · CE(p_d, x_k) + α_tv · ‖p_d − p_t‖₁ + α_conf · BCE(c_k, 1 − ½‖p_d − p_t‖₁)

p_d = softmax of the drafter's corrected logits (U + Markov bias) at temperature 1, p_t = softmax of the target's
logits at the same position, x_k the data token, c_k the confidence logit; the BCE label is detached (it is the
acceptance probability of the draft at T = 1, the quantity the confidence head must predict).
Slots are weighted by w_k = exp(−k / decay). DeepSpec's code uses decay = 4.0 with 0-based k (the default here);
the paper writes exp(−(k−1)/γ) with 1-based k, i.e. decay = γ. The loss is Σ w_k·loss_k / Σ w_k over valid slots.

`slot_losses` returns sums, not means, so that data-parallel training can divide by the global weight (see
`trainer.py`) and give exactly the gradient of one process on the concatenated batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from vllm_dspark.training.fused_loss import ce_tv


@dataclass(frozen=True)
class LossConfig:
    alpha_ce: float = 0.1
    alpha_tv: float = 0.9
    alpha_conf: float = 1.0
    decay: float = 4.0  # w_k = exp(-k / decay), k 0-based; the paper's form is decay = γ

    def __post_init__(self):
        for f in ("alpha_ce", "alpha_tv", "alpha_conf"):
            v = getattr(self, f)
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{f} must be a finite number >= 0, got {v}")
        if not (self.decay > 0):
            raise ValueError(f"decay must be > 0, got {self.decay}")
        if self.alpha_ce == self.alpha_tv == self.alpha_conf == 0:
            raise ValueError("all loss weights are 0: nothing to train")


@dataclass
class LossSums:
    """Sums over valid slots. `weighted` / `weight` is the loss; the rest are metrics (unweighted)."""

    weighted: torch.Tensor  # Σ w_k · loss_k (carries the gradient)
    weight: torch.Tensor  # Σ w_k
    count: torch.Tensor  # number of valid slots
    ce: torch.Tensor  # Σ CE
    tv: torch.Tensor  # Σ ‖p_d − p_t‖₁
    bce: torch.Tensor  # Σ BCE (0 without a confidence head)
    accept: torch.Tensor  # Σ (1 − ½‖p_d − p_t‖₁): the acceptance proxy
    accept_by_slot: torch.Tensor  # [γ] Σ acceptance proxy per slot
    count_by_slot: torch.Tensor  # [γ]

    def detached(self) -> "LossSums":
        return LossSums(**{f.name: getattr(self, f.name).detach() for f in fields(self)})


def slot_weights(slots: torch.Tensor, decay: float) -> torch.Tensor:
    return torch.exp(-slots.float() / decay)


def slot_losses(
    draft_logits: torch.Tensor,  # [S, V] corrected drafter logits of S valid slots
    target_logits: torch.Tensor,  # [S, V]
    labels: torch.Tensor,  # [S] data tokens
    slots: torch.Tensor,  # [S] 0-based slot index k of each row
    gamma: int,
    cfg: LossConfig,
    conf_logits: torch.Tensor | None = None,  # [S]
    fused: bool = False,  # CE and TV by fused_loss.ce_tv (same values, a fraction of the memory traffic)
) -> LossSums:
    if fused:
        ce, tv = ce_tv(draft_logits, target_logits, labels)
    else:
        logp_d = torch.log_softmax(draft_logits.float(), dim=-1)
        p_d = logp_d.exp()
        p_t = torch.softmax(target_logits.float(), dim=-1)
        ce = -logp_d.gather(-1, labels[:, None]).squeeze(-1)  # [S]
        tv = (p_d - p_t).abs().sum(-1)  # [S] = ‖p_d − p_t‖₁ ∈ [0, 2]
    accept = 1.0 - 0.5 * tv
    per_slot = cfg.alpha_ce * ce + cfg.alpha_tv * tv
    if conf_logits is not None:
        bce = F.binary_cross_entropy_with_logits(conf_logits.float(), accept.detach().clamp(0, 1), reduction="none")
        per_slot = per_slot + cfg.alpha_conf * bce
    else:
        bce = torch.zeros_like(ce)
    w = slot_weights(slots, cfg.decay)
    one = torch.ones_like(ce)
    return LossSums(
        weighted=(w * per_slot).sum(),
        weight=w.sum(),
        count=one.sum(),
        ce=ce.detach().sum(),
        tv=tv.detach().sum(),
        bce=bce.detach().sum(),
        accept=accept.detach().sum(),
        accept_by_slot=torch.zeros(gamma, device=ce.device).index_add(0, slots, accept.detach()),
        count_by_slot=torch.zeros(gamma, device=ce.device).index_add(0, slots, one),
    )
