"""Start one vLLM server with a DSpark drafter in mode confidence, complete two prompts, print what the plugin said.

A cheaper check than the serving e2e tests (one server instead of five) for a vLLM release's environment: it
builds the e2e tests' bigram test drafter for the target, serves it through
`python -m vllm.entrypoints.openai.api_server`, and fails with the server log's tail if the server does not come
up, a completion fails, a regex-constrained completion (structured outputs: the grammar bitmask the runner patch
lines up with the trimmed drafts) does not match its regex, or `/metrics` lacks the plugin's metrics.

    python benchmarks/releases/smoke_serve.py --target <model dir> --workdir <scratch dir>
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from pathlib import Path

E2E = Path(__file__).resolve().parents[2] / "tests" / "e2e"
sys.path.insert(0, str(E2E))
from drafters import bigram_table, build_test_drafter, corpus_token_ids  # noqa: E402  (tests/e2e helpers)
from server import COMMON_ARGS, Server  # noqa: E402

GAMMA = 4
REGEX = r"(def [a-z_]{1,16}\(\):\n    return [0-9]{1,4}\n\n){2}"


def complete(server: Server, model: Path, prompt: str, **extra) -> str:
    body = json.dumps({"model": str(model), "prompt": prompt, "max_tokens": 64, "temperature": 0, **extra}).encode()
    req = urllib.request.Request(server.url + "/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())["choices"][0]["text"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", type=Path, required=True, help="target model folder (with eval_prompts.jsonl)")
    ap.add_argument("--workdir", type=Path, required=True)
    args = ap.parse_args(argv)
    import vllm

    args.workdir.mkdir(parents=True, exist_ok=True)
    drafter = build_test_drafter(args.target, args.workdir / "drafter", block_size=GAMMA, rank=256,
                                 bigrams=bigram_table(corpus_token_ids(args.target), 256))
    spec = {"method": "dflash", "model": str(drafter), "num_speculative_tokens": GAMMA,
            "draft_sample_method": "probabilistic", "dspark": {"mode": "confidence"}}
    server = Server("confidence", [*COMMON_ARGS, "--speculative-config", json.dumps(spec)], {},
                    args.workdir / "server.log")
    server.start(args.target)
    try:
        server.wait_ready()
        text = complete(server, args.target, "def add(a, b):")
        constrained = complete(server, args.target, "# two functions\n", structured_outputs={"regex": REGEX},
                               max_tokens=200)
        if not re.fullmatch(REGEX, constrained):
            raise RuntimeError(f"regex-constrained completion {constrained!r} does not match {REGEX!r}")
        metrics = server.metrics()
        if "dspark:scheduler_info" not in metrics:
            raise RuntimeError(f"no dspark metrics on /metrics:\n{server.tail()}")
    finally:
        server.stop()
    said = [line for line in server.log.read_text(errors="replace").splitlines() if "vllm-dspark" in line]
    print(f"vLLM {vllm.__version__}: server up; completion {text!r}; regex-constrained {constrained!r}; "
          f"drafts verified {metrics.get('vllm:spec_decode_num_draft_tokens_total', 0):.0f}")
    print("\n".join(said[:20]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
