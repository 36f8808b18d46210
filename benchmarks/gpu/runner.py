"""Run a plan under one deadline and pack what it wrote into at most seven files of OUT.

Each step is a subprocess in its own process group with its log in WORK/logs. A step past its time (or the
run's deadline) gets SIGINT first, so gpu_check and the frontier stop their servers in their `finally` blocks,
then SIGKILL. After every step OUT is repacked, so a run cut short still leaves its logs:
    OUT/summary.md      steps, gpu_check verdicts, frontier readouts at the SLAs
    OUT/steps.json      every step's command, exit status and seconds
    OUT/env.json        versions (the `versions` step)
    OUT/gpu_check.json  gpu_check's report
    OUT/frontier.json   the comparison of the frontier runs (`vllm-dspark bench` schema, baselines = the runs)
    OUT/frontier.png    its frontier plot
    OUT/logs.tar.gz     step logs, server logs, each frontier run's results (no weights)
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tarfile
import threading
import time
from pathlib import Path

from benchmarks.gpu.plan import Plan, Step

PACK_S = 15.0  # kept at the end of the deadline for packing
GRACE_S = 40.0  # SIGINT -> SIGKILL
PACKED_SUFFIXES = {".log", ".json", ".md", ".png", ".txt"}
MAX_PACKED_FILE = 4 << 20


class Runner:
    def __init__(self, plan: Plan, repo: Path, out: Path, work: Path, deadline: float):
        self.plan, self.repo, self.out, self.work, self.deadline = plan, repo, out, work, deadline
        self.results: list[dict] = []
        self._lock = threading.Lock()

    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        if self.plan.done_flag:
            self.plan.done_flag.unlink(missing_ok=True)
        ok = all(self._step(step) for step in self.plan.setup)  # stops at the first failure
        if ok:
            checks = threading.Thread(target=self._checks_lane)
            checks.start()
            if not self.plan.overlap:
                checks.join()
            for step in self.plan.frontier:
                if not self._step(step):
                    break
            checks.join()
        self.pack()
        failed = [r["name"] for r in self.results if r["rc"] != 0]
        print(f"[first_gpu_run] done; failed steps: {failed or 'none'}; results in {self.out}", flush=True)
        return 1 if failed or not ok else 0

    def _checks_lane(self) -> None:
        for step in self.plan.checks:
            self._step(step)
        if self.plan.done_flag:
            self.plan.done_flag.parent.mkdir(parents=True, exist_ok=True)
            self.plan.done_flag.touch()

    def _step(self, step: Step) -> bool:
        log = self.work / "logs" / f"{step.name}.log"
        left = self.deadline - time.time() - PACK_S
        timeout = min(step.timeout_s, left)
        record = {"name": step.name, "argv": step.argv, "log": log.name, "seconds": 0.0}
        if left < 5:
            record["rc"] = "skipped: no time left"
        else:
            print(f"[first_gpu_run] {step.name} (at most {timeout:.0f} s; log {log})", flush=True)
            t0 = time.time()
            with open(log, "w") as f:
                f.write(" ".join(step.argv) + "\n")
                f.flush()
                proc = subprocess.Popen(step.argv, cwd=self.repo, stdout=f, stderr=subprocess.STDOUT,
                                        env={**os.environ, **self.plan.env}, start_new_session=True)
                record["rc"] = _wait(proc, timeout)
            record["seconds"] = round(time.time() - t0, 1)
        print(f"[first_gpu_run] {step.name}: rc {record['rc']} after {record['seconds']} s", flush=True)
        with self._lock:
            self.results.append(record)
        self.pack()
        return record["rc"] == 0

    def pack(self) -> None:
        with self._lock:
            (self.out / "steps.json").write_text(json.dumps({"deadline": self.deadline, "steps": self.results},
                                                            indent=2) + "\n")
            for src, dst in (("frontier/results.json", "frontier.json"), ("frontier/frontier.png", "frontier.png")):
                if (self.work / src).is_file():
                    shutil.copyfile(self.work / src, self.out / dst)
            with tarfile.open(self.out / "logs.tar.gz.partial", "w:gz") as tar:
                for path in sorted(self.work.rglob("*")):
                    if (path.is_file() and path.suffix in PACKED_SUFFIXES and path.stat().st_size <= MAX_PACKED_FILE
                            and ".partial" not in path.parent.name):
                        tar.add(path, arcname=str(path.relative_to(self.work)))
            os.replace(self.out / "logs.tar.gz.partial", self.out / "logs.tar.gz")
            from benchmarks.gpu.summary import write_summary

            write_summary(self.out, self.results, self.work)


def _wait(proc: subprocess.Popen, timeout: float):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for sig, grace in ((signal.SIGINT, GRACE_S), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        return "timeout"
