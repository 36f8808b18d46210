"""DSpark's sequential stage inside the proposer: block hidden states + base logits -> drafts, probs, confidences.

A thin layer over `vllm_dspark.kernels.markov_step.markov_block` (fused Triton on GPUs, its torch reference on
CPU): it converts the drafter's head modules to the kernel's weight structs once, and gives drafters without a
sequential head (markov_rank = 0) an all-zero rank-1 head so that every drafter draws through the same seeded
sampler. Pure torch, no vLLM import: `tests/adapter/test_sequential.py` checks it against the plain-torch
reference `DSparkDrafter.sample_block` for every head type.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vllm_dspark.kernels.markov_step import ConfidenceWeights, MarkovWeights, markov_block


@dataclass
class DraftOutput:
    tokens: torch.Tensor  # [R, γ] int64
    probs: torch.Tensor | None  # [R, γ, V] float32 draft distribution (one-hot rows for greedy requests)
    conf_logits: torch.Tensor | None  # [R, γ] float32 raw confidence-head logits


class SequentialStage:
    def __init__(self, markov_head: nn.Module | None, confidence_head: nn.Module | None, vocab_size: int):
        self.markov_head = markov_head
        self.confidence_head = confidence_head
        self.vocab_size = vocab_size
        self._weights: MarkovWeights | None = None
        self._conf: ConfidenceWeights | None = None

    def weights(self, like: torch.Tensor) -> tuple[MarkovWeights, ConfidenceWeights | None]:
        # Built lazily: parameter storage is final only after vLLM loaded the weights.
        if self._weights is None:
            if self.markov_head is not None:
                self._weights = MarkovWeights.from_module(self.markov_head)
            else:
                zero = torch.zeros(self.vocab_size, 1, dtype=like.dtype, device=like.device)
                self._weights = MarkovWeights(zero, zero.clone(), "vanilla")
            if self.confidence_head is not None:
                self._conf = ConfidenceWeights.from_module(self.confidence_head)
        return self._weights, self._conf

    def __call__(
        self,
        base_logits: torch.Tensor,  # [R, γ, V]
        hidden: torch.Tensor,  # [R, γ, H] final-normed block hidden states
        anchors: torch.Tensor,  # [R] int
        temperature: torch.Tensor,  # [R] float; < 1e-5 = greedy
        seeds: torch.Tensor,  # [R] int64
        offsets: torch.Tensor,  # [R] int64 Philox counter base
        want_probs: bool,
    ) -> DraftOutput:
        weights, conf = self.weights(base_logits)
        # The proposer passes all-zero temperatures exactly when it wants no probs (every draft greedy).
        out = markov_block(base_logits, hidden, anchors.long(), weights, temperature, seeds, offsets, conf=conf,
                           output="probs" if want_probs else "none", all_greedy=not want_probs)
        return DraftOutput(tokens=out.tokens, probs=out.probs, conf_logits=out.conf_logits)
