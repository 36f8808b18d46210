"""The soak's checks (PASS / FAIL, or INFO for information only) and the statistics behind them."""
from __future__ import annotations

from dataclasses import dataclass

from benchmarks.serving.soak.client import Outcome
from benchmarks.serving.soak.mix import SoakRequest
from vllm_dspark.bench.server import ServerProcess, health_ok


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
