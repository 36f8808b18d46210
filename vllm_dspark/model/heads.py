"""Sequential heads (vanilla / gated Markov, RNN) and the confidence head, in plain torch.

Parameter names and layouts follow DeepSpec's checkpoints (deepspec-format.md §3, §6, §7):
`markov_w1` is an embedding [V, r]; `markov_w2` is an nn.Linear(r -> V), so its weight is [V, r] — the transpose
of the paper's W2 ∈ R^{r×V}. These modules are the reference the fused kernels (`vllm_dspark.kernels`) are
checked against, and what the vLLM adapter runs when no kernel applies.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vllm_dspark.config import GREEDY_EPS, DSparkConfig

State = torch.Tensor | None


class MarkovHead(nn.Module):
    """Prefix-dependent logit bias B_k from the previous chosen token (and, for `rnn`, a recurrent state).

    step(prev [N], h [N, H], state) -> (bias [N, V], w1_prev [N, r], state')
    """

    def __init__(self, vocab_size: int, hidden_size: int, rank: int, head_type: str = "vanilla"):
        super().__init__()
        self.head_type = head_type
        self.rank = rank
        self.markov_w1 = nn.Embedding(vocab_size, rank)
        self.markov_w2 = nn.Linear(rank, vocab_size, bias=False)
        if head_type == "gated":
            self.gate_proj = nn.Linear(hidden_size + rank, rank, bias=True)
        elif head_type == "rnn":
            self.joint_proj = nn.Linear(2 * rank + hidden_size, 3 * rank, bias=True)
        elif head_type != "vanilla":
            raise ValueError(f"markov_head_type must be vanilla, gated or rnn, got {head_type!r}")

    def init_state(self, n: int, like: torch.Tensor) -> State:
        if self.head_type != "rnn":
            return None
        return like.new_zeros(n, self.rank)

    def step(self, prev_ids: torch.Tensor, hidden: torch.Tensor, state: State = None):
        w1_prev = self.markov_w1(prev_ids)  # [N, r]
        if self.head_type == "vanilla":
            z = w1_prev
        elif self.head_type == "gated":
            gate = torch.sigmoid(self.gate_proj(torch.cat([hidden, w1_prev], dim=-1)))
            z = gate * w1_prev
        else:
            if state is None:
                state = self.init_state(prev_ids.shape[0], w1_prev)
            gate, cand, out = self.joint_proj(torch.cat([state, w1_prev, hidden], dim=-1)).chunk(3, dim=-1)
            g = torch.sigmoid(gate)
            state = g * state + (1 - g) * torch.tanh(cand)
            z = torch.tanh(out)
        return self.markov_w2(z), w1_prev, state

    def teacher_forced(self, prev_ids: torch.Tensor, hidden: torch.Tensor):
        """All block positions at once with given previous tokens (training).

        prev_ids [N, γ], hidden [N, γ, H] -> bias [N, γ, V], w1_prev [N, γ, r]
        """
        if self.head_type != "rnn":
            n, g = prev_ids.shape
            bias, w1_prev, _ = self.step(prev_ids.reshape(-1), hidden.reshape(n * g, -1))
            return bias.view(n, g, -1), w1_prev.view(n, g, -1)
        biases, w1s, state = [], [], None
        for k in range(prev_ids.shape[1]):
            b, w, state = self.step(prev_ids[:, k], hidden[:, k], state)
            biases.append(b)
            w1s.append(w)
        return torch.stack(biases, 1), torch.stack(w1s, 1)


class ConfidenceHead(nn.Module):
    """c_k = sigmoid(w · [h_k ; W1[x_{k-1}]] + b) (or from h_k alone); returns the logit."""

    def __init__(self, hidden_size: int, rank: int, with_markov: bool):
        super().__init__()
        self.with_markov = with_markov
        self.proj = nn.Linear(hidden_size + (rank if with_markov else 0), 1, bias=True)

    def forward(self, hidden: torch.Tensor, w1_prev: torch.Tensor | None) -> torch.Tensor:
        x = torch.cat([hidden, w1_prev], dim=-1) if self.with_markov else hidden
        return self.proj(x.to(self.proj.weight.dtype)).squeeze(-1)


def calibrated_confidence(logits: torch.Tensor, temperatures: list[float] | torch.Tensor | None) -> torch.Tensor:
    """σ(logit_k / T_k) along the last axis (position k); T = 1 when uncalibrated."""
    if temperatures is None:
        return torch.sigmoid(logits)
    t = torch.as_tensor(temperatures, dtype=logits.dtype, device=logits.device)[: logits.shape[-1]]
    return torch.sigmoid(logits / t)


def build_heads(cfg: DSparkConfig) -> tuple[MarkovHead | None, ConfidenceHead | None]:
    markov = (
        MarkovHead(cfg.vocab_size, cfg.hidden_size, cfg.markov_rank, cfg.markov_head_type)
        if cfg.has_markov_head
        else None
    )
    conf = (
        ConfidenceHead(cfg.hidden_size, cfg.markov_rank, cfg.confidence_head_with_markov)
        if cfg.enable_confidence_head
        else None
    )
    return markov, conf


def logits_to_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """float32 draft/target distribution: one-hot argmax at T < GREEDY_EPS (greedy), else softmax(logits / T)."""
    if temperature < GREEDY_EPS:
        return F.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    return torch.softmax(logits.float() / temperature, dim=-1)
