"""The online target: chosen layers' outputs and the target's logits where anchor blocks need them, no cache.

One frozen forward of the target over the whole right-padded batch, without a padding mask: right padding never
changes the outputs at real positions of a causal model, and every position the drafter reads lies before the
sequence's end.
Layer id i is HF `hidden_states[i + 1]` (output of decoder layer i), -1 is `hidden_states[0]` (the embedding output);
the final-normed last entry is refused by the drafter configs. Logits go through the LM head only at the requested
positions ([N, S] of T), which is most of the saving at a large vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_dspark.model import target_features


@dataclass
class TargetPass:
    features: torch.Tensor  # [N, T, m·H_t] concatenated layer outputs
    logits: torch.Tensor  # [N, S, V] at the requested positions


@torch.no_grad()
def run_target(
    target: torch.nn.Module,
    input_ids: torch.Tensor,  # [N, T]
    attention_mask: torch.Tensor,  # [N, T]
    layer_ids: list[int],
    positions: torch.Tensor,  # [N, S] positions whose next-token logits are needed
) -> TargetPass:
    # Right padding only: then the padding mask changes nothing we read, and leaving it out lets SDPA take its
    # causal fast path.
    if attention_mask is not None and bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
        raise ValueError("run_target expects right-padded batches (a 0 followed by a 1 in attention_mask)")
    decoder = target.get_decoder()
    out = decoder(input_ids=input_ids, output_hidden_states=True, use_cache=False)
    features = target_features(out.hidden_states, layer_ids)
    last = out.last_hidden_state  # [N, T, H] final-normed
    rows = torch.gather(last, 1, positions[..., None].expand(-1, -1, last.shape[-1]))
    logits = target.get_output_embeddings()(rows)
    return TargetPass(features=features, logits=logits)
