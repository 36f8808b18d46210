"""Types, input checks and the small [N, r]-sized head math shared by the reference and the Triton path.

Semantics (deepspec-format.md §6-7; `vllm_dspark.model.heads.MarkovHead` is the module form): for draft position
k and request n, prev = anchor (k = 0) or the token chosen at k-1; w1 = W1[prev]; z = head(w1, h_k, state)
(vanilla: z = w1); corrected logits L = U_k + W2s @ z with W2s the stored `markov_w2.weight` [V, r]; the token is
argmax(L) when T_n < GREEDY_EPS (vllm_dspark.config), else a draw from softmax(L / T_n); confidence logit = w·[h_k ; w1] + b.

Sampling contract (identical in both backends, so a seed gives the same token on CPU and GPU up to float
rounding at a CDF boundary): step k of request n draws two uniforms from Philox4x32-10 with key = seeds[n] and
counter = offsets[n] + k (`tl.randint4x` layout), u = ((x >> 8) + 0.5) / 2^24. Then a two-level inverse CDF: u1
picks a group of SAMPLE_GROUP consecutive vocabulary ids by the groups' probability masses, u2 picks the token
inside the group by the renormalised in-group masses. Two levels keep fp32 resolution relative to each level's
mass; P(token) = P(group) · P(token | group) is exactly softmax(L / T). Callers advance `offsets` by the number of
steps they ran (γ per draft round) so that rounds do not reuse noise. A request's own seed becomes the key only
through `draft_key` (below).
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F

HeadType = Literal["vanilla", "gated", "rnn"]
Output = Literal["none", "logits", "probs"]
OUTPUTS = ("none", "logits", "probs")

SAMPLE_GROUP = 128  # vocabulary ids per sampling group; also the Triton kernel's vocabulary tile
KEY_MASK = 2**62 - 1  # Philox keys are kept in [0, 2^62): non-negative int64 on every path
# XORed into a request seed to form its draft key. Why: vLLM draws the rejection sampler's acceptance uniforms and
# recovery/bonus noise of a seeded request from a torch.Generator seeded with the raw seed, and torch's CUDA
# generator is Philox4x32-10 keyed by that seed: with key = seed the draft noise could be the very stream the
# acceptance test reads, and a draft correlated with its own acceptance draw is no longer lossless.
DRAFT_KEY_XOR = 0x1E3779B97F4A7C15  # the 64-bit golden-ratio constant, masked to 62 bits (any non-zero value works)


def draft_key(seed: int) -> int:
    """The Philox key of a seeded request's draft noise: a bijection of its seed that never equals the seed."""
    return (int(seed) & KEY_MASK) ^ DRAFT_KEY_XOR


@dataclasses.dataclass
class MarkovWeights:
    """Weights of a sequential head in the checkpoint's layout (deepspec-format.md §3)."""

    w1: torch.Tensor  # [V, r] markov_w1 (embedding)
    w2: torch.Tensor  # [V, r] markov_w2.weight (nn.Linear r -> V)
    head_type: HeadType = "vanilla"
    gate_weight: torch.Tensor | None = None  # [r, H + r] gated
    gate_bias: torch.Tensor | None = None  # [r]
    joint_weight: torch.Tensor | None = None  # [3r, 2r + H] rnn
    joint_bias: torch.Tensor | None = None  # [3r]

    def __post_init__(self):
        if self.w1.dim() != 2 or self.w1.shape != self.w2.shape:
            raise ValueError(f"w1 and w2 must both be [V, r]; got w1 {tuple(self.w1.shape)}, w2 {tuple(self.w2.shape)}")
        if self.head_type not in ("vanilla", "gated", "rnn"):
            raise ValueError(f"head_type must be vanilla, gated or rnn, got {self.head_type!r}")
        if self.head_type == "gated" and (self.gate_weight is None or self.gate_bias is None):
            raise ValueError("head_type='gated' needs gate_weight [r, H+r] and gate_bias [r]")
        if self.head_type == "rnn" and (self.joint_weight is None or self.joint_bias is None):
            raise ValueError("head_type='rnn' needs joint_weight [3r, 2r+H] and joint_bias [3r]")

    @property
    def vocab_size(self) -> int:
        return self.w1.shape[0]

    @property
    def rank(self) -> int:
        return self.w1.shape[1]

    @classmethod
    def from_module(cls, head) -> MarkovWeights:
        """From a `vllm_dspark.model.heads.MarkovHead` (duck-typed: no import of the model package)."""
        kw = {}
        if head.head_type == "gated":
            kw = dict(gate_weight=head.gate_proj.weight, gate_bias=head.gate_proj.bias)
        elif head.head_type == "rnn":
            kw = dict(joint_weight=head.joint_proj.weight, joint_bias=head.joint_proj.bias)
        return cls(head.markov_w1.weight, head.markov_w2.weight, head.head_type, **kw)


@dataclasses.dataclass
class ConfidenceWeights:
    """Confidence head: logit = weight · [h ; W1[prev]] + bias (or weight · h + bias)."""

    weight: torch.Tensor  # [H] or [H + r]
    bias: torch.Tensor  # [1]
    with_markov: bool

    def __post_init__(self):
        self.weight = self.weight.reshape(-1)
        self.bias = torch.as_tensor(self.bias, device=self.weight.device).reshape(1)

    @classmethod
    def from_module(cls, conf) -> ConfidenceWeights:
        """From a `vllm_dspark.model.heads.ConfidenceHead` (duck-typed)."""
        return cls(conf.proj.weight, conf.proj.bias, conf.with_markov)


@dataclasses.dataclass
class StepOutput:
    tokens: torch.Tensor  # [N] int64 chosen ids
    logprobs: torch.Tensor  # [N] float32 log p_draft(token); 0 for greedy rows (one-hot draft distribution)
    lse: torch.Tensor  # [N] float32 logsumexp(L / T) (of L for greedy rows)
    conf_logits: torch.Tensor | None = None  # [N] float32
    logits: torch.Tensor | None = None  # [N, V] float32 corrected logits L (output="logits")
    probs: torch.Tensor | None = None  # [N, V] float32 draft distribution (output="probs")


@dataclasses.dataclass
class BlockOutput:
    tokens: torch.Tensor  # [N, γ] int64
    logprobs: torch.Tensor  # [N, γ] float32
    lse: torch.Tensor  # [N, γ] float32
    conf_logits: torch.Tensor | None = None  # [N, γ] float32
    logits: torch.Tensor | None = None  # [N, γ, V] float32
    probs: torch.Tensor | None = None  # [N, γ, V] float32


def head_inputs(weights: MarkovWeights, prev_ids: torch.Tensor, hidden: torch.Tensor | None, state=None):
    """z [N, r], w1_prev [N, r], state' for one step; the same torch ops (and dtype) as MarkovHead.step.

    NOTE: this [N, r]-sized math stays in torch on every backend: the gate / joint projections are small GEMMs
    (gated: [N, H+r] x [H+r, r], 2.2 MB of weights at H=4096, r=256; rnn 6.8 MB) that cuBLAS does well, next to
    the 78 MB W2 stream of the bias kernel; under a CUDA graph the extra launches cost ~nothing.
    """
    w1_prev = F.embedding(prev_ids, weights.w1)  # [N, r]
    if weights.head_type == "vanilla":
        return w1_prev, w1_prev, None
    if hidden is None:
        raise ValueError(f"head_type={weights.head_type!r} needs hidden [N, H]")
    hidden = hidden.to(w1_prev.dtype)
    if weights.head_type == "gated":
        gate = torch.sigmoid(F.linear(torch.cat([hidden, w1_prev], dim=-1), weights.gate_weight, weights.gate_bias))
        return gate * w1_prev, w1_prev, None
    if state is None:
        state = w1_prev.new_zeros(w1_prev.shape)
    joint = F.linear(torch.cat([state, w1_prev, hidden], dim=-1), weights.joint_weight, weights.joint_bias)
    gate, cand, out = joint.chunk(3, dim=-1)
    g = torch.sigmoid(gate)
    state = g * state + (1 - g) * torch.tanh(cand)
    return torch.tanh(out), w1_prev, state


def check_step_inputs(base_logits, prev_ids, weights: MarkovWeights, temperature, seeds, offsets, z, hidden, conf,
                      output):
    """Raise ValueError naming the field for any shape/dtype mismatch; returns (N, V)."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if base_logits.dim() != 2:
        raise ValueError(f"base_logits must be [N, V], got shape {tuple(base_logits.shape)}")
    n, v = base_logits.shape
    if v != weights.vocab_size:
        raise ValueError(f"base_logits vocab {v} != markov weights vocab {weights.vocab_size}")
    _check_vec("prev_ids", prev_ids, n, integer=True)
    _check_vec("temperature", temperature, n, integer=False)
    _check_vec("seeds", seeds, n, integer=True)
    if offsets is not None:
        _check_vec("offsets", offsets, n, integer=True)
    if z is not None and tuple(z.shape) != (n, weights.rank):
        raise ValueError(f"z must be [N, r] = {(n, weights.rank)}, got {tuple(z.shape)}")
    if conf is not None:
        if hidden is None:
            raise ValueError("conf weights given but hidden is None")
        want = hidden.shape[-1] + (weights.rank if conf.with_markov else 0)
        if conf.weight.numel() != want:
            raise ValueError(f"confidence weight has {conf.weight.numel()} entries, expected H(+r) = {want}")
    if hidden is not None and (hidden.dim() != 2 or hidden.shape[0] != n):
        raise ValueError(f"hidden must be [N, H] with N = {n}, got {tuple(hidden.shape)}")
    return n, v


def _check_vec(name, t, n, integer):
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must be [N] with N = {n}, got shape {tuple(t.shape)}")
    if integer and t.dtype.is_floating_point:
        raise ValueError(f"{name} must be an integer tensor, got {t.dtype}")
    if not integer and not t.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating tensor, got {t.dtype}")


def check_block_inputs(base_logits, hidden, anchor, weights: MarkovWeights, temperature, seeds, offsets, conf):
    if base_logits.dim() != 3:
        raise ValueError(f"base_logits must be [N, γ, V], got shape {tuple(base_logits.shape)}")
    n, gamma, v = base_logits.shape
    if v != weights.vocab_size:
        raise ValueError(f"base_logits vocab {v} != markov weights vocab {weights.vocab_size}")
    if hidden is not None and (hidden.dim() != 3 or hidden.shape[:2] != (n, gamma)):
        raise ValueError(f"hidden must be [N, γ, H] = [{n}, {gamma}, H], got {tuple(hidden.shape)}")
    if hidden is None and (weights.head_type != "vanilla" or conf is not None):
        raise ValueError(f"hidden [N, γ, H] is required for head_type={weights.head_type!r} or a confidence head")
    _check_vec("anchor", anchor, n, integer=True)
    _check_vec("temperature", temperature, n, integer=False)
    _check_vec("seeds", seeds, n, integer=True)
    if offsets is not None:
        _check_vec("offsets", offsets, n, integer=True)
    if conf is not None:
        want = hidden.shape[-1] + (weights.rank if conf.with_markov else 0)
        if conf.weight.numel() != want:
            raise ValueError(f"confidence weight has {conf.weight.numel()} entries, expected H(+r) = {want}")
    return n, gamma, v
