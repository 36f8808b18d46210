"""The DSpark objective against hand-computed values."""
import math

import pytest
import torch

from vllm_dspark.training.losses import LossConfig, slot_losses


def test_two_slots_by_hand():
    ln2, ln3 = math.log(2), math.log(3)
    draft = torch.tensor([[0.0, ln2, 0.0], [ln3, 0.0, 0.0]], dtype=torch.float64)  # p_d = [1/4,1/2,1/4], [3/5,1/5,1/5]
    target = torch.tensor([[0.0, 0.0, 0.0], [ln3, 0.0, 0.0]], dtype=torch.float64)  # p_t = [1/3]*3, equal to p_d
    labels = torch.tensor([1, 0])
    slots = torch.tensor([0, 2])
    conf = torch.tensor([0.0, ln3], dtype=torch.float64)  # c = 1/2, 3/4
    cfg = LossConfig(alpha_ce=0.1, alpha_tv=0.9, alpha_conf=1.0, decay=4.0)
    out = slot_losses(draft, target, labels, slots, gamma=3, cfg=cfg, conf_logits=conf)

    # slot 0: CE = -ln(1/2); ‖p_d − p_t‖₁ = 2·(1/3 − 1/4) + (1/2 − 1/3) = 1/3; label y = 1 − 1/6 = 5/6;
    #         BCE(c = 1/2, y) = ln 2 whatever y is.
    ce0, tv0, bce0 = ln2, 1 / 3, ln2
    # slot 2: CE = -ln(3/5); TV = 0; y = 1; BCE = -ln(3/4)
    ce2, tv2, bce2 = -math.log(3 / 5), 0.0, -math.log(3 / 4)
    w0, w2 = 1.0, math.exp(-2 / 4)
    l0 = 0.1 * ce0 + 0.9 * tv0 + 1.0 * bce0
    l2 = 0.1 * ce2 + 0.9 * tv2 + 1.0 * bce2
    assert out.weighted.item() == pytest.approx(w0 * l0 + w2 * l2, rel=1e-6)
    assert out.weight.item() == pytest.approx(w0 + w2, rel=1e-6)
    assert out.ce.item() == pytest.approx(ce0 + ce2, rel=1e-6)
    assert out.tv.item() == pytest.approx(tv0 + tv2, rel=1e-6)
    assert out.bce.item() == pytest.approx(bce0 + bce2, rel=1e-6)
    assert out.accept.item() == pytest.approx(5 / 6 + 1, rel=1e-6)
    assert out.accept_by_slot.tolist() == pytest.approx([5 / 6, 0, 1], rel=1e-6)
    assert out.count_by_slot.tolist() == [1, 0, 1]


def test_gradients_by_hand():
    """d/dlogits of α_tv·‖softmax(z) − p_t‖₁ and of the CE, one slot, V = 2."""
    z = torch.tensor([[0.0, 0.0]], dtype=torch.float64, requires_grad=True)  # p_d = [1/2, 1/2]
    target = torch.tensor([[math.log(3), 0.0]], dtype=torch.float64)  # p_t = [3/4, 1/4]
    out = slot_losses(z, target, torch.tensor([0]), torch.tensor([0]), gamma=1,
                      cfg=LossConfig(alpha_ce=1.0, alpha_tv=1.0, alpha_conf=0.0))
    out.weighted.backward()
    # TV = |p0 − 3/4| + |p1 − 1/4| = (3/4 − p0) + (p1 − 1/4); dTV/dz0 = −dp0/dz0 + dp1/dz0 = −1/4 − 1/4 = −1/2
    # CE = −log p0; dCE/dz0 = p0 − 1 = −1/2. Total −1; by symmetry dz1 = +1.
    assert z.grad[0].tolist() == pytest.approx([-1.0, 1.0])


def test_confidence_label_is_detached():
    z = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[2.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    out = slot_losses(z, target, torch.tensor([0]), torch.tensor([0]), gamma=1,
                      cfg=LossConfig(alpha_ce=0.0, alpha_tv=0.0, alpha_conf=1.0), conf_logits=torch.zeros(1, dtype=torch.float64))
    out.weighted.backward()
    assert torch.count_nonzero(z.grad) == 0  # the BCE only trains the confidence head


@pytest.mark.parametrize("kw, match", [
    ({"alpha_ce": -1.0}, "alpha_ce"), ({"alpha_tv": float("nan")}, "alpha_tv"), ({"decay": 0.0}, "decay"),
    ({"alpha_ce": 0.0, "alpha_tv": 0.0, "alpha_conf": 0.0}, "nothing to train"),
])
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        LossConfig(**kw)
