"""One OpenAI-compatible vLLM server process for the e2e tests: `vllm_dspark.bench`'s server process and
`/metrics` parsing, with the flags every test server shares."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from vllm_dspark.bench import metrics_scrape
from vllm_dspark.bench.server import ServerProcess

START_TIMEOUT_S = float(os.environ.get("DSPARK_E2E_START_TIMEOUT", "900"))
MAX_NUM_SEQS = 16
# Every test server: float32 and no compilation (exact comparisons), fixed seed, no prefix caching (each request
# runs its own prefill, so drafts and lengths do not depend on what ran before).
COMMON_ARGS = ("--dtype", "float32", "--max-model-len", "1024", "--max-num-seqs", str(MAX_NUM_SEQS), "-O0",
               "--seed", "0", "--no-enable-prefix-caching")
METRIC_PREFIXES = ("vllm:", "dspark:")


@dataclass
class Server:
    name: str
    args: list[str]
    env: dict[str, str | None]
    log: Path
    process: ServerProcess | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return self.process.url

    def start(self, target: Path) -> None:
        env = {"VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1", **self.env}
        self.process = ServerProcess(["--model", str(target), *self.args], log_path=self.log, env=env).start()

    def tail(self, n: int = 40) -> str:
        return self.process.log_tail(n)

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        self.process.wait_healthy(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def metrics(self) -> dict[str, float]:
        """Prometheus samples summed over label sets, keyed by sample name."""
        return metrics_scrape.totals(metrics_scrape.scrape(self.url, METRIC_PREFIXES))
