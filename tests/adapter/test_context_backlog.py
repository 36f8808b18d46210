"""The context backlog: deferred writes must leave the drafter's cache as writing every round would."""
from __future__ import annotations

import pytest
import torch

from vllm_dspark.adapter import context_backlog
from vllm_dspark.adapter.context_backlog import ContextBacklog, ContextSlots, context_slots


def _slots_reference(positions, query_start_loc, block_table, block_size, num_reqs):
    out = []
    for i in range(num_reqs):
        for row in range(int(query_start_loc[i]), int(query_start_loc[i + 1])):
            p = int(positions[row])
            out.append(int(block_table[i, p // block_size]) * block_size + p % block_size)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_context_slots_match_block_table_lookup(seed):
    g = torch.Generator().manual_seed(seed)
    num_reqs, block_size, max_blocks = 7, 16, 12
    lens = torch.randint(1, 9, (num_reqs,), generator=g)
    qsl = torch.cat([torch.zeros(1, dtype=torch.int32), lens.cumsum(0).int()])
    # a padded buffer past num_reqs (as vLLM's persistent query_start_loc): must not be read
    qsl_buf = torch.cat([qsl, torch.zeros(3, dtype=torch.int32)])
    starts = torch.randint(0, max_blocks * block_size - 8, (num_reqs,), generator=g)
    positions = torch.cat([s + torch.arange(int(n)) for s, n in zip(starts, lens)]).int()
    table = torch.randperm(200, generator=g)[: (num_reqs + 2) * max_blocks].view(num_reqs + 2, max_blocks).int()
    got = context_slots(positions, qsl_buf, table, block_size, num_reqs)
    assert got.dtype == torch.int64
    assert got.tolist() == _slots_reference(positions, qsl, table, block_size, num_reqs)


def _step(seed: int, num_reqs: int = 5, block_size: int = 16, max_blocks: int = 8):
    """One step's context rows (positions, query_start_loc, block table) and the target's slot mapping for them,
    padded past the rows as vLLM's persistent buffer is."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 5, (num_reqs,), generator=g)
    qsl = torch.cat([torch.zeros(1, dtype=torch.int32), lens.cumsum(0).int()])
    starts = torch.randint(0, max_blocks * block_size - 5, (num_reqs,), generator=g)
    positions = torch.cat([s + torch.arange(int(n)) for s, n in zip(starts, lens)]).int()
    table = torch.randperm(100, generator=g)[: num_reqs * max_blocks].view(num_reqs, max_blocks).int()
    mapping = torch.tensor(_slots_reference(positions, qsl, table, block_size, num_reqs) + [-1, -1])
    return (positions, qsl, table, block_size, num_reqs), mapping


def test_context_slots_read_the_target_mapping_once_it_proved_equal(monkeypatch):
    computed = []
    real = context_backlog.context_slots
    monkeypatch.setattr(context_backlog, "context_slots", lambda *a: computed.append(1) or real(*a))
    source = ContextSlots(checks=3)
    for seed in range(6):
        args, mapping = _step(seed)
        got = source(*args, mapping)
        assert got.tolist() == _slots_reference(*args)
    assert len(computed) == 3 and source.trusted  # three checks, then the mapping alone
    args, _ = _step(7)
    assert source(*args, None).tolist() == _slots_reference(*args) and len(computed) == 4  # no mapping: computed


def test_context_slots_never_trust_a_mapping_that_differed_once():
    source = ContextSlots(checks=3)
    for seed in range(6):
        args, mapping = _step(seed)
        if seed == 1:
            mapping = mapping + 1  # another block table or block size than the drafter's
        assert source(*args, mapping).tolist() == _slots_reference(*args)
    assert source.trusted is False


def _rounds(seed: int, num_rounds: int, num_slots: int, hidden: int):
    """Rounds of context rows; slots repeat across rounds (a rejected position written again later)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(num_rounds):
        n = int(torch.randint(0, 6, (1,), generator=g))
        slots = torch.randperm(num_slots, generator=g)[:n]  # distinct within a round, as in serving
        yield torch.randn(n, hidden, generator=g), torch.randint(0, 1000, (n,), generator=g), slots


@pytest.mark.parametrize("seed", range(6))
def test_backlog_leaves_the_cache_as_writing_every_round(seed):
    num_slots, hidden = 10, 3
    eager = torch.zeros(num_slots, hidden + 1)
    deferred = torch.zeros(num_slots, hidden + 1)
    backlog = ContextBacklog(max_bytes=1 << 30)

    def write(cache, h, p, s):
        assert len(set(s.tolist())) == len(s), "a write must not carry one slot twice (undefined on GPUs)"
        cache[s] = torch.cat([h, p[:, None].float()], dim=1)

    for i, (h, p, s) in enumerate(_rounds(seed, 12, num_slots, hidden)):
        write(eager, h, p, s)
        backlog.add(h, p, s)
        if i % 5 == 4:  # a drafting round now and then
            taken = backlog.take()
            if taken is not None:
                write(deferred, *taken)
            assert torch.equal(eager, deferred)
    taken = backlog.take()
    if taken is not None:
        write(deferred, *taken)
    assert torch.equal(eager, deferred)
    assert backlog.take() is None and backlog.rows == 0 and backlog.nbytes == 0


def test_backlog_keeps_row_order_and_copies_its_inputs():
    backlog = ContextBacklog(max_bytes=1 << 30)
    h = torch.arange(6.0).view(3, 2)
    p = torch.tensor([5, 6, 7])
    s = torch.tensor([9, 4, 1])
    backlog.add(h, p, s)
    backlog.add(h[:1] + 100, torch.tensor([8]), torch.tensor([2]))
    h.zero_()  # the runner reuses its buffers
    hidden, positions, slots = backlog.take()
    assert slots.tolist() == [9, 4, 1, 2] and positions.tolist() == [5, 6, 7, 8]
    assert hidden[:, 0].tolist() == [0.0, 2.0, 4.0, 100.0]


def test_backlog_reports_its_bound():
    row_bytes = 4 * 4 + 8 + 8  # 4 float32 + int64 position + int64 slot
    backlog = ContextBacklog(max_bytes=3 * row_bytes)
    one = (torch.zeros(1, 4), torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64))
    assert not backlog.add(*one) and not backlog.add(*one)
    assert backlog.add(*one) and backlog.rows == 3 and backlog.nbytes == 3 * row_bytes
    # an empty round adds nothing: still over the bound
    assert backlog.add(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    assert backlog.rows == 3


def test_backlog_refuses_mismatched_rows():
    backlog = ContextBacklog(max_bytes=1024)
    with pytest.raises(ValueError, match="2 hidden rows, 3 positions"):
        backlog.add(torch.zeros(2, 4), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="max_bytes"):
        ContextBacklog(max_bytes=0)
