"""The proposer's sequential stage vs the plain-torch reference (`DSparkDrafter.sample_block`, float64 heads).

Greedy: the drafted tokens and confidence logits of the stage equal the reference's walk. Sampled: each slot's
draft distribution equals softmax((U_k + bias(prev_k)) / T) of the reference evaluated at the stage's own
previous tokens, greedy requests in the same batch get one-hot rows, and a seed reproduces its draws.
"""
from __future__ import annotations

import pytest
import torch

from vllm_dspark.adapter.sequential import DraftRound, SequentialStage, draft_keys, pad_block
from vllm_dspark.config import GREEDY_EPS, DSparkConfig
from vllm_dspark.model import DSparkDrafter

V, H, R, GAMMA, N = 97, 24, 7, 5, 6  # odd sizes


def _drafter(head_type: str, rank: int = R, with_markov: bool = True, seed: int = 0) -> DSparkDrafter:
    cfg = DSparkConfig(
        hidden_size=H, num_attention_heads=2, num_key_value_heads=1, head_dim=12, intermediate_size=16,
        vocab_size=V, num_hidden_layers=1, num_target_layers=4, block_size=GAMMA, mask_token_id=3,
        target_layer_ids=[0, 2], markov_rank=rank, markov_head_type=head_type, enable_confidence_head=True,
        confidence_head_with_markov=with_markov and rank > 0,
    )
    torch.manual_seed(seed)
    drafter = DSparkDrafter(cfg).double()
    with torch.no_grad():
        for p in drafter.parameters():
            p.normal_(0.0, 0.7)
    return drafter.eval()


def _inputs(drafter: DSparkDrafter, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, GAMMA, H, generator=g, dtype=torch.float64)
    anchors = torch.randint(0, V, (N,), generator=g)
    base = drafter.lm_head(hidden)  # [N, γ, V]
    return hidden, anchors, base


def _stage(drafter: DSparkDrafter) -> SequentialStage:
    return SequentialStage(drafter.markov_head, drafter.confidence_head, V)


def _reference_logits(drafter: DSparkDrafter, hidden, base, prev):
    """Corrected logits and confidence logits at given previous tokens prev [N, γ] (float64)."""
    head = drafter.markov_head
    if head is None:
        return base, drafter.confidence_head(hidden, None)
    bias, w1 = head.teacher_forced(prev, hidden)
    return base + bias, drafter.confidence_head(hidden, w1)


@pytest.mark.parametrize("head_type,rank", [("vanilla", R), ("gated", R), ("rnn", R), ("vanilla", 0)])
def test_greedy_walk_equals_reference(head_type, rank):
    drafter = _drafter(head_type, rank)
    hidden, anchors, base = _inputs(drafter)
    ref = drafter.sample_block(hidden, anchors, temperature=0.0)
    zeros = torch.zeros(N, dtype=torch.int64)
    out = _stage(drafter)(base, hidden, anchors, torch.zeros(N), zeros, zeros, want_probs=False)
    assert torch.equal(out.tokens, ref.tokens)
    torch.testing.assert_close(out.conf_logits.double(), ref.confidence_logits, rtol=1e-5, atol=1e-5)
    assert out.probs is None


@pytest.mark.parametrize("head_type", ["vanilla", "gated", "rnn"])
def test_sampled_probs_are_the_reference_distribution(head_type):
    drafter = _drafter(head_type)
    hidden, anchors, base = _inputs(drafter, seed=2)
    temps = torch.tensor([1.0, 0.7, 0.0, 1.3, 0.0, 2.0])  # two greedy requests in a sampled batch
    seeds = torch.arange(N, dtype=torch.int64) * 1000 + 17
    offsets = torch.arange(N, dtype=torch.int64) * 40
    out = _stage(drafter)(base, hidden, anchors, temps, seeds, offsets, want_probs=True)
    prev = torch.cat([anchors[:, None], out.tokens[:, :-1]], dim=1)
    logits, conf = _reference_logits(drafter, hidden, base, prev)
    greedy = temps < GREEDY_EPS
    t = torch.where(greedy, 1.0, temps).double()[:, None, None]
    want = torch.softmax(logits / t, dim=-1)
    one_hot = torch.nn.functional.one_hot(logits.argmax(-1), V).double()
    want = torch.where(greedy[:, None, None], one_hot, want)
    torch.testing.assert_close(out.probs.double(), want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.conf_logits.double(), conf, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.tokens[greedy], logits.argmax(-1)[greedy])
    chosen = out.probs.gather(-1, out.tokens[..., None]).squeeze(-1)
    assert bool((chosen > 0).all()), "a drafted token must lie in its draft distribution's support"


def test_seeded_draws_repeat_and_offsets_change_them():
    drafter = _drafter("vanilla", seed=3)
    hidden, anchors, base = _inputs(drafter, seed=4)
    stage = _stage(drafter)
    temps = torch.full((N,), 1.5)
    seeds = torch.full((N,), 12345, dtype=torch.int64)
    a = stage(base, hidden, anchors, temps, seeds, torch.zeros(N, dtype=torch.int64), want_probs=False)
    b = stage(base, hidden, anchors, temps, seeds, torch.zeros(N, dtype=torch.int64), want_probs=False)
    c = stage(base, hidden, anchors, temps, seeds, torch.full((N,), 5 * GAMMA, dtype=torch.int64), want_probs=False)
    assert torch.equal(a.tokens, b.tokens)
    assert not torch.equal(a.tokens, c.tokens)


# ---------------------------------------------------------------------------------------------- DraftRound
def _round_inputs(n, seed, temp):
    g = torch.Generator().manual_seed(seed)
    temps = torch.full((n,), temp)
    return (torch.randint(0, V, (n,), generator=g), temps, torch.randint(0, 2**62, (n,), generator=g),
            torch.randint(0, 2**40, (n,), generator=g))


@pytest.mark.parametrize("want_probs", [False, True])
def test_draft_round_is_lm_head_then_stage(want_probs):
    """Eager DraftRound (CPU): base logits from the given LM head on [R·γ, H], then the stage, nothing else."""
    drafter = _drafter("gated", seed=5)
    hidden, _, base = _inputs(drafter, seed=6)
    anchors, temps, seeds, offsets = _round_inputs(N, 7, 0.8 if want_probs else 0.0)
    stage = _stage(drafter)
    rnd = DraftRound(stage, drafter.lm_head)
    assert rnd.capture(GAMMA, [1, 4], [1], H, torch.float64, torch.device("cpu")) == {}  # no graphs on CPU
    assert not rnd.replays_graphs
    got = rnd(hidden.reshape(N * GAMMA, H), anchors, temps, seeds, offsets, want_probs, gamma=GAMMA)
    want = stage(base, hidden, anchors, temps, seeds, offsets, want_probs)
    assert torch.equal(got.tokens, want.tokens)
    assert torch.equal(got.conf_logits, want.conf_logits)
    assert (got.probs is None) == (not want_probs)
    if want_probs:
        assert torch.equal(got.probs, want.probs)
    # A smaller γ in a later round (vLLM's dynamic speculative decoding lowers it per step).
    short = hidden[:, :3].contiguous()
    got = rnd(short.reshape(N * 3, H), anchors, temps, seeds, offsets, want_probs, gamma=3)
    want = stage(drafter.lm_head(short), short, anchors, temps, seeds, offsets, want_probs)
    assert got.tokens.shape == (N, 3) and torch.equal(got.tokens, want.tokens)
    assert rnd.eager_fallbacks == 0, "eager rounds on CPU are by design, not fallbacks"


def test_failed_capture_counts_every_round_as_an_eager_fallback(monkeypatch):
    """A capture that raises keeps no graph; from then on every round is eager where graphs were expected."""
    drafter = _drafter("vanilla", seed=8)
    hidden, _, _ = _inputs(drafter, seed=9)
    rnd = DraftRound(_stage(drafter), drafter.lm_head)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: (_ for _ in ()).throw(RuntimeError("no graphs")))
    with pytest.raises(RuntimeError, match="no graphs"):
        rnd.capture(GAMMA, [1, 4], [1], H, torch.float64, torch.device("cuda"))
    assert not rnd.replays_graphs
    for k in range(3):
        rnd(hidden.reshape(N * GAMMA, H), *_round_inputs(N, k, 0.0), False, gamma=GAMMA)
    assert rnd.eager_fallbacks == 3


# ---------------------------------------------------------------------------------------------- draft keys
def test_draft_keys_separate_a_seeded_request_from_its_own_generator():
    """A seeded request's key is draft_key(seed): not the seed (vLLM keys the request's generator by it), the same
    at any batch index and whatever else is in the batch; unseeded requests get the engine RNG's keys."""
    from vllm_dspark.kernels.markov_step import draft_key

    seeds = [0, 1, 1234, 2**62 - 1, 2**63 + 5]
    gens = {i: torch.Generator().manual_seed(s) for i, s in enumerate(seeds)}
    keys = draft_keys(gens, len(seeds), torch.Generator().manual_seed(0))
    assert keys.tolist() == [draft_key(s) for s in seeds]
    assert all(k != s and 0 <= k < 2**62 for k, s in zip(keys.tolist(), seeds))
    assert len(set(keys.tolist())) == len(seeds)
    # Request 1234 at index 3 of a batch with unseeded neighbours (another engine RNG state).
    mixed = draft_keys({3: torch.Generator().manual_seed(1234)}, 6, torch.Generator().manual_seed(99))
    assert mixed[3] == draft_key(1234)
    rng_keys = torch.randint(0, 2**62, (6,), generator=torch.Generator().manual_seed(99), dtype=torch.int64)
    assert torch.equal(mixed[[0, 1, 2, 4, 5]], rng_keys[[0, 1, 2, 4, 5]])


def test_request_seeds_reach_philox_only_through_draft_keys():
    """No other code turns a request's generator seed into a Philox key (they would bypass draft_key)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    users = sorted(str(p.relative_to(root)) for d in ("vllm_dspark", "kernels") for p in (root / d).rglob("*.py")
                   if "initial_seed(" in p.read_text() and "vllm_dspark/kernels" not in str(p))
    assert users == ["vllm_dspark/adapter/sequential.py"]


@pytest.mark.gpu  # CUDA-graph capture
@pytest.mark.parametrize("head_type", ["vanilla", "rnn"])
def test_draft_round_graph_replay_matches_eager(head_type):
    """Captured at 1, 4, 8 requests: replays at 1, 3 (padded to 4), 8 and an eager batch of 9 equal the eager
    round, and a replay's outputs survive the next replay (they are copies)."""
    v, h = 1000, 64
    cfg = DSparkConfig(
        hidden_size=h, num_attention_heads=2, num_key_value_heads=1, head_dim=32, intermediate_size=32,
        vocab_size=v, num_hidden_layers=1, num_target_layers=4, block_size=GAMMA, mask_token_id=3,
        target_layer_ids=[0, 2], markov_rank=32, markov_head_type=head_type, enable_confidence_head=True,
        confidence_head_with_markov=True)
    torch.manual_seed(0)
    drafter = DSparkDrafter(cfg).cuda().eval()
    with torch.no_grad():
        for p in drafter.parameters():
            p.normal_(0.0, 0.5)
    stage = SequentialStage(drafter.markov_head, drafter.confidence_head, v)
    graphed = DraftRound(stage, drafter.lm_head)
    eager = DraftRound(stage, drafter.lm_head)
    with torch.no_grad():
        assert graphed.capture(GAMMA, [1, 4, 8], [1, 4], h, torch.float32, torch.device("cuda")) == {
            "greedy": [1, 4, 8], "probs": [1, 4]}
        for want_probs in (False, True):
            kept = None
            # (n, γ): padded replays, an eager batch above the largest graph, and a smaller γ (dynamic SD: eager)
            for n, gamma in ((1, GAMMA), (3, GAMMA), (8, GAMMA), (9, GAMMA), (3, 2), (3, GAMMA)):
                hidden = torch.randn(n * gamma, h, device="cuda")
                args = [x.cuda() for x in _round_inputs(n, n, 1.0 if want_probs else 0.0)]
                got = graphed(hidden, *args, want_probs, gamma=gamma)
                want = eager(hidden, *args, want_probs, gamma=gamma)
                assert got.tokens.shape == (n, gamma)
                assert torch.equal(got.tokens, want.tokens), (n, want_probs)
                torch.testing.assert_close(got.conf_logits, want.conf_logits, rtol=1e-5, atol=1e-5)
                if want_probs:
                    torch.testing.assert_close(got.probs, want.probs, rtol=1e-5, atol=1e-7)
                if kept is not None:
                    assert torch.equal(kept[0].tokens, kept[1]), "a replay overwrote the previous round's outputs"
                kept = (got, got.tokens.clone())
    assert graphed.replays_graphs and not eager.replays_graphs
    assert graphed.eager_fallbacks == 4  # per kind: the batch of 9 and γ = 2
    assert eager.eager_fallbacks == 0


@pytest.mark.parametrize("head_type", ["vanilla", "gated", "rnn"])
@pytest.mark.parametrize("depth", [1, 3])
def test_a_shorter_walk_drafts_the_first_slots_of_the_full_one(head_type, depth):
    """The proposer's draft depth: walking only the first slots of the block (LM head included) draws the same
    tokens, distributions and confidences there as the full walk, greedy and sampled (same seeds and counters)."""
    drafter = _drafter(head_type)
    hidden, anchors, _ = _inputs(drafter, seed=3)
    round_ = DraftRound(_stage(drafter), drafter.lm_head)
    temps = torch.tensor([1.0, 0.0, 0.8, 1.5, 0.0, 1.0])
    seeds = torch.arange(N, dtype=torch.int64) * 31 + 5
    offsets = torch.arange(N, dtype=torch.int64) * 50
    for want_probs, t in ((False, torch.zeros(N)), (True, temps)):
        full = round_(hidden.reshape(N * GAMMA, H), anchors, t, seeds, offsets, want_probs=want_probs, gamma=GAMMA)
        part = round_(hidden[:, :depth].reshape(N * depth, H), anchors, t, seeds, offsets, want_probs=want_probs,
                      gamma=depth)
        assert torch.equal(part.tokens, full.tokens[:, :depth])
        torch.testing.assert_close(part.conf_logits, full.conf_logits[:, :depth])
        if want_probs:
            torch.testing.assert_close(part.probs, full.probs[:, :depth])
        padded = pad_block(part, GAMMA)
        assert padded.tokens.shape == (N, GAMMA) and torch.equal(padded.tokens[:, :depth], part.tokens)
        assert torch.equal(padded.tokens[:, depth:], part.tokens[:, -1:].expand(N, GAMMA - depth))
        assert torch.isneginf(padded.conf_logits[:, depth:]).all()
        if want_probs:  # placeholders: one-hot at their token, a valid distribution
            tail = padded.probs[:, depth:]
            assert torch.equal(tail.argmax(-1), padded.tokens[:, depth:])
            torch.testing.assert_close(tail.sum(-1), torch.ones(N, GAMMA - depth, dtype=tail.dtype))
        else:
            assert padded.probs is None
    assert pad_block(full, GAMMA) is full
    with pytest.raises(ValueError, match="pad_block"):
        pad_block(full, GAMMA - 1)
