"""One OpenAI-compatible vLLM server process for the e2e tests (`python -m vllm.entrypoints.openai.api_server`)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT_S = float(os.environ.get("DSPARK_E2E_START_TIMEOUT", "900"))
MAX_NUM_SEQS = 16
# Every test server: float32 and no compilation (exact comparisons), fixed seed, no prefix caching (each request
# runs its own prefill, so drafts and lengths do not depend on what ran before).
COMMON_ARGS = ("--dtype", "float32", "--max-model-len", "1024", "--max-num-seqs", str(MAX_NUM_SEQS), "-O0",
               "--seed", "0", "--no-enable-prefix-caching")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    args: list[str]
    env: dict[str, str | None]
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, target: Path) -> None:
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(target),
               "--port", str(self.port), "--host", "127.0.0.1", *self.args]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1", **self.env}
        env = {k: v for k, v in env.items() if v is not None}  # a None in self.env unsets the variable
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "w") as f:
            f.write(" ".join(cmd) + "\n")
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "a"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1.0)
        raise TimeoutError(f"server {self.name} not ready after {timeout:.0f}s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)  # our own process group (start_new_session)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)

    def metrics(self) -> dict[str, float]:
        """Prometheus samples summed over label sets, keyed by metric name."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return out
