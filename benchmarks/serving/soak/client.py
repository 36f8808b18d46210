"""One request sent to an OpenAI-compatible server (plain or streamed, optionally aborted) and judged; a closed
loop over the request list."""
from __future__ import annotations

import concurrent.futures as cf
import json
import time
from dataclasses import dataclass, field

import httpx
from tqdm import tqdm

from benchmarks.serving.soak.mix import SoakRequest
from vllm_dspark.bench.sweep import discover_model

FINISHED = ("stop", "length")


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


def judge(out: Outcome, req: SoakRequest, max_model_len: int) -> None:
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
        judge(out, req, max_model_len)
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
