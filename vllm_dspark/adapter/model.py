"""The DSpark drafter as a vLLM model: vLLM's DFlash Qwen3 backbone plus our sequential and confidence heads.

Differs from vLLM's native `Qwen3DSparkForCausalLM` (V2 runner only): it runs under the V1 DFlash proposer, its
heads are `vllm_dspark.model.heads` modules (vanilla, gated and rnn Markov heads; confidence head with or without
the Markov feature), and the confidence-head weights are always loaded. The backbone (fc, hidden_norm, draft
layers, context K/V precompute, non-causal block attention) is vLLM's DFlash code unchanged: a DeepSpec state dict
loads into it with the DFlash key mapping. Registered as `DFlashQwen3DSparkModel`, the name vLLM gives a
`Qwen3DSparkModel` drafter under `"method": "dflash"`.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

from vllm.model_executor.models.qwen3_dflash import DFlashQwen3ForCausalLM

from vllm_dspark.adapter.spec_config import drafter_dict_from_hf
from vllm_dspark.config import DrafterMismatchError, DSparkConfig
from vllm_dspark.model.heads import build_heads

HEAD_PREFIXES = ("markov_head.", "confidence_head.")
STRIPPED_PREFIXES = ("_orig_mod.", "model.")


def _head_key(name: str) -> str | None:
    for prefix in STRIPPED_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name if name.startswith(HEAD_PREFIXES) else None


class DSparkQwen3ForVLLM(DFlashQwen3ForCausalLM):
    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.dspark_config = DSparkConfig.from_dict(drafter_dict_from_hf(self.config))
        markov, conf = build_heads(self.dspark_config)
        # Built under vLLM's default device/dtype context; the confidence head is tiny and its logits feed the
        # scheduler, so it computes in float32 (as vLLM's native head does).
        self.markov_head = markov
        self.confidence_head = None if conf is None else conf.float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]):
        heads: dict[str, torch.Tensor] = {}

        def backbone_weights():
            for name, tensor in weights:
                key = _head_key(name)
                if key is None:
                    yield name, tensor
                else:
                    heads[key] = tensor

        loaded = super().load_weights(backbone_weights())
        self._load_heads(heads)
        return loaded

    def _load_heads(self, heads: dict[str, torch.Tensor]) -> None:
        expected = {
            f"{owner}.{name}": p
            for owner in ("markov_head", "confidence_head")
            if getattr(self, owner) is not None
            for name, p in getattr(self, owner).named_parameters()
        }
        missing = sorted(set(expected) - set(heads))
        unexpected = sorted(set(heads) - set(expected))
        if missing or unexpected:
            cfg = self.dspark_config
            raise DrafterMismatchError(
                f"drafter head weights do not match its config (markov_rank={cfg.markov_rank}, markov_head_type="
                f"{cfg.markov_head_type if cfg.markov_rank else None}, enable_confidence_head="
                f"{cfg.enable_confidence_head}, confidence_head_with_markov={cfg.confidence_head_with_markov}): "
                f"missing {missing}, unexpected {unexpected}"
            )
        with torch.no_grad():
            for key, param in expected.items():
                tensor = heads[key]
                if tuple(tensor.shape) != tuple(param.shape):
                    raise DrafterMismatchError(
                        f"tensor {key}: checkpoint shape {tuple(tensor.shape)}, config implies {tuple(param.shape)}"
                    )
                param.copy_(tensor.to(device=param.device, dtype=param.dtype))
