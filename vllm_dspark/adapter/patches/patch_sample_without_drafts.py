"""Patch: a step with no draft to verify is sampled by vLLM's sampler, not by its rejection sampler.

With speculation configured, the V1 runner hands every step to the rejection sampler. For a step without drafts
that samples each request's bonus token with the runner's own `Sampler` (the rejection sampler's `sampler` is the
same object) and then runs its verification on empty tensors: 0.22 against 0.06 ms a step at one request on a
2-core CPU (`benchmarks/serving/step_overhead.py`). With DSpark such steps are common: the draft gate turns drafting
off where it does not pay, and modes confidence / sla may cut every draft of a step. `GPUModelRunner._sample` is
wrapped to take the runner's no-speculation branch (`spec_decode_metadata` None) when the step's
`SpecDecodeMetadata.max_spec_len` is 0: the same sampler on the same logits (one row per request, the bonus rows),
with the same generators, so the same tokens; only DSpark drafters.
"""
from __future__ import annotations

from types import ModuleType

from vllm_dspark.adapter import spec_config
from vllm_dspark.adapter.patches._import_hook import when_imported
from vllm_dspark.adapter.patches._wrap import wrap_methods

MODULE, CLASS = "vllm.v1.worker.gpu_model_runner", "GPUModelRunner"
_originals: dict[str, object] = dict.fromkeys(("_sample",))


def _wrappers(_sample) -> dict:
    def wrapped_sample(self, logits, spec_decode_metadata, *args, **kwargs):
        if spec_decode_metadata is not None and spec_decode_metadata.max_spec_len == 0:
            if self.__dict__.get("_dspark_samples_plain") is None:
                self._dspark_samples_plain = spec_config.serves_dspark(self.vllm_config)
            if self._dspark_samples_plain:
                spec_decode_metadata = None
        return _sample(self, logits, spec_decode_metadata, *args, **kwargs)

    return {"_sample": wrapped_sample}


def _patch(module: ModuleType) -> None:
    wrap_methods(getattr(module, CLASS), _originals, _wrappers)


def apply() -> None:
    when_imported(MODULE, _patch)
