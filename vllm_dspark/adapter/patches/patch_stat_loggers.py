"""Patch (stopgap): load `DSparkStatLogger` as if it were declared under `vllm.stat_logger_plugins`.

vLLM's front end builds stat loggers from `load_stat_logger_plugin_factories()` (entry point group
`vllm.stat_logger_plugins`), imported by name into `vllm.v1.engine.async_llm`. Until setup.py declares
`dspark = vllm_dspark.adapter.metrics:DSparkStatLogger` in that group, we rebind the function in both modules to
one that appends our logger; once the entry point exists the wrapper finds it and adds nothing.
"""
from __future__ import annotations

import functools
from types import ModuleType

from vllm_dspark.adapter import compat
from vllm_dspark.adapter.patches._import_hook import when_imported

ATTR = "load_stat_logger_plugin_factories"
_originals: dict[str, object] = {}


def _patch(module: ModuleType) -> None:
    original = getattr(module, ATTR)
    if getattr(original, "__dspark_wrapped__", False):
        return
    _originals[module.__name__] = original

    @functools.wraps(original)
    def load_stat_logger_plugin_factories():
        from vllm_dspark.adapter.metrics import DSparkStatLogger

        factories = list(original())
        if DSparkStatLogger not in factories:
            factories.append(DSparkStatLogger)
        return factories

    load_stat_logger_plugin_factories.__dspark_wrapped__ = True
    setattr(module, ATTR, load_stat_logger_plugin_factories)


def apply() -> None:
    for module_name in compat.STAT_LOGGER_HOSTS:
        when_imported(module_name, _patch)
