"""DSpark metrics on vLLM's `/metrics`, from a front-end stat logger.

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
    }


class DSparkStatLogger(StatLoggerBase):
    def __init__(self, vllm_config, engine_index: int = 0):
        spec = vllm_config.speculative_config
        hf = None if spec is None or spec.draft_model_config is None else spec.draft_model_config.hf_config
        self.enabled = hf is not None and spec_config.is_routed_to_us(hf)
        self.engine = str(engine_index)
        self.rounds = 0
        self.verified = 0
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

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
        if not self.enabled or scheduler_stats is None:
            return
        m = _metrics()
        engine = str(engine_idx) if engine_idx is not None else self.engine
        m["request_steps"].labels(engine).inc(scheduler_stats.num_running_reqs)
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

    def log_engine_initialized(self):
        pass
