"""One way to build a `DSparkProposer` in unit tests: its own `__init__` runs in full, only vLLM's parent
constructor (which needs a whole engine) is replaced by one that sets the attributes ours reads from it. So every
field `__init__` sets exists in the tests too, and a new one cannot be forgotten here."""
from __future__ import annotations

import uuid
from types import SimpleNamespace

import torch

from vllm_dspark.adapter import compat, spec_config
from vllm_dspark.adapter.proposer import DSparkProposer
from vllm_dspark.config import DSparkConfig

HIDDEN = 24
MAX_BATCH = 8


def drafter_config(gamma: int, **overrides) -> DSparkConfig:
    fields = dict(hidden_size=HIDDEN, num_attention_heads=2, num_key_value_heads=1, head_dim=12, intermediate_size=16,
                  vocab_size=97, num_hidden_layers=1, num_target_layers=4, block_size=gamma, mask_token_id=3,
                  target_layer_ids=[0, 2], markov_rank=8, enable_confidence_head=True)
    fields.update(overrides)
    return DSparkConfig(**fields)


class _DraftHFConfig(SimpleNamespace):
    """What vLLM's draft HF config offers our constructor: architectures, to_dict, the attached settings."""

    def to_dict(self) -> dict:
        return dict(self.drafter)


def vllm_config(gamma: int = 4, drafter: DSparkConfig | None = None, **serving) -> SimpleNamespace:
    """An engine config serving a DSpark drafter with the given `dspark` settings (resolved and attached as the
    EngineArgs patch does)."""
    drafter = drafter or drafter_config(gamma)
    settings = spec_config.parse_settings(serving or None)
    target = {"hidden_size": HIDDEN, "vocab_size": drafter.vocab_size, "num_hidden_layers": drafter.num_target_layers}
    resolved = spec_config.resolve(settings, drafter, gamma, target)
    hf = _DraftHFConfig(architectures=[compat.ROUTED_ARCH], drafter=drafter.to_dict())
    spec_config.attach(hf, resolved)
    model_config = SimpleNamespace(seed=0, hf_config=SimpleNamespace(**target), get_hidden_size=lambda: HIDDEN)
    return SimpleNamespace(
        model_config=model_config, parallel_config=SimpleNamespace(data_parallel_rank=0),
        speculative_config=SimpleNamespace(num_speculative_tokens=gamma,
                                           draft_model_config=SimpleNamespace(hf_config=hf)),
        instance_id=f"unit-{uuid.uuid4().hex[:8]}")


def make_proposer(monkeypatch, gamma: int = 4, runner=None, config: SimpleNamespace | None = None,
                  **serving) -> DSparkProposer:
    """`DSparkProposer(config, cpu, runner)` with vLLM's `DFlashProposer.__init__` stubbed for the test."""
    config = config or vllm_config(gamma, **serving)

    def parent_init(self, vllm_config, device, runner=None):
        self.vllm_config = vllm_config
        self.draft_model_config = vllm_config.speculative_config.draft_model_config
        self.num_speculative_tokens = vllm_config.speculative_config.num_speculative_tokens
        self.max_batch_size = MAX_BATCH
        self.device = device

    monkeypatch.setattr(DSparkProposer.__mro__[1], "__init__", parent_init)
    return DSparkProposer(config, torch.device("cpu"), runner)
