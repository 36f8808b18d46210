"""Replace methods a vLLM class defines itself by wrappers of them, once per process."""
from __future__ import annotations

import functools
from collections.abc import Callable


def wrap_methods(cls: type, originals: dict[str, Callable], build: Callable[..., dict[str, Callable]]) -> None:
    """`build(**originals)` returns {name: wrapper}; each replaces `cls.<name>` (its own attribute), the originals
    are kept in `originals`. A second call (the methods are already ours) does nothing."""
    current = {name: cls.__dict__[name] for name in originals}
    if any(getattr(fn, "__dspark_wrapped__", False) for fn in current.values()):
        return
    originals.update(current)
    for name, wrapper in build(**current).items():
        wrapper = functools.wraps(current[name])(wrapper)
        wrapper.__dspark_wrapped__ = True
        setattr(cls, name, wrapper)
