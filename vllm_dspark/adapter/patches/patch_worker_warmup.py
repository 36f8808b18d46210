"""Patch: after a worker's `compile_or_warm_up_model`, let the DSpark proposer load or profile its cost table.

Profiling SPS(B) needs the finished engine (KV cache allocated, CUDA graphs captured) and must run before the
first request; vLLM has no drafter hook at that point, so we wrap the worker method that ends engine start
(`Worker` on GPUs, `CPUWorker`, which overrides it, on CPUs). Wrapping keeps the original and only adds a call
to `DSparkProposer.on_engine_warm(model_runner)` when the engine serves a DSpark drafter. If it does but the
proposer is not at `worker.model_runner.drafter` (vLLM moved it), engine start fails naming that attribute:
without the hook modes confidence / sla would serve without a cost table.
"""
from __future__ import annotations

import functools
from types import ModuleType

from vllm_dspark.adapter import compat, spec_config
from vllm_dspark.adapter.patches._import_hook import when_imported
from vllm_dspark.adapter.patches._lookup import dspark_drafter

METHOD = "compile_or_warm_up_model"
_originals: dict[str, object] = {}


def warm_drafter(worker):
    """The worker's DSpark proposer; None when the engine does not serve a DSpark drafter."""
    if not spec_config.serves_dspark(worker.vllm_config):
        return None
    runner = getattr(worker, "model_runner", None)
    if runner is None:
        raise RuntimeError(f"vllm-dspark: {type(worker).__name__} has no `model_runner` after {METHOD}; this vLLM "
                           "moved it, so the DSpark drafter cannot load or profile its cost table before serving")
    return dspark_drafter(runner, "load or profile the cost table before serving")


def _wrap(module: ModuleType, cls_name: str) -> None:
    cls = getattr(module, cls_name)
    original = cls.__dict__.get(METHOD)
    if original is None:
        raise RuntimeError(f"vllm-dspark: {module.__name__}.{cls_name} no longer defines {METHOD}; cannot patch")
    if getattr(original, "__dspark_wrapped__", False):
        return
    _originals[f"{module.__name__}.{cls_name}"] = original

    @functools.wraps(original)
    def compile_or_warm_up_model(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        drafter = warm_drafter(self)
        if drafter is not None:
            drafter.on_engine_warm(self.model_runner)
        return out

    compile_or_warm_up_model.__dspark_wrapped__ = True
    setattr(cls, METHOD, compile_or_warm_up_model)


def apply() -> None:
    for module_name, cls_name in compat.WORKER_CLASSES:
        when_imported(module_name, functools.partial(_wrap, cls_name=cls_name))
