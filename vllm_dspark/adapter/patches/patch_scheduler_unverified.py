"""Patch: vLLM's spec-decode stats count the drafts the target verified, not the ones scheduled.

With worker-side trimming (patch_runner_trim) the scheduler schedules the full γ drafts; the step's
ModelRunnerOutput carries how many of each request's drafts the worker cut. `Scheduler.update_from_output`
(AsyncScheduler inherits it) is wrapped to merge them into `scheduler_output.num_invalid_spec_tokens`, the dict
vLLM already subtracts from a request's drafted count in its stats (grammar-invalid drafts), so
`vllm:spec_decode_num_draft_tokens` and our `dspark:*` metrics count verified drafts. Rejection accounting
(`num_rejected` = scheduled − accepted) is not touched: it needs the scheduled count. `make_spec_decoding_stats`
is wrapped so a request cut to 0 drafts is no draft round (as if no drafts had been scheduled for it).
"""
from __future__ import annotations

from types import ModuleType

from vllm_dspark.adapter.patches._import_hook import when_imported
from vllm_dspark.adapter.patches._wrap import wrap_methods
from vllm_dspark.adapter.patches.patch_runner_trim import UNVERIFIED_ATTR

MODULE = "vllm.v1.core.sched.scheduler"
CLASS = "Scheduler"
_originals: dict[str, object] = dict.fromkeys(("update_from_output", "make_spec_decoding_stats"))  # when patched


def merge_unverified(invalid: dict[str, int] | None, cut: dict[str, int]) -> dict[str, int]:
    """Both count a tail of the same scheduled drafts (grammar-invalid / not verified): the longer one holds."""
    merged = dict(invalid or {})
    for req_id, n in cut.items():
        merged[req_id] = max(merged.get(req_id, 0), n)
    return merged


def _wrappers(update_from_output, make_spec_decoding_stats) -> dict:
    def wrapped_update_from_output(self, scheduler_output, model_runner_output, *args, **kwargs):
        cut = getattr(model_runner_output, UNVERIFIED_ATTR, None)
        if not cut:
            return update_from_output(self, scheduler_output, model_runner_output, *args, **kwargs)
        scheduler_output.num_invalid_spec_tokens = merge_unverified(scheduler_output.num_invalid_spec_tokens, cut)
        self._dspark_cut = cut
        try:
            return update_from_output(self, scheduler_output, model_runner_output, *args, **kwargs)
        finally:
            self._dspark_cut = None

    def wrapped_make_spec_decoding_stats(self, spec_decoding_stats, num_draft_tokens, num_accepted_tokens,
                                         num_invalid_spec_tokens, request_id):
        cut = getattr(self, "_dspark_cut", None)
        if cut and request_id in cut and cut[request_id] >= num_draft_tokens:
            return spec_decoding_stats  # nothing verified: not a draft round
        return make_spec_decoding_stats(self, spec_decoding_stats, num_draft_tokens, num_accepted_tokens,
                                        num_invalid_spec_tokens, request_id)

    return {"update_from_output": wrapped_update_from_output,
            "make_spec_decoding_stats": wrapped_make_spec_decoding_stats}


def _patch(module: ModuleType) -> None:
    wrap_methods(getattr(module, CLASS), _originals, _wrappers)


def apply() -> None:
    when_imported(MODULE, _patch)
