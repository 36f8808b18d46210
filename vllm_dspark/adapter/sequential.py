"""DSpark's sequential stage inside the proposer: block hidden states + base logits -> drafts, probs, confidences.

A thin layer over `vllm_dspark.kernels.markov_step.markov_block` (fused Triton on GPUs, its torch reference on
CPU): it converts the drafter's head modules to the kernel's weight structs once, and gives drafters without a
sequential head (markov_rank = 0) an all-zero rank-1 head so that every drafter draws through the same seeded
sampler. `DraftRound` adds the LM head in front and replays the whole round from CUDA graphs on GPUs. Pure
torch, no vLLM import: `tests/adapter/test_sequential.py` checks the stage against the plain-torch reference
`DSparkDrafter.sample_block` for every head type, and the round's graph replay against its eager run (GPU).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vllm_dspark.kernels.graphs import GraphedDraftRound
from vllm_dspark.kernels.markov_step import KEY_MASK, ConfidenceWeights, MarkovWeights, draft_key, markov_block


@dataclass
class DraftOutput:
    tokens: torch.Tensor  # [R, γ] int64
    probs: torch.Tensor | None  # [R, γ, V] float32 draft distribution (one-hot rows for greedy requests)
    conf_logits: torch.Tensor | None  # [R, γ] float32 raw confidence-head logits


def pad_block(out: DraftOutput, gamma: int) -> DraftOutput:
    """A round drafted to depth d < γ, in the [R, γ] shape vLLM schedules: slots d.. repeat the last draft (tokens),
    with confidence logit -inf (survival 0: the policy never verifies them) and a one-hot draft distribution at
    that token (so even a verified placeholder would be drawn from the distribution handed to the sampler)."""
    r, d = out.tokens.shape
    if d == gamma:
        return out
    if not 0 < d < gamma:
        raise ValueError(f"pad_block: drafted {d} slots, block of {gamma}")
    pad = out.tokens[:, -1:].expand(r, gamma - d)
    tokens = torch.cat([out.tokens, pad], dim=1)
    conf = None if out.conf_logits is None else torch.cat(
        [out.conf_logits, out.conf_logits.new_full((r, gamma - d), float("-inf"))], dim=1)
    probs = None
    if out.probs is not None:
        one_hot = out.probs.new_zeros(r, gamma - d, out.probs.shape[-1]).scatter_(2, pad.unsqueeze(-1), 1.0)
        probs = torch.cat([out.probs, one_hot], dim=1)
    return DraftOutput(tokens=tokens, probs=probs, conf_logits=conf)


def draft_keys(generators: Mapping[int, torch.Generator] | None, num_req: int, rng: torch.Generator) -> torch.Tensor:
    """Philox keys [R] (int64, CPU) of one draft round: `draft_key(seed)` for request i when vLLM holds a seeded
    generator for it (`generators[i]`, seeded with the request's seed), else a fresh key from `rng` (the engine's).
    A seeded request's key depends on its seed alone, so its draft noise does not depend on the rest of the batch."""
    keys = torch.randint(0, KEY_MASK + 1, (num_req,), generator=rng, dtype=torch.int64)
    for i, gen in (generators or {}).items():
        if i < num_req:
            keys[i] = draft_key(gen.initial_seed())
    return keys


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
        temperature: torch.Tensor,  # [R] float; < GREEDY_EPS = greedy
        seeds: torch.Tensor,  # [R] int64
        offsets: torch.Tensor,  # [R] int64 Philox counter base
        want_probs: bool,
    ) -> DraftOutput:
        weights, conf = self.weights(base_logits)
        # The proposer passes all-zero temperatures exactly when it wants no probs (every draft greedy).
        out = markov_block(base_logits, hidden, anchors.long(), weights, temperature, seeds, offsets, conf=conf,
                           output="probs" if want_probs else "none", all_greedy=not want_probs)
        return DraftOutput(tokens=out.tokens, probs=out.probs, conf_logits=out.conf_logits)


class DraftRound:
    """The proposer's draft round after the backbone: base logits (the shared LM head) + the sequential stage.

    On a GPU, `capture` records the round in CUDA graphs, one per batch size (requests) and per kind (greedy
    drafts / drafts with probs), replayed with padding to the next captured size: eagerly the round is γ x 2
    kernel launches plus the head's small ops, and at small batch their launch cost rivals the kernels
    (benchmarks/kernels: ~1-2 ms eager vs ~0.3-0.5 ms replayed on an H100 at V = 152k). Batches above the
    largest captured size, and everything on CPU, run eagerly. Replay outputs are copied out, so callers may
    keep them across rounds exactly as with the eager path. `eager_fallbacks` counts the rounds that ran eagerly
    after a capture was attempted (a larger batch, another γ, a kind not captured, or a failed capture); rounds
    where no graphs were meant to exist (CPU, capture disabled) are not fallbacks.
    """

    def __init__(self, stage: SequentialStage, compute_logits: Callable[[torch.Tensor], torch.Tensor]):
        self.stage, self.compute_logits = stage, compute_logits
        self._graphs: dict[bool, GraphedDraftRound] = {}  # want_probs -> graphs (captured at self._gamma)
        self._gamma: int | None = None
        self._capture_attempted = False
        self.eager_fallbacks = 0

    @property
    def replays_graphs(self) -> bool:
        return bool(self._graphs)

    def replays(self, num_req: int, gamma: int, want_probs: bool) -> bool:
        """Whether a round of this shape would replay a captured graph (else it runs eagerly)."""
        graphs = self._graphs.get(want_probs)
        return graphs is not None and gamma == self._gamma and num_req <= graphs.batch_sizes[-1]

    def _round(self, want_probs: bool):
        def fn(hidden, anchors, temperature, seeds, offsets):  # hidden [R, γ, H]
            r, gamma = hidden.shape[:2]
            base = self.compute_logits(hidden.reshape(r * gamma, -1)).view(r, gamma, -1)
            return self.stage(base, hidden, anchors, temperature, seeds, offsets, want_probs)

        return fn

    def __call__(self, hidden_states, anchors, temperature, seeds, offsets, want_probs: bool,
                 gamma: int) -> DraftOutput:
        """hidden_states [R·γ, H] (final-normed block hidden states), the rest as SequentialStage. γ may change
        from round to round (vLLM's dynamic speculative decoding); graphs serve the γ they were captured at."""
        hidden = hidden_states.view(-1, gamma, hidden_states.shape[-1])
        if self.replays(hidden.shape[0], gamma, want_probs):
            return self._graphs[want_probs](hidden, anchors, temperature, seeds, offsets, clone=True)
        self.eager_fallbacks += self._capture_attempted
        return self._round(want_probs)(hidden, anchors, temperature, seeds, offsets)

    def capture(self, gamma: int, batch_sizes: Sequence[int], probs_batch_sizes: Sequence[int], hidden_size: int,
                dtype: torch.dtype, device: torch.device) -> dict[str, list[int]]:
        """Capture graphs at γ (GPU only; a no-op elsewhere); returns the captured sizes per kind. On an error
        no graph is kept (the round stays eager) and the error is raised."""
        captured: dict[str, list[int]] = {}
        if torch.device(device).type != "cuda" or not torch.cuda.is_available():
            return captured
        self._gamma = gamma
        self._capture_attempted = True
        try:
            self._capture(batch_sizes, probs_batch_sizes, hidden_size, dtype, device, captured)
        except BaseException:
            self._graphs.clear()
            raise
        return captured

    def _capture(self, batch_sizes, probs_batch_sizes, hidden_size, dtype, device, captured) -> None:
        pool = torch.cuda.graph_pool_handle()  # both kinds share one pool: outputs are copied out after replay
        for want_probs, sizes in ((False, batch_sizes), (True, probs_batch_sizes)):
            if not sizes:
                continue
            # Static inputs: one set at the largest size, every graph of this kind reads a leading slice of it
            # (replays run one at a time and copy their inputs in first), not one set per captured size.
            bs, f = max(sizes), dict(device=device)
            full = (torch.zeros(bs, self._gamma, hidden_size, dtype=dtype, **f),
                    torch.zeros(bs, dtype=torch.int64, **f),
                    torch.full((bs,), 1.0 if want_probs else 0.0, dtype=torch.float32, **f),
                    torch.zeros(bs, dtype=torch.int64, **f), torch.zeros(bs, dtype=torch.int64, **f))
            self._graphs[want_probs] = g = GraphedDraftRound(
                self._round(want_probs), sizes, lambda n, full=full: tuple(t[:n] for t in full), device=device,
                pool=pool, capture_error_mode="thread_local")
            pool = g.pool
            captured["probs" if want_probs else "greedy"] = list(g.batch_sizes)
