"""The reference speculative loop: lossless greedy (pycode-23m), lossless sampling (χ² against the exact target
distribution, and a broken rule that must fail it), the acceptance rule on hand-computed cases, DeepSpec's
accepted-length bookkeeping (incl. stop tokens) against the independent oracle loop."""
from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from reference import deepspec_ref as ref
from reference.stats import chi2_pvalue

# ------------------------------------------------------------------------------------------------ helpers


def often_right(drafter, full_sequence: list[int], gamma: int, rng: random.Random, p_right: float = 0.6):
    """Wrap `drafter` (in place) so that in a fraction `p_right` of rounds the first c ∈ [1, γ] drafts (c = γ half
    of the time) are the target's true greedy continuation; other rounds keep the drafter's own (random) drafts.
    Greedy drafts are one-hot, so the probs follow the tokens."""
    orig_hidden, orig_sample = drafter.block_hidden, drafter.sample_block
    where = {}

    def block_hidden(ctx, ctx_positions, anchor_ids, anchor_positions, *args, **kwargs):
        where["start"] = int(anchor_positions[0])
        return orig_hidden(ctx, ctx_positions, anchor_ids, anchor_positions, *args, **kwargs)

    def sample_block(hidden, anchor_ids, temperature=0.0, generator=None):
        block = orig_sample(hidden, anchor_ids, temperature, generator)
        if rng.random() >= p_right:
            return block
        truth = full_sequence[where["start"] + 1: where["start"] + 1 + block.tokens.shape[1]]
        c = min(len(truth), gamma if rng.random() < 0.5 else rng.randint(1, gamma))
        tokens = block.tokens.clone()
        tokens[0, :c] = torch.tensor(truth[:c])
        probs = torch.nn.functional.one_hot(tokens, block.probs.shape[-1]).to(block.probs.dtype)
        return dataclasses.replace(block, tokens=tokens, probs=probs)

    drafter.block_hidden, drafter.sample_block = block_hidden, sample_block
    return drafter


# ------------------------------------------------------------------------------------------------ accept_drafts
def _onehot(i, V=6):
    return torch.nn.functional.one_hot(torch.tensor(i), V).float()


def test_accept_greedy_prefix_and_correction():
    from vllm_dspark.decoding import accept_drafts

    target = torch.stack([_onehot(3), _onehot(5), _onehot(2), _onehot(1)])  # target argmax rows: 3 5 2 | 1
    drafts = torch.tensor([3, 5, 4])
    assert accept_drafts(drafts, torch.stack([_onehot(3), _onehot(5), _onehot(4)]), target, 0.0, None) == (2, 2)
    assert accept_drafts(torch.tensor([3, 5, 2]), target[:3], target, 0.0, None) == (3, 1)  # all + bonus
    assert accept_drafts(torch.tensor([0, 5, 2]), target[:3], target, 0.0, None) == (0, 3)  # first rejected
    assert accept_drafts(torch.tensor([], dtype=torch.long), target[:0], target[:1], 0.0, None) == (0, 3)  # L = 0


def test_accept_sampling_hand_computed():
    """p_t = [.2, .3, .5], p_d = [.5, .1, .4], draft 0: accepted w.p. .2/.5 = .4; on rejection the token comes from
    max(p_t - p_d, 0) = [0, .2, .1] / .3; never token 0."""
    from vllm_dspark.decoding import accept_drafts

    p_t = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    p_d = torch.tensor([[0.5, 0.1, 0.4]])
    gen = torch.Generator().manual_seed(0)
    n, accepted, emitted_on_reject = 20000, 0, np.zeros(3)
    bonus = np.zeros(3)
    for _ in range(n):
        a, tok = accept_drafts(torch.tensor([0]), p_d, p_t, 1.0, gen)
        if a == 1:
            accepted += 1
            bonus[tok] += 1
        else:
            emitted_on_reject[tok] += 1
    assert abs(accepted / n - 0.4) < 4 * (0.4 * 0.6 / n) ** 0.5
    assert emitted_on_reject[0] == 0
    assert chi2_pvalue(emitted_on_reject, np.array([0, 2 / 3, 1 / 3])) > 1e-3
    assert chi2_pvalue(bonus, p_t[1].numpy()) > 1e-3  # bonus token from the last target row


def test_accept_sampling_certain_cases():
    from vllm_dspark.decoding import accept_drafts

    p = torch.tensor([[0.1, 0.6, 0.3], [0.3, 0.3, 0.4], [0.0, 0.0, 1.0]])
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):  # p_d == p_t: every draft is accepted, the last token comes from the last row
        assert accept_drafts(torch.tensor([1, 2]), p[:2], p, 1.0, gen) == (2, 2)
    p_t = torch.tensor([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])
    for _ in range(200):  # p_t(draft) = 0: always rejected, never re-emitted
        a, tok = accept_drafts(torch.tensor([0]), torch.tensor([[0.8, 0.1, 0.1]]), p_t, 1.0, gen)
        assert a == 0 and tok in (1, 2)


# ------------------------------------------------------------------------------------------------ χ², per position
def _tables(V: int, seed: int):
    """Exact target conditionals p1 [V], p2 [V, V] (= P(x2 | x1)), p3 [V, V, V] and draft tables q1 [V], q2 [V, V]
    from a tiny random target (peaked Dirichlet drafts that differ from it)."""
    from reference.tiny_targets import build_tiny_target

    target = build_tiny_target("qwen3", seed, vocab_size=V)
    prompt = [1, 2, 3]
    with torch.no_grad():
        p1 = torch.softmax(target(torch.tensor([prompt])).logits[0, -1], -1)
        two = torch.tensor([prompt + [x] for x in range(V)])
        p2 = torch.softmax(target(two).logits[:, -1], -1)
        three = torch.tensor([prompt + [x, y] for x in range(V) for y in range(V)])
        p3 = torch.softmax(target(three).logits[:, -1], -1).view(V, V, V)
    rng = np.random.default_rng(seed)
    q1 = torch.tensor(rng.dirichlet(np.full(V, 0.3)))
    q2 = torch.tensor(rng.dirichlet(np.full(V, 0.3), size=V))
    return p1, p2, p3, q1, q2


def _first_two_tokens(accept, p1, p2, p3, q1, q2, n: int, seed: int) -> np.ndarray:
    """n draws of (tok1, tok2) produced by `accept` from γ = 2 drafts with a random verification length
    L ∈ {0, 1, 2}; tokens after a rejection come from the exact target conditional (the next round's job)."""
    V = len(p1)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    counts = np.zeros((V, V))
    q1n, q2n, p2n = q1.numpy(), q2.numpy(), p2.double().numpy()
    for _ in range(n):
        d0 = rng.choice(V, p=q1n)
        d1 = rng.choice(V, p=q2n[d0])
        L = int(rng.integers(0, 3))
        drafts = torch.tensor([d0, d1][:L], dtype=torch.long)
        draft_probs = torch.stack([q1, q2[d0]])[:L].float()
        target_probs = torch.stack([p1, p2[d0], p3[d0, d1]])[: L + 1].float()
        a, tok = accept(drafts, draft_probs, target_probs, 1.0, gen)
        if a == 0:
            first, second = tok, rng.choice(V, p=p2n[tok] / p2n[tok].sum())
        elif a == 1:
            first, second = d0, tok
        else:
            first, second = d0, d1
        counts[first, second] += 1
    return counts


def _always_accept(drafts, draft_probs, target_probs, temperature, generator):
    n = drafts.shape[0]
    return n, int(torch.multinomial(target_probs[n], 1, generator=generator))


def _resample_from_target(drafts, draft_probs, target_probs, temperature, generator):
    """The rule with the residual replaced by the plain target row (a classic bug)."""
    for j in range(drafts.shape[0]):
        ratio = target_probs[j, drafts[j]] / draft_probs[j, drafts[j]]
        if torch.rand((), generator=generator) >= ratio:
            return j, int(torch.multinomial(target_probs[j], 1, generator=generator))
    return drafts.shape[0], int(torch.multinomial(target_probs[-1], 1, generator=generator))


@pytest.fixture(scope="module")
def tables():
    return _tables(16, 0)


def test_chi2_accept_rule_is_lossless(tables):
    from vllm_dspark.decoding import accept_drafts

    p1, p2, p3, q1, q2 = tables
    counts = _first_two_tokens(accept_drafts, *tables, n=24000, seed=1)
    exact = (p1[:, None] * p2).double().numpy()  # P(tok1, tok2) under plain sampling
    assert chi2_pvalue(counts, exact) > 1e-3


@pytest.mark.parametrize("broken", [_always_accept, _resample_from_target])
def test_chi2_detects_a_broken_rule(tables, broken):
    p1, p2, p3, q1, q2 = tables
    counts = _first_two_tokens(broken, *tables, n=24000, seed=1)
    assert chi2_pvalue(counts, (p1[:, None] * p2).double().numpy()) < 1e-6


# ------------------------------------------------------------------------------------------------ χ², end to end
V_E2E, N_E2E = 8, 1500


@pytest.fixture(scope="module")
def e2e_setup(drafter_pair):
    target, drafter, _, _ = drafter_pair("qwen3", layer_ids=[-1, 1], block_size=2, markov_rank=4,
                                         markov_head_type="gated", target_overrides={"vocab_size": V_E2E})
    prompt = [1, 2, 3, 4]
    V = V_E2E
    with torch.no_grad():
        p1 = torch.softmax(target(torch.tensor([prompt])).logits[0, -1], -1)
        p2 = torch.softmax(target(torch.tensor([prompt + [x] for x in range(V)])).logits[:, -1], -1)
        seqs = torch.tensor([prompt + [x, y] for x in range(V) for y in range(V)])
        p3 = torch.softmax(target(seqs).logits[:, -1], -1).view(V, V, V)
    # Exact joint of the 2nd and 3rd generated tokens (both produced by the first round's acceptance/bonus).
    exact = torch.einsum("a,ab,abc->bc", p1, p2, p3).numpy()
    return target, drafter, prompt, exact


def _e2e_counts(target, drafter, prompt, n, seed):
    from vllm_dspark.decoding import speculative_generate

    gen = torch.Generator().manual_seed(seed)
    counts = np.zeros((V_E2E, V_E2E))
    for _ in range(n):
        out = speculative_generate(target, drafter, prompt, max_new_tokens=4, temperature=1.0, generator=gen)
        counts[out.output_token_ids[1], out.output_token_ids[2]] += 1
    return counts


@pytest.mark.slow  # 1,500 full speculative runs (the accept rule alone: test_chi2_accept_rule_is_lossless)
def test_chi2_end_to_end_speculative_sampling(e2e_setup):
    target, drafter, prompt, exact = e2e_setup
    assert chi2_pvalue(_e2e_counts(target, drafter, prompt, N_E2E, 0), exact) > 1e-3


@pytest.mark.slow  # the control of the test above
def test_chi2_end_to_end_plain_sampling(e2e_setup):
    """Control: plain sampling of the same target passes the same test."""
    from vllm_dspark.decoding import plain_generate

    target, _, prompt, exact = e2e_setup
    gen = torch.Generator().manual_seed(5)
    counts = np.zeros((V_E2E, V_E2E))
    for _ in range(N_E2E):
        out = plain_generate(target, prompt, max_new_tokens=3, temperature=1.0, generator=gen)
        counts[out[1], out[2]] += 1
    assert chi2_pvalue(counts, exact) > 1e-3


def test_chi2_end_to_end_fails_with_always_accept(e2e_setup, monkeypatch):
    import vllm_dspark.decoding as decoding

    target, drafter, prompt, exact = e2e_setup
    monkeypatch.setattr(decoding, "accept_drafts", _always_accept)
    assert chi2_pvalue(_e2e_counts(target, drafter, prompt, 300, 0), exact) < 1e-6


# ------------------------------------------------------------------------------------------------ greedy, pycode-23m
N_PROMPTS, PROMPT_TOKENS, NEW_TOKENS = 32, 128, 24


@pytest.fixture(scope="module")
def pycode_case(pycode_f64, pycode_prompts):
    from vllm_dspark.decoding import plain_generate

    prompts = [p[-PROMPT_TOKENS:] for p in pycode_prompts[:N_PROMPTS]]
    assert len(prompts) == N_PROMPTS
    plain = [plain_generate(pycode_f64, p, max_new_tokens=NEW_TOKENS) for p in prompts]
    return pycode_f64, prompts, plain


# Slow: about two minutes of float64 decoding on pycode-23m. The fast subset checks speculative == plain greedy on
# tiny targets (test_greedy_loop_matches_deepspec_oracle, test_token_budget_is_respected, test_stop_*).
@pytest.mark.slow
@pytest.mark.parametrize("gamma,head", [(1, "vanilla"), (4, "gated"), (7, "rnn")])
def test_greedy_is_lossless_on_pycode(pycode_case, gamma, head):
    """Each request mixes rounds of a random drafter with rounds whose drafts start with the true continuation
    (long acceptances, the bonus path); every other request verifies a random prefix of each round's drafts.
    The drafter runs in float32 against the float64 target: precision of drafts cannot matter for losslessness."""
    from vllm_dspark.config import DSparkConfig
    from vllm_dspark.decoding import speculative_generate
    from vllm_dspark.model import DSparkDrafter

    target, prompts, plain = pycode_case
    cfg = DSparkConfig.from_target(target.config, mask_token_id=3, block_size=gamma, num_draft_layers=1,
                                   markov_rank=16, markov_head_type=head)
    torch.manual_seed(gamma)
    rng = random.Random(gamma)
    drafter = DSparkDrafter(cfg).eval()  # random weights
    stats = {"full": 0, "rejected": 0, "short": 0, "long": 0}
    for i, (prompt, want) in enumerate(zip(prompts, plain)):
        often_right(drafter, prompt + want, gamma, rng, p_right=0.5)
        verify = (lambda block: rng.randint(0, gamma)) if i % 2 else None  # per-request verification lengths
        try:
            got = speculative_generate(target, drafter, prompt, max_new_tokens=NEW_TOKENS, verify_length=verify)
        finally:
            del drafter.block_hidden, drafter.sample_block  # undo the instance-level wrap
        assert got.output_token_ids == want, f"prompt {i}: speculative != plain"
        assert sum(got.accepted_lengths) == len(want) - 1
        for r in got.rounds:
            stats["full"] += r.accepted == r.proposed > 0
            stats["rejected"] += r.accepted < r.proposed
            stats["short"] += r.proposed < gamma
            stats["long"] += r.accepted == gamma
    # The run exercised what it claims to: rejections, shortened verification, full acceptances + bonus.
    assert stats["rejected"] >= 20 and stats["short"] >= 20 and stats["full"] >= 20 and stats["long"] >= 10, stats


# ------------------------------------------------------------------------------------------------ DeepSpec parity
@pytest.fixture(scope="module")
def parity_pair(drafter_pair):
    # V = 7 so that a random drafter is sometimes right; stop tokens then land inside accepted drafts too.
    return drafter_pair("qwen3", layer_ids=[-1, 1, 2], block_size=4, markov_rank=5, markov_head_type="rnn",
                        target_overrides={"vocab_size": 7}, seed=3)


def _stop_inside_drafts(run, default: int) -> int:
    """A token first produced as an accepted draft in `run` (so that stopping on it cuts a round's drafts)."""
    pos = 1  # output position of the round's first draft (output[0] is the prefill token)
    for drafts, length in zip(run.drafts, run.accepted_lengths):
        for j in range(length - 1):
            if drafts[j] not in run.output_ids[: pos + j]:
                return drafts[j]
        pos += length
    return default


def test_greedy_loop_matches_deepspec_oracle(parity_pair):
    """Outputs, per-round drafts, confidence logits and accepted lengths equal the oracle loop's (which follows
    DeepSpec's evaluator, §5 and §8), without stop tokens and with stop tokens chosen so that some land inside
    accepted drafts."""
    from vllm_dspark.decoding import speculative_generate

    target, drafter, sd, cfg = parity_pair
    rng = random.Random(0)
    seen = {"multi": 0, "stop_in_drafts": 0}
    for case in range(12):
        prompt = [rng.randrange(7) for _ in range(rng.randint(2, 9))]
        free = ref.greedy_generate(target, sd, cfg, prompt, 20)
        # Without stops, with a stop on a token first produced as an accepted draft, with a stop on some token.
        for stops in (set(), {_stop_inside_drafts(free, default=-1)} - {-1}, {case % 7}):
            want = ref.greedy_generate(target, sd, cfg, prompt, 20, stop_ids=stops)
            got = speculative_generate(target, drafter, prompt, max_new_tokens=20, stop_token_ids=stops)
            assert got.output_token_ids == want.output_ids, (case, stops)
            assert [r.draft_token_ids[: r.proposed] for r in got.rounds] == want.drafts, (case, stops)
            for r, c in zip(got.rounds, want.confidence_logits):
                assert r.confidence_logits == pytest.approx(c.tolist(), abs=1e-4)
            assert got.accepted_lengths == want.accepted_lengths, (case, stops)
            seen["multi"] += sum(a > 1 for a in want.accepted_lengths)
            seen["stop_in_drafts"] += want.stopped_in_drafts
    # The comparison covers accepted drafts (not only the bonus path) and §8's stop rule.
    assert seen["multi"] > 0 and seen["stop_in_drafts"] > 0, seen


# ------------------------------------------------------------------------------------------------ stop tokens (§8)
@pytest.fixture(scope="module")
def stop_case(drafter_pair):
    from vllm_dspark.decoding import plain_generate

    target, drafter, _, _ = drafter_pair("llama", layer_ids=[0, 2], block_size=4)
    prompt = [3, 1, 4, 1, 5]
    out = plain_generate(target, prompt, max_new_tokens=12)
    return target, drafter, prompt, out


def _first_new(out, j):
    """A position j' >= j whose token does not occur earlier in `out` (so it can serve as a stop token)."""
    for k in range(j, len(out)):
        if out[k] not in out[:k]:
            return k
    pytest.skip("no fresh token in the plain output")


def test_stop_inside_accepted_drafts(stop_case):
    """An accepted draft that is a stop token ends the text there; no bonus; the round counts a, not a + 1."""
    from vllm_dspark.decoding import plain_generate, speculative_generate

    target, drafter, prompt, out = stop_case
    k = _first_new(out, 2)
    if k > 4:
        pytest.skip("stop token not inside the first block")
    stop = {out[k]}
    assert plain_generate(target, prompt, max_new_tokens=12, stop_token_ids=stop) == out[: k + 1]
    wrapped = often_right(drafter, prompt + out, 4, random.Random(0), p_right=1.0)
    try:
        got = speculative_generate(target, wrapped, prompt, max_new_tokens=12, stop_token_ids=stop)
    finally:
        del drafter.block_hidden, drafter.sample_block  # undo the instance-level wrap
    assert got.output_token_ids == out[: k + 1]
    # Round 1 (anchor out[0]) accepts out[1..k]; the stop token out[k] is its k-th accepted draft.
    assert got.rounds[-1].accepted == k
    assert got.accepted_lengths[-1] == k, "§8: a stop inside the drafts adds a, not a + 1, to acceptance_lengths"
    assert sum(got.accepted_lengths) == len(got.output_token_ids) - 1


def test_stop_as_bonus_and_at_prefill(stop_case):
    from vllm_dspark.decoding import speculative_generate

    target, drafter, prompt, out = stop_case
    got = speculative_generate(target, drafter, prompt, max_new_tokens=12, stop_token_ids={out[0]})
    assert got.output_token_ids == out[:1] and got.rounds == []
    k = _first_new(out, 1)
    got = speculative_generate(target, drafter, prompt, max_new_tokens=12, stop_token_ids={out[k]})
    assert got.output_token_ids == out[: k + 1]
    assert sum(got.accepted_lengths) == k  # every round ended with a bonus token (the last one is the stop)


def test_token_budget_is_respected(stop_case):
    from vllm_dspark.decoding import speculative_generate

    target, drafter, prompt, out = stop_case
    wrapped = often_right(drafter, prompt + out, 4, random.Random(1), p_right=1.0)
    try:
        for n in (1, 2, 5, 7):
            got = speculative_generate(target, wrapped, prompt, max_new_tokens=n)
            assert got.output_token_ids == out[:n]
            assert all(r.proposed <= n for r in got.rounds)
    finally:
        del drafter.block_hidden, drafter.sample_block


class _ContinuationEagle3:
    """An EAGLE-3 drafter stand-in that drafts `sequence`'s next tokens, so every draft is accepted at T = 0."""

    def __init__(self, sequence: list[int], vocab: int, layer_ids: list[int]):
        from types import SimpleNamespace

        self.sequence, self.vocab = sequence, vocab
        self.config = SimpleNamespace(target_layer_ids=layer_ids)

    def draft(self, features, token_ids, temperature, generator, gamma=None):
        from vllm_dspark.model import DraftBlock

        start = token_ids.shape[1]  # token_ids = the tokens up to the anchor: the next one is sequence[start]
        nxt = (self.sequence[start: start + gamma] + [0] * gamma)[:gamma]
        tokens = torch.tensor([nxt])
        probs = torch.nn.functional.one_hot(tokens, self.vocab).float()
        return DraftBlock(tokens=tokens, probs=probs, logits=probs, confidence_logits=None, confidence=None)


def test_eagle3_runs_the_same_round_loop(stop_case):
    """eagle3_generate goes through speculative_rounds: §8's stop rule (no bonus after an accepted stop token) and
    the token budget hold for it as for DSpark."""
    from vllm_dspark.training.eagle3 import eagle3_generate

    target, drafter, prompt, out = stop_case
    oracle = _ContinuationEagle3(prompt + out, target.config.vocab_size, list(drafter.config.target_layer_ids))
    k = _first_new(out, 2)
    if k > 4:
        pytest.skip("stop token not inside the first block")
    got = eagle3_generate(target, oracle, prompt, max_new_tokens=12, stop_token_ids={out[k]}, gamma=4)
    assert got.output_token_ids == out[: k + 1]
    assert got.rounds[-1].accepted == k and not got.rounds[-1].bonus
    assert sum(got.accepted_lengths) == len(got.output_token_ids) - 1
    for n in (1, 2, 5, 7):
        got = eagle3_generate(target, oracle, prompt, max_new_tokens=n, gamma=4)
        assert got.output_token_ids == out[:n] and all(r.proposed <= n for r in got.rounds)
