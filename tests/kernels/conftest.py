"""Run the Triton kernels on CPU tensors through Triton's interpreter when there is no GPU.

TRITON_INTERPRET is read when a kernel is defined (`@triton.jit` at import of kernel.py), so it is set here,
before the tests import anything; a kernel module some other test imported earlier is reloaded.
"""
import importlib
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
    name = "vllm_dspark.kernels.markov_step.kernel"
    if name in sys.modules:
        importlib.reload(sys.modules[name])

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device():
    return DEVICE
