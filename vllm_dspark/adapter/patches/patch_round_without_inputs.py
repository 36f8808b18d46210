"""Patch: a round that drafts nothing is decided before vLLM prepares the drafter's inputs.

The V1 runner's `propose_draft_token_ids` first prepares what a drafting round reads (each request's next token and
rejected rows, a new attention metadata over the verified tokens) and only then calls the drafter's `propose`. While
DSpark's draft gate keeps drafting off, that preparation is most of what a round without drafts costs vLLM (~0.3 ms
a step at one request on a 2-core CPU, `benchmarks/serving/step_overhead.py`). `GPUModelRunner.propose_draft_token_ids`
is wrapped to ask `DSparkProposer.round_without_inputs` first: it returns the round's drafts when the round drafts
none (the step's context rows then go to the drafter's backlog, read from the runner as vLLM would hand them over),
or None, and the original runs as before (DSpark's `propose` then keeps the decision made). Other drafters: the
original, untouched.
"""
from __future__ import annotations

from types import ModuleType

from vllm_dspark.adapter.patches._import_hook import when_imported
from vllm_dspark.adapter.patches._wrap import wrap_methods

MODULE, CLASS = "vllm.v1.worker.gpu_model_runner", "GPUModelRunner"
_originals: dict[str, object] = dict.fromkeys(("propose_draft_token_ids",))


def _wrappers(propose_draft_token_ids) -> dict:
    def wrapped_propose_draft_token_ids(self, scheduler_output, sampled_token_ids, sampling_metadata, hidden_states,
                                        sample_hidden_states, aux_hidden_states, spec_decode_metadata,
                                        common_attn_metadata, *args, **kwargs):
        early = getattr(self.drafter, "round_without_inputs", None)
        if early is not None:
            drafts = early(runner=self, scheduler_output=scheduler_output, sampling_metadata=sampling_metadata,
                           aux_hidden_states=aux_hidden_states, spec_decode_metadata=spec_decode_metadata,
                           common_attn_metadata=common_attn_metadata)
            if drafts is not None:
                self._draft_probs = self._draft_prob_req_ids = None  # as the original leaves a round without probs
                return drafts
        return propose_draft_token_ids(self, scheduler_output, sampled_token_ids, sampling_metadata, hidden_states,
                                       sample_hidden_states, aux_hidden_states, spec_decode_metadata,
                                       common_attn_metadata, *args, **kwargs)

    return {"propose_draft_token_ids": wrapped_propose_draft_token_ids}


def _patch(module: ModuleType) -> None:
    wrap_methods(getattr(module, CLASS), _originals, _wrappers)


def apply() -> None:
    when_imported(MODULE, _patch)
