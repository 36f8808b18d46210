"""Worker-side counters that vLLM's per-step stats do not carry, handed to the API server's `/metrics`.

vLLM sends its front end (where the Prometheus registry lives) only its own `SchedulerStats`, decoded into fixed
types, so a plugin cannot add fields to them. The engine's worker (TP rank 0) therefore keeps a few int64
counters in a small memory-mapped file named after the engine: `vllm_config.instance_id` (set once where the
config is built and handed to the engine core with it) and the data-parallel rank. `DSparkStatLogger` reads the
file at every `record`. An update is a store into shared memory (no system call per step); a reader sees each
aligned 8-byte counter whole. The writer removes the file when its process exits.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

FIELDS = (
    "length_decisions",  # engine steps whose verification lengths the policy decided (modes confidence, sla)
    "sla_fallbacks",  # of those, steps where mode sla could not meet its floor and chose lengths for throughput
    "draft_cuda_graphs",  # 1 while the draft round replays CUDA graphs, else 0
    "draft_eager_fallbacks",  # draft rounds run eagerly although graphs were captured (or their capture failed)
    "draft_off_steps",  # rounds the draft gate left without drafts (drafting did not pay at that load)
    "draft_probe_steps",  # rounds that sampled the gate's state not in use (to keep measuring it)
)
_INDEX = {name: i for i, name in enumerate(FIELDS)}


def path_for(instance_id: str, engine: int) -> Path:
    return Path(tempfile.gettempdir()) / f"vllm-dspark-{instance_id or 'default'}-{engine}.counters"


class SharedCounters:
    def __init__(self, array: np.memmap, path: Path):
        self._array, self.path = array, path

    @classmethod
    def create(cls, path: Path) -> SharedCounters:
        """The writer: a zeroed file at `path`, removed at exit. Built under a temporary name and renamed, so a
        reader never maps a file shorter than the counters."""
        path = Path(path)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        array = np.memmap(tmp, dtype=np.int64, mode="w+", shape=(len(FIELDS),))
        array.flush()
        os.replace(tmp, path)
        atexit.register(_unlink, path)
        return cls(array, path)

    @classmethod
    def open(cls, path: Path) -> SharedCounters | None:
        """A reader, or None while no complete file exists at `path`."""
        try:
            if os.path.getsize(path) != len(FIELDS) * 8:
                return None
            return cls(np.memmap(path, dtype=np.int64, mode="r", shape=(len(FIELDS),)), Path(path))
        except (OSError, ValueError):
            return None

    def set(self, **values: int) -> None:
        for name, value in values.items():
            self._array[_INDEX[name]] = value

    def read(self) -> dict[str, int]:
        return {name: int(v) for name, v in zip(FIELDS, self._array.tolist())}


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
