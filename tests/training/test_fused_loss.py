"""The fused CE + TV: values and gradients equal autograd over the reference `slot_losses`."""
from __future__ import annotations

import pytest
import torch

from vllm_dspark.training.fused_loss import ce_tv
from vllm_dspark.training.losses import LossConfig, slot_losses


def _inputs(s=45, v=300, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = (3 * torch.randn(s, v, generator=g)).to(dtype)
    t = (3 * torch.randn(s, v, generator=g)).to(dtype)
    labels = torch.randint(0, v, (s,), generator=g)
    slots = torch.arange(s) % 7
    conf = torch.randn(s, generator=g)
    return z, t, labels, slots, conf


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 8, 1000])
def test_values_and_gradients_equal_autograd(dtype, rows):
    z, t, labels, slots, conf = _inputs(dtype=dtype)
    ref_z = z.clone().requires_grad_()
    ref = slot_losses(ref_z, t, labels, slots, 7, LossConfig(), conf)
    (ref.weighted / ref.weight).backward()
    fz = z.clone().requires_grad_()
    ce, tv = ce_tv(fz, t, labels, rows_per_block=rows)
    torch.testing.assert_close(ce.sum(), ref.ce, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tv.sum(), ref.tv, rtol=1e-5, atol=1e-5)
    fused = slot_losses(fz, t, labels, slots, 7, LossConfig(), conf, fused=True)
    (fused.weighted / fused.weight).backward()
    for field in ("weighted", "ce", "tv", "bce", "accept", "accept_by_slot"):
        torch.testing.assert_close(getattr(fused, field), getattr(ref, field), rtol=1e-5, atol=1e-5, msg=field)
    assert fz.grad.dtype == dtype and ref_z.grad.abs().max() > 1e-4
    tol = 1e-6 if dtype == torch.float32 else 1e-2 * ref_z.grad.abs().max().item()
    torch.testing.assert_close(fz.grad.float(), ref_z.grad.float(), rtol=1e-4, atol=tol)


def test_each_term_alone_has_the_autograd_gradient():
    z, t, labels, _, _ = _inputs(seed=1)
    for pick in (0, 1):  # CE only, then TV only
        a, b = z.clone().requires_grad_(), z.clone().requires_grad_()
        logp = torch.log_softmax(a, -1)
        ref = (-logp.gather(-1, labels[:, None]).squeeze(-1), (logp.exp() - torch.softmax(t, -1)).abs().sum(-1))
        w = torch.rand(z.shape[0])
        (w * ref[pick]).sum().backward()
        (w * ce_tv(b, t, labels, rows_per_block=16)[pick]).sum().backward()
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-7)
