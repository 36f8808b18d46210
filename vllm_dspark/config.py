"""DSparkConfig: the drafter's knobs, read from and written to the checkpoint's config.json.

A drafter config is the target's HF config with drafter fields added (DeepSpec's `build_draft_config` convention):
the draft layers copy the target's attention/MLP geometry, `num_hidden_layers` counts draft layers, and
`target_layer_ids` name the target layers whose outputs condition the drafter (id i = output of decoder layer i,
-1 = the embedding output). Fields that vLLM's native `Qwen3DSparkModel` reads under other names are accepted too
(see `from_dict`).
"""
from __future__ import annotations

import copy
import difflib
import functools
import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

HeadType = Literal["vanilla", "gated", "rnn"]
# A sampling temperature below this means greedy (argmax): DeepSpec's threshold, used by the model, the reference
# loop, the EAGLE-3 baseline and the kernels alike.
GREEDY_EPS = 1e-5
logger = logging.getLogger(__name__)
# Keys `from_dict` reads besides the fields, what `to_dict` / the serving engine add, and DeepSpec's training-only
# `num_anchors` (deepspec-format.md §2).
OTHER_SPELLINGS = frozenset({"dflash_config", "dspark_target_layer_ids", "eagle_aux_hidden_state_layer_ids",
                             "rope_scaling", "rope_theta", "target_num_hidden_layers", "draft_vocab_size",
                             "dspark_serving", "num_anchors", "_attn_implementation"})
TYPO_CUTOFF = 0.9  # difflib ratio above which an unknown key is taken for a misspelt known one


class DrafterMismatchError(ValueError):
    """A drafter whose config does not fit its target (or is internally inconsistent)."""


class DSparkConfig(BaseModel):
    model_config = ConfigDict(extra="allow", validate_assignment=True)

    # Geometry copied from the target.
    hidden_size: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_key_value_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    attention_bias: bool = False
    max_position_embeddings: int = 32768
    rope_parameters: dict[str, Any] = Field(default_factory=lambda: {"rope_type": "default", "rope_theta": 1e6})
    # Hidden size of the target's features, when it differs from the drafter's (vLLM's `target_hidden_size`).
    target_hidden_size: int | None = None

    # Drafter fields.
    num_hidden_layers: int = Field(gt=0, description="number of draft layers")
    num_target_layers: int = Field(gt=0)
    block_size: int = Field(gt=0, description="γ: draft positions per block")
    mask_token_id: int = Field(ge=0)
    target_layer_ids: list[int]
    markov_rank: int = Field(default=0, ge=0)
    markov_head_type: HeadType = "vanilla"
    enable_confidence_head: bool = False
    confidence_head_with_markov: bool = False
    # Ours: per-position confidence temperatures from Sequential Temperature Scaling (None = uncalibrated).
    sts_temperatures: list[float] | None = None

    @field_validator("markov_head_type", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self) -> "DSparkConfig":
        ids = self.target_layer_ids
        if not ids:
            raise DrafterMismatchError("target_layer_ids is empty: the drafter needs at least one target layer")
        if any(b <= a for a, b in zip(ids, ids[1:])):
            raise DrafterMismatchError(f"target_layer_ids must be strictly increasing, got {ids}")
        for i in ids:
            if i < -1 or i >= self.num_target_layers:
                raise DrafterMismatchError(
                    f"target_layer_ids contains {i}, outside [-1, {self.num_target_layers - 1}] "
                    f"(num_target_layers={self.num_target_layers})"
                )
        if self.num_target_layers - 1 in ids:
            raise DrafterMismatchError(
                f"target_layer_ids contains the last target layer {self.num_target_layers - 1} "
                f"(num_target_layers={self.num_target_layers}), whose HF hidden state is final-normed "
                "(DeepSpec's evaluator refuses it); use an earlier layer"
            )
        if self.mask_token_id >= self.vocab_size:
            raise DrafterMismatchError(f"mask_token_id={self.mask_token_id} is outside vocab_size={self.vocab_size}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise DrafterMismatchError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.confidence_head_with_markov and self.enable_confidence_head and self.markov_rank == 0:
            raise DrafterMismatchError("confidence_head_with_markov=true needs markov_rank > 0")
        if self.sts_temperatures is not None:
            if len(self.sts_temperatures) != self.block_size:
                raise DrafterMismatchError(
                    f"sts_temperatures has {len(self.sts_temperatures)} entries, block_size={self.block_size}"
                )
            if any(t <= 0 for t in self.sts_temperatures):
                raise DrafterMismatchError(f"sts_temperatures must be positive, got {self.sts_temperatures}")
        return self

    # ------------------------------------------------------------------ derived
    @property
    def num_features(self) -> int:
        return len(self.target_layer_ids)

    @property
    def feature_size(self) -> int:
        """Width of the concatenated target features fed to `fc`."""
        return self.num_features * (self.target_hidden_size or self.hidden_size)

    @property
    def has_markov_head(self) -> bool:
        return self.markov_rank > 0

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "DSparkConfig":
        """Parse a DeepSpec, vLLM-native or vllm-dspark config.json dict."""
        check_keys(raw)
        d = copy.deepcopy(raw)
        dflash = d.get("dflash_config") or {}
        spellings = {
            "target_layer_ids": d.get("target_layer_ids"),
            "dspark_target_layer_ids": d.get("dspark_target_layer_ids"),
            "dflash_config.target_layer_ids": dflash.get("target_layer_ids"),
            # vLLM's aux ids index the *input* of a layer (= output of the layer before): shift by one.
            "eagle_aux_hidden_state_layer_ids": None
            if not d.get("eagle_aux_hidden_state_layer_ids")
            else [i - 1 for i in d["eagle_aux_hidden_state_layer_ids"]],
        }
        given = {k: list(v) for k, v in spellings.items() if v}
        if len({tuple(v) for v in given.values()}) > 1:
            raise DrafterMismatchError(f"drafter config names different target layers (as output-of-layer ids): {given}")
        if given:
            d["target_layer_ids"] = next(iter(given.values()))
        if "mask_token_id" not in d and "mask_token_id" in dflash:
            d["mask_token_id"] = dflash["mask_token_id"]
        if "head_dim" not in d and "hidden_size" in d and "num_attention_heads" in d:
            d["head_dim"] = d["hidden_size"] // d["num_attention_heads"]
        if "num_key_value_heads" not in d and "num_attention_heads" in d:
            d["num_key_value_heads"] = d["num_attention_heads"]
        if "rope_parameters" not in d:
            rope = dict(d.get("rope_scaling") or {})
            rope.setdefault("rope_type", rope.pop("type", "default"))
            rope["rope_theta"] = d.get("rope_theta", 10000.0)
            d["rope_parameters"] = rope
        if "num_target_layers" not in d and "target_num_hidden_layers" in d:
            d["num_target_layers"] = d["target_num_hidden_layers"]
        if d.get("markov_rank", 0) == 0:
            d.pop("markov_head_type", None)
        missing = [k for k in ("block_size", "mask_token_id", "target_layer_ids", "num_target_layers") if k not in d]
        if missing:
            raise DrafterMismatchError(f"drafter config.json lacks required field(s) {missing}")
        if d.get("draft_vocab_size") not in (None, d.get("vocab_size")):
            raise DrafterMismatchError(
                f"draft_vocab_size={d['draft_vocab_size']} differs from vocab_size={d.get('vocab_size')}: "
                "reduced-vocabulary drafters are not supported"
            )
        return cls.model_validate(d)

    @classmethod
    def from_json(cls, path: str | Path) -> "DSparkConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no drafter config at {path}")
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def from_target(
        cls,
        target_config: Any,
        *,
        block_size: int = 7,
        mask_token_id: int,
        target_layer_ids: list[int] | None = None,
        num_draft_layers: int = 1,
        markov_rank: int = 256,
        markov_head_type: HeadType = "vanilla",
        enable_confidence_head: bool = True,
        confidence_head_with_markov: bool = True,
    ) -> "DSparkConfig":
        """Derive a drafter config from a target HF config (object or dict), DeepSpec-style."""
        t = target_config.to_dict() if hasattr(target_config, "to_dict") else dict(target_config)
        n = t["num_hidden_layers"]
        if target_layer_ids is None:
            target_layer_ids = default_target_layer_ids(n)
        d = {k: v for k, v in t.items() if k not in ("architectures", "auto_map", "layer_types")}
        d.update(
            num_target_layers=n,
            num_hidden_layers=num_draft_layers,
            block_size=block_size,
            mask_token_id=mask_token_id,
            target_layer_ids=list(target_layer_ids),
            markov_rank=markov_rank,
            markov_head_type=markov_head_type,
            enable_confidence_head=enable_confidence_head,
            confidence_head_with_markov=confidence_head_with_markov and markov_rank > 0,
        )
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        """config.json content readable by DeepSpec, vLLM's native Qwen3DSparkModel and this package."""
        d = self.model_dump(exclude_none=True)
        if self.markov_rank == 0:
            d.pop("markov_head_type", None)
        if not self.enable_confidence_head:
            d.pop("confidence_head_with_markov", None)
        d.update(
            architectures=["Qwen3DSparkModel"],
            model_type="qwen3",
            tie_word_embeddings=False,
            layer_types=["full_attention"] * self.num_hidden_layers,
            rope_theta=self.rope_parameters.get("rope_theta", 1e6),
            # vLLM reads the mask token and layers from dflash_config too; keep both spellings consistent.
            dflash_config={"mask_token_id": self.mask_token_id, "target_layer_ids": list(self.target_layer_ids)},
        )
        return d

    def save(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "config.json").write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


@functools.lru_cache(maxsize=1)
def _target_config_keys() -> frozenset[str]:
    """Keys of the target HF configs a drafter config copies (transformers' common, Qwen3, Qwen3-MoE, Llama)."""
    from transformers import LlamaConfig, PretrainedConfig, Qwen3Config, Qwen3MoeConfig

    return frozenset(k for c in (PretrainedConfig, Qwen3Config, Qwen3MoeConfig, LlamaConfig) for k in c().to_dict())


def check_keys(raw: dict[str, Any]) -> None:
    """Refuse a key that looks like a misspelt drafter field (e.g. `enable_confidence_heads`), naming the field;
    list the other keys nothing reads in one warning."""
    ours = set(DSparkConfig.model_fields) | OTHER_SPELLINGS
    unknown = sorted(set(raw) - ours - _target_config_keys())
    typos = {k: m[0] for k in unknown if (m := difflib.get_close_matches(k, ours, n=1, cutoff=TYPO_CUTOFF))}
    if typos:
        raise DrafterMismatchError("drafter config: unknown key(s) " + ", ".join(
            f"{k!r} (did you mean {v!r}?)" for k, v in typos.items()))
    if unknown:
        logger.warning("drafter config: key(s) %s are not read by vllm-dspark (ignored)", ", ".join(unknown))


def default_target_layer_ids(num_target_layers: int, num_features: int = 5) -> list[int]:
    """Evenly spread from layer 1 to layer L−3, DeepSpec's shipped choice ([1, 9, 17, 25, 33] of 36 layers,
    [1, 10, 19, 28, 37] of 40); shallow targets get fewer, distinct layers."""
    first = min(1, num_target_layers - 2)
    last = max(first, min(num_target_layers - 2, num_target_layers - 3 if num_target_layers > 3 else 0))
    k = max(1, min(num_features, last - first + 1))
    if k == 1:
        return [first]
    return sorted({first + round(i * (last - first) / (k - 1)) for i in range(k)})


def check_fits_target(cfg: DSparkConfig, target_config: Any) -> None:
    """Refuse a drafter that does not fit its target, naming the field and both values."""
    t = target_config.to_dict() if hasattr(target_config, "to_dict") else dict(target_config)
    target_hidden = t.get("hidden_size")
    want_hidden = cfg.target_hidden_size or cfg.hidden_size
    problems = []
    if target_hidden != want_hidden:
        problems.append(f"hidden_size: drafter expects target features of size {want_hidden}, target has {target_hidden}")
    if t.get("vocab_size") != cfg.vocab_size:
        problems.append(f"vocab_size: drafter {cfg.vocab_size}, target {t.get('vocab_size')}")
    n = t.get("num_hidden_layers")
    if n is not None:
        if cfg.num_target_layers != n:
            problems.append(f"num_target_layers: drafter {cfg.num_target_layers}, target num_hidden_layers {n}")
        bad = [i for i in cfg.target_layer_ids if i < -1 or i >= n]
        if bad:
            problems.append(f"target_layer_ids: {bad} out of range [-1, {n - 1}] for a target with {n} layers")
        if n - 1 in cfg.target_layer_ids:
            problems.append(
                f"target_layer_ids: contains the last target layer {n - 1}, whose HF hidden state is final-normed "
                "(DeepSpec and vLLM disagree on it); use an earlier layer"
            )
    if problems:
        raise DrafterMismatchError("drafter does not fit the target:\n  " + "\n  ".join(problems))
