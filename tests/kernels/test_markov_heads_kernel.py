"""The fused block against the model's own modules: MarkovHead.step + ConfidenceHead (vllm_dspark.model.heads).

Per position the modules are fed the kernel's previous token (teacher forcing), so one boundary case cannot
cascade. fp32 modules: the kernel's tolerance table; bf16 modules round the bias and the confidence input to bf16,
hence TOL_BF16_MODULE and a greedy-gap tolerance of the same size.
"""
import pytest
import torch

from markov_checks import TOL, TOL_BF16_MODULE
from vllm_dspark.kernels.markov_step import ConfidenceWeights, MarkovWeights, markov_block
from vllm_dspark.model.heads import ConfidenceHead, MarkovHead, logits_to_probs


def _modules(v, h, r, head_type, dtype, device, seed):
    torch.manual_seed(seed)
    head = MarkovHead(v, h, r, head_type)
    conf = ConfidenceHead(h, r, with_markov=True)
    with torch.no_grad():
        head.markov_w2.weight.mul_(6.0)  # make the bias move the argmax
        for p in list(head.parameters()) + list(conf.parameters()):
            if p.dim() == 1:
                p.normal_()
    return head.to(device, dtype), conf.to(device, dtype)


@pytest.mark.parametrize("head_type", ["vanilla", "gated", "rnn"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_matches_markov_head(head_type, dtype, device):
    n, gamma, v, h, r = 4, 3, 389, 24, 16
    head, conf = _modules(v, h, r, head_type, dtype, device, seed=len(head_type) + (dtype == torch.bfloat16))
    gen = torch.Generator().manual_seed(1)
    u = (torch.randn(n, gamma, v, generator=gen) * 2).to(device, dtype)
    hidden = torch.randn(n, gamma, h, generator=gen).to(device, dtype)
    anchor = torch.randint(0, v, (n,), generator=gen).to(device)
    temp = torch.tensor([0.0, 0.0, 0.8, 1.5], device=device)
    seeds = torch.arange(n, device=device) + 100
    got = markov_block(u, hidden, anchor, MarkovWeights.from_module(head), temp, seeds,
                       conf=ConfidenceWeights.from_module(conf), output="logits", backend="triton")
    tol_l = TOL["logits"] if dtype == torch.float32 else TOL_BF16_MODULE["logits"]
    tol_c = TOL["conf_logits"] if dtype == torch.float32 else TOL_BF16_MODULE["conf_logits"]
    prev, state = anchor, None
    with torch.no_grad():
        for k in range(gamma):
            bias, w1_prev, state = head.step(prev, hidden[:, k], state)
            module_logits = (u[:, k] + bias).float()
            torch.testing.assert_close(got.logits[:, k], module_logits, **tol_l)
            torch.testing.assert_close(got.conf_logits[:, k], conf(hidden[:, k], w1_prev).float(), **tol_c)
            tokens = got.tokens[:, k]
            greedy_gap = module_logits.max(-1).values - module_logits.gather(1, tokens[:, None]).squeeze(1)
            assert (greedy_gap[:2] <= tol_l["atol"] + 1e-5).all(), f"position {k}: greedy gap {greedy_gap[:2]}"
            for i in (2, 3):  # sampled rows: the reported log-prob is the module's draft distribution's
                p = logits_to_probs(module_logits[i], float(temp[i]))
                assert abs(float(torch.log(p[tokens[i]])) - float(got.logprobs[i, k])) < 3 * tol_l["atol"] / float(temp[i]) + 1e-4
            prev = tokens
