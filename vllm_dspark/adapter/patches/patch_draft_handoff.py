"""Patch: on a synchronous engine the step's drafts reach the engine core with the step's output.

After each step vLLM's synchronous engine core (every CPU build; GPUs with async scheduling off) asks the worker
for the drafts it just proposed with one more RPC (`EngineCore.post_step` -> `Executor.take_draft_token_ids`): a
round trip through the executor's message queues, between the step's output and the next step's schedule, so on
the step's critical path. The worker already holds the drafts when its `sample_tokens` returns (the V1 runner
proposes inside it), so:
- worker: `Worker.sample_tokens` (CPUWorker inherits it) is wrapped to put `model_runner.take_draft_token_ids()`
  on the step's ModelRunnerOutput (attribute DRAFTS_ATTR, a 1-tuple: the drafts may be None);
- engine core: `MultiprocExecutor.sample_tokens` keeps what arrived, `take_draft_token_ids` returns it instead of
  asking the worker, and `execute_model` drops whatever was kept (a step whose output came from `execute_model`
  itself asks the worker as before).
The same object `take_draft_token_ids` would return, taken at the same point of the step (nothing runs on the
worker between `sample_tokens` and the RPC). Only for DSpark drafters served through vLLM's multiprocess executor,
synchronous scheduling and one pipeline stage (the batch queue of async scheduling / pipeline parallelism asks for
drafts at other points).
"""
from __future__ import annotations

from types import ModuleType

from vllm_dspark.adapter import compat, spec_config
from vllm_dspark.adapter.patches._import_hook import when_imported
from vllm_dspark.adapter.patches._wrap import wrap_methods

WORKER_MODULE, WORKER_CLASS = "vllm.v1.worker.gpu_worker", "Worker"
EXECUTOR_MODULE, EXECUTOR_CLASS = "vllm.v1.executor.multiproc_executor", "MultiprocExecutor"
DRAFTS_ATTR = "dspark_draft_token_ids"  # (DraftTokenIds | None,) on a ModelRunnerOutput
_NOTHING_KEPT = object()
_worker_originals: dict[str, object] = dict.fromkeys(("sample_tokens",))
_executor_originals: dict[str, object] = dict.fromkeys(("execute_model", "sample_tokens", "take_draft_token_ids"))


def hands_drafts_over(vllm_config) -> bool:
    """Whether this engine's worker sends its drafts with each step's output (see the module docstring)."""
    parallel = vllm_config.parallel_config
    return (spec_config.serves_dspark(vllm_config) and not compat.schedules_async(vllm_config)
            and parallel.pipeline_parallel_size == 1 and parallel.distributed_executor_backend == "mp")


def attach_drafts(output, runner):
    """Put the runner's drafts on a step output (a ModelRunnerOutput; anything else is returned untouched)."""
    if hasattr(output, "sampled_token_ids") and not callable(getattr(output, "get_output", None)):
        setattr(output, DRAFTS_ATTR, (runner.take_draft_token_ids(),))
    return output


def _worker_wrappers(sample_tokens) -> dict:
    def wrapped_sample_tokens(self, *args, **kwargs):
        out = sample_tokens(self, *args, **kwargs)
        if self.__dict__.get("_dspark_hands_drafts") is None:
            self._dspark_hands_drafts = hands_drafts_over(self.vllm_config)
        return attach_drafts(out, self.model_runner) if self._dspark_hands_drafts else out

    return {"sample_tokens": wrapped_sample_tokens}


def _executor_wrappers(execute_model, sample_tokens, take_draft_token_ids) -> dict:
    def wrapped_execute_model(self, *args, **kwargs):
        self._dspark_drafts = _NOTHING_KEPT
        return execute_model(self, *args, **kwargs)

    def wrapped_sample_tokens(self, *args, **kwargs):
        out = sample_tokens(self, *args, **kwargs)
        handed = getattr(out, DRAFTS_ATTR, None)  # a Future (non_block) or another engine's output: none
        self._dspark_drafts = handed[0] if handed is not None else _NOTHING_KEPT
        return out

    def wrapped_take_draft_token_ids(self, *args, **kwargs):
        kept, self._dspark_drafts = getattr(self, "_dspark_drafts", _NOTHING_KEPT), _NOTHING_KEPT
        if kept is _NOTHING_KEPT:
            return take_draft_token_ids(self, *args, **kwargs)
        return kept

    return {"execute_model": wrapped_execute_model, "sample_tokens": wrapped_sample_tokens,
            "take_draft_token_ids": wrapped_take_draft_token_ids}


def _patch_worker(module: ModuleType) -> None:
    wrap_methods(getattr(module, WORKER_CLASS), _worker_originals, _worker_wrappers)


def _patch_executor(module: ModuleType) -> None:
    wrap_methods(getattr(module, EXECUTOR_CLASS), _executor_originals, _executor_wrappers)


def apply() -> None:
    when_imported(WORKER_MODULE, _patch_worker)
    when_imported(EXECUTOR_MODULE, _patch_executor)
