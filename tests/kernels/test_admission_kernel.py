"""Triton admission vs the reference `admit_torch` (vllm_dspark.scheduling.admission) and a cumprod oracle."""
import pytest
import torch

from vllm_dspark.kernels.admission import admission_lengths, admit, survival
from vllm_dspark.scheduling.admission import admit_torch
from vllm_dspark.scheduling.cost import CostTable


def _table(device, x=(1, 8, 32, 64, 256), y=(0.010, 0.011, 0.013, 0.020, 0.060)):
    return CostTable(list(x), list(y)).as_tensors(device)


@pytest.mark.parametrize("r,gamma", [(1, 7), (5, 7), (37, 5), (64, 3)])
def test_lengths_match_admit_torch(r, gamma, device):
    gen = torch.Generator().manual_seed(r * 10 + gamma)
    tx, ty = _table(device)
    for trial in range(3):
        conf = (torch.rand(r, gamma, generator=gen) ** 0.3).to(device)
        max_len = torch.randint(0, gamma + 1, (r,), generator=gen).to(device)
        s, got = admit(conf, max_len, tx, ty, backend="triton")
        torch.testing.assert_close(s.cpu(), torch.cumprod(conf.double().cpu(), -1), rtol=1e-12, atol=0)
        want = admit_torch(torch.cumprod(conf.double(), -1), max_len, tx, ty)
        assert got.tolist() == want.tolist(), f"trial {trial}"
        assert (got <= max_len).all()


def test_ties_follow_position_then_request(device):
    """Equal survivals admit in (k, i) order; a table where exactly 2 admissions pay off shows which 2."""
    conf = torch.tensor([[0.9, 1.0], [0.9, 0.5], [0.9, 0.5]], device=device, dtype=torch.float64)
    max_len = torch.tensor([2, 2, 2], device=device)
    # S = 0.9 at (k=0, i=0..2) and (k=1, i=0). Step time is flat up to B = 5 (3 requests + 2 drafts), then
    # steep, so the 3rd admission lowers Theta: (k, i) order admits (0, 0), (0, 1) -> lengths [1, 1, 0]
    # (request-major order would give [2, 0, 0], reversed index order [1, 0, 1]).
    tx, ty = _table(device, x=(1, 5, 6), y=(0.01, 0.01, 1.0))
    s = torch.cumprod(conf, -1)
    want = admit_torch(s, max_len, tx, ty)
    got = admission_lengths(s, max_len, tx, ty, backend="triton")
    assert want.tolist() == [1, 1, 0]
    assert got.tolist() == want.tolist()


def test_survival_input_is_made_non_increasing(device):
    s = torch.tensor([[0.5, 0.7, 0.2]], device=device, dtype=torch.float64)  # not a true survival
    tx, ty = _table(device)
    got = admission_lengths(s, torch.tensor([3], device=device), tx, ty, backend="triton")
    assert got.tolist() == admit_torch(s, torch.tensor([3], device=device), tx, ty).tolist()


def test_empty_and_bad_inputs(device):
    tx, ty = _table(device)
    assert admission_lengths(torch.zeros(0, 4, device=device, dtype=torch.float64),
                             torch.zeros(0, dtype=torch.long, device=device), tx, ty, backend="triton").numel() == 0
    with pytest.raises(ValueError, match="max_len must be \\[R\\]"):
        admission_lengths(torch.ones(2, 3, device=device), torch.ones(3, dtype=torch.long, device=device), tx, ty,
                          backend="triton")
    with pytest.raises(ValueError, match="confidence must be \\[R, gamma\\]"):
        survival(torch.ones(3, device=device), backend="triton")
