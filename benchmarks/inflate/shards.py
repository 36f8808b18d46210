"""Safetensors output written shard by shard in a planned order (one layer at a time in memory)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

WEIGHT_FILES = re.compile(r"^model.*\.safetensors(\.index\.json)?$")


class ShardWriter:
    """Writes tensors in a planned order into safetensors shards as soon as each shard is complete."""

    def __init__(self, directory: Path, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, max_shard_bytes: int):
        self.dir, self.shapes, self.dtype = directory, shapes, dtype
        itemsize = torch.empty((), dtype=dtype).element_size()
        groups: list[list[str]] = [[]]
        size = 0
        for key, shape in shapes.items():
            nbytes = math.prod(shape) * itemsize
            if groups[-1] and size + nbytes > max_shard_bytes:
                groups.append([])
                size = 0
            groups[-1].append(key)
            size += nbytes
        n = len(groups)
        self.names = [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)] if n > 1 else ["model.safetensors"]
        self.shard_of = {key: k for k, group in enumerate(groups) for key in group}
        self.groups = groups
        self.pending: dict[str, torch.Tensor] = {}
        self.order = iter(shapes)
        self.total_bytes = sum(math.prod(s) for s in shapes.values()) * itemsize
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.iterdir():  # an older run's shards would shadow or confuse the new ones
            if WEIGHT_FILES.match(stale.name):
                stale.unlink()

    def add(self, key: str, tensor: torch.Tensor) -> None:
        expected = next(self.order, None)
        if key != expected or tuple(tensor.shape) != self.shapes[key]:
            planned = f"{expected} {self.shapes.get(expected)}"
            raise RuntimeError(f"writer got {key} {tuple(tensor.shape)}, planned {planned}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise RuntimeError(f"{key} has non-finite values")
        cast = tensor.to(self.dtype) if tensor.is_floating_point() else tensor  # d2t/t2d index tensors stay ints
        self.pending[key] = cast.to("cpu").contiguous()
        k = self.shard_of[key]
        if key == self.groups[k][-1]:
            save_file({n: self.pending.pop(n) for n in self.groups[k]}, str(self.dir / self.names[k]), {"format": "pt"})

    def finish(self) -> None:
        if next(self.order, None) is not None or self.pending:
            raise RuntimeError("writer finished before every planned tensor was written")
        if len(self.names) > 1:
            index = {
                "metadata": {"total_size": self.total_bytes},
                "weight_map": {key: self.names[k] for key, k in self.shard_of.items()},
            }
            (self.dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
