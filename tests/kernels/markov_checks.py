"""Shared oracles for the Markov-step tests: float64 references and tolerance-aware token checks."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vllm_dspark.kernels.markov_step import GREEDY_EPS, SAMPLE_GROUP, MarkovWeights
from vllm_dspark.kernels.markov_step.reference import uniforms

# Tolerance table (kernel vs float64 reference on the same, already-rounded inputs; the kernel upcasts bf16/fp32
# inputs and accumulates in fp32, so both input dtypes share one table). `atol` / `rtol` as in assert_close.
TOL = {
    "logits": dict(atol=1e-4, rtol=1e-5),  # corrected logits L, |L| ~ 10, r <= 256 fp32 products
    "lse": dict(atol=1e-4, rtol=1e-5),
    "logprobs": dict(atol=1e-4, rtol=0),
    "probs": dict(atol=1e-6, rtol=1e-4),
    "conf_logits": dict(atol=1e-4, rtol=1e-5),  # H + r fp32 products
}
# Versus MarkovHead / ConfidenceHead run in bf16: the module rounds the bias and the confidence input to bf16.
TOL_BF16_MODULE = {"logits": dict(atol=0.1, rtol=0.02), "conf_logits": dict(atol=0.05, rtol=0.02)}
TOKEN_TOL = 1e-5  # float64 margin (logit gap or CDF distance) below which either of two tokens is accepted


def corrected_logits64(base_logits, z, w2):
    """[N, V] float64 L = U + z·W2sᵀ with z rounded to the weights' dtype first (as both backends do)."""
    return base_logits.double() + z.to(w2.dtype).double() @ w2.double().T


def check_tokens(tokens, logits64, temperature, seeds, counters, group=SAMPLE_GROUP):
    """Each kernel token must be the reference's choice, or within TOKEN_TOL of a decision boundary.

    Greedy rows: L[token] >= max L - tol. Sampled rows: the two-level inverse CDF of the sampling contract,
    evaluated in float64: the token's group and in-group cumulative mass must bracket u·mass within tol.
    """
    tokens = tokens.cpu().long()
    logits64 = logits64.cpu()
    n, v = logits64.shape
    u1, u2 = uniforms(seeds.cpu(), counters.cpu())
    for i in range(n):
        t = int(tokens[i])
        assert 0 <= t < v, f"row {i}: token {t} out of range"
        temp = float(temperature[i])
        if temp < GREEDY_EPS:
            gap = float(logits64[i].max() - logits64[i, t])
            assert gap <= TOKEN_TOL, f"row {i}: greedy token {t} is {gap} below the max"
            continue
        p = torch.softmax(logits64[i] / temp, 0)
        pg = F.pad(p, (0, (-v) % group)).view(-1, group)
        w = pg.sum(-1)
        _check_bracket(w, int(t // group), float(u1[i]), f"row {i} group")
        _check_bracket(pg[t // group] / w[t // group], t % group, float(u2[i]), f"row {i} in-group")


def _check_bracket(w, j, u, what):
    cum = w.cumsum(0) / w.sum()
    lo = float(cum[j - 1]) if j > 0 else 0.0
    hi = float(cum[j])
    assert lo - TOKEN_TOL <= u <= hi + TOKEN_TOL, f"{what}: index {j} has CDF [{lo}, {hi}] but u = {u}"
    assert float(w[j]) > 0, f"{what}: index {j} has zero mass"


def random_weights(v, r, h, head_type="vanilla", dtype=torch.float32, device="cpu", bias_scale=0.5, gen=None):
    g = dict(generator=gen, device="cpu")
    kw = {}
    if head_type == "gated":
        kw = dict(gate_weight=torch.randn(r, h + r, **g) / (h + r) ** 0.5, gate_bias=torch.randn(r, **g))
    elif head_type == "rnn":
        kw = dict(joint_weight=torch.randn(3 * r, 2 * r + h, **g) / (2 * r + h) ** 0.5,
                  joint_bias=torch.randn(3 * r, **g))
    w1 = torch.randn(v, r, **g)
    w2 = torch.randn(v, r, **g) * bias_scale / r ** 0.5 * 4
    conv = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return MarkovWeights(conv(w1), conv(w2), head_type, **{k: conv(t) for k, t in kw.items()})
