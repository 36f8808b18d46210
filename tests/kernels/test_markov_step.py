"""Triton Markov step / block vs the float64 torch reference (CPU: Triton interpreter; tiny odd shapes).

Tolerances: markov_checks.TOL. Tokens: markov_checks.check_tokens (exact choice of the float64 reference unless
within 1e-5 of a decision boundary).
"""
import os

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from markov_checks import TOL, check_tokens, corrected_logits64, random_weights
from vllm_dspark.kernels.markov_step import (
    ConfidenceWeights,
    draft_key,
    head_inputs,
    markov_block,
    markov_step,
    reference,
)
from vllm_dspark.kernels.markov_step.kernel import LaunchOptions
from vllm_dspark.kernels.markov_step.reference import philox4x32, uniforms


def _close(name, got, want):
    torch.testing.assert_close(got.double().cpu(), want.double().cpu(), **TOL[name], msg=lambda m: f"{name}: {m}")


def _inputs(n, v, r, h, dtype, device, seed, head_type="vanilla"):
    gen = torch.Generator().manual_seed(seed)
    w = random_weights(v, r, h, head_type, dtype, device, gen=gen)
    conf = ConfidenceWeights(torch.randn(h + r, generator=gen).to(device, dtype), torch.randn(1, generator=gen), True)
    u = (torch.randn(n, v, generator=gen) * 2).to(device, dtype)
    prev = torch.randint(0, v, (n,), generator=gen).to(device)
    hidden = torch.randn(n, h, generator=gen).to(device, dtype)
    temp = torch.tensor([0.0, 1.0, 0.6, 1.7, 0.0][:n] * (n // 5 + 1))[:n].to(device)
    seeds = torch.randint(-2**62, 2**62, (n,), generator=gen).to(device)
    offsets = torch.randint(0, 2**40, (n,), generator=gen).to(device)
    return w, conf, u, prev, hidden, temp, seeds, offsets


# (N, V, r, H, dtype): odd vocabularies (partial last tile), r not a power of two, N = 1.
CASES = [
    (1, 523, 16, 24, torch.float32),
    (5, 523, 24, 40, torch.bfloat16),
    (3, 130, 32, 16, torch.float32),
    (4, 601, 17, 33, torch.bfloat16),
]


# How sampled rows get their in-group token: "tile" = drawn in the tile kernel (default); "reread" = the select
# kernel re-reads the drawn group's W2 rows (LaunchOptions(tile_draw=False)); "hint" = the caller wrongly claims
# all_greedy=True while rows sample, which must fall back to the re-read, not draw greedily.
DRAW_PATHS = ["tile", "reread", "hint"]


@pytest.fixture(params=DRAW_PATHS)
def draw_path(request):
    return dict(all_greedy=request.param == "hint", launch=LaunchOptions(tile_draw=request.param != "reread"))


@pytest.mark.parametrize("n,v,r,h,dtype", CASES)
@pytest.mark.parametrize("output", ["logits", "probs"])
def test_step_matches_reference(n, v, r, h, dtype, output, draw_path, device):
    w, conf, u, prev, hidden, temp, seeds, offsets = _inputs(n, v, r, h, dtype, device, seed=n * 1000 + v)
    got = markov_step(u, prev, w, temp, seeds, offsets, step=5, hidden=hidden, conf=conf, output=output,
                      backend="triton", **draw_path)
    want = reference.markov_step(u, prev, w, temp, seeds, offsets, step=5, hidden=hidden, conf=conf,
                                 output=output, compute_dtype=torch.float64)
    logits64 = corrected_logits64(u, w.w1[prev], w.w2)
    check_tokens(got.tokens, logits64, temp, seeds, offsets + 5)
    for name in ("lse", "logprobs", "conf_logits", output):
        _close(name, getattr(got, name), getattr(want, name))
    assert (got.logprobs[temp == 0] == 0).all()
    if output == "probs":
        _close("probs", got.probs.sum(-1), torch.ones(n, dtype=torch.float64))
        greedy_rows = (temp == 0).nonzero().flatten()
        assert (got.probs[greedy_rows].argmax(-1) == got.tokens[greedy_rows]).all()


def test_step_with_given_z_and_no_conf(device):
    """z from a gated head (Z_FROM_PREV off), no confidence head, output='none'."""
    w, _, u, prev, hidden, temp, seeds, offsets = _inputs(4, 300, 16, 20, torch.float32, device, 7, "gated")
    z, _, _ = head_inputs(w, prev, hidden)
    got = markov_step(u, prev, w, temp, seeds, offsets, z=z, backend="triton")
    want = reference.markov_step(u, prev, w, temp, seeds, offsets, z=z, compute_dtype=torch.float64)
    assert got.conf_logits is None and got.probs is None and got.logits is None
    check_tokens(got.tokens, corrected_logits64(u, z, w.w2), temp, seeds, offsets)
    _close("lse", got.lse, want.lse)
    _close("logprobs", got.logprobs, want.logprobs)


def test_all_greedy_hint_gives_the_same_greedy_tokens(device):
    """all_greedy=True skips the in-tile draws; on an all-greedy batch nothing else may change."""
    w, conf, u, prev, hidden, _, seeds, offsets = _inputs(6, 523, 24, 40, torch.bfloat16, device, seed=21)
    temp = torch.zeros(6, device=device)
    args = (u, prev, w, temp, seeds, offsets)
    kw = dict(step=2, hidden=hidden, conf=conf, backend="triton")
    hinted, plain = markov_step(*args, all_greedy=True, **kw), markov_step(*args, **kw)
    assert torch.equal(hinted.tokens, plain.tokens)
    for name in ("logprobs", "lse", "conf_logits"):
        assert torch.equal(getattr(hinted, name), getattr(plain, name)), name


def test_greedy_ties_pick_first_occurrence(device):
    """Equal maxima in different tiles: both backends return the lowest id (torch.argmax semantics)."""
    v, r = 300, 16
    w = random_weights(v, r, 8, device=device)
    w.w2.zero_()
    u = torch.zeros(2, v, device=device)
    u[0, [20, 40, 150, 299]] = 3.0  # ties inside tile 0 and across tiles
    u[1, [150, 200, 299]] = 3.0  # ties inside tile 1 and with tile 2
    args = (u, torch.tensor([1, 2], device=device), w, torch.zeros(2, device=device),
            torch.zeros(2, dtype=torch.long, device=device))
    assert markov_step(*args, backend="triton").tokens.tolist() == [20, 150]
    assert markov_step(*args, backend="torch").tokens.tolist() == [20, 150]


@pytest.mark.parametrize("head_type", ["vanilla", "gated", "rnn"])
def test_block_matches_stepwise_reference(head_type, draw_path, device):
    """markov_block (γ = 3, alternating tile order) vs the reference fed the kernel's own previous tokens."""
    n, gamma, v, r, h = 3, 3, 301, 16, 24
    gen = torch.Generator().manual_seed(5)
    w = random_weights(v, r, h, head_type, torch.float32, device, gen=gen)
    conf = ConfidenceWeights(torch.randn(h + r, generator=gen).to(device), torch.randn(1, generator=gen), True)
    u = (torch.randn(n, gamma, v, generator=gen) * 2).to(device)
    hidden = torch.randn(n, gamma, h, generator=gen).to(device)
    anchor = torch.randint(0, v, (n,), generator=gen).to(device)
    temp = torch.tensor([0.0, 0.9, 1.3], device=device)
    seeds = torch.tensor([1, -5, 2**50], device=device)
    offsets = torch.tensor([0, 7, 2**33 - 1], device=device)
    got = markov_block(u, hidden, anchor, w, temp, seeds, offsets, conf=conf, output="probs", backend="triton",
                       **draw_path)
    assert got.tokens.shape == (n, gamma) and got.probs.shape == (n, gamma, v)
    prev, state = anchor, None
    for k in range(gamma):
        z, _, state = head_inputs(w, prev, hidden[:, k], state)
        want = reference.markov_step(u[:, k], prev, w, temp, seeds, offsets, step=k, z=z, hidden=hidden[:, k],
                                     conf=conf, output="probs", compute_dtype=torch.float64)
        check_tokens(got.tokens[:, k], corrected_logits64(u[:, k], z, w.w2), temp, seeds, offsets + k)
        for name in ("lse", "logprobs", "conf_logits", "probs"):
            _close(name, getattr(got, name)[:, k], getattr(want, name))
        prev = got.tokens[:, k]


def test_philox_matches_random123_known_answers():
    """Philox4x32-10 known-answer vectors (Random123 kat_vectors), via the counter/key layout we use."""
    ones = 0xFFFFFFFF
    for counter_words, key, expect in [
        ((0, 0), 0, (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ]:
        c = torch.tensor([counter_words[0] | counter_words[1] << 32])
        got = philox4x32(torch.tensor([key]), c)
        assert tuple(int(x) for x in got) == expect
    # A non-trivial key and counter against Triton's own tl.randint4x.
    seeds = torch.tensor([0, 1, -1, 2**40 + 3, -(2**62)])
    counters = torch.tensor([0, ones, 2**32 + 5, 123456789012, -7])
    _check_against_triton(seeds, counters)


def test_draft_key_streams_never_meet_the_raw_seed_streams():
    """vLLM's per-request generator (rejection / recovery draws) is keyed by the raw seed; the draft noise of the
    same request, keyed by draft_key(seed), differs from the raw-seed Philox stream in every word and uniform at
    every counter (with key = seed they would be the same numbers), and distinct seeds keep distinct draft keys."""
    seeds = [0, 1, 42, 1234, 2**40 + 3, 2**62 - 1]
    counters = torch.arange(256, dtype=torch.int64)
    for s in seeds:
        key = draft_key(s)
        assert key != s and 0 <= key < 2**62
        raw = torch.stack(philox4x32(torch.full_like(counters, s), counters))
        draft = torch.stack(philox4x32(torch.full_like(counters, key), counters))
        assert (draft != raw).all()
        for u_raw, u_draft in zip(uniforms(torch.full_like(counters, s), counters),
                                  uniforms(torch.full_like(counters, key), counters)):
            assert (u_draft != u_raw).all()
    assert len({draft_key(s) for s in seeds}) == len(seeds)


@triton.jit
def _randint4x_kernel(seed_ptr, ctr_ptr, out_ptr):
    i = tl.program_id(0)
    a, b, c, d = tl.randint4x(tl.load(seed_ptr + i), tl.load(ctr_ptr + i))
    tl.store(out_ptr + 4 * i + 0, a.to(tl.int64) & 0xFFFFFFFF)
    tl.store(out_ptr + 4 * i + 1, b.to(tl.int64) & 0xFFFFFFFF)
    tl.store(out_ptr + 4 * i + 2, c.to(tl.int64) & 0xFFFFFFFF)
    tl.store(out_ptr + 4 * i + 3, d.to(tl.int64) & 0xFFFFFFFF)


def _check_against_triton(seeds, counters):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    out = torch.empty(len(seeds), 4, dtype=torch.int64, device=dev)
    _randint4x_kernel[(len(seeds),)](seeds.to(dev), counters.to(dev), out)
    want = torch.stack(philox4x32(seeds, counters), dim=1)
    assert torch.equal(out.cpu(), want)


@pytest.mark.parametrize("bad,match", [
    (dict(prev_ids=torch.zeros(3, dtype=torch.long)), "prev_ids must be \\[N\\]"),
    (dict(temperature=torch.zeros(2, dtype=torch.long)), "temperature must be a floating"),
    (dict(base_logits=torch.zeros(2, 99)), "vocab 99"),
    (dict(output="bogus"), "output must be one of"),
])
def test_bad_inputs_name_the_field(bad, match):
    w = random_weights(50, 16, 8)
    args = dict(base_logits=torch.zeros(2, 50), prev_ids=torch.zeros(2, dtype=torch.long), weights=w,
                temperature=torch.zeros(2), seeds=torch.zeros(2, dtype=torch.long))
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        markov_step(**args, backend="torch")


def test_dispatch_defaults_to_reference_on_cpu(monkeypatch):
    monkeypatch.delenv("DSPARK_KERNEL_BACKEND", raising=False)
    from vllm_dspark.kernels._backend import resolve_backend

    assert resolve_backend(None, torch.device("cpu")) == "torch"
    monkeypatch.setenv("DSPARK_KERNEL_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="DSPARK_KERNEL_BACKEND"):
        resolve_backend(None, torch.device("cpu"))


def test_block_backend_names_the_path_markov_block_runs_and_why(monkeypatch):
    """What the proposer logs at engine start: the implementation markov_block dispatches to, and the reason."""
    from vllm_dspark.kernels.markov_step import block_backend

    monkeypatch.delenv("DSPARK_KERNEL_BACKEND", raising=False)
    assert block_backend(torch.device("cpu")) == ("torch", "cpu tensors (the Triton kernels need CUDA)")
    assert block_backend(torch.device("cpu"), backend="torch") == ("torch", "backend='torch' argument")
    monkeypatch.setenv("DSPARK_KERNEL_BACKEND", "torch")
    assert block_backend(torch.device("cpu")) == ("torch", "$DSPARK_KERNEL_BACKEND=torch")
    if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter lets triton run on CPU tensors
        monkeypatch.setenv("DSPARK_KERNEL_BACKEND", "triton")
        assert block_backend(torch.device("cpu")) == ("triton", "$DSPARK_KERNEL_BACKEND=triton")
    if torch.cuda.is_available():
        monkeypatch.delenv("DSPARK_KERNEL_BACKEND")
        assert block_backend(torch.device("cuda")) == ("triton", "CUDA tensors and Triton imports")


def test_reference_probs_are_softmax_over_temperature():
    """The reference itself against a direct formula (guards the oracle)."""
    w = random_weights(40, 16, 8)
    u = torch.randn(3, 40)
    prev = torch.tensor([1, 2, 3])
    temp = torch.tensor([0.5, 1.0, 2.0])
    out = reference.markov_step(u, prev, w, temp, torch.zeros(3, dtype=torch.long), output="probs",
                                compute_dtype=torch.float64)
    logits = u.double() + F.embedding(prev, w.w1).double() @ w.w2.double().T
    torch.testing.assert_close(out.probs.double(), torch.softmax(logits / temp[:, None].double(), -1).float().double())
