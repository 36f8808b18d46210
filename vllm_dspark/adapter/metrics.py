"""DSpark metrics on vLLM's `/metrics`, from a front-end stat logger (entry point `vllm.stat_logger_plugins`,
declared in setup.py; vLLM loads that group in its API server process).

vLLM's engine core sends per-step `SpecDecodingStats` (drafts, verified draft tokens, accepted tokens, both per
position) to the front end, where stat loggers turn them into Prometheus metrics. The draft tokens vLLM counts
are exactly the verification lengths our scheduler chose, so the front end can export, next to vLLM's own
`vllm:spec_decode_*` (acceptance per position included):

    dspark:scheduler_info{mode, gamma, sla_tokens_per_user, engine}   1 (the configured mode)
    dspark:verify_rounds_total{engine}                               request-rounds that verified >= 1 draft
    dspark:request_steps_total{engine}                               running requests summed over steps
    dspark:verified_tokens_total{engine}                             draft tokens verified
    dspark:verified_tokens_per_pos_total{engine, position}           rounds that verified position k
    dspark:accepted_tokens_total{engine}
    dspark:mean_verify_length{engine}                                verified tokens / verify rounds since start
    dspark:last_verify_length{engine}                                the same over the last recorded step
and, from counters the worker keeps (shared_counters.py; vLLM's stats cannot carry them):
    dspark:length_decisions_total{engine}      engine steps whose lengths the policy decided (confidence, sla)
    dspark:sla_fallbacks_total{engine}         of those, steps where mode sla could not meet its per-user floor
                                               and chose lengths for throughput
    dspark:draft_cuda_graphs{engine}           1 while the draft round replays CUDA graphs, 0 when it runs
                                               eagerly by design (CPU, cuda_graph_max_batch 0, enforce_eager) or
                                               because the capture failed
    dspark:draft_eager_fallbacks_total{engine} draft rounds run eagerly although a capture was attempted (batch
                                               above the captured sizes, another γ, or a failed capture)
    dspark:draft_off_steps_total{engine}       rounds the draft gate left without drafts: drafting did not pay at
                                               that load (confidence, sla; probes of the other state included)
    dspark:draft_probe_steps_total{engine}     rounds that sampled the gate's state not in use, to keep measuring it
Requests whose length was 0 in a step are not rounds (vLLM counts a draft only when one was scheduled);
verified_tokens / request_steps is the mean length over all running request-steps instead.

Prometheus metrics live in the API server process (vLLM's single-process registry; with several API servers
vLLM switches to multiprocess mode and these gauges are per process). Names use the `dspark:` prefix because
vLLM unregisters every `vllm:` collector when it (re)builds its own.
"""
from __future__ import annotations

import functools

from prometheus_client import Counter, Gauge
from vllm.v1.metrics.loggers import StatLoggerBase

from vllm_dspark.adapter import spec_config
from vllm_dspark.adapter.shared_counters import SharedCounters, path_for

# worker counter -> metric key in _metrics(); counters become Prometheus counters, the rest gauges
_WORKER_COUNTERS = {"length_decisions": "decisions", "sla_fallbacks": "sla_fallbacks",
                    "draft_eager_fallbacks": "eager_fallbacks", "draft_off_steps": "off_steps",
                    "draft_probe_steps": "probe_steps"}
_WORKER_GAUGES = {"draft_cuda_graphs": "cuda_graphs"}


@functools.lru_cache(maxsize=1)
def _metrics() -> dict:
    """Created once per process (a second registration of a name raises)."""
    return {
        "info": Gauge("dspark:scheduler_info", "vllm-dspark verification scheduler configuration",
                      ["mode", "gamma", "sla_tokens_per_user", "engine"]),
        "rounds": Counter("dspark:verify_rounds", "Request-rounds that verified at least one draft", ["engine"]),
        "verified": Counter("dspark:verified_tokens", "Draft tokens verified by the target", ["engine"]),
        "verified_pos": Counter("dspark:verified_tokens_per_pos", "Rounds that verified draft position k",
                                ["engine", "position"]),
        "request_steps": Counter("dspark:request_steps", "Running requests summed over engine steps", ["engine"]),
        "accepted": Counter("dspark:accepted_tokens", "Draft tokens accepted", ["engine"]),
        "mean": Gauge("dspark:mean_verify_length", "Mean verified drafts per round since start", ["engine"]),
        "last": Gauge("dspark:last_verify_length", "Mean verified drafts per round in the last step", ["engine"]),
        "decisions": Counter("dspark:length_decisions", "Engine steps whose verification lengths the policy decided",
                             ["engine"]),
        "sla_fallbacks": Counter("dspark:sla_fallbacks", "Steps where mode sla could not meet sla_tokens_per_user "
                                 "and chose lengths for throughput", ["engine"]),
        "cuda_graphs": Gauge("dspark:draft_cuda_graphs", "1 while the draft round replays CUDA graphs", ["engine"]),
        "eager_fallbacks": Counter("dspark:draft_eager_fallbacks", "Draft rounds run eagerly although a CUDA-graph "
                                   "capture was attempted", ["engine"]),
        "off_steps": Counter("dspark:draft_off_steps", "Draft rounds skipped by the draft gate (drafting did not "
                             "pay at that load)", ["engine"]),
        "probe_steps": Counter("dspark:draft_probe_steps", "Rounds that sampled the draft gate's state not in use",
                               ["engine"]),
    }


class DSparkStatLogger(StatLoggerBase):
    def __init__(self, vllm_config, engine_index: int = 0):
        spec = vllm_config.speculative_config
        hf = spec_config.draft_hf_config(vllm_config)
        self.enabled = spec_config.serves_dspark(vllm_config)
        self.engine = str(engine_index)
        self.rounds = 0
        self.verified = 0
        self._instance_id = getattr(vllm_config, "instance_id", "")
        self._worker: dict[str, SharedCounters | None] = {}  # engine -> reader of its worker's counters
        self._worker_seen: dict[str, dict[str, int]] = {}  # engine -> counter values already exported
        if not self.enabled:
            return
        serving = spec_config.read_attached(hf)
        m = _metrics()
        m["info"].labels(
            mode=serving.mode if serving else "unknown",
            gamma=str(spec.num_speculative_tokens),
            sla_tokens_per_user="" if serving is None or serving.sla_tokens_per_user is None
            else f"{serving.sla_tokens_per_user:g}",
            engine=self.engine,
        ).set(1)
        # Every per-engine counter exists at 0 from start, not from the first step that moves it: a scrape before
        # the first request (or of a gate that never switched) reads 0 instead of finding no series. (Per-position
        # series appear with their position.)
        for key, metric in m.items():
            if isinstance(metric, Counter) and key != "verified_pos":
                metric.labels(self.engine)

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
        if not self.enabled or scheduler_stats is None:
            return
        m = _metrics()
        engine = str(engine_idx) if engine_idx is not None else self.engine
        m["request_steps"].labels(engine).inc(scheduler_stats.num_running_reqs)
        self._record_worker_counters(m, engine)
        stats = getattr(scheduler_stats, "spec_decoding_stats", None)
        if stats is None or stats.num_drafts == 0:
            return
        m["rounds"].labels(engine).inc(stats.num_drafts)
        m["verified"].labels(engine).inc(stats.num_draft_tokens)
        m["accepted"].labels(engine).inc(stats.num_accepted_tokens)
        for pos, n in enumerate(getattr(stats, "num_draft_tokens_per_pos", None) or []):
            if n:
                m["verified_pos"].labels(engine, str(pos)).inc(n)
        self.rounds += stats.num_drafts
        self.verified += stats.num_draft_tokens
        m["mean"].labels(engine).set(self.verified / self.rounds)
        m["last"].labels(engine).set(stats.num_draft_tokens / stats.num_drafts)

    def _record_worker_counters(self, m: dict, engine: str) -> None:
        reader = self._worker.get(engine)
        if reader is None:  # the worker creates its file at start: retry until it exists
            reader = self._worker[engine] = SharedCounters.open(path_for(self._instance_id, int(engine)))
            if reader is None:
                return
        now, seen = reader.read(), self._worker_seen.setdefault(engine, {})
        for field, key in _WORKER_COUNTERS.items():
            child, delta = m[key].labels(engine), now[field] - seen.get(field, 0)  # labels(): the series exists at 0
            if delta > 0:
                child.inc(delta)
                seen[field] = now[field]
        for field, key in _WORKER_GAUGES.items():
            m[key].labels(engine).set(now[field])

    def log_engine_initialized(self):
        pass
