"""Results JSON of `vllm-dspark bench`, schema version 1 (`SCHEMA` below is the machine-checkable form).

Written after every finished point (atomically), so an interrupted or failing run keeps what it measured.
Speeds are tok/s per user, throughputs tok/s, times seconds; None (JSON null) marks a value that does not exist
(e.g. a readout outside the measured range, acceptance of a server without speculation).

    schema_version: 1                      bump on any incompatible change
    kind: "vllm-dspark.bench.throughput_vs_sla"
    created_utc, finished_utc: ISO 8601    finished_utc is null while running
    command: [argv...]                     how this file was produced
    machine: {hostname, platform, python, cpu, cpu_count, memory_gib, gpus: [str], packages: {name: version}}
    settings: {endpoint, max_tokens, temperature, top_p, ignore_eos, seed, num_prompts, prompts_source, warmup,
               loads: [{concurrency, request_rate}], sla: [float], speed_stat, metrics_prefixes, extra_body,
               keep_token_ids, min_tokens} keep_token_ids, min_tokens: absent in files from before the flags
    runs: [run]                            measured by this command, one per server configuration
    baselines: [{path, runs: [run]}]       earlier result files compared against (their request lists dropped)
    comparison: null | {reference, sla: [{sla, throughput: {label: t}, ratio: {label: t / t_ref}}],
                        matched_throughput: [{throughput, speed: {label: v}, ratio: {label: v / v_ref}}]}
    plots: {name: path}                    PNG files (frontier, throughput_vs_load, acceptance_vs_load)
    error: null | str                      first failure of the command (details per run)

    run: {label, url, model, server: null | {launcher, args, command, env, pid, log},
          server_info: {version, models}, started_utc, finished_utc, error: null | str,
          points: [point], frontier: {speed_stat, points: [[speed, throughput]], sla: [{sla, throughput}]}}
    point: {load: {concurrency, request_rate}, num_requests, completed, failed, duration_s, output_tokens,
            prompt_tokens, output_throughput, request_throughput, mean_concurrency,
            per_user_speed: {mean, p10, p50, p90}          our definition (`stats.per_user_speed`)
            per_user_speed_vllm: float                     output_throughput / concurrency
            per_user_speed_tpot: {mean_tpot_s, p50_tpot_s, speed_from_mean_tpot, speed_from_p50_tpot}
            ttft_s: {mean, p10, p50, p90},
            spec_decode: null | {num_drafts, num_draft_tokens, num_accepted_tokens, accepted_per_pos,
                                 acceptance_rate, acceptance_per_pos, mean_accepted_length,
                                 mean_verification_length, mean_verification_length_all_steps}
                                                           deltas over the point (`metrics_scrape`)
            server_metrics: null | {metric key: value}     every scraped metric matching the prefixes
            errors: [str], requests: [request]}
    request: {prompt_index, ok, error, start_s, ttft_s, latency_s, prompt_tokens, output_tokens, num_chunks,
              max_tokens_per_chunk, per_user_speed, tpot_s, finish_reason, token_count_source,
              output_sha256,                               first 16 hex of the generated text's SHA-256 (null if failed)
              [chunk_times_s, chunk_tokens],               token timestamps; not with --no-chunk-times
              [prompt_token_ids, output_token_ids]}        [int] or null, only with --keep-token-ids: the server's
                                                           token ids (vLLM's return_token_ids); null when it sent
                                                           none (output: also when the request failed)
"""
from __future__ import annotations

SCHEMA_VERSION = 1
KIND = "vllm-dspark.bench.throughput_vs_sla"

_num = {"type": ["number", "null"]}
_dist = {"type": "object", "required": ["mean", "p10", "p50", "p90"],
         "properties": {k: _num for k in ("mean", "p10", "p50", "p90")}}

_token_ids = {"type": ["array", "null"], "items": {"type": "integer", "minimum": 0}}

_request = {
    "type": "object",
    "required": ["prompt_index", "ok", "error", "start_s", "ttft_s", "latency_s", "output_tokens",
                 "per_user_speed", "tpot_s", "token_count_source"],
    "properties": {
        "prompt_index": {"type": "integer", "minimum": 0},
        "ok": {"type": "boolean"},
        "error": {"type": ["string", "null"]},
        "output_tokens": {"type": "integer", "minimum": 0},
        "per_user_speed": _num,
        "token_count_source": {"enum": ["continuous_usage", "chunks+usage", "chunks"]},
        "output_sha256": {"type": ["string", "null"], "pattern": "^[0-9a-f]{16}$"},
        "prompt_token_ids": _token_ids,
        "output_token_ids": _token_ids,
    },
}

_point = {
    "type": "object",
    "required": ["load", "num_requests", "completed", "failed", "duration_s", "output_tokens",
                 "output_throughput", "per_user_speed", "per_user_speed_vllm", "per_user_speed_tpot", "ttft_s",
                 "spec_decode", "server_metrics", "errors", "requests"],
    "properties": {
        "load": {"type": "object", "required": ["concurrency", "request_rate"],
                 "properties": {"concurrency": {"type": ["integer", "null"]},
                                "request_rate": {"type": ["number", "string", "null"]}}},
        "num_requests": {"type": "integer"}, "completed": {"type": "integer"}, "failed": {"type": "integer"},
        "duration_s": {"type": "number", "minimum": 0},
        "output_throughput": _num,
        "per_user_speed": _dist,
        "per_user_speed_vllm": _num,
        "ttft_s": _dist,
        "spec_decode": {"type": ["object", "null"]},
        "server_metrics": {"type": ["object", "null"], "additionalProperties": {"type": "number"}},
        "errors": {"type": "array", "items": {"type": "string"}},
        "requests": {"type": "array", "items": _request},
    },
}

_frontier = {
    "type": "object", "required": ["speed_stat", "points", "sla"],
    "properties": {
        "points": {"type": "array", "items": {"type": "array", "items": {"type": "number"}, "minItems": 2,
                                              "maxItems": 2}},
        "sla": {"type": "array", "items": {"type": "object", "required": ["sla", "throughput"]}},
    },
}

_run = {
    "type": "object",
    "required": ["label", "url", "model", "server", "error", "points", "frontier"],
    "properties": {
        "label": {"type": "string"},
        "error": {"type": ["string", "null"]},
        "server": {"type": ["object", "null"]},
        "points": {"type": "array", "items": _point},
        "frontier": _frontier,
    },
}

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["schema_version", "kind", "created_utc", "finished_utc", "command", "machine", "settings", "runs",
                 "baselines", "comparison", "plots", "error"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "kind": {"const": KIND},
        "machine": {"type": "object", "required": ["hostname", "platform", "python", "cpu_count", "gpus",
                                                   "packages"]},
        "settings": {"type": "object", "required": ["endpoint", "max_tokens", "temperature", "ignore_eos",
                                                    "num_prompts", "loads", "sla", "speed_stat"]},
        "runs": {"type": "array", "items": _run},
        "baselines": {"type": "array", "items": {"type": "object", "required": ["path", "runs"]}},
        "comparison": {"type": ["object", "null"]},
        "plots": {"type": "object", "additionalProperties": {"type": "string"}},
        "error": {"type": ["string", "null"]},
    },
}


def validate(document: dict) -> None:
    """Raise jsonschema.ValidationError when `document` does not follow SCHEMA (needs the jsonschema package)."""
    import jsonschema

    jsonschema.validate(document, SCHEMA)
