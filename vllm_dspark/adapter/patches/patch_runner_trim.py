"""Patch: the V1 runner trims each request's scheduled drafts to the DSpark verification length before the target.

Modes "confidence" / "sla" pick a length per request, but V1 with async scheduling only takes a fixed [R, γ]
draft tensor: the scheduler schedules every draft and the lengths are applied here, on the worker, as vLLM
does for its GPU n-gram proposer (`update_scheduler_for_invalid_drafts` in `ngram_proposer_gpu`, called from
`_update_states`). `GPUModelRunner.execute_model` (the CPU runner inherits it) is wrapped:
1. `drafter.verify_lengths` gives the lengths from the last round's confidences (one policy call per step);
2. the target runs on a copy of the scheduler output whose spec tokens and token counts are cut to them (the
   engine core may share the original object with the worker: its scheduler must keep the untrimmed counts,
   so the trimmed tail counts as rejected in `update_from_output` and `num_computed_tokens` comes out right);
3. after the original, `prev_num_draft_len` of each trimmed request is set back to the scheduled count: under
   async scheduling the next step's `num_computed_tokens` already includes all scheduled drafts, and the
   runner's rejection correction subtracts (that count − accepted), as for n-gram GPU drafts;
4. a structured-output bitmask (computed by the scheduler for the scheduled drafts) is lined up with the trimmed
   logits. `apply_grammar_bitmask` reads 1 + (the runner's drafts) rows per request, and row k of a request is the
   mask after its first k drafts, so the rows to read are the first 1 + kept of each request's. Up to vLLM 0.32 the
   rows are packed (1 + scheduled drafts per request, read one request after another): we keep those rows and
   drop the rest. From 0.33 every request owns a fixed block of 1 + γ rows (`StructuredOutputManager.
   grammar_bitmask`) and the reader derives the stride as rows // requests: the rows stay where they are (dropping
   any would shift every later block), and only `num_acceptable_drafts` is clipped to the kept drafts;
5. the tail counts go back with the step's ModelRunnerOutput (attribute `UNVERIFIED_ATTR`) so the scheduler
   patch (patch_scheduler_unverified) counts only verified drafts in vLLM's spec-decode stats.
"""
from __future__ import annotations

import dataclasses
import functools
from types import ModuleType

from vllm_dspark.adapter import compat
from vllm_dspark.adapter.patches._import_hook import when_imported
from vllm_dspark.adapter.patches._lookup import dspark_drafter
from vllm_dspark.adapter.patches._wrap import wrap_methods

MODULE = "vllm.v1.worker.gpu_model_runner"
CLASS = "GPUModelRunner"
UNVERIFIED_ATTR = "dspark_unverified_drafts"  # {req_id: scheduled drafts the target did not verify}
FIXED_STRIDE_BITMASK = ("0.33", "0.34")  # vLLM releases whose grammar bitmask gives each request 1 + γ rows
_originals: dict[str, object] = dict.fromkeys(("execute_model", "sample_tokens"))  # filled when patched


def trim_scheduled_drafts(scheduler_output, lengths: dict[str, int]):
    """(copy of scheduler_output with request r's spec tokens cut to lengths[r], {r: scheduled count},
    {r: tokens cut}); the input itself when nothing is cut. A request cut to 0 drafts leaves
    `scheduled_spec_decode_tokens`, as in vLLM's `update_scheduler_for_invalid_drafts`."""
    spec = dict(scheduler_output.scheduled_spec_decode_tokens)
    num_scheduled = dict(scheduler_output.num_scheduled_tokens)
    total = scheduler_output.total_num_scheduled_tokens
    scheduled, cut = {}, {}
    for req_id, length in lengths.items():
        tokens = spec.get(req_id)
        if not tokens:
            continue
        keep = max(0, min(int(length), len(tokens)))
        if keep == len(tokens):
            continue
        scheduled[req_id], cut[req_id] = len(tokens), len(tokens) - keep
        num_scheduled[req_id] -= cut[req_id]
        total -= cut[req_id]
        if keep:
            spec[req_id] = tokens[:keep]
        else:
            del spec[req_id]
    if not cut:
        return scheduler_output, {}, {}
    trimmed = dataclasses.replace(scheduler_output, scheduled_spec_decode_tokens=spec,
                                  num_scheduled_tokens=num_scheduled, total_num_scheduled_tokens=total)
    return trimmed, scheduled, cut


def trim_grammar_output(grammar_output, spec: dict[str, list[int]], scheduled: dict[str, int],
                        fixed_stride: bool = False):
    """Line the scheduler's bitmask up with the kept drafts (`spec`: the trimmed drafts; `scheduled`: the draft
    count the scheduler built rows for, per trimmed request). Packed layout (`fixed_stride` False): keep the first
    1 + kept of each request's 1 + scheduled rows. Fixed stride: keep every row. Either way a request's acceptable
    drafts (vLLM >= 0.32 only) are clipped to its kept drafts."""
    if grammar_output is None or not scheduled:
        return grammar_output
    rows, start, acceptable = [], 0, []
    limits = getattr(grammar_output, "num_acceptable_drafts", None)  # a field from vLLM 0.32
    for i, req_id in enumerate(grammar_output.structured_output_request_ids):
        kept = len(spec.get(req_id, ()))
        rows.extend(range(start, start + 1 + kept))
        start += 1 + scheduled.get(req_id, kept)
        if limits is not None:
            acceptable.append(min(limits[i], kept))
    changes = {} if fixed_stride else {"grammar_bitmask": grammar_output.grammar_bitmask[rows]}
    if limits is not None:
        changes["num_acceptable_drafts"] = acceptable
    return dataclasses.replace(grammar_output, **changes)


def restore_optimistic_counts(requests: dict, scheduled: dict[str, int]) -> None:
    """prev_num_draft_len = the scheduler's draft count (what the next step's optimistic count includes)."""
    for req_id, n in scheduled.items():
        state = requests.get(req_id)
        if state is not None:
            state.prev_num_draft_len = n


def attach_unverified(output, cut: dict[str, int]):
    """Put the cut counts on the step's ModelRunnerOutput (directly, or once an async output resolves)."""
    if not cut or output is None:
        return output
    get_output = getattr(output, "get_output", None)
    if callable(get_output):  # AsyncModelRunnerOutput: the worker resolves it before sending
        @functools.wraps(get_output)
        def resolved():
            return attach_unverified(get_output(), cut)

        output.get_output = resolved
    elif hasattr(output, "sampled_token_ids"):  # ModelRunnerOutput (pickled with its attributes)
        setattr(output, UNVERIFIED_ATTR, cut)
    else:  # the scheduler would count the cut drafts as verified ones
        raise RuntimeError(f"vllm-dspark: the runner's step output {type(output).__name__} has neither "
                           "`get_output` (AsyncModelRunnerOutput) nor `sampled_token_ids` (ModelRunnerOutput); this "
                           "vLLM changed its step output, so drafts cut to the verification lengths cannot be reported")
    return output


def trimming_drafter(runner):
    """The runner's DSpark proposer when it picks verification lengths (modes confidence / sla), else None."""
    drafter = dspark_drafter(runner, "trim drafts to the verification lengths")
    return drafter if drafter is not None and drafter.serving.mode != "static" else None


def _wrappers(execute_model, sample_tokens, fixed_stride: bool) -> dict:
    def wrapped_execute_model(self, scheduler_output, *args, **kwargs):
        self._dspark_trim = None
        drafter = trimming_drafter(self)
        if drafter is None:
            return execute_model(self, scheduler_output, *args, **kwargs)
        lengths = drafter.verify_lengths(scheduler_output.scheduled_spec_decode_tokens)
        scheduler_output, scheduled, cut = trim_scheduled_drafts(scheduler_output, lengths)
        try:
            out = execute_model(self, scheduler_output, *args, **kwargs)
        finally:
            restore_optimistic_counts(self.requests, scheduled)
        if out is not None:  # no sample_tokens call follows
            return attach_unverified(out, cut)
        if cut:
            self._dspark_trim = (scheduler_output.scheduled_spec_decode_tokens, scheduled, cut)
        return out

    def wrapped_sample_tokens(self, grammar_output, *args, **kwargs):
        trim, self._dspark_trim = getattr(self, "_dspark_trim", None), None
        if trim is None:
            return sample_tokens(self, grammar_output, *args, **kwargs)
        spec, scheduled, cut = trim
        grammar_output = trim_grammar_output(grammar_output, spec, scheduled, fixed_stride)
        return attach_unverified(sample_tokens(self, grammar_output, *args, **kwargs), cut)

    return {"execute_model": wrapped_execute_model, "sample_tokens": wrapped_sample_tokens}


def _patch(module: ModuleType) -> None:
    fixed_stride = compat.in_range(*FIXED_STRIDE_BITMASK)
    wrap_methods(getattr(module, CLASS), _originals, functools.partial(_wrappers, fixed_stride=fixed_stride))


def apply() -> None:
    when_imported(MODULE, _patch)
