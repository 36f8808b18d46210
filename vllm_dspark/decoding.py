"""Reference speculative decoding with a KV-cached transformers target: the oracle for every fast path.

One round (batch size 1, as in DeepSpec's evaluator, deepspec-format.md §8):
  draft γ tokens from the context features and the anchor; keep a prefix of L of them (the verification length);
  run the target once over [anchor, d_0..d_{L-1}]; accept d_j with probability min(1, p_t(d_j) / p_d(d_j))
  (greedy: d_j == argmax); at the first rejection a, emit a token from the residual max(p_t − p_d, 0); if all L
  are accepted, emit the bonus token from the last target row. The context grows by the target features of the
  verified inputs [anchor, d_0..d_{a-1}], and the emitted token is the next anchor.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from transformers import DynamicCache

from vllm_dspark.config import GREEDY_EPS
from vllm_dspark.model import DraftBlock, DSparkDrafter, logits_to_probs, target_features

VerifyLength = Callable[[DraftBlock], int]  # a round's draft -> how many of its tokens to verify (a prefix)


@dataclass
class RoundRecord:
    proposed: int  # drafts verified this round (L)
    accepted: int  # drafts accepted (a), without the bonus
    draft_token_ids: list[int]  # all γ drafted tokens (the first `proposed` were verified)
    confidence_logits: list[float] | None  # raw confidence logits of all γ drafted slots
    bonus: bool = True  # False when an accepted stop token ended the text (no bonus/correction token)


@dataclass
class GenerationResult:
    output_token_ids: list[int]
    rounds: list[RoundRecord] = field(default_factory=list)

    @property
    def accepted_lengths(self) -> list[int]:
        """Tokens committed per round: accepted drafts plus the bonus token (the paper's and DeepSpec's τ)."""
        return [r.accepted + int(r.bonus) for r in self.rounds]


def _sample(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    return int(torch.multinomial(probs.float(), 1, generator=generator))


def choose_token(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> int:
    """The next token from one row of logits: argmax when greedy, else a draw from softmax(logits / T)."""
    if temperature < GREEDY_EPS:
        return int(logits.argmax())
    return _sample(logits_to_probs(logits, temperature), generator)


def _crop(cache: DynamicCache, length: int) -> None:
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)  # negative = tokens to remove; valid across transformers 4.4x–5.x


def accept_drafts(
    draft_tokens: torch.Tensor,  # [L]
    draft_probs: torch.Tensor,  # [L, V]
    target_probs: torch.Tensor,  # [L + 1, V]
    temperature: float,
    generator: torch.Generator | None,
) -> tuple[int, int]:
    """The lossless acceptance rule. Returns (accepted count a, emitted token)."""
    n = draft_tokens.shape[0]
    for j in range(n):
        tok = int(draft_tokens[j])
        if temperature < GREEDY_EPS:
            ok = int(target_probs[j].argmax()) == tok
        else:
            ratio = target_probs[j, tok] / draft_probs[j, tok].clamp_min(1e-20)
            u = torch.rand((), generator=generator, dtype=torch.float64)
            ok = bool(u < ratio)
        if not ok:
            residual = (target_probs[j] - draft_probs[j]).clamp_min(0)
            if temperature < GREEDY_EPS or residual.sum() <= 0:
                residual = target_probs[j]
            return j, (int(residual.argmax()) if temperature < GREEDY_EPS else _sample(residual, generator))
    last = target_probs[n]
    return n, (int(last.argmax()) if temperature < GREEDY_EPS else _sample(last, generator))


class RoundDrafter(Protocol):
    """A drafter's side of the round loop `speculative_rounds` runs (DSpark / DFlash below, EAGLE-3 in
    training/eagle3.py): it keeps its own context, built from the prompt's target pass."""

    def draft(self, anchor: int, position: int) -> tuple[DraftBlock, int]:
        """The block drafted after `anchor` (at `position`) and how many of its tokens to verify (a prefix)."""

    def commit(self, hidden_states: tuple[torch.Tensor, ...], anchor: int, accepted: list[int]) -> None:
        """The target verified [anchor, drafts...] (its hidden states); grow the context by [anchor, accepted]."""


@torch.no_grad()
def speculative_rounds(
    target: torch.nn.Module,
    prompt_ids: list[int],
    begin: Callable[[tuple[torch.Tensor, ...]], RoundDrafter],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    stop_token_ids: set[int] | frozenset[int] = frozenset(),
) -> GenerationResult:
    """The round loop of the module docstring; `begin(prompt hidden states)` gives the drafter's side."""
    device = next(target.parameters()).device
    cache = DynamicCache()
    out = target(torch.tensor([prompt_ids], device=device), past_key_values=cache, output_hidden_states=True)
    drafter = begin(out.hidden_states)
    start = len(prompt_ids)
    anchor = choose_token(out.logits[0, -1], temperature, generator)
    result = GenerationResult([anchor])
    while len(result.output_token_ids) < max_new_tokens and anchor not in stop_token_ids:
        block, wanted = drafter.draft(anchor, start)
        # Never verify past the token budget: the bonus token is the last one we may emit.
        n_verify = max(0, min(wanted, block.tokens.shape[1], max_new_tokens - len(result.output_token_ids) - 1))
        drafts = block.tokens[0, :n_verify]
        verify_in = torch.cat([torch.tensor([anchor], device=device), drafts])[None]
        out = target(verify_in, past_key_values=cache, output_hidden_states=True)
        target_probs = logits_to_probs(out.logits[0].float(), temperature)
        a, emitted = accept_drafts(drafts, block.probs[0, :n_verify], target_probs, temperature, generator)
        accepted = drafts[:a].tolist()
        if stop_token_ids:  # an accepted stop token ends the text: keep it, drop the rest and the bonus
            stops = [i for i, t in enumerate(accepted) if t in stop_token_ids]
            if stops:
                a, accepted, emitted = stops[0] + 1, accepted[: stops[0] + 1], None
        conf = None if block.confidence_logits is None else block.confidence_logits[0].float().tolist()
        result.rounds.append(RoundRecord(
                proposed=n_verify,
                accepted=a,
                draft_token_ids=block.tokens[0].tolist(),
                confidence_logits=conf,
                bonus=emitted is not None,
            ))
        result.output_token_ids += accepted + ([] if emitted is None else [emitted])
        if emitted is None:
            break
        drafter.commit(out.hidden_states, anchor, accepted)
        start += a + 1
        _crop(cache, start)
        anchor = emitted
    del result.output_token_ids[max_new_tokens:]
    return result


class _DSparkRounds:
    """DSpark / DFlash: the context is the projected target features; a block is drafted in parallel."""

    def __init__(self, drafter: DSparkDrafter, hidden_states, temperature: float, generator,
                 verify_length: VerifyLength | None):
        self.drafter, self.temperature, self.generator = drafter, temperature, generator
        self.verify_length = verify_length
        self.layer_ids = drafter.config.target_layer_ids
        self.ctx = drafter.project_context(target_features(hidden_states, self.layer_ids))  # [1, C, H]

    def draft(self, anchor: int, position: int) -> tuple[DraftBlock, int]:
        device = self.ctx.device
        anchor_t = torch.tensor([anchor], device=device)
        hidden = self.drafter.block_hidden(self.ctx, torch.arange(position, device=device)[None], anchor_t,
                                           torch.tensor([position], device=device))
        block = self.drafter.sample_block(hidden, anchor_t, self.temperature, self.generator)
        return block, block.tokens.shape[1] if self.verify_length is None else int(self.verify_length(block))

    def commit(self, hidden_states, anchor: int, accepted: list[int]) -> None:
        new_rows = target_features(hidden_states, self.layer_ids)[:, : len(accepted) + 1]  # [anchor, d_0..d_{a-1}]
        self.ctx = torch.cat([self.ctx, self.drafter.project_context(new_rows)], dim=1)


def speculative_generate(
    target: torch.nn.Module,
    drafter: DSparkDrafter,
    prompt_ids: list[int],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    verify_length: VerifyLength | None = None,
    generator: torch.Generator | None = None,
    stop_token_ids: set[int] | frozenset[int] = frozenset(),
) -> GenerationResult:
    return speculative_rounds(
        target, prompt_ids, lambda hidden: _DSparkRounds(drafter, hidden, temperature, generator, verify_length),
        max_new_tokens=max_new_tokens, temperature=temperature, generator=generator, stop_token_ids=stop_token_ids)


@torch.no_grad()
def plain_generate(
    target: torch.nn.Module,
    prompt_ids: list[int],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    stop_token_ids: set[int] | frozenset[int] = frozenset(),
) -> list[int]:
    """The target alone, one token per step, same sampling rule: what speculative decoding must reproduce."""
    device = next(target.parameters()).device
    cache = DynamicCache()
    out = target(torch.tensor([prompt_ids], device=device), past_key_values=cache)
    tokens: list[int] = []
    while True:
        tok = choose_token(out.logits[0, -1], temperature, generator)
        tokens.append(tok)
        if len(tokens) >= max_new_tokens or tok in stop_token_ids:
            return tokens
        out = target(torch.tensor([[tok]], device=device), past_key_values=cache)
