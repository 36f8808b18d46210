"""GraphedDraftRound: CPU fallback (plain call), output-structure handling, and (GPU only) capture + padded replay."""
import dataclasses

import pytest
import torch

from markov_checks import random_weights
from vllm_dspark.kernels.graphs import GraphedDraftRound, _flatten
from vllm_dspark.kernels.markov_step import markov_block


@dataclasses.dataclass
class _Out:
    a: torch.Tensor
    b: torch.Tensor | None
    c: tuple


def _fn(x, y):
    return _Out(x * 2, None, (y + 1, {"s": x.sum(-1, keepdim=True)}))


def test_cpu_fallback_calls_the_function():
    calls = []

    def fn(x):
        calls.append(x.shape[0])
        return x + 1

    g = GraphedDraftRound(fn, [2, 8], lambda bs: (torch.zeros(bs, 3),), device="cpu")
    assert not g.enabled and calls == []  # nothing captured or warmed up on CPU
    x = torch.randn(5, 3)
    torch.testing.assert_close(g(x), x + 1)
    assert calls == [5]  # called with the real batch, no padding


def test_padded_size_and_errors():
    g = GraphedDraftRound(lambda x: x, [8, 1, 4], lambda bs: (torch.zeros(bs),), device="cpu")
    assert [g.padded_size(n) for n in (1, 2, 4, 5, 8)] == [1, 4, 4, 8, 8]
    with pytest.raises(ValueError, match="exceeds the largest captured batch size 8"):
        g.padded_size(9)
    with pytest.raises(ValueError, match="batch_sizes"):
        GraphedDraftRound(lambda x: x, [], lambda bs: (torch.zeros(bs),))


def test_flatten_rebuilds_nested_outputs():
    out = _fn(torch.arange(4.0).view(2, 2), torch.ones(2, 1))
    leaves, rebuild = _flatten(out)
    assert len(leaves) == 3
    back = rebuild([t * 10 for t in leaves])
    assert isinstance(back, _Out) and back.b is None and isinstance(back.c, tuple)
    torch.testing.assert_close(back.a, out.a * 10)
    torch.testing.assert_close(back.c[1]["s"], out.c[1]["s"] * 10)


@pytest.mark.gpu  # CUDA graphs
def test_graph_replay_matches_direct_call_with_padding():
    v, r, h, gamma = 1000, 32, 64, 4
    w = random_weights(v, r, h, "gated", torch.bfloat16, "cuda", gen=torch.Generator().manual_seed(0))

    def make(bs, seed=0):
        gen = torch.Generator(device="cuda").manual_seed(seed)
        return (torch.randn(bs, gamma, v, device="cuda", generator=gen).bfloat16(),
                torch.randn(bs, gamma, h, device="cuda", generator=gen).bfloat16(),
                torch.randint(0, v, (bs,), device="cuda", generator=gen),
                torch.rand(bs, device="cuda", generator=gen),
                torch.randint(0, 2**40, (bs,), device="cuda", generator=gen))

    fn = lambda u, hid, a, t, s: markov_block(u, hid, a, w, t, s, output="probs")  # noqa: E731
    g = GraphedDraftRound(fn, [4, 16], make)
    for n in (3, 16, 1):
        inputs = make(n, seed=100 + n)
        got = g(*inputs, clone=True)
        want = fn(*inputs)
        assert torch.equal(got.tokens, want.tokens)
        torch.testing.assert_close(got.probs, want.probs)
        torch.testing.assert_close(got.lse, want.lse)
