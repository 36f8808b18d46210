"""GPU check (run by hand on a GPU machine, not collected by pytest): equality and a short throughput comparison.

Starts four OpenAI servers on one GPU at once: the target alone, vllm-dspark in `confidence` mode (Triton
sequential-head kernels; mode `static` on vLLM releases without the draft-trimming patch, e.g. 0.26),
vllm-dspark in `static` mode (torch reference kernels) and vLLM's native DSpark speculator (V2 runner) with the
same drafter weights; then
1. greedy equality: 16 completions and 16 chats in flight at T = 0, each server against the target alone;
2. throughput: 8 requests one at a time, then 64 with 16 in flight, 128 tokens each (ignore_eos), output tok/s,
   per-user tok/s and vLLM's acceptance counters.
Writes a JSON report; prints a table.

    python tests/e2e/gpu_check.py --target <pycode-23m> --out report.json
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]  # its sibling modules; the repository root (benchmarks)

from benchmarks.bigram_drafter import bigram_table, build_bigram_drafter  # noqa: E402
from clients import chats, client, completions, model_id  # noqa: E402
from server import Server  # noqa: E402

GAMMA = 4


def build_drafter(target: Path, out: Path) -> Path:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(target))
    rows = [json.loads(line) for line in (target / "eval_prompts.jsonl").read_text().splitlines() if line]
    docs = [tok(r["prompt"])["input_ids"] for r in rows[100:400]]
    return build_bigram_drafter(target, out, block_size=GAMMA, rank=256, bigrams=bigram_table(docs, 256))


def servers(target: Path, drafter: Path, logs: Path, cpu: bool = False) -> dict[str, Server]:
    device = ["-O0", "--dtype", "float32"] if cpu else ["--gpu-memory-utilization", "0.18"]
    common = device + ["--max-model-len", "2048", "--max-num-seqs", "64", "--seed", "0", "--no-enable-prefix-caching"]

    def spec(method: str, **dspark) -> list[str]:
        s = {"method": method, "model": str(drafter), "num_speculative_tokens": GAMMA,
             "draft_sample_method": "probabilistic"}
        if dspark:
            s["dspark"] = dspark
        return ["--speculative-config", json.dumps(s)]

    # Modes confidence / sla trim drafts inside vLLM's runner (patch_runner_trim, on every supported release);
    # a release without it would refuse them at start, so this server would run mode static there.
    from vllm_dspark.adapter import patches

    mode = "confidence" if patches.supports_verify_lengths() else "static"
    return {
        "plain": Server("plain", common, {}, logs / "plain.log"),
        "dspark_confidence": Server("dspark_confidence", common + spec("dflash", mode=mode), {},
                                    logs / "confidence.log"),
        "dspark_static": Server("dspark_static", common + spec("dflash", mode="static"),
                                {"DSPARK_KERNEL_BACKEND": "torch"}, logs / "static.log"),
        "native_dspark": Server("native_dspark", common + spec("dspark"), {"VLLM_USE_V2_MODEL_RUNNER": "1"},
                                logs / "native.log"),
    }


def throughput(server: Server, prompts: list[str], concurrency: int, num: int, tokens: int = 128) -> dict:
    c = client(server)
    model = model_id(server)
    before = server.metrics()

    def one(prompt):
        t0 = time.perf_counter()
        out = c.completions.create(model=model, prompt=prompt, max_tokens=tokens, temperature=0.0,
                                   extra_body={"ignore_eos": True})
        return out.usage.completion_tokens, time.perf_counter() - t0

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as ex:
        results = list(ex.map(one, [prompts[i % len(prompts)] for i in range(num)]))
    wall = time.perf_counter() - t0
    after = server.metrics()
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in (
        "vllm:spec_decode_num_drafts_total", "vllm:spec_decode_num_draft_tokens_total",
        "vllm:spec_decode_num_accepted_tokens_total")}
    drafts = delta["vllm:spec_decode_num_drafts_total"]
    return {
        "concurrency": concurrency, "requests": num, "output_tokens": sum(n for n, _ in results), "wall_s": wall,
        "output_tok_per_s": sum(n for n, _ in results) / wall,
        "per_user_tok_per_s": sum(n / t for n, t in results) / len(results),
        "mean_accepted_per_round": delta["vllm:spec_decode_num_accepted_tokens_total"] / drafts if drafts else None,
        "mean_verified_per_round": delta["vllm:spec_decode_num_draft_tokens_total"] / drafts if drafts else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/dspark_gpu_check"))
    parser.add_argument("--servers", default="plain,dspark_confidence,dspark_static,native_dspark")
    parser.add_argument("--cpu", action="store_true", help="dry run of this script on a CPU build")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    import torch
    import vllm

    report = {"vllm": vllm.__version__, "torch": torch.__version__,
              "gpu": "cpu" if args.cpu else torch.cuda.get_device_name(0),
              "gamma": GAMMA, "target": str(args.target), "servers": {}}
    drafter = build_drafter(args.target, args.work / "drafter")
    wanted = args.servers.split(",")
    pool = {k: v for k, v in servers(args.target, drafter, args.work / "logs", args.cpu).items() if k in wanted}
    rows = [json.loads(line) for line in (args.target / "eval_prompts.jsonl").read_text().splitlines() if line]
    prompts = [r["prompt"][-600:] for r in rows[:16]]
    try:
        for s in pool.values():
            s.start(args.target)
        ready = {}
        for name, s in pool.items():
            try:
                s.wait_ready(timeout=400)
                ready[name] = s
            except Exception as e:  # noqa: BLE001 - report and go on with the others
                report["servers"][name] = {"error": str(e)[-3000:]}
        base = {"completions": completions(ready["plain"], prompts, max_tokens=64, temperature=0.0),
                "chat": chats(ready["plain"], prompts)}
        for name, s in ready.items():
            entry = report["servers"].setdefault(name, {})
            if name != "plain":
                for kind, fn in (("completions", lambda: completions(s, prompts, max_tokens=64, temperature=0.0)),
                                 ("chat", lambda: chats(s, prompts))):
                    got = fn()
                    entry[f"{kind}_equal"] = sum(g == w for g, w in zip(got, base[kind]))
                    entry[f"{kind}_first_diff"] = [
                        next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), min(len(g), len(w)))
                        for g, w in zip(got, base[kind]) if g != w]
            entry["throughput"] = [throughput(s, prompts, 1, 8), throughput(s, prompts, 16, 64)]
            print(name, json.dumps(entry), flush=True)
    finally:
        for s in pool.values():
            s.stop()
        for s in pool.values():
            report["servers"].setdefault(s.name, {})["log_tail"] = s.tail(15)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"{'server':<20} {'eq cmpl':>8} {'eq chat':>8} {'c':>3} {'tok/s':>9} {'user tok/s':>11} {'acc/round':>9}")
    for name, e in report["servers"].items():
        for t in e.get("throughput", []):
            acc = t["mean_accepted_per_round"]
            print(f"{name:<20} {e.get('completions_equal', '-'):>8} {e.get('chat_equal', '-'):>8} {t['concurrency']:>3} "
                  f"{t['output_tok_per_s']:>9.1f} {t['per_user_tok_per_s']:>11.1f} {acc if acc is None else round(acc, 2)!s:>9}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    sys.exit(main())
