"""patch_round_without_inputs: a round the gate leaves without drafts, decided before vLLM prepares the drafter's
inputs, keeps the same context rows as the round decided in `propose`; a round that drafts is decided once."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("vllm")
from vllm_dspark.adapter.patches import patch_round_without_inputs as patch  # noqa: E402
from vllm_dspark.adapter.proposer import DSparkProposer  # noqa: E402

from proposer_factory import HIDDEN, make_proposer  # noqa: E402

BLOCK = 16


def _step(seed: int, num_req: int = 3, max_spec_len: int = 0, layers: int = 2):
    """One step's runner state as `propose_draft_token_ids` receives it: aux hidden states and positions longer
    than the step (vLLM's persistent buffers), the attention metadata, the scheduler's output."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 4, (num_req,), generator=g)
    n = int(lens.sum())
    qsl = torch.cat([torch.zeros(1, dtype=torch.int32), lens.cumsum(0).int()])
    starts = torch.randint(0, 40, (num_req,), generator=g)
    positions = torch.cat([s + torch.arange(int(k)) for s, k in zip(starts, lens)] + [torch.zeros(5, dtype=torch.long)])
    table = torch.randperm(64, generator=g)[: num_req * 4].view(num_req, 4).int()
    aux = [torch.randn(n + 5, HIDDEN, generator=g) for _ in range(layers)]
    cad = SimpleNamespace(batch_size=lambda: num_req, num_actual_tokens=n, max_query_len=int(lens.max()),
                          query_start_loc=qsl, block_table_tensor=table, slot_mapping=None)
    runner = SimpleNamespace(use_aux_hidden_state_outputs=True, _get_positions=lambda k: positions[:k])
    return dict(runner=runner, scheduler_output=SimpleNamespace(num_spec_tokens_to_schedule=4),
                sampling_metadata=SimpleNamespace(generators={}), aux_hidden_states=aux,
                spec_decode_metadata=SimpleNamespace(max_spec_len=max_spec_len), common_attn_metadata=cad)


def _proposer(monkeypatch, draft: bool, calls: dict):
    p = make_proposer(monkeypatch, mode="confidence")
    p._no_draft_rounds, p.block_size = True, BLOCK

    def gate(num_req, sampling_metadata):
        calls["gate"] = calls.get("gate", 0) + 1
        return draft

    real_observe = p._observe_step

    def observe(cad, rejected):
        calls["observe"] = calls.get("observe", 0) + 1
        return real_observe(cad, rejected)

    monkeypatch.setattr(p, "_gate_says_draft", gate)
    monkeypatch.setattr(p, "_observe_step", observe)
    return p


def _propose_kwargs(step: dict) -> dict:
    """What vLLM's own preparation hands `propose` for a step that verified no drafts: every scheduled row."""
    cad, n = step["common_attn_metadata"], step["common_attn_metadata"].num_actual_tokens
    return dict(target_token_ids=torch.zeros(n, dtype=torch.int32), target_positions=step["runner"]._get_positions(n),
                target_hidden_states=torch.cat([h[:n] for h in step["aux_hidden_states"]], dim=-1),
                next_token_ids=torch.zeros(cad.batch_size(), dtype=torch.int32), token_indices_to_sample=None,
                sampling_metadata=step["sampling_metadata"], common_attn_metadata=cad,
                num_rejected_tokens_gpu=torch.zeros(cad.batch_size(), dtype=torch.int32))


def test_a_round_without_drafts_keeps_the_rows_propose_would_keep(monkeypatch):
    early, late = _proposer(monkeypatch, False, {}), _proposer(monkeypatch, False, {})
    for seed in range(4):
        step = _step(seed)
        drafts = early.round_without_inputs(**step)
        assert drafts is not None and drafts.shape == (3, 0) and drafts.dtype == torch.int64
        assert late.propose(4, **_propose_kwargs(step)).shape == (3, 0)
        assert early._last_round == late._last_round == (3, False, 0.0)
    rows_early, rows_late = early._backlog.take(), late._backlog.take()
    for a, b in zip(rows_early, rows_late, strict=True):
        assert torch.equal(a, b)
    assert rows_early[0].shape[1] == 2 * HIDDEN  # both target layers' features, side by side


def test_a_round_that_drafts_is_decided_once(monkeypatch):
    calls: dict = {}
    p = _proposer(monkeypatch, True, calls)
    parent = []
    monkeypatch.setattr(DSparkProposer.__mro__[1], "propose", lambda self, width, **kw: parent.append(width)
                        or torch.zeros(3, width, dtype=torch.int64))
    step = _step(0)
    assert p.round_without_inputs(**step) is None and p._decided
    assert calls == {"gate": 1, "observe": 1}
    p.propose(4, **_propose_kwargs(step))
    assert calls == {"gate": 1, "observe": 1} and parent and p._decided is None  # no second step observation
    p.propose(4, **_propose_kwargs(_step(1)))  # a round vLLM prepared without asking first decides itself
    assert calls == {"gate": 2, "observe": 2}


@pytest.mark.parametrize("why", ["verified drafts", "no backlog", "async engine", "no aux states", "not dspark"])
def test_other_rounds_go_through_vllms_preparation_untouched(monkeypatch, why):
    calls: dict = {}
    p = _proposer(monkeypatch, False, calls)
    step = _step(0, max_spec_len=2 if why == "verified drafts" else 0)
    if why == "no backlog":
        p._backlog = None
    elif why == "async engine":
        p._no_draft_rounds = False
    elif why == "no aux states":
        step["aux_hidden_states"] = None
    elif why == "not dspark":
        p.is_dspark = False
    assert p.round_without_inputs(**step) is None
    assert calls == {} and p._decided is None and p._last_round is None


def test_the_runner_asks_the_drafter_first():
    """The wrapper returns the drafter's early drafts without the original, else calls it with every argument;
    drafters without the hook (other methods) always get the original."""
    seen = []

    def original(self, *args, **kwargs):
        seen.append((args, kwargs))
        return "prepared"

    wrapped = patch._wrappers(original)["propose_draft_token_ids"]
    args = ("sched", "sampled", "meta", "hidden", "sample_hidden", ["aux"], "spec_meta", "cad", "slots")
    early = torch.zeros(2, 0, dtype=torch.int64)
    runner = SimpleNamespace(drafter=SimpleNamespace(round_without_inputs=lambda **kw: early),
                             _draft_probs="stale", _draft_prob_req_ids=["stale"])
    assert wrapped(runner, *args) is early and not seen
    assert runner._draft_probs is None and runner._draft_prob_req_ids is None
    asked = []
    runner.drafter = SimpleNamespace(round_without_inputs=lambda **kw: asked.append(kw) or None)
    assert wrapped(runner, *args) == "prepared" and seen == [(args, {})]
    assert asked[0]["aux_hidden_states"] == ["aux"] and asked[0]["common_attn_metadata"] == "cad"
    assert asked[0]["spec_decode_metadata"] == "spec_meta" and asked[0]["runner"] is runner
    runner.drafter = SimpleNamespace()
    assert wrapped(runner, *args) == "prepared" and len(seen) == 2
