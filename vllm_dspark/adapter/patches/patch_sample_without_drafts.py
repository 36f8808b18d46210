"""Patch: a step with no draft to verify is sampled by vLLM's sampler, not by its rejection sampler.

With speculation configured, the V1 runner hands every step to the rejection sampler. For a step without drafts
that samples each request's bonus token with the runner's own `Sampler` (the rejection sampler's `sampler` is the
same object) and then runs its verification on empty tensors: 0.22 against 0.06 ms a step at one request on a
2-core CPU (`benchmarks/serving/step_overhead.py`). With DSpark such steps are common: the draft gate turns drafting
off where it does not pay, and modes confidence / sla may cut every draft of a step. `GPUModelRunner._sample` is
wrapped to take the runner's no-speculation branch (`spec_decode_metadata` None) when the step's
`SpecDecodeMetadata.max_spec_len` is 0: the same sampler on the same logits (one row per request, the bonus rows),
with the same generators, so the same tokens; only DSpark drafters.

Before, `_prepare_inputs` builds that step's `SpecDecodeMetadata` from the drafts per request with numpy (cumulative
sums, repeats) and five host-to-device copies, where a step without drafts needs one: its logits rows are each
request's last scheduled row. `GPUModelRunner._calc_spec_decode_metadata` is wrapped to build that metadata directly
when no request has a draft (the same fields, values and dtypes; tested against the original); only DSpark drafters.
"""
from __future__ import annotations

from types import ModuleType

import numpy as np
import torch

from vllm_dspark.adapter import spec_config
from vllm_dspark.adapter.patches._import_hook import when_imported
from vllm_dspark.adapter.patches._wrap import wrap_methods

MODULE, CLASS = "vllm.v1.worker.gpu_model_runner", "GPUModelRunner"
_originals: dict[str, object] = dict.fromkeys(("_sample", "_calc_spec_decode_metadata"))


def _serves_dspark(runner) -> bool:
    if runner.__dict__.get("_dspark_samples_plain") is None:
        runner._dspark_samples_plain = spec_config.serves_dspark(runner.vllm_config)
    return runner._dspark_samples_plain


def metadata_without_drafts(num_reqs: int, cu_num_scheduled_tokens: np.ndarray, input_ids: torch.Tensor,
                            device, to_device):
    """What `_calc_spec_decode_metadata` gives for a step whose requests have no drafts: one logits row per
    request, its last scheduled row (`to_device`: vLLM's host-to-device copy of a numpy array)."""
    from vllm.v1.spec_decode.metadata import SpecDecodeMetadata

    steps = torch.arange(num_reqs, dtype=torch.int32, device=device)
    return SpecDecodeMetadata(
        draft_token_ids=input_ids[:0], num_draft_tokens=[0] * num_reqs,
        cu_num_draft_tokens=torch.zeros(num_reqs, dtype=torch.int32, device=device),
        cu_num_sampled_tokens=steps + 1, target_logits_indices=torch.empty(0, dtype=torch.int32, device=device),
        bonus_logits_indices=steps, logits_indices=to_device(cu_num_scheduled_tokens - 1, device=device))


def _wrappers(_sample, _calc_spec_decode_metadata, to_device) -> dict:
    def wrapped_sample(self, logits, spec_decode_metadata, *args, **kwargs):
        if spec_decode_metadata is not None and spec_decode_metadata.max_spec_len == 0 and _serves_dspark(self):
            spec_decode_metadata = None
        return _sample(self, logits, spec_decode_metadata, *args, **kwargs)

    def wrapped_calc_spec_decode_metadata(self, num_draft_tokens, cu_num_scheduled_tokens, *args, **kwargs):
        if args or kwargs or num_draft_tokens.any() or not _serves_dspark(self):
            return _calc_spec_decode_metadata(self, num_draft_tokens, cu_num_scheduled_tokens, *args, **kwargs)
        return metadata_without_drafts(len(num_draft_tokens), cu_num_scheduled_tokens, self.input_ids.gpu,
                                       self.device, to_device)

    return {"_sample": wrapped_sample, "_calc_spec_decode_metadata": wrapped_calc_spec_decode_metadata}


def _patch(module: ModuleType) -> None:
    wrap_methods(getattr(module, CLASS), _originals,
                 lambda **originals: _wrappers(**originals, to_device=module.async_tensor_h2d))


def apply() -> None:
    when_imported(MODULE, _patch)
