"""Target features computed once and read back: the frozen target's outputs for the training records, on disk.

The target never changes during training, so its chosen layers' outputs and its final-normed hidden state at every
position of every record are the same at every step. `FeatureCache.build` runs the target once over the records and
writes them to one memory-mapped file (rows of [features ; final hidden], record after record); a training step then
reads its records' rows and applies only the LM head, at the anchor slots (`target_pass`): the same `TargetPass` that
`online_target.run_target` computes, without the target's decoder layers.

Bounded on disk: `build` refuses (before writing) a cache larger than `max_bytes`. Stored as bf16 when training
computes in bf16 (the drafter reads its inputs in bf16 then anyway), else as fp32 (equal to the online pass).
A `meta.json` names what the cache was built from (target weights, data file, record settings, layers, dtype);
opening a cache built from anything else is refused, so a stale cache cannot train a drafter silently.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from vllm_dspark.model import target_features
from vllm_dspark.training.data import Record
from vllm_dspark.training.online_target import TargetPass

_STORAGE = {"float32": (np.float32, torch.float32), "bfloat16": (np.uint16, torch.bfloat16)}


class FeatureCacheError(ValueError):
    """A feature cache that does not fit the run (other target, data or settings) or the disk bound."""


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes (prefix of 16 hex digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def target_fingerprint(target: torch.nn.Module) -> str:
    """sha256 of the target's weights (names, shapes, dtypes and values): equal iff the features would be equal."""
    h = hashlib.sha256()
    for name, t in sorted(target.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def records_fingerprint(records: list[Record]) -> str:
    """sha256 of the records' token ids, as training reads them (after truncation / skipping)."""
    h = hashlib.sha256()
    for r in records:
        h.update(np.asarray(r.prompt_ids, dtype=np.int64).tobytes() + b"|")
        h.update(np.asarray(r.response_ids, dtype=np.int64).tobytes() + b";")
    return h.hexdigest()[:16]


@dataclass
class FeatureCache:
    path: Path
    rows: torch.Tensor  # [total_tokens, feature_size + hidden_size], memory-mapped
    offsets: np.ndarray  # [num_records + 1] first row of each record
    feature_size: int  # m·H_t
    meta: dict[str, Any]

    # ----------------------------------------------------------------------------------------- writing
    @staticmethod
    def expected_meta(target: torch.nn.Module, records: list[Record], layer_ids: list[int], dtype: str) -> dict:
        if dtype not in _STORAGE:
            raise FeatureCacheError(f"feature cache dtype must be one of {sorted(_STORAGE)}, got {dtype!r}")
        hidden = target.config.hidden_size
        return {
            "format": 1,
            "target": target_fingerprint(target),
            "records": records_fingerprint(records),
            "num_records": len(records),
            "total_tokens": sum(len(r.prompt_ids) + len(r.response_ids) for r in records),
            "layer_ids": list(layer_ids),
            "feature_size": len(layer_ids) * hidden,
            "hidden_size": hidden,
            "dtype": dtype,
        }

    @staticmethod
    def nbytes(meta: dict) -> int:
        item = np.dtype(_STORAGE[meta["dtype"]][0]).itemsize
        return meta["total_tokens"] * (meta["feature_size"] + meta["hidden_size"]) * item

    @classmethod
    def build(
        cls, path: str | Path, target: torch.nn.Module, records: list[Record], layer_ids: list[int], *,
        dtype: str = "float32", max_bytes: int | None = None, batch_tokens: int = 4096,
        autocast: torch.autocast | None = None, progress: bool = False,
    ) -> "FeatureCache":
        """Run the target over every record once and write the cache; reuse one built from the same inputs.

        Processes that build the same cache at once (two recipes side by side) take turns: the second finds it done.
        """
        path = Path(path)
        meta = cls.expected_meta(target, records, layer_ids, dtype)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (path / "meta.json").is_file():
                return cls.open(path, meta)
            return cls._write(path, meta, target, records, layer_ids, max_bytes, batch_tokens, autocast, progress)

    @classmethod
    def _write(cls, path, meta, target, records, layer_ids, max_bytes, batch_tokens, autocast, progress):
        dtype = meta["dtype"]
        if path.exists() and any(path.iterdir()):
            raise FeatureCacheError(f"{path} exists and is not a complete feature cache: delete it or pick another")
        size = cls.nbytes(meta)
        if max_bytes is not None and size > max_bytes:
            raise FeatureCacheError(
                f"the feature cache would take {size / 2**30:.2f} GiB ({meta['total_tokens']} tokens × "
                f"{meta['feature_size'] + meta['hidden_size']} values, {dtype}), over the bound of "
                f"{max_bytes / 2**30:.2f} GiB: raise the bound, store bfloat16, or use fewer records"
            )
        tmp = path.with_name(path.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        lengths = [len(r.prompt_ids) + len(r.response_ids) for r in records]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        np_dtype, torch_dtype = _STORAGE[dtype]
        width = meta["feature_size"] + meta["hidden_size"]
        store = np.lib.format.open_memmap(tmp / "rows.npy", mode="w+", dtype=np_dtype, shape=(int(offsets[-1]), width))
        rows = torch.from_numpy(store).view(torch_dtype)
        done = 0
        for chunk in _length_sorted_chunks(lengths, batch_tokens):
            ids = [records[i].token_ids for i in chunk]
            feats, last = _target_rows(target, ids, layer_ids, autocast)
            for b, i in enumerate(chunk):
                rows[offsets[i]: offsets[i + 1]] = torch.cat([feats[b], last[b]], -1)[: lengths[i]].to(torch_dtype)
            if progress and (done + len(chunk)) * 10 // len(records) > done * 10 // len(records):
                print(f"feature cache {path}: {done + len(chunk)} / {len(records)} records", flush=True)
            done += len(chunk)
        store.flush()
        del store, rows
        np.save(tmp / "offsets.npy", offsets)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")  # written last: marks it complete
        if path.exists():
            path.rmdir()
        os.replace(tmp, path)
        return cls.open(path, meta)

    # ----------------------------------------------------------------------------------------- reading
    @classmethod
    def open(cls, path: str | Path, expected: dict | None = None) -> "FeatureCache":
        path = Path(path)
        if not (path / "meta.json").is_file():
            raise FeatureCacheError(f"{path} is not a feature cache (no meta.json)")
        meta = json.loads((path / "meta.json").read_text())
        if expected is not None and meta != expected:
            diff = sorted(k for k in set(meta) | set(expected) if meta.get(k) != expected.get(k))
            raise FeatureCacheError(
                f"the feature cache {path} was built from other inputs (differs in {', '.join(diff)}): "
                "delete it (it is rebuilt) or point --feature-cache elsewhere"
            )
        store = np.load(path / "rows.npy", mmap_mode="r")
        return cls(path, _as_torch(store, meta["dtype"]), np.load(path / "offsets.npy"), meta["feature_size"], meta)

    def record_rows(self, index: int) -> torch.Tensor:
        return self.rows[int(self.offsets[index]): int(self.offsets[index + 1])]

    def target_pass(
        self, target: torch.nn.Module, indices: Iterable[int], seq_len: int, positions: torch.Tensor,
        autocast: torch.autocast | None = None,
    ) -> TargetPass:
        """The `TargetPass` of a batch of records (right-padded to seq_len; padding rows are zeros, never read)."""
        indices = list(indices)
        out = torch.zeros(len(indices), seq_len, self.rows.shape[1], dtype=torch.float32)
        for b, i in enumerate(indices):
            r = self.record_rows(i)
            out[b, : r.shape[0]].copy_(r)
        device = positions.device
        out = out.to(device)
        features, last = out[..., : self.feature_size], out[..., self.feature_size:]
        rows = torch.gather(last, 1, positions[..., None].expand(-1, -1, last.shape[-1]))
        head = target.get_output_embeddings()
        with torch.no_grad(), (autocast if autocast is not None else torch.autocast(device.type, enabled=False)):
            logits = head(rows.to(head.weight.dtype))
        return TargetPass(features=features, logits=logits)


def _as_torch(store: np.ndarray, dtype: str) -> torch.Tensor:
    # a read-only memory map: torch warns about non-writable arrays; nothing writes through this view
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(store).view(_STORAGE[dtype][1])


def _length_sorted_chunks(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Record indices grouped by similar length, each group padded to at most ~batch_tokens tokens."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunks: list[list[int]] = []
    for i in order:
        if chunks and (len(chunks[-1]) + 1) * lengths[i] <= batch_tokens:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return chunks


@torch.no_grad()
def _target_rows(target, ids: list[list[int]], layer_ids: list[int], autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """Features [N, T, m·H] and final-normed hidden [N, T, H] of right-padded records, as `run_target` reads them."""
    device = next(target.parameters()).device
    t = max(len(x) for x in ids)
    input_ids = torch.zeros(len(ids), t, dtype=torch.long)
    for b, x in enumerate(ids):
        input_ids[b, : len(x)] = torch.tensor(x)
    with (autocast if autocast is not None else torch.autocast(device.type, enabled=False)):
        out = target.get_decoder()(input_ids=input_ids.to(device), output_hidden_states=True, use_cache=False)
    return target_features(out.hidden_states, layer_ids).float().cpu(), out.last_hidden_state.float().cpu()


def open_for_training(
    path: str | Path, target: torch.nn.Module, records: list[Record], layer_ids: list[int], *, bf16: bool,
    autocast: torch.autocast | None, max_gb: float, is_main: bool = True, barrier=None,
) -> FeatureCache:
    """The cache of a training run: built by the main process (once), then opened by every process."""
    dtype = "bfloat16" if bf16 else "float32"
    if is_main:
        cache = FeatureCache.build(path, target, records, layer_ids, dtype=dtype, max_bytes=int(max_gb * 2**30),
                                   autocast=autocast, progress=True)
    if barrier is not None:
        barrier()
    if not is_main:
        cache = FeatureCache.open(path, FeatureCache.expected_meta(target, records, layer_ids, dtype))
    return cache
