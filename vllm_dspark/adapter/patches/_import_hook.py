"""Run a callback right after a module is first imported (or now, if it already is).

Patches of worker-side vLLM modules (the V1 model runner, the workers) register here instead of importing those
modules from the plugin: the plugin runs in every vLLM process, and importing the model runner in the API server
process would cost seconds and touch the accelerator runtime there for nothing.
"""
from __future__ import annotations

import importlib.abc
import sys
import threading
from collections.abc import Callable
from types import ModuleType

Callback = Callable[[ModuleType], None]


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.pending: dict[str, list[Callback]] = {}
        self._lock = threading.Lock()

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.pending:
            return None
        for finder in sys.meta_path:  # the real spec, from the finders after us
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        with self._lock:
            callbacks = self.pending.pop(fullname, [])
        original_exec = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original_exec(module)
            for callback in callbacks:
                callback(module)

        loader.exec_module = exec_module  # loaders are created per spec: this touches only this module
        return spec


_finder = _PostImportFinder()


def when_imported(module_name: str, callback: Callback) -> None:
    """Call `callback(module)` once `module_name` is imported: now if it already is, else right after its import."""
    module = sys.modules.get(module_name)
    if module is not None:
        callback(module)
        return
    with _finder._lock:
        _finder.pending.setdefault(module_name, []).append(callback)
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
