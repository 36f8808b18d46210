"""GPU only: the real shapes (V = 151,936, r = 256, H = 4096, bf16) on the compiled path (bf16 tl.dot, several
batch tiles, > 1024 vocabulary tiles in the select kernel) vs the float64 reference on the same device."""
import pytest
import torch

from markov_checks import TOL, check_tokens, corrected_logits64
from vllm_dspark.kernels.markov_step import ConfidenceWeights, MarkovWeights, markov_block, reference

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("tile_draw", [True, False])
@pytest.mark.parametrize("n", [1, 70])
def test_full_size_block_matches_reference(n, tile_draw):
    from vllm_dspark.kernels.markov_step.kernel import LaunchOptions

    v, r, h, gamma = 151936, 256, 4096, 2
    gen = torch.Generator(device="cuda").manual_seed(n)
    bf = dict(device="cuda", dtype=torch.bfloat16)
    w = MarkovWeights(torch.randn(v, r, generator=gen, device="cuda").to(torch.bfloat16),
                      (torch.randn(v, r, generator=gen, device="cuda") / 8).to(torch.bfloat16))
    conf = ConfidenceWeights((torch.randn(h + r, generator=gen, device="cuda") / 64).to(torch.bfloat16),
                             torch.zeros(1, device="cuda"), True)
    u = (torch.randn(n, gamma, v, generator=gen, device="cuda") * 3).to(**bf)
    hidden = torch.randn(n, gamma, h, generator=gen, device="cuda").to(**bf)
    anchor = torch.randint(0, v, (n,), generator=gen, device="cuda")
    temp = (torch.arange(n, device="cuda") % 3).float() * 0.6  # greedy, 0.6, 1.2
    seeds = torch.randint(0, 2**62, (n,), generator=gen, device="cuda")
    got = markov_block(u, hidden, anchor, w, temp, seeds, conf=conf, output="probs", backend="triton",
                       launch=LaunchOptions(tile_draw=tile_draw))
    prev = anchor
    for k in range(gamma):
        want = reference.markov_step(u[:, k], prev, w, temp, seeds, step=k, hidden=hidden[:, k], conf=conf,
                                     output="probs", compute_dtype=torch.float64)
        check_tokens(got.tokens[:, k], corrected_logits64(u[:, k], w.w1[prev], w.w2), temp, seeds,
                     torch.zeros_like(seeds) + k)
        for name in ("lse", "logprobs", "conf_logits", "probs"):
            torch.testing.assert_close(getattr(got, name)[:, k].double(), getattr(want, name).double(), **TOL[name])
        prev = got.tokens[:, k]

