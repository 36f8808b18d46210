"""One soak: both servers started, the same request list sent to each in turn, every check run."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from benchmarks.serving.soak.checks import (
    Check,
    alive_check,
    greedy_check,
    request_check,
    seeded_repeat_check,
    server_checks,
)
from benchmarks.serving.soak.client import Outcome, run_load
from benchmarks.serving.soak.drafter import build_drafter
from benchmarks.serving.soak.metrics import scrape, settle_gauges
from benchmarks.serving.soak.mix import MixOptions, load_prompt_ids, make_requests, request_mix, request_row
from benchmarks.serving.soak.rss import RssSampler, rss_summary
from vllm_dspark.bench.report import machine_info, utc_now
from vllm_dspark.bench.server import ServerProcess
from vllm_dspark.bench.sweep import discover_model

REPO = Path(__file__).resolve().parents[3]
DEFAULT_TARGET = REPO.parent / "shared" / "models" / "pycode-23m"


@dataclass
class SoakOptions:
    target: Path = DEFAULT_TARGET
    drafter: Path | None = None
    concurrency: int = 16
    max_num_seqs: int = 16
    block_size: int = 32
    num_blocks: int = 48
    warmup_requests: int = 32
    gamma: int = 4
    dspark_mode: str = "confidence"
    seed: int = 0
    rss_growth_mb: float = 100.0
    rss_interval_s: float = 2.0
    onednn_cache_capacity: int | None = 0  # None: oneDNN's default (1024 primitives)
    work_dir: Path = REPO / "runs" / "soak"
    mix: MixOptions = field(default_factory=MixOptions)


def server_env(opts: SoakOptions) -> dict[str, str]:
    """Environment both servers get on top of ours."""
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1"}
    if opts.onednn_cache_capacity is not None:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(opts.onednn_cache_capacity)
    return env


def run_soak(opts: SoakOptions) -> dict:
    """Start both servers, send the request list to each in turn, run the checks; returns the results document."""
    started = time.monotonic()
    opts.work_dir = opts.work_dir.resolve()  # the servers get absolute paths (drafter, logs)
    opts.work_dir.mkdir(parents=True, exist_ok=True)
    drafter = opts.drafter or build_drafter(opts.target, opts.work_dir / "drafter", block_size=opts.gamma,
                                            seed=opts.seed)
    prompts = load_prompt_ids(opts.target)
    requests = make_requests(prompts, opts.mix)
    warmup_requests = make_requests(prompts, replace(opts.mix, num_requests=opts.warmup_requests, seed=opts.seed + 1))
    env = server_env(opts)
    servers = {
        name: ServerProcess(server_args(opts.target, opts.mix, opts.max_num_seqs, opts.num_blocks, opts.block_size,
                                        opts.seed, d, opts.gamma, opts.dspark_mode),
                            log_path=opts.work_dir / f"{name}.log", env=env)
        for name, d in (("nospec", None), ("dspark", drafter))
    }
    doc = {"created_utc": utc_now(), "command": sys.argv, "machine": machine_info(),
           "settings": json.loads(json.dumps(asdict(opts), default=str)), "drafter": str(drafter),
           "servers": {}, "checks": []}
    checks: list[Check] = []
    outcomes: dict[str, list[Outcome]] = {}
    try:
        for s in servers.values():  # both start at once: the engine start is most of a server's fixed cost
            s.start()
        for s in servers.values():
            s.wait_healthy(timeout=900)
        for name, s in servers.items():
            model = discover_model(s.url)
            warmup, _ = run_load(s.url, warmup_requests, opts.concurrency, opts.mix.max_model_len, f"{name} warm-up")
            before = scrape(s.url)
            with RssSampler(s.pid, opts.rss_interval_s) as sampler:
                outcomes[name], duration = run_load(s.url, requests, opts.concurrency, opts.mix.max_model_len, name)
            gauges = settle_gauges(s.url, model)
            after = scrape(s.url)
            rss = rss_summary(sampler.samples)
            req_check, counts = request_check(name, requests, outcomes[name], warmup)
            seeded, seeded_stats = seeded_repeat_check(name, requests, outcomes[name])
            checks += [req_check, seeded]
            doc["servers"][name] = {
                "args": s.server_args, "duration_s": duration, "counts": counts, "rss": rss,
                "rss_samples": sampler.samples, "gauges_end": gauges, "seeded_repeats": seeded_stats,
                "metrics_delta": {k: after[k] - before.get(k, 0.0) for k in after if k.endswith("_total")},
                "output_tokens": sum(len(t) for o in outcomes[name] for t in o.token_ids),
            }
            checks += server_checks(name, before, after, gauges, rss, opts.rss_growth_mb)
        checks += [alive_check(name, s) for name, s in servers.items()]  # at the very end, after both loads
        greedy, greedy_stats = greedy_check(requests, outcomes["nospec"], outcomes["dspark"])
        checks.append(greedy)
        doc["greedy"] = greedy_stats
    finally:
        for s in servers.values():
            s.stop()
    doc["requests"] = request_mix(requests, opts.mix.max_model_len)
    doc["outcomes"] = {name: [{**asdict(o), "token_ids": None, "output_tokens": [len(t) for t in o.token_ids],
                               **request_row(r)} for r, o in zip(requests, outs)] for name, outs in outcomes.items()}
    doc["checks"] = [asdict(c) | {"verdict": c.verdict} for c in checks]
    doc["passed"] = all(c.passed is not False for c in checks)
    doc["duration_s"] = time.monotonic() - started
    doc["finished_utc"] = utc_now()
    return doc


def server_args(target: Path, opts: MixOptions, max_num_seqs: int, num_blocks: int, block_size: int,
                seed: int, drafter: Path | None, gamma: int, mode: str = "confidence") -> list[str]:
    args = ["--model", str(target), "--dtype", "float32", "-O0", "--seed", str(seed),
            "--max-model-len", str(opts.max_model_len), "--max-num-seqs", str(max_num_seqs),
            "--block-size", str(block_size), "--num-gpu-blocks-override", str(num_blocks),
            "--no-enable-prefix-caching"]
    if drafter is not None:
        spec = {"method": "dflash", "model": str(drafter), "num_speculative_tokens": gamma,
                "draft_sample_method": "probabilistic", "dspark": {"mode": mode}}
        args += ["--speculative-config", json.dumps(spec)]
    return args


def summary(doc: dict) -> str:
    lines = [f"{'server':<8} {'finished':>8} {'aborted':>8} {'errors':>7} {'preempt':>8} {'out tok':>8} "
             f"{'s':>6} {'RSS start':>9} {'RSS end':>8}"]
    for name, s in doc["servers"].items():
        c = s["counts"]
        lines.append(f"{name:<8} {c['finished']:>8} {c['aborted']:>8} {c['error']:>7} "
                     f"{s['metrics_delta'].get('vllm:num_preemptions_total', 0):>8.0f} {s['output_tokens']:>8} "
                     f"{s['duration_s']:>6.0f} {s['rss']['start_mb']:>9.0f} {s['rss']['end_mb']:>8.0f}")
    spec = doc["servers"].get("dspark", {}).get("metrics_delta", {})
    if spec.get("vllm:spec_decode_num_draft_tokens_total"):
        lines.append(f"dspark: {spec['vllm:spec_decode_num_accepted_tokens_total']:.0f} of "
                     f"{spec['vllm:spec_decode_num_draft_tokens_total']:.0f} verified drafts accepted")
    lines.append("")
    for c in doc["checks"]:
        lines.append(f"{c['verdict']:<5} {c['server']:<7} {c['name']}: {c['detail']}")
    lines.append(f"\n{'PASS' if doc['passed'] else 'FAIL'} ({doc['duration_s']:.0f} s)")
    return "\n".join(lines)
