"""Our keys of `--speculative-config`: parse, validate, resolve against the drafter and the target.

The one JSON a user writes (vLLM's own keys plus a `dspark` object, which vLLM would reject and we take out
before vLLM sees it; see `patches/patch_engine_args.py`):

    {"method": "dflash", "model": "<drafter dir>", "num_speculative_tokens": 7,
     "draft_sample_method": "probabilistic",
     "dspark": {"mode": "confidence", "sla_tokens_per_user": null, "cost_table": null, "profile": true,
                "profile_batch_tokens": null, "profile_repeats": 3, "profile_time_budget_s": 60,
                "online_refit": true, "save_cost_table": null,
                "cuda_graph_max_batch": 256}}

`method` may be left out when `model` is a local DSpark drafter folder; `num_speculative_tokens` (γ, drafts
per round) then defaults to the drafter's `block_size` and must never exceed it. `"method": "dspark"` is left
to vLLM (its native V2 speculator). The resolved settings travel to the engine processes as the attribute
`dspark_serving` of the draft model's HF config, which vLLM pickles with the rest of its config.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vllm_dspark.adapter import compat
from vllm_dspark.config import DrafterMismatchError, DSparkConfig, check_fits_target
from vllm_dspark.scheduling.admission import SERVING_MODES


Mode = Literal[SERVING_MODES]
SERVING_ATTR = "dspark_serving"  # attribute of the draft HF config carrying the resolved settings
KEY = "dspark"


class DSparkConfigError(ValueError):
    """A `--speculative-config` that vllm-dspark refuses; the message names the key and the value."""


class DSparkServingConfig(BaseModel):
    """The `dspark` object of `--speculative-config`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode | None = Field(
        default=None,
        description="static: verify all γ drafts; confidence: Algorithm 1 (expected tokens × steps/s); "
        "sla: confidence subject to a per-user speed floor. Default: confidence when the drafter has a "
        "confidence head, else static.",
    )
    sla_tokens_per_user: float | None = Field(default=None, gt=0, description="per-user tokens/s floor (mode sla)")
    cost_table: str | None = Field(default=None, description="JSON cost table (vllm-dspark profile); skips profiling")
    profile: bool = Field(default=True, description="profile steps/s against batch tokens at engine start")
    profile_batch_tokens: list[int] | None = Field(default=None, description="batch sizes (tokens) to profile")
    profile_repeats: int = Field(default=3, ge=1, le=100)
    profile_context_len: int = Field(
        default=512, ge=1,
        description="tokens of context of every sequence in the profiled verification steps (attention cost; "
        "capped at max_model_len); the online refit corrects the table to the contexts served",
    )
    profile_time_budget_s: float = Field(
        default=60.0, gt=0,
        description="seconds of dummy steps the start-up profile may spend; batch sizes past it are extrapolated "
        "linearly from the last two measured (the online refit then corrects them from real steps)",
    )
    online_refit: bool = Field(default=True, description="refit the cost table from observed step times")
    draft_gate: bool = Field(
        default=True,
        description="modes confidence / sla: at each load (running requests), measure the engine's tokens/s with "
        "and without drafting (each probe of the state not in use against the steps just before it, recent "
        "probes counting most) and stop drafting where it does not pay (no draft round, nothing verified but the "
        "target's own token); the other state is probed every gate_probe_every steps while the measured gain is "
        "within its noise of the point where the state would switch, ever more rarely while it is clearly short "
        "of it (gate_max_backoff)",
    )
    gate_probe_every: int = Field(default=16, ge=3, le=100000, description="steps between probes (2 steps each) "
                                  "of the state not in use (draft gate) while its decision is unsettled; while "
                                  "settled the interval doubles after each probe, up to gate_max_backoff times")
    gate_max_backoff: int = Field(default=16, ge=1, le=1 << 16, description="the draft gate's longest interval "
                                  "between samples, in multiples of gate_probe_every (1: sample at a fixed cadence)")
    gate_min_gain: float = Field(default=0.05, ge=0.0, lt=1.0, description="the draft gate drafts only where "
                                 "drafting beats the target alone by more than this fraction of its tokens/s (turning "
                                 "on: by a margin for noise that shrinks with the samples): at a tie, speculation's "
                                 "unseen costs (requests finishing out of step) make it lose")
    context_kv_backlog_mib: int = Field(
        default=64, ge=0, le=1 << 20,
        description="rounds that draft nothing (draft gate off, or γ = 0) keep the target's hidden states and write "
        "the drafter's context K/V in one batch before the next drafting round, or once they pass this many MiB; "
        "0 = write them every step",
    )
    save_cost_table: str | None = Field(default=None, description="write the profiled table to this JSON path")
    cuda_graph_max_batch: int = Field(
        default=256, ge=0, le=4096,
        description="GPU: replay the draft round (LM head + sequential head) from CUDA graphs for batches up to "
        "this many requests (at vLLM's capture sizes; probabilistic drafts up to a quarter of it, their [R, γ, V] "
        "probs are large); 0 = always eager. Off with enforce_eager.",
    )

    @field_validator("profile_batch_tokens")
    @classmethod
    def _increasing(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if len(v) < 2 or v[0] < 1 or any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"must be >= 2 strictly increasing integers >= 1, got {v}")
        return v

    @model_validator(mode="after")
    def _sla(self) -> "DSparkServingConfig":
        if self.mode == "sla" and self.sla_tokens_per_user is None:
            raise ValueError("mode 'sla' needs sla_tokens_per_user (tokens/s per user, > 0)")
        if self.sla_tokens_per_user is not None and self.mode not in ("sla", None):
            raise ValueError(f"sla_tokens_per_user is only used by mode 'sla', but mode is {self.mode!r}")
        return self


class ResolvedServing(DSparkServingConfig):
    """Settings after resolution against the drafter (mode filled in) plus what the engine needs to know."""

    mode: Mode  # type: ignore[assignment]
    num_speculative_tokens: int = Field(ge=1)
    block_size: int = Field(ge=1)
    has_confidence_head: bool

    @property
    def needs_cost_table(self) -> bool:
        return self.mode != "static" or self.save_cost_table is not None


def parse_settings(raw: Any) -> DSparkServingConfig:
    """Validate the `dspark` object; errors name `dspark.<key>` and the offending value."""
    if raw is None:
        return DSparkServingConfig()
    if not isinstance(raw, dict):
        raise DSparkConfigError(f"--speculative-config: '{KEY}' must be a JSON object, got {type(raw).__name__}: {raw!r}")
    try:
        settings = DSparkServingConfig.model_validate(raw)
    except ValidationError as e:
        raise DSparkConfigError(_describe(e)) from None
    if settings.cost_table is not None:
        _check_cost_table(settings.cost_table)
    return settings


def _describe(err: ValidationError) -> str:
    allowed = ", ".join(DSparkServingConfig.model_fields)
    lines = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"])
        key = f"{KEY}.{loc}" if loc else KEY
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}' (allowed keys in '{KEY}': {allowed})")
        else:
            msg = item["msg"].removeprefix("Value error, ")
            lines.append(f"'{key}': {msg} (got {item.get('input')!r})")
    return "--speculative-config: " + "; ".join(lines)


def _check_cost_table(path: str) -> None:
    from vllm_dspark.scheduling.cost import CostTable

    p = Path(path)
    if not p.is_file():
        raise DSparkConfigError(f"--speculative-config: '{KEY}.cost_table' = {path!r} is not a file")
    try:
        CostTable.load(p)
    except ValueError as e:
        raise DSparkConfigError(f"--speculative-config: '{KEY}.cost_table' = {path!r} is not a valid cost table: {e}")


def local_drafter_config(model: Any) -> dict | None:
    """config.json of a local drafter folder, or None (hub ids, missing folders)."""
    if not isinstance(model, str):
        return None
    path = Path(model) / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_dspark_drafter_dict(cfg: dict | None) -> bool:
    return bool(cfg) and compat.DRAFTER_ARCH in (cfg.get("architectures") or [])


def prepare(spec: dict) -> tuple[dict, DSparkServingConfig | None]:
    """Before vLLM parses the dict: take out `dspark`, route a DSpark drafter to the DFlash path, default γ.

    Returns (the dict vLLM gets, the parsed settings or None when this is not a vllm-dspark configuration).
    """
    spec = {str(k).replace("-", "_"): v for k, v in spec.items()}
    given = KEY in spec
    settings = parse_settings(spec.pop(KEY, None))
    drafter = local_drafter_config(spec.get("model"))
    ours = is_dspark_drafter_dict(drafter)
    method = spec.get("method")
    if given:
        if method is None:
            spec["method"] = "dflash"
        elif method != "dflash":
            raise DSparkConfigError(
                f"--speculative-config: '{KEY}' settings need \"method\": \"dflash\" (vllm-dspark runs DSpark "
                f"through vLLM's DFlash proposer on the V1 runner; \"dspark\" selects vLLM's native speculator), "
                f"got \"method\": {method!r}"
            )
        if drafter is not None and not ours:
            raise DSparkConfigError(
                f"--speculative-config: '{KEY}' settings need a DSpark drafter, but {spec.get('model')!r} has "
                f"architectures {drafter.get('architectures')!r} (want [{compat.DRAFTER_ARCH!r}])"
            )
    elif ours and method in (None, "dflash"):
        spec["method"] = "dflash"
    else:  # not a DSpark drafter, or an explicit other method (e.g. vLLM's native "dspark")
        return spec, None
    if ours and spec.get("num_speculative_tokens") is None and "block_size" in drafter:
        spec["num_speculative_tokens"] = int(drafter["block_size"])
    return spec, settings


def drafter_dict_from_hf(hf_config: Any) -> dict:
    """The drafter's own config dict from vLLM's draft HF config (an EAGLEConfig wrapping it for DFlash)."""
    inner = getattr(hf_config, "model", None)
    src = inner if inner is not None and hasattr(inner, "to_dict") else hf_config
    return src.to_dict()


def is_routed_to_us(hf_config: Any) -> bool:
    return compat.ROUTED_ARCH in (getattr(hf_config, "architectures", None) or [])


def draft_hf_config(vllm_config: Any) -> Any | None:
    """The draft model's HF config of an engine config; None without speculative decoding (or without a draft
    model, e.g. n-gram)."""
    spec = vllm_config.speculative_config
    draft = None if spec is None else spec.draft_model_config
    return None if draft is None else draft.hf_config


def serves_dspark(vllm_config: Any) -> bool:
    """Whether this engine drafts with a DSpark drafter routed through our model class."""
    hf = draft_hf_config(vllm_config)
    return hf is not None and is_routed_to_us(hf)


def resolve(
    settings: DSparkServingConfig | None,
    drafter: DSparkConfig,
    num_speculative_tokens: int,
    target_hf_config: Any,
) -> ResolvedServing:
    """Check the drafter against the target and γ against the drafter; fill in the mode."""
    settings = settings or DSparkServingConfig()
    try:
        check_fits_target(drafter, target_hf_config)
    except DrafterMismatchError as e:
        raise DSparkConfigError(f"--speculative-config: 'model' {e}") from None
    if num_speculative_tokens > drafter.block_size:
        raise DSparkConfigError(
            f"--speculative-config: 'num_speculative_tokens' = {num_speculative_tokens} exceeds the drafter's "
            f"block_size = {drafter.block_size} (a DSpark block drafts at most block_size tokens)"
        )
    mode = settings.mode or ("confidence" if drafter.enable_confidence_head else "static")
    if mode != "static" and not drafter.enable_confidence_head:
        raise DSparkConfigError(
            f"--speculative-config: '{KEY}.mode' = {mode!r} needs a drafter with a confidence head "
            f"(enable_confidence_head is false); use mode 'static'"
        )
    if mode != "static" and settings.cost_table is None and not settings.profile:
        raise DSparkConfigError(
            f"--speculative-config: '{KEY}.mode' = {mode!r} needs a cost table: set '{KEY}.cost_table' to a file "
            f"from `vllm-dspark profile` or leave '{KEY}.profile' true"
        )
    data = settings.model_dump()
    data.update(
        mode=mode,
        num_speculative_tokens=num_speculative_tokens,
        block_size=drafter.block_size,
        has_confidence_head=drafter.enable_confidence_head,
    )
    return ResolvedServing.model_validate(data)


def check_dynamic_sd(resolved: ResolvedServing, schedule: Any) -> None:
    """vLLM's dynamic speculative decoding (`num_speculative_tokens_per_batch_size`: one γ per batch size, async
    scheduling kept) combines with mode 'static' only: 'confidence' / 'sla' pick lengths per request."""
    if schedule is not None and resolved.mode != "static":
        raise DSparkConfigError(
            f"--speculative-config: 'num_speculative_tokens_per_batch_size' (vLLM's dynamic speculative decoding) "
            f"works with '{KEY}.mode' = 'static' only, got {resolved.mode!r}: modes 'confidence' and 'sla' already "
            f"choose each request's verification length; drop one of the two (`vllm-dspark schedule` prints a "
            f"schedule from your cost table for mode 'static')"
        )


def attach(hf_config: Any, resolved: ResolvedServing) -> None:
    setattr(hf_config, SERVING_ATTR, resolved.model_dump())


def vllm_aux_layer_ids(drafter: DSparkConfig) -> list[int]:
    """The drafter's target layers in vLLM's aux-hidden-state spelling: aux id j = the *input* of decoder layer j,
    so the output of layer i (our id) is j = i + 1 and the embedding output (-1) is 0."""
    return [i + 1 for i in drafter.target_layer_ids]


def pin_drafter_keys(hf_config: Any, drafter: DSparkConfig) -> None:
    """State the drafter's target layers and mask token in the keys vLLM's runner, proposer and drafter model read,
    on every supported release. A DeepSpec config spells both only top-level (`target_layer_ids`,
    `mask_token_id`):

    - the V1 runner picks the target layers to capture from `eagle_aux_hidden_state_layer_ids` or `dflash_config`
      only and otherwise falls back to the target model's EAGLE-3 defaults, while vLLM sizes the drafter's `fc`
      from `target_layer_ids`: the drafter then gets features of other layers, in another number, and the engine
      dies on its first request;
    - vLLM 0.26's proposer reads the mask token only from `dflash_config.mask_token_id` (else it refuses the
      drafter at start; 0.32 also reads the top-level key) and its drafter model sizes `fc` from
      `dflash_config.target_layer_ids` (else from `num_hidden_layers`, and loading the weights fails).
    """
    hf_config.eagle_aux_hidden_state_layer_ids = vllm_aux_layer_ids(drafter)
    dflash = dict(getattr(hf_config, "dflash_config", None) or {})
    want = {"mask_token_id": drafter.mask_token_id, "target_layer_ids": list(drafter.target_layer_ids)}
    if any(dflash.get(k) != v for k, v in want.items()):
        hf_config.dflash_config = {**dflash, **want}


def read_attached(hf_config: Any) -> ResolvedServing | None:
    data = getattr(hf_config, SERVING_ATTR, None)
    return None if data is None else ResolvedServing.model_validate(data)
