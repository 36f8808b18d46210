"""Server Prometheus `/metrics`: snapshots, deltas over a load point, speculative-decoding summary.

Metrics are selected generically by name prefix (default `vllm:spec_decode`, `dspark:`, `vllm_dspark:`, ...), so
counters our plugin adds later show up without code changes (`vllm_dspark/adapter/metrics.py` exports `dspark:*`).
Over a point: counters and histogram `_sum` / `_count` become deltas (after - before), histograms also get `_mean`
= delta sum / delta count, gauges keep their value after the point. Samples are summed over the `engine` label
(data-parallel engines; gauges are averaged) and the `model_name` label is dropped; other labels (e.g.
`position`) stay in the key: `name{label="value"}`.

vLLM's speculative-decoding counters (0.32): `vllm:spec_decode_num_drafts_total`,
`vllm:spec_decode_num_draft_tokens_total`, `vllm:spec_decode_num_accepted_tokens_total`,
`vllm:spec_decode_num_accepted_tokens_per_pos_total{position="i"}`.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

DEFAULT_PREFIXES = ("vllm:spec_decode", "dspark:", "vllm_dspark:", "vllm:generation_tokens", "vllm:num_preemptions")
_AGGREGATED_LABELS = {"engine", "model_name"}


@dataclass(frozen=True)
class Sample:
    kind: str  # "counter" (includes histogram _sum/_count) or "gauge"
    value: float
    family: str  # metric family name, e.g. "vllm:time_to_first_token_seconds" for its _sum sample
    is_histogram: bool = False


Snapshot = dict[str, Sample]  # key: sample name plus the labels kept, e.g. 'x_total{position="0"}'


def _key(name: str, labels: dict[str, str]) -> str:
    kept = sorted((k, v) for k, v in labels.items() if k not in _AGGREGATED_LABELS)
    if not kept:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in kept) + "}"


def parse_metrics(text: str, prefixes: Sequence[str] = DEFAULT_PREFIXES) -> Snapshot:
    """Samples of the families whose name starts with one of `prefixes`, aggregated over engines."""
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    meta: dict[str, tuple[str, str, bool]] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(tuple(prefixes)):
            continue
        histogram = family.type in ("histogram", "summary", "gaugehistogram")
        for sample in family.samples:
            if sample.name.endswith(("_created", "_bucket")) or "quantile" in sample.labels:
                continue  # creation timestamps and bucket layouts are not per-point quantities
            kind = "counter" if family.type == "counter" or histogram else "gauge"
            key = _key(sample.name, sample.labels)
            sums[key] += sample.value
            counts[key] += 1
            meta[key] = (kind, family.name, histogram)
    snapshot = {}
    for key, (kind, family, histogram) in meta.items():
        value = sums[key] if kind == "counter" else sums[key] / counts[key]
        snapshot[key] = Sample(kind=kind, value=value, family=family, is_histogram=histogram)
    return snapshot


def scrape(base_url: str, prefixes: Sequence[str] = DEFAULT_PREFIXES, timeout: float = 10.0) -> Snapshot:
    """GET `/metrics` of a server and parse it (blocking; the sweep's probes are asynchronous)."""
    import httpx

    resp = httpx.get(base_url.rstrip("/") + "/metrics", timeout=timeout)
    resp.raise_for_status()
    return parse_metrics(resp.text, prefixes)


def totals(snapshot: Snapshot) -> dict[str, float]:
    """Values summed over the labels kept in the keys (e.g. every `position`), keyed by sample name."""
    out: dict[str, float] = defaultdict(float)
    for key, sample in snapshot.items():
        out[key.partition("{")[0]] += sample.value
    return dict(out)


def delta(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """Per-point values: counter deltas (a counter absent before counts from 0), gauges after, histogram means."""
    out: dict[str, float] = {}
    for key, sample in sorted(after.items()):
        if sample.kind == "counter":
            prior = before[key].value if key in before else 0.0
            out[key] = sample.value - prior
        else:
            out[key] = sample.value
    for key in list(out):
        name, brace, labels = key.partition("{")
        if after[key].is_histogram and name.endswith("_sum"):
            stem = name[: -len("_sum")]
            count = out.get(stem + "_count" + brace + labels)
            if count:
                out[stem + "_mean" + brace + labels] = out[key] / count
    return out


def spec_decode_summary(point_delta: dict[str, float]) -> dict | None:
    """Acceptance over a point from vLLM's counters; None when the server has no speculative decoding.

    mean_accepted_length = 1 + accepted / drafts: tokens a request gains per verification step, the bonus
    (target-sampled) token included, as vLLM's logger reports it. mean_verification_length = draft tokens /
    drafts: drafted tokens sent to verification per step (smaller than num_speculative_tokens when a proposer
    such as ngram or DSpark's scheduler trims drafts). acceptance_per_pos[i] = accepted at position i / drafts.
    mean_verification_length_all_steps = our plugin's `dspark:verified_tokens` / `dspark:request_steps`: the same
    over every running request-step, steps that verified nothing included (None without the plugin's counters).
    """
    drafts = point_delta.get("vllm:spec_decode_num_drafts_total")
    if drafts is None:
        return None
    draft_tokens = point_delta.get("vllm:spec_decode_num_draft_tokens_total", 0.0)
    accepted = point_delta.get("vllm:spec_decode_num_accepted_tokens_total", 0.0)
    per_pos = []
    pos = 0
    while (k := f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{position="{pos}"}}') in point_delta:
        per_pos.append(point_delta[k])
        pos += 1
    return {
        "num_drafts": drafts,
        "num_draft_tokens": draft_tokens,
        "num_accepted_tokens": accepted,
        "accepted_per_pos": per_pos,
        "acceptance_rate": accepted / draft_tokens if draft_tokens else None,
        "acceptance_per_pos": [a / drafts for a in per_pos] if drafts else None,
        "mean_accepted_length": 1.0 + accepted / drafts if drafts else None,
        "mean_verification_length": draft_tokens / drafts if drafts else None,
        "mean_verification_length_all_steps": _ratio(point_delta.get("dspark:verified_tokens_total"),
                                                     point_delta.get("dspark:request_steps_total")),
    }


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None
