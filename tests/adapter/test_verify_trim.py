"""Worker-side trimming of scheduled drafts to DSpark's verification lengths (patch_runner_trim) and the stats
correction on the scheduler side (patch_scheduler_unverified), on hand-made scheduler outputs.

Expected values are worked out by hand: a request scheduled k drafts and trimmed to n keeps its first n drafts,
its scheduled token count and the batch total drop by k − n, the scheduler's own output keeps all k (so the tail
counts as rejected there), and the stats count n drafts (no draft round when n = 0).
"""
from __future__ import annotations

import dataclasses
import functools
import time
import types

import numpy as np
import pytest
import torch

pytest.importorskip("vllm")

from vllm_dspark.adapter.patches import patch_runner_trim as trim  # noqa: E402
from vllm_dspark.adapter.patches import patch_scheduler_unverified as unverified  # noqa: E402

from proposer_factory import make_proposer, vllm_config  # noqa: E402


@dataclasses.dataclass
class FakeSchedulerOutput:
    scheduled_spec_decode_tokens: dict
    num_scheduled_tokens: dict
    total_num_scheduled_tokens: int
    num_invalid_spec_tokens: dict | None = None


def _output():
    # a, b, d: 1 sampled + 4 drafts; c: 1 + 2 (the scheduler shortened it); e: a 20-token prefill chunk.
    return FakeSchedulerOutput(
        scheduled_spec_decode_tokens={"a": [1, 2, 3, 4], "b": [5, 6, 7, 8], "c": [9, 10], "d": [11, 12, 13, 14]},
        num_scheduled_tokens={"a": 5, "b": 5, "c": 3, "d": 5, "e": 20},
        total_num_scheduled_tokens=38,
    )


def test_trim_cuts_a_prefix_and_leaves_the_schedulers_copy_alone():
    original = _output()
    # a -> 2 drafts, b -> 0, c -> 4 (more than scheduled: all 2), d -> 4 (all), x: not scheduled.
    out, scheduled, cut = trim.trim_scheduled_drafts(original, {"a": 2, "b": 0, "c": 4, "d": 4, "x": 1})
    assert out.scheduled_spec_decode_tokens == {"a": [1, 2], "c": [9, 10], "d": [11, 12, 13, 14]}
    assert out.num_scheduled_tokens == {"a": 3, "b": 1, "c": 3, "d": 5, "e": 20}
    assert out.total_num_scheduled_tokens == 32  # 38 − 2 − 4
    assert scheduled == {"a": 4, "b": 4} and cut == {"a": 2, "b": 4}
    assert original == _output()  # the engine core may hold this very object


def test_trim_without_cuts_returns_the_input():
    original = _output()
    out, scheduled, cut = trim.trim_scheduled_drafts(original, {"a": 4, "c": 2})
    assert out is original and scheduled == {} and cut == {}


# vLLM's `GrammarOutput` by release (tests/adapter/test_patches.py checks the installed one's fields).
@dataclasses.dataclass
class GrammarOutput:  # vLLM >= 0.32
    structured_output_request_ids: list
    grammar_bitmask: np.ndarray
    num_acceptable_drafts: list | None = None


@dataclasses.dataclass
class GrammarOutputUpTo031:  # vLLM 0.26 ... 0.31: no num_acceptable_drafts
    structured_output_request_ids: list
    grammar_bitmask: np.ndarray


def test_grammar_bitmask_keeps_the_rows_of_verified_positions():
    # The scheduler's rows: b 1 + 4 (0..4), a 1 + 4 (5..9), d 1 + 4 (10..14), in structured_output_request_ids order.
    grammar = GrammarOutput(["b", "a", "d"], np.arange(15, dtype=np.int32)[:, None], [4, 4, 3])
    out, scheduled, _ = trim.trim_scheduled_drafts(_output(), {"a": 2, "b": 0})
    got = trim.trim_grammar_output(grammar, out.scheduled_spec_decode_tokens, scheduled)
    assert got.grammar_bitmask[:, 0].tolist() == [0, 5, 6, 7, 10, 11, 12, 13, 14]
    assert got.structured_output_request_ids == ["b", "a", "d"] and got.num_acceptable_drafts == [0, 2, 3]
    assert trim.trim_grammar_output(grammar, _output().scheduled_spec_decode_tokens, {}) is grammar


def test_grammar_output_without_acceptable_drafts_field():
    grammar = GrammarOutputUpTo031(["b", "a"], np.arange(10, dtype=np.int32)[:, None])
    out, scheduled, _ = trim.trim_scheduled_drafts(_output(), {"a": 2, "b": 0})
    got = trim.trim_grammar_output(grammar, out.scheduled_spec_decode_tokens, scheduled)
    assert got.grammar_bitmask[:, 0].tolist() == [0, 5, 6, 7]


# The two bitmask layouts, written from vLLM's source: the scheduler side (`StructuredOutputManager.grammar_bitmask`)
# and the runner side (`apply_grammar_bitmask`). A row holds 100 × (request number) + k, k = drafts before it
# (row k of a request is its mask after its first k drafts; k = len(drafts) is the bonus position); -1 = never
# filled (0.33 reuses its buffer: rows past a request's last are stale).
def _bitmask(spec: dict, req_ids: list, gamma: int | None) -> np.ndarray:
    """gamma None: packed, 1 + len(drafts) rows per request (<= 0.32); else fixed blocks of 1 + gamma (0.33)."""
    rows = []
    for n, req_id in enumerate(req_ids):
        block = [100 * n + k for k in range(1 + len(spec.get(req_id, ())))]
        rows += block if gamma is None else block + [-1] * (1 + gamma - len(block))
    return np.array(rows, dtype=np.int32)[:, None]


def _rows_read(bitmask: np.ndarray, req_ids: list, runner_spec: dict, fixed_stride: bool) -> dict:
    """The rows `apply_grammar_bitmask` gives each request's 1 + (runner's drafts) logits."""
    stride = bitmask.shape[0] // len(req_ids)  # 0.33: `mask_stride = grammar_bitmask.shape[0] // len(...)`
    got, start = {}, 0
    for n, req_id in enumerate(req_ids):
        num_rows = 1 + len(runner_spec.get(req_id, ()))
        if fixed_stride:
            start = n * stride
        got[req_id] = bitmask[start:start + num_rows, 0].tolist()
        if not fixed_stride:
            start += num_rows
    return got


@pytest.mark.parametrize("fixed_stride", [False, True], ids=["packed<=0.32", "fixed-stride-0.33"])
def test_trimmed_requests_read_the_masks_of_their_kept_drafts(fixed_stride):
    req_ids = ["b", "c", "a", "d"]  # structured-output requests in the scheduler's order; c was scheduled 2 of γ = 4
    sched = _output()
    bitmask = _bitmask(sched.scheduled_spec_decode_tokens, req_ids, 4 if fixed_stride else None)
    grammar = GrammarOutput(req_ids, bitmask, [4, 2, 4, 4])
    out, scheduled, _ = trim.trim_scheduled_drafts(sched, {"a": 2, "b": 0, "d": 3})
    got = trim.trim_grammar_output(grammar, out.scheduled_spec_decode_tokens, scheduled, fixed_stride)
    read = _rows_read(got.grammar_bitmask, req_ids, out.scheduled_spec_decode_tokens, fixed_stride)
    assert read == {"b": [0], "c": [100, 101, 102], "a": [200, 201, 202], "d": [300, 301, 302, 303]}
    assert got.num_acceptable_drafts == [0, 2, 2, 3]
    if fixed_stride:  # what packing the rows would do there: later requests read another request's masks
        packed = trim.trim_grammar_output(grammar, out.scheduled_spec_decode_tokens, scheduled, False)
        assert _rows_read(packed.grammar_bitmask, req_ids, out.scheduled_spec_decode_tokens, True) != read


def test_optimistic_counts_restored_to_the_scheduled_drafts():
    requests = {"a": types.SimpleNamespace(prev_num_draft_len=2), "b": types.SimpleNamespace(prev_num_draft_len=0)}
    trim.restore_optimistic_counts(requests, {"a": 4, "b": 4, "gone": 3})
    assert requests["a"].prev_num_draft_len == 4 and requests["b"].prev_num_draft_len == 4


def test_cut_counts_reach_sync_and_async_outputs():
    sync = types.SimpleNamespace(sampled_token_ids=[[1]])
    assert getattr(trim.attach_unverified(sync, {"a": 2}), trim.UNVERIFIED_ATTR) == {"a": 2}
    inner = types.SimpleNamespace(sampled_token_ids=[[1]])
    pending = types.SimpleNamespace(get_output=lambda: inner)
    resolved = trim.attach_unverified(pending, {"b": 1}).get_output()
    assert resolved is inner and getattr(inner, trim.UNVERIFIED_ATTR) == {"b": 1}
    plain = types.SimpleNamespace(sampled_token_ids=[[1]])
    assert not hasattr(trim.attach_unverified(plain, {}), trim.UNVERIFIED_ATTR)


class _Drafter:
    is_dspark = True
    serving = types.SimpleNamespace(mode="confidence")

    def __init__(self, lengths):
        self.lengths, self.asked = lengths, None

    def verify_lengths(self, scheduled):
        self.asked = {r: list(t) for r, t in scheduled.items()}
        return self.lengths


def _fake_runner_module():
    """A runner whose _update_states-like bookkeeping sets prev_num_draft_len from what it was given."""

    class GPUModelRunner:
        def execute_model(self, scheduler_output, intermediate_tensors=None):
            self.seen = scheduler_output
            for req_id, state in self.requests.items():
                state.prev_num_draft_len = len(scheduler_output.scheduled_spec_decode_tokens.get(req_id, ()))
            return None

        def sample_tokens(self, grammar_output):
            self.grammar = grammar_output
            return types.SimpleNamespace(sampled_token_ids=[[7]])

    return types.SimpleNamespace(GPUModelRunner=GPUModelRunner)


@pytest.mark.parametrize("version,rows_left", [("0.32.0", [0, 1]), ("0.26.0", [0, 1]), ("0.33.0", [0, 1, 2, 3, 4])])
def test_wrapped_runner_trims_before_the_target_and_reports_the_tail(monkeypatch, version, rows_left):
    from packaging.version import Version

    monkeypatch.setattr(trim.compat, "vllm_version", lambda: Version(version))
    module = _fake_runner_module()
    monkeypatch.setattr(trim, "_originals", dict.fromkeys(trim._originals))  # the real runner's stay untouched
    trim._patch(module)
    runner = module.GPUModelRunner()
    runner.vllm_config = vllm_config()
    runner.drafter = _Drafter({"a": 1, "b": 4})
    runner.requests = {r: types.SimpleNamespace(prev_num_draft_len=0) for r in ("a", "b", "c", "d")}
    sched = _output()
    assert runner.execute_model(sched) is None
    assert runner.drafter.asked == _output().scheduled_spec_decode_tokens  # the policy saw the scheduled drafts
    assert runner.seen.scheduled_spec_decode_tokens["a"] == [1] and runner.seen.total_num_scheduled_tokens == 35
    assert sched == _output()
    assert runner.requests["a"].prev_num_draft_len == 4  # scheduled, not verified (optimistic count)
    assert runner.requests["b"].prev_num_draft_len == 4 and runner.requests["c"].prev_num_draft_len == 2
    out = runner.sample_tokens(GrammarOutput(["a"], np.arange(5, dtype=np.int32)[:, None]))
    assert getattr(out, trim.UNVERIFIED_ATTR) == {"a": 3}
    # a: sampled position + its 1 verified draft (packed), or all its rows in place (0.33's fixed stride)
    assert runner.grammar.grammar_bitmask[:, 0].tolist() == rows_left
    assert not hasattr(runner.sample_tokens(None), trim.UNVERIFIED_ATTR)  # one step's counts, once

    runner.drafter.serving = types.SimpleNamespace(mode="static")  # static: no policy call, nothing cut
    runner.drafter.asked = None
    runner.execute_model(_output())
    assert runner.drafter.asked is None and runner.seen == _output()


def test_runner_without_our_proposer_fails_loudly():
    """Serving DSpark with the proposer not at `runner.drafter` (vLLM moved it) is an error, not untrimmed drafts;
    a runner serving no DSpark drafter runs untouched."""
    module = _fake_runner_module()
    trim.wrap_methods(module.GPUModelRunner, dict.fromkeys(trim._originals),
                      functools.partial(trim._wrappers, fixed_stride=False))
    runner = module.GPUModelRunner()
    runner.requests = {}
    runner.vllm_config, runner.drafter = vllm_config(), types.SimpleNamespace()
    with pytest.raises(RuntimeError, match=r"`GPUModelRunner\.drafter` is SimpleNamespace, not the DSpark proposer"):
        runner.execute_model(_output())
    runner.vllm_config = types.SimpleNamespace(speculative_config=None)
    assert runner.execute_model(_output()) is None and runner.seen == _output()


def test_cut_counts_on_an_unknown_step_output_fail_loudly():
    with pytest.raises(RuntimeError, match="neither `get_output`.*nor `sampled_token_ids`"):
        trim.attach_unverified(types.SimpleNamespace(tokens=[[1]]), {"a": 1})


def test_scheduler_stats_count_verified_drafts(monkeypatch):
    from vllm.v1.core.sched.scheduler import Scheduler

    from vllm_dspark.adapter import patches

    patches.apply()
    sched = types.SimpleNamespace(log_stats=True, num_spec_tokens=4, _dspark_cut={"a": 2, "b": 4})
    invalid = unverified.merge_unverified({"a": 1, "z": 3}, sched._dspark_cut)
    assert invalid == {"a": 2, "b": 4, "z": 3}
    stats = Scheduler.make_spec_decoding_stats(sched, None, num_draft_tokens=4, num_accepted_tokens=1,
                                               num_invalid_spec_tokens=invalid, request_id="a")
    assert (stats.num_drafts, stats.num_draft_tokens, stats.num_accepted_tokens) == (1, 2, 1)
    assert stats.num_draft_tokens_per_pos == [1, 1, 0, 0]
    same = Scheduler.make_spec_decoding_stats(sched, stats, num_draft_tokens=4, num_accepted_tokens=0,
                                              num_invalid_spec_tokens=invalid, request_id="b")
    assert same is stats and stats.num_drafts == 1  # cut to 0 drafts: no draft round


def _confidence_proposer(monkeypatch):
    """Mode confidence, γ 4, step time 10 ms + 0.5 ms/token, no online refit."""
    from vllm_dspark.scheduling.cost import CostTable

    xs = [1, 2, 4, 8, 16, 32, 64]
    prop = make_proposer(monkeypatch, mode="confidence", online_refit=False)
    prop.policy.table = CostTable(np.array(xs), np.array([10e-3 + 0.5e-3 * x for x in xs]))
    return prop


def test_proposer_lengths_from_the_last_rounds_confidences(monkeypatch):
    from vllm_dspark.adapter.proposer import PendingConfidences

    prop = _confidence_proposer(monkeypatch)
    # rows: a certain (conf 1), b hopeless (conf 0), d drafted but not scheduled now
    prop._pending = PendingConfidences(["a", "b", "d"], torch.tensor([[1.0] * 4, [0.0] * 4, [1.0] * 4]), None, None)
    lengths = prop.verify_lengths({"a": [1, 2, 3], "b": [4, 5, 6, 7], "c": [8, 9]})
    # a: every draft is accepted for sure, so each adds a token for 0.5 ms: all 3 scheduled (capped by them);
    # b: drafts that are never accepted add cost only: 0; c: drafted in an older round, left out (verify all).
    assert lengths == {"a": 3, "b": 0}
    assert prop.policy.stats.verified_tokens == 3 and prop.policy.stats.requests == 2
    assert prop.verify_lengths({"a": [1]}) == {}  # consumed: the next step's drafts need the next round's conf


def test_proposer_verifies_seeded_requests_in_full(monkeypatch):
    """A seeded request keeps every scheduled draft even when its confidences say cut (its output must not depend
    on the batch's load); the unseeded one beside it is still cut by the policy."""
    from vllm_dspark.adapter.proposer import PendingConfidences

    prop = _confidence_proposer(monkeypatch)
    hopeless = torch.zeros(2, 4)
    prop._pending = PendingConfidences(["s", "u"], hopeless, None, None, frozenset({"s"}))
    assert prop.verify_lengths({"s": [1, 2, 3, 4], "u": [5, 6, 7, 8]}) == {"u": 0}  # s absent: all 4 verified
    assert prop.policy.stats.requests == 1


def test_proposer_never_verifies_past_the_drafted_depth(monkeypatch):
    """A round drafted to depth 2 of 4 (placeholders after): even certain confidences verify at most 2, and the
    depth itself comes from the policy's recent lengths, except for seeded batches and mode static (all γ)."""
    from vllm_dspark.adapter.proposer import PendingConfidences

    prop = _confidence_proposer(monkeypatch)
    prop._pending = PendingConfidences(["a", "b"], torch.ones(2, 4), None, None, depth=2)
    assert prop.verify_lengths({"a": [1, 2, 3, 4], "b": [5, 6, 7]}) == {"a": 2, "b": 2}
    prop._draft_round = lambda: types.SimpleNamespace(replays=lambda *a: False)  # CPU: no CUDA graphs
    assert prop._draft_depth(1, 4, probabilistic=False) == 4  # no decision yet at this load
    assert prop._draft_depth(2, 4, probabilistic=False) == 3  # one past the 2 just decided at this load
    prop.policy.lengths(np.zeros((1, 4)))  # hopeless drafts: length 0, so the next round drafts one slot
    assert prop._draft_depth(1, 4, probabilistic=False) == 1
    prop._seeded_rows = [1]
    assert prop._draft_depth(2, 4, probabilistic=True) == 4
    prop._seeded_rows = []
    prop._draft_round = lambda: types.SimpleNamespace(replays=lambda *a: True)  # a captured graph serves this shape
    assert prop._draft_depth(2, 4, probabilistic=False) == 4
