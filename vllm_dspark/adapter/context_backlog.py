"""The drafter's context K/V of rounds that draft nothing, written later in one batch.

A DFlash-style drafter attends to K/V computed from the target's hidden states at every context position. A round
that drafts nothing (draft gate off, or γ = 0 under vLLM's dynamic speculative decoding) must still provide them
for the positions the target just processed, but writing them each step is a chain of small ops (fc projection,
K/V projection, norm, RoPE, cache insert) per step, a fixed cost that is most of what a drafter-loaded server pays
over the target alone while drafting is off. Nothing reads the drafter's cache until the next drafting round, so
those rows (the target's hidden states, positions and cache slots) wait here and are written in one batch right
before the next drafting round writes its own, or as soon as they pass a size bound.

Order is what makes this equal to writing every step. Rows are written in the order the target produced them, and
where two rows share a slot (a rejected draft's position, written again a step later by the accepted token) the
later row wins, as it would have. Rows of requests that finished meanwhile are written too: their blocks may be
prefix-cached and read by a later request, and a block handed to a new owner gets the new owner's rows later, so
an older row never overwrites a newer one. Plain torch: no vLLM import.
"""
from __future__ import annotations

import torch

__all__ = ["ContextBacklog", "ContextSlots", "context_slots"]


def context_slots(positions: torch.Tensor, query_start_loc: torch.Tensor, block_table: torch.Tensor,
                  block_size: int, num_reqs: int) -> torch.Tensor:
    """KV-cache slot of every context row: rows [query_start_loc[i], query_start_loc[i+1]) belong to request i
    (i < num_reqs; the rows must end at query_start_loc[num_reqs]), whose blocks are block_table[i]. int64 [N];
    no host sync (a row's request comes from a search)."""
    rows = torch.arange(positions.shape[0], device=positions.device, dtype=query_start_loc.dtype)
    req = torch.searchsorted(query_start_loc[1:num_reqs + 1], rows, right=True)
    pos = positions.long()
    blocks = block_table[req, (pos // block_size).clamp_max(block_table.shape[1] - 1)].long()
    return blocks * block_size + pos % block_size


class ContextSlots:
    """`context_slots`, read from the target's own slot mapping once that has proven to hold the same slots.

    vLLM hands a DFlash-style drafter the target's attention metadata and the drafter computes its context slots
    from that metadata's block table (as `context_slots` does), so where the drafter's cache shares the target's
    block table and block size the target's slot mapping already holds them: one slice a round instead of about
    ten small ops (a sixth of a round without drafts at one request on a CPU). The mapping is trusted after it
    equalled the computed slots in `checks` rounds, and never once it differed."""

    def __init__(self, checks: int = 8):
        self.checks_left, self.trusted = checks, None  # trusted: None while checking, then True or False

    def __call__(self, positions: torch.Tensor, query_start_loc: torch.Tensor, block_table: torch.Tensor,
                 block_size: int, num_reqs: int, slot_mapping: torch.Tensor | None) -> torch.Tensor:
        n = positions.shape[0]
        usable = slot_mapping is not None and slot_mapping.shape[0] >= n
        if usable and self.trusted:
            return slot_mapping[:n].long()
        slots = context_slots(positions, query_start_loc, block_table, block_size, num_reqs)
        if usable and self.trusted is None:
            if torch.equal(slot_mapping[:n].long(), slots):
                self.checks_left -= 1
                self.trusted = True if self.checks_left <= 0 else None
            else:
                self.trusted = False
        return slots


class ContextBacklog:
    def __init__(self, max_bytes: int):
        if max_bytes < 1:
            raise ValueError(f"context backlog: max_bytes must be >= 1, got {max_bytes}")
        self.max_bytes = max_bytes
        self._chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.nbytes = 0

    @property
    def rows(self) -> int:
        return sum(chunk[0].shape[0] for chunk in self._chunks)

    def add(self, hidden: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor) -> bool:
        """Keep one round's rows (copied: the runner reuses its buffers). Returns whether the backlog is now over
        its bound (the caller then writes it at once)."""
        if not hidden.shape[0] == positions.shape[0] == slots.shape[0]:
            raise ValueError(f"context backlog: {hidden.shape[0]} hidden rows, {positions.shape[0]} positions, "
                             f"{slots.shape[0]} slots")
        if hidden.shape[0]:
            self._chunks.append((hidden.clone(), positions.clone(), slots.clone()))
            self.nbytes += sum(t.numel() * t.element_size() for t in self._chunks[-1])
        return self.nbytes >= self.max_bytes

    def take(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """All rows in the order they came, one per slot (the latest), and empty the backlog; None if empty."""
        chunks, self._chunks, self.nbytes = self._chunks, [], 0
        if not chunks:
            return None
        hidden, positions, slots = (torch.cat(parts) if len(chunks) > 1 else parts[0] for parts in zip(*chunks))
        if len(chunks) > 1:
            keep = _latest_per_slot(slots)
            hidden, positions, slots = hidden[keep], positions[keep], slots[keep]
        return hidden, positions, slots


def _latest_per_slot(slots: torch.Tensor) -> torch.Tensor:
    """Indices of the last row of each distinct slot, in row order."""
    unique, inverse = torch.unique(slots, return_inverse=True)
    order = torch.arange(slots.shape[0], device=slots.device)
    last = torch.full((unique.shape[0],), -1, dtype=order.dtype, device=slots.device)
    last.scatter_reduce_(0, inverse, order, reduce="amax")
    return torch.sort(last).values
