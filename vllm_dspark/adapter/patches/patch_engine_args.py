"""Patch: `EngineArgs.create_speculative_config` accepts our `dspark` object and checks a DSpark setup at start.

vLLM builds `SpeculativeConfig(**dict)` from `--speculative-config`, and that pydantic dataclass rejects unknown
keys, so the `dspark` object has to leave the dict before. The wrapper (original kept, called in the middle):
1. `spec_config.prepare`: pop and validate `dspark`, route a DSpark drafter to `"method": "dflash"`, default γ;
2. the original builds vLLM's SpeculativeConfig;
3. `spec_config.resolve`: drafter vs target, γ vs block_size, mode vs confidence head; the resolved settings
   are attached to the draft HF config, which vLLM ships to every engine process, together with the target
   layers and the mask token in the keys vLLM's runner, proposer and drafter model read on every release
   (`pin_drafter_keys`);
4. engine switches DSpark needs: the V1 model runner (`VLLM_USE_V2_MODEL_RUNNER=0` unless the user set it);
   on CPU, tensor / pipeline parallelism needs a worker CPU binding vLLM accepts (`cpu_binding.py`).
   Async scheduling stays the user's / vLLM's choice in every mode: per-request lengths are applied on the
   worker (patch_runner_trim), on the vLLM releases whose runner that patch was checked against;
5. once per process, two start-up lines: a warning when this vLLM release was read but not run
   (`compat.verification_note`), and, on GPUs, that the plugin selects V1 where vLLM would pick V2.
Runs in the process that builds the engine config (API server, or the offline `LLM`).
"""
from __future__ import annotations

import functools
import os
from types import ModuleType

from vllm_dspark.adapter import compat, cpu_binding, patches, spec_config
from vllm_dspark.adapter.patches._import_hook import when_imported

logger = compat.get_logger(__name__)

MODULE = "vllm.engine.arg_utils"
CLASS = "EngineArgs"
METHOD = "create_speculative_config"
V2_ENV = "VLLM_USE_V2_MODEL_RUNNER"
_original = None


def _finish(engine_args, spec, settings) -> None:
    from vllm_dspark.config import DSparkConfig

    hf = spec.draft_model_config.hf_config
    if not spec_config.is_routed_to_us(hf):
        if settings is not None:
            raise spec_config.DSparkConfigError(
                f"--speculative-config: '{spec_config.KEY}' settings need a DSpark drafter, but the drafter "
                f"{spec.draft_model_config.model!r} resolved to architectures {hf.architectures!r}"
            )
        return
    drafter = DSparkConfig.from_dict(spec_config.drafter_dict_from_hf(hf))
    resolved = spec_config.resolve(settings, drafter, spec.num_speculative_tokens,
                                   spec.target_model_config.hf_config)
    spec_config.check_dynamic_sd(resolved, getattr(spec, "num_speculative_tokens_per_batch_size", None))
    spec_config.attach(hf, resolved)
    spec_config.pin_drafter_keys(hf, drafter)
    if os.environ.get(V2_ENV, "").strip() in ("1", "true", "True"):
        raise spec_config.DSparkConfigError(
            f"vllm-dspark runs on vLLM's V1 model runner, but {V2_ENV}=1 is set; unset it or set it to 0"
        )
    os.environ[V2_ENV] = "0"
    cpu_binding.check_engine_args(engine_args)
    if resolved.mode != "static" and not patches.supports_verify_lengths():
        raise spec_config.DSparkConfigError(
            f"--speculative-config: '{spec_config.KEY}.mode' = {resolved.mode!r} trims drafts per request in vLLM's "
            f"model runner, which vllm-dspark does not do on vLLM {compat.vllm_version()}: use "
            f"'{spec_config.KEY}.mode' = 'static'"
        )
    _log_release_notes()
    logger.info("vllm-dspark: DSpark drafter %s, γ=%d, mode=%s", spec.draft_model_config.model,
                resolved.num_speculative_tokens, resolved.mode)


@functools.lru_cache(maxsize=1)  # once per process (vLLM may build the speculative config more than once)
def _log_release_notes() -> None:
    note = compat.verification_note()
    if note is not None:
        logger.warning(note)
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        logger.info("vllm-dspark: vLLM %s runs DFlash drafters on its V2 model runner by default; "
                    "vllm-dspark selects the V1 runner (%s=0), where its patches apply", compat.vllm_version(), V2_ENV)


def _patch(module: ModuleType) -> None:
    global _original
    cls = getattr(module, CLASS)
    original = cls.__dict__[METHOD]
    if getattr(original, "__dspark_wrapped__", False):
        return
    _original = original

    @functools.wraps(original)
    def create_speculative_config(self, *args, **kwargs):
        raw = self.speculative_config
        settings = None
        if isinstance(raw, dict):
            if "_dspark_settings" in self.__dict__:  # called again on the same args: reuse the parsed settings
                settings = self.__dict__["_dspark_settings"]
            else:
                raw, settings = spec_config.prepare(raw)
                self.speculative_config = raw
                self.__dict__["_dspark_settings"] = settings
        spec = original(self, *args, **kwargs)
        if spec is not None and spec.draft_model_config is not None:
            _finish(self, spec, settings)
        return spec

    create_speculative_config.__dspark_wrapped__ = True
    setattr(cls, METHOD, create_speculative_config)


def apply() -> None:
    when_imported(MODULE, _patch)
