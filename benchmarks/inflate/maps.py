"""Index maps: where the source's coordinates (hidden, head positions, heads, neurons) sit in the big shapes."""
from __future__ import annotations

import torch

from benchmarks.inflate.plan import Plan


class Index:
    """Index tensors / masks (on one device) describing where the source lives inside the big shapes."""

    def __init__(self, plan: Plan, device: torch.device):
        src, dst = plan.src, plan.dst
        hd, HD, s = src.head_dim, dst.head_dim, plan.s
        arange = lambda n: torch.arange(n, device=device)  # noqa: E731
        i = arange(hd)
        self.pos = torch.where(i < hd // 2, s * i, HD // 2 + s * (i - hd // 2))  # [hd] position inside a big head
        mapped = torch.zeros(HD, dtype=torch.bool, device=device)
        mapped[self.pos] = True
        self.hidden = arange(src.hidden_size)  # live hidden coordinates (identity map)
        self.hidden_nonzero = arange(dst.hidden_size) < src.hidden_size  # [D]
        self.neurons = arange(src.intermediate_size)
        self.neurons_nonzero = arange(dst.intermediate_size) < src.intermediate_size  # [I']

        h = arange(src.num_attention_heads)
        new_q_head = (h // plan.g) * plan.G + h % plan.g  # [nh]
        self.q_rows = (new_q_head[:, None] * HD + self.pos[None, :]).reshape(-1)  # [nh·hd]
        self.kv_rows = (arange(src.num_key_value_heads)[:, None] * HD + self.pos[None, :]).reshape(-1)  # [nkv·hd]
        q_orig = torch.zeros(dst.num_attention_heads, dtype=torch.bool, device=device)
        q_orig[new_q_head] = True
        kv_orig = arange(dst.num_key_value_heads) < src.num_key_value_heads
        # rows of q/k that must be exact: all positions of heads hosting an original head (padded ones must be 0)
        self.q_must = q_orig.repeat_interleave(HD)  # [NH·HD]
        self.k_must = kv_orig.repeat_interleave(HD)  # [NKV·HD]
        # attention output that can be nonzero: mapped positions of every q head whose kv head is original
        kv_of_q = arange(dst.num_attention_heads) // plan.G
        self.attn_nonzero = (kv_orig[kv_of_q][:, None] & mapped[None, :]).reshape(-1)  # [NH·HD]
        # identity layers: v is free (nonzero) on the first half of each head's positions, zero on the second
        first_half = arange(HD) < HD // 2
        self.id_v_must = (~first_half).repeat(dst.num_key_value_heads)  # [NKV·HD]
        self.id_attn_nonzero = first_half.repeat(dst.num_attention_heads)  # [NH·HD]
        self.id_up_must = arange(dst.intermediate_size) >= dst.intermediate_size // 2  # [I']
        self.id_act_nonzero = ~self.id_up_must

