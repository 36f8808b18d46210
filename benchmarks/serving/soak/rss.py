"""Resident memory of a server's process tree, sampled by role while the load runs, and its growth."""
from __future__ import annotations

import statistics
import threading
import time

import psutil


class RssSampler:
    """RSS (MB) of a process and each of its descendants every `interval` s, by role: "api_server" for the root,
    else the process name (vLLM names its children VLLM::EngineCore, VLLM::Worker)."""

    def __init__(self, pid: int, interval: float = 2.0):
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, dict[str, float]]] = []  # (seconds since start, {role: MB})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss_by_role(self) -> dict[str, float]:
        out: dict[str, float] = {}
        try:
            root = psutil.Process(self.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            return out
        for p in procs:
            try:
                role = "api_server" if p.pid == self.pid else p.name()
                out[role] = out.get(role, 0.0) + p.memory_info().rss / 2**20
            except psutil.NoSuchProcess:
                pass
        return out

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - t0, self.rss_by_role()))
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((self.samples[-1][0] + self.interval if self.samples else 0.0, self.rss_by_role()))


def _quarter_growth(mb: list[float]) -> tuple[float, float]:
    q = max(1, len(mb) // 4)
    return statistics.median(mb[:q]), statistics.median(mb[-q:])


def rss_summary(samples: list[tuple[float, dict[str, float]]]) -> dict:
    """Totals over the process tree (start, end, max, quarter medians, growth) and the growth of each role."""
    mb = [sum(by_role.values()) for _, by_role in samples]
    first, last = _quarter_growth(mb)
    roles = sorted({r for _, by_role in samples for r in by_role})
    growth_by_role = {}
    for role in roles:
        a, b = _quarter_growth([by_role.get(role, 0.0) for _, by_role in samples])
        growth_by_role[role] = b - a
    return {"samples": len(mb), "start_mb": mb[0], "end_mb": mb[-1], "max_mb": max(mb),
            "first_quarter_median_mb": first, "last_quarter_median_mb": last, "growth_mb": last - first,
            "growth_by_role_mb": growth_by_role}
