"""CUDA-graph capture of a draft round, one graph per batch size, replayed with padding to the next captured size.

A draft round is γ × 2-3 small launches (plus the head's torch ops): at batch 1 their launch overhead is
comparable to the kernels themselves, and a graph replay removes it. On CPU (or without CUDA) the wrapper just
calls the function.

Contract for `fn(*inputs)`: every input and every output tensor has the batch on dim 0, and rows are independent
(row i of the outputs depends only on row i of the inputs), so padding rows cannot change real rows. Outputs may
be a tensor, None, or a tuple / list / dict / dataclass of those. Replay outputs are views into static buffers:
they are overwritten by the next call, of any size (the graphs share one memory pool; pass `clone=True` to get
copies).
"""
from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Sequence

import torch


def _flatten(obj) -> tuple[list[torch.Tensor], Callable]:
    """Tensors of a nested output and a function rebuilding the structure from new tensors."""
    if obj is None:
        return [], lambda ts: None
    if isinstance(obj, torch.Tensor):
        return [obj], lambda ts: ts[0]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        names = [f.name for f in dataclasses.fields(obj)]
        leaves, rebuild = _flatten([getattr(obj, k) for k in names])
        return leaves, lambda ts: dataclasses.replace(obj, **dict(zip(names, rebuild(ts))))
    if isinstance(obj, dict):
        keys = list(obj)
        leaves, rebuild = _flatten([obj[k] for k in keys])
        return leaves, lambda ts: dict(zip(keys, rebuild(ts)))
    if isinstance(obj, (list, tuple)):
        parts = [_flatten(x) for x in obj]
        counts = [len(p[0]) for p in parts]

        def rebuild(ts):
            out, i = [], 0
            for (_, rb), c in zip(parts, counts):
                out.append(rb(ts[i:i + c]))
                i += c
            return type(obj)(out) if isinstance(obj, tuple) else out

        return [t for p in parts for t in p[0]], rebuild
    raise TypeError(f"GraphedDraftRound: unsupported output type {type(obj).__name__}")


class GraphedDraftRound:
    """Capture `fn` once per batch size in `batch_sizes`; `__call__` pads to the next captured size and replays.

    make_inputs(batch) must return a tuple of valid example inputs for that batch size (all tensors batch-major,
    or non-tensor constants that stay the same across calls). They become the static input buffers; their
    values in padding rows are what padding rows compute on, so they must be valid inputs (e.g. in-range ids).
    """

    def __init__(self, fn: Callable, batch_sizes: Sequence[int], make_inputs: Callable[[int], tuple],
                 warmup: int = 2, device: torch.device | str | None = None, pool=None,
                 capture_error_mode: str = "global"):
        if not batch_sizes or min(batch_sizes) < 1:
            raise ValueError(f"batch_sizes must be a non-empty list of positive ints, got {batch_sizes!r}")
        self.fn = fn
        self.batch_sizes = sorted(set(int(b) for b in batch_sizes))
        self.device = torch.device(device) if device is not None else None
        self.enabled = torch.cuda.is_available() and (self.device is None or self.device.type == "cuda")
        self._graphs: dict[int, tuple] = {}
        self.pool = pool  # graphs of several instances may share one memory pool (torch.cuda.graph_pool_handle)
        self._error_mode = capture_error_mode  # "thread_local" inside a multi-threaded server
        if self.enabled:
            self._capture(make_inputs, warmup)

    def _capture(self, make_inputs, warmup):
        stream = torch.cuda.Stream()
        for bs in reversed(self.batch_sizes):  # largest first, so smaller graphs reuse its memory pool
            inputs = tuple(make_inputs(bs))
            # NOTE: warm up on a side stream outside capture: Triton compiles and autotunes here, not in the graph.
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(warmup):
                    self.fn(*inputs)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode=self._error_mode):
                outputs = self.fn(*inputs)
            self.pool = graph.pool()
            leaves, rebuild = _flatten(outputs)
            self._graphs[bs] = (graph, inputs, leaves, rebuild)
        torch.cuda.synchronize()

    def padded_size(self, n: int) -> int:
        i = bisect.bisect_left(self.batch_sizes, n)
        if i == len(self.batch_sizes):
            raise ValueError(f"batch {n} exceeds the largest captured batch size {self.batch_sizes[-1]}")
        return self.batch_sizes[i]

    def __call__(self, *inputs, clone: bool = False):
        if not self.enabled:
            return self.fn(*inputs)
        n = next(x.shape[0] for x in inputs if isinstance(x, torch.Tensor))
        graph, static_in, leaves, rebuild = self._graphs[self.padded_size(n)]
        for dst, src in zip(static_in, inputs):
            if isinstance(dst, torch.Tensor):
                if src.shape[1:] != dst.shape[1:] or src.shape[0] != n:
                    raise ValueError(f"input of shape {tuple(src.shape)} does not fit captured {tuple(dst.shape)}"
                                     f" at batch {n}")
                dst[:n].copy_(src)
        graph.replay()
        outs = [t[:n].clone() if clone else t[:n] for t in leaves]
        return rebuild(outs)
