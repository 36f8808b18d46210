"""DSparkProposer: vLLM V1's DFlash proposer with DSpark's block layout, sequential head and verification lengths.

How it differs from its parent `DFlashProposer` (everything else, including context K/V and the padded batch
bookkeeping, is inherited):
- Block layout. DFlash queries [bonus, mask × γ] and proposes from the γ mask slots. A DSpark block of γ slots is
  [anchor, mask × (γ−1)] and every slot proposes (slot k predicts the token after position anchor+k;
  deepspec-format.md §5), so the parent's input kernel runs with γ−1 masks and all γ slots are sampled.
- Token choice. Instead of an independent argmax per slot, the sequential head walks the block left to right
  (`vllm_dspark.kernels.markov_step.markov_block`): corrected logits U_k + bias(prev), greedy or sampled with the
  request's temperature (seeded Philox draws: reproducible for seeded requests, identical on TP ranks; a seeded
  request's key is `draft_key(seed)`, never the seed vLLM's own generator for that request uses), and the
  draft distribution of every slot handed to vLLM's rejection sampler when `draft_sample_method` is
  "probabilistic", so sampling at T > 0 stays lossless.
- Verification lengths. The confidence head scores each slot. Every mode returns the full [R, γ] draft tensor
  (so async scheduling works); in modes "confidence" / "sla" the calibrated confidences (STS temperatures) are
  copied to the host without blocking and kept for the next step, where the runner patch
  (patches/patch_runner_trim) asks `verify_lengths` for this step's lengths (`VerifyLengthPolicy`, once per
  step for the batch) and trims each request's scheduled drafts to that prefix before the target runs.
- Drafting off. In those modes a gate (`vllm_dspark.scheduling.gate.DraftGate`) measures the engine's tokens/s
  with and without drafting at each load and skips the draft round where it does not pay: the round then only
  stores the new context K/V (so the drafter's cache stays whole for later rounds), hands vLLM placeholder drafts
  of the usual shape (async scheduling), and the runner patch verifies none of them.
The symbol `DFlashProposer` of vLLM's V1 runner module is replaced by this class (patches/patch_dflash_proposer),
so a non-DSpark DFlash drafter must behave exactly like the parent: every override checks `self.is_dspark`.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from vllm.v1.spec_decode.dflash import DFlashProposer

from vllm_dspark.adapter import compat, spec_config
from vllm_dspark.adapter.context_backlog import ContextBacklog, ContextSlots
from vllm_dspark.adapter.policy import VerifyLengthPolicy
from vllm_dspark.adapter.sequential import DraftRound, SequentialStage, draft_keys, pad_block
from vllm_dspark.adapter.shared_counters import SharedCounters, path_for
from vllm_dspark.config import DrafterMismatchError, DSparkConfig
from vllm_dspark.kernels.markov_step import block_backend
from vllm_dspark.model.heads import calibrated_confidence
from vllm_dspark.scheduling.cost import step_seconds_numpy
from vllm_dspark.scheduling.gate import DraftGate

logger = compat.get_logger(__name__)

DUMP_ENV = "VLLM_DSPARK_DEBUG_DUMP"  # path of a JSONL file: one record per request per draft round (tests)
STEP_TRACE_ENV = "VLLM_DSPARK_STEP_TRACE"  # path of a JSONL file: one record per verification step (cost model)


@dataclass
class PendingConfidences:
    """Calibrated confidences of the last draft round, for the step that verifies those drafts."""

    req_ids: list[str]  # row i <-> request req_ids[i] (the runner's batch order when drafting)
    conf: torch.Tensor  # [R, γ] float32 on the host (pinned on GPU; read after `event`)
    event: object | None  # torch.cuda.Event of the host copy; None on CPU
    dump: list[dict] | None  # debug-dump records of the round, written once the lengths are known
    seeded: frozenset[str] = frozenset()  # seeded requests: verified in full (see verify_lengths)
    skipped: bool = False  # the round did not draft (gate off): verify none of its placeholders
    depth: int | None = None  # slots the round drafted; past them are placeholders, never verified (None: all)


def _seeded_rows(sampling_metadata, num_req: int) -> list[int]:
    """Rows among the first `num_req` whose request carries a seed (its own generator)."""
    return [i for i in (sampling_metadata.generators or {}) if i < num_req]


class DSparkProposer(DFlashProposer):
    def __init__(self, vllm_config, device: torch.device, runner=None):
        super().__init__(vllm_config, device, runner=runner)
        hf = self.draft_model_config.hf_config
        self.is_dspark = spec_config.is_routed_to_us(hf)
        if not self.is_dspark:
            return
        drafter = DSparkConfig.from_dict(spec_config.drafter_dict_from_hf(hf))
        serving = spec_config.read_attached(hf)
        if serving is None:  # config built without our EngineArgs patch (e.g. a hand-made VllmConfig)
            serving = spec_config.resolve(None, drafter, self.num_speculative_tokens, vllm_config.model_config.hf_config)
        self.serving = serving
        self.drafter_config = drafter
        self.sts_temperatures = drafter.sts_temperatures
        self.policy = VerifyLengthPolicy(
            serving.mode, self.num_speculative_tokens, sla_tokens_per_user=serving.sla_tokens_per_user,
            online_refit=serving.online_refit,
            gate=DraftGate(probe_every=serving.gate_probe_every, max_backoff=serving.gate_max_backoff,
                           min_gain=serving.gate_min_gain)
            if serving.draft_gate else None,
        )
        self._runner = runner
        self._warm_done = False
        self._warned_no_table = False
        gamma = self._max_gamma = self.num_speculative_tokens  # vLLM lowers num_speculative_tokens per step
        self._all_slots = torch.arange(self.max_batch_size * gamma, dtype=torch.int32, device=device)
        self._rng = torch.Generator(device="cpu")
        self._rng.manual_seed(int(vllm_config.model_config.seed or 0))
        self._anchor_ids: torch.Tensor | None = None  # [R] this round's anchors
        self._anchor_pos: torch.Tensor | None = None  # [R] their positions
        self._conf_logits: torch.Tensor | None = None  # [R, γ] raw confidence logits of the last draft
        self._request_temps: torch.Tensor | None = None  # [R] request temperatures of the last draft (dump)
        self._seeded_rows: list[int] = []  # rows of the last draft whose request carries a seed
        self._depth = self._max_gamma  # slots the last round's sequential head drafted (the rest: placeholders)
        self._pending: PendingConfidences | None = None  # confidences of the drafts the next step verifies
        self._conf_host: torch.Tensor | None = None  # pinned host buffer for them (GPU)
        self._conf_event = None
        self._last_step_t: float | None = None
        self._last_round: tuple[int, bool, float] | None = None  # (requests, drafted, draft seconds; -1: timer's)
        self._last_log_t = time.monotonic()
        self._dump_path = os.environ.get(DUMP_ENV) or None
        self._trace_path = os.environ.get(STEP_TRACE_ENV) or None
        self._trace_held: tuple[dict, _GateObservation | None] | None = None  # the last step's record (see below)
        self._phases: dict[str, float] = {}  # seconds per part of the last draft round (step trace)
        self._round_phases: dict[str, float] = {}
        self._round: DraftRound | None = None
        self._counters = self._shared_counters(vllm_config)
        self.policy.on_decision = lambda _stats: self._publish_counters()
        self._timer = _RoundTimer(device)
        self._gate_obs: _GateObservation | None = None  # the last step, for the draft gate
        self._decided: bool | None = None  # round_without_inputs began this round and it drafts
        mib = serving.context_kv_backlog_mib
        self._backlog = ContextBacklog(mib << 20) if mib else None  # context rows of rounds that drafted nothing
        self._context_slots = ContextSlots()
        self._no_draft_rounds = compat.gate_off_returns_no_drafts(vllm_config)  # fixed for the engine's life
        name, why = block_backend(device)
        logger.info("vllm-dspark: sequential-head kernel backend %r: %s", name, why)

    # ------------------------------------------------------------------ engine start
    def load_model(self, target_model) -> None:
        super().load_model(target_model)
        if self.is_dspark:
            self._check_target_features()

    def _check_target_features(self) -> None:
        """Before any request: the target must hand the drafter the features of exactly its target layers.

        The runner reads the layers to capture from the draft HF config right after this load (pinned there by
        patch_engine_args; pinned again here for configs built without it), and the drafter's fc must take one
        target hidden state per layer; a mismatch would otherwise surface as a shape error on the first request.
        """
        cfg = self.drafter_config
        hf = self.draft_model_config.hf_config
        want = spec_config.vllm_aux_layer_ids(cfg)
        given = getattr(hf, "eagle_aux_hidden_state_layer_ids", None)
        if given is None:
            spec_config.pin_drafter_keys(hf, cfg)
        elif list(given) != want:
            raise DrafterMismatchError(
                f"drafter target_layer_ids {cfg.target_layer_ids} need vLLM aux layers {want}, but the draft config "
                f"sets eagle_aux_hidden_state_layer_ids = {list(given)}")
        model = self.model.unwrap() if hasattr(self.model, "unwrap") else self.model
        fc = getattr(getattr(model, "model", None), "fc", None)
        width = getattr(fc, "input_size", None)
        if width is None:  # the check below must never be skipped
            raise RuntimeError(f"vllm-dspark: cannot read the drafter's feature width at `{type(model).__name__}"
                               f".model.fc.input_size` (fc is {type(fc).__name__}); this vLLM builds the DFlash "
                               "model differently")
        target_hidden = self.vllm_config.model_config.get_hidden_size()
        if width != target_hidden * len(want):
            raise DrafterMismatchError(
                f"drafter fc takes {width} features, but {len(want)} target layers {cfg.target_layer_ids} of hidden "
                f"size {target_hidden} give {target_hidden * len(want)}")

    @contextlib.contextmanager
    def target_only_dummy_runs(self):
        """Within: the runner's dummy steps leave the drafter out (profiling the target's verification cost)."""
        self._target_only = True
        try:
            yield
        finally:
            self._target_only = False

    def dummy_run(self, num_tokens, *args, **kwargs):
        if getattr(self, "_target_only", False):
            return None
        return super().dummy_run(num_tokens, *args, **kwargs)

    def on_engine_warm(self, runner) -> None:
        """After warm-up (KV cache and graphs exist): load or profile the cost table (patch_worker_warmup)."""
        if not self.is_dspark or self._warm_done:
            return
        self._warm_done = True
        from vllm_dspark.adapter import profile
        from vllm_dspark.scheduling.cost import CostTable

        s = self.serving
        table = None
        if s.cost_table is not None:
            table = CostTable.load(s.cost_table)
            logger.info("vllm-dspark: cost table loaded from %s: %r", s.cost_table, table)
        elif s.needs_cost_table and s.profile:
            table = profile.profile_runner(runner, self.num_speculative_tokens, s.profile_batch_tokens, s.profile_repeats,
                                           s.profile_time_budget_s, s.profile_context_len)
            logger.info("vllm-dspark: cost table profiled at start: %r", table)
            if table is not None and table.meta.get("extrapolated_batch_tokens"):
                logger.warning("vllm-dspark: profiling stopped at its %.0f s budget ('%s.profile_time_budget_s'); "
                               "step times at B = %s are extrapolated until real steps refit them",
                               s.profile_time_budget_s, spec_config.KEY, table.meta["extrapolated_batch_tokens"])
        if table is None and s.mode != "static":
            raise spec_config.DSparkConfigError(
                f"vllm-dspark mode {s.mode!r} needs a cost table, but '{spec_config.KEY}.cost_table' is not set and "
                f"profiling at start ('{spec_config.KEY}.profile') produced none; pass a table from "
                "`vllm-dspark profile` or use mode 'static'")
        if table is not None and s.save_cost_table:
            table.save(s.save_cost_table)
            logger.info("vllm-dspark: cost table written to %s", s.save_cost_table)
        self.policy.table = table
        self._capture_draft_round()
        self._publish_counters()

    # ------------------------------------------------------------------ counters for /metrics
    @staticmethod
    def _shared_counters(vllm_config) -> SharedCounters | None:
        """The writer of this engine's counters file (shared_counters.py), on TP rank 0 only (ranks agree)."""
        if not compat.is_first_tp_rank():
            return None
        engine = int(getattr(vllm_config.parallel_config, "data_parallel_rank", 0) or 0)
        return SharedCounters.create(path_for(getattr(vllm_config, "instance_id", ""), engine))

    def _publish_counters(self) -> None:
        if self._counters is None:
            return
        stats, rnd = self.policy.stats, self._round
        self._counters.set(
            length_decisions=stats.steps, sla_fallbacks=stats.sla_fallbacks,
            draft_off_steps=0 if self.policy.gate is None else self.policy.gate.stats.off_steps,
            draft_probe_steps=0 if self.policy.gate is None else self.policy.gate.stats.probe_steps,
            draft_cuda_graphs=int(rnd is not None and rnd.replays_graphs),
            draft_eager_fallbacks=0 if rnd is None else rnd.eager_fallbacks)

    def _capture_draft_round(self) -> None:
        """CUDA graphs of the draft round after the backbone (GPU; see DraftRound). A failure leaves it eager."""
        if self.device.type != "cuda":
            return
        limit = self.serving.cuda_graph_max_batch
        sizes = compat.draft_graph_batch_sizes(self.vllm_config, limit)
        probs_sizes = [s for s in sizes if s <= max(1, limit // 4)] if self._enable_probabilistic_draft_probs else []
        if not sizes:
            return
        dtype = self.vllm_config.model_config.dtype
        t0 = time.perf_counter()
        try:
            captured = self._draft_round().capture(self.num_speculative_tokens, sizes, probs_sizes,
                                                   self.drafter_config.hidden_size, dtype, self.device)
        except Exception as e:  # noqa: BLE001 - eager drafting is always correct; a capture failure must not stop serving
            logger.warning("vllm-dspark: CUDA-graph capture of the draft round failed (%s: %s); drafting eagerly",
                           type(e).__name__, e)
            return
        logger.info("vllm-dspark: draft round captured in CUDA graphs for %s requests (%.1f s)", captured,
                    time.perf_counter() - t0)

    # ------------------------------------------------------------------ inputs
    def set_inputs_first_pass(self, target_token_ids, next_token_ids, target_positions, target_hidden_states,
                              token_indices_to_sample, cad, num_rejected_tokens_gpu):
        with self._phase("inputs"):
            return self._set_inputs_first_pass(target_token_ids, next_token_ids, target_positions,
                                               target_hidden_states, token_indices_to_sample, cad,
                                               num_rejected_tokens_gpu)

    def build_model_inputs_first_pass(self, num_tokens, num_input_tokens, mm_embed_inputs):
        with self._phase("context_kv"):  # DFlash writes the context K/V here; the backlog's rows go first
            self._write_backlog()
            return super().build_model_inputs_first_pass(num_tokens, num_input_tokens, mm_embed_inputs)

    @torch.inference_mode()
    def _write_backlog(self) -> None:
        """The context K/V of the rounds since the last drafting round, in one batch (see context_backlog)."""
        taken = None if not self.is_dspark or self._backlog is None else self._backlog.take()
        if taken is not None:
            hidden, positions, slots = taken
            self.model.precompute_and_store_context_kv(self.model.combine_hidden_states(hidden), positions, slots)

    @contextlib.contextmanager
    def _phase(self, name: str):
        """Time a part of the draft round into the step trace (only while tracing: it synchronises a GPU)."""
        if not self.is_dspark or not self._trace_path:
            yield
            return
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            sync()
            self._phases[name] = self._phases.get(name, 0.0) + time.perf_counter() - t0

    def _set_inputs_first_pass(self, target_token_ids, next_token_ids, target_positions, target_hidden_states,
                               token_indices_to_sample, cad, num_rejected_tokens_gpu):
        gamma = self.num_speculative_tokens
        if not self.is_dspark or gamma < 1:  # γ = 0 (dynamic speculation off this step): the parent's layout
            return super().set_inputs_first_pass(target_token_ids, next_token_ids, target_positions,
                                                 target_hidden_states, token_indices_to_sample, cad,
                                                 num_rejected_tokens_gpu)
        self._anchor_ids = next_token_ids
        # The parent lays out [next_token, mask × n] with n = its num_speculative_tokens: γ−1 gives DSpark's block.
        self.num_speculative_tokens = gamma - 1
        try:
            num_query, _, new_cad = super().set_inputs_first_pass(
                target_token_ids, next_token_ids, target_positions, target_hidden_states, token_indices_to_sample,
                cad, num_rejected_tokens_gpu)
        finally:
            self.num_speculative_tokens = gamma
        self._anchor_pos = self.positions[:num_query:gamma]  # [R] anchor slot positions
        return num_query, self._all_slots[:num_query], new_cad

    # ------------------------------------------------------------------ sequential stage
    def _draft_round(self) -> DraftRound:
        if self._round is None:
            model = self.model.unwrap() if hasattr(self.model, "unwrap") else self.model
            stage = SequentialStage(model.markov_head, model.confidence_head, self.drafter_config.vocab_size)
            self._round = DraftRound(stage, self._compute_logits)
        return self._round

    def _compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        with self._phase("lm_head"):
            return self.model.compute_logits(hidden)

    def _draft_temperatures(self, sampling_metadata, num_req: int, probabilistic: bool) -> torch.Tensor:
        if not probabilistic:
            return torch.zeros(num_req, dtype=torch.float32, device=self.device)  # greedy drafts
        return sampling_metadata.temperature[:num_req].float()  # greedy requests carry T = 0 (< GREEDY_EPS)

    def _draft_seeds(self, sampling_metadata, num_req: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Philox keys [R] (`draft_keys`: from the request's seed when it has one, never the seed itself) and
        counter bases [R].

        Offsets = anchor position × the configured γ (the largest a round may use, also under vLLM's dynamic
        speculative decoding): each round of a request draws fresh noise, and a seeded request draws the same
        noise whatever else is in the batch.
        """
        seeds = draft_keys(sampling_metadata.generators, num_req, self._rng)
        offsets = self._anchor_pos[:num_req].long() * self._max_gamma
        return seeds.to(self.device, non_blocking=True), offsets

    def _sample_draft_tokens(self, hidden_states, sampling_metadata):
        if not self.is_dspark:
            return super()._sample_draft_tokens(hidden_states, sampling_metadata)
        gamma = self.num_speculative_tokens
        num_req = hidden_states.shape[0] // gamma
        temps = sampling_metadata.temperature
        self._request_temps = None if temps is None else temps[:num_req]
        probabilistic = self._enable_probabilistic_draft_probs and not sampling_metadata.all_greedy
        seeds, offsets = self._draft_seeds(sampling_metadata, num_req)
        self._seeded_rows = _seeded_rows(sampling_metadata, num_req)
        depth = self._depth = self._draft_depth(num_req, gamma, probabilistic)
        block = hidden_states.view(num_req, gamma, -1)[:, :depth]  # the backbone ran all `gamma` slots
        with self._phase("round"):
            out = self._draft_round()(
                block.reshape(num_req * depth, -1),  # the round computes the base logits
                self._anchor_ids[:num_req],
                self._draft_temperatures(sampling_metadata, num_req, probabilistic),
                seeds,
                offsets,  # slot k draws counter offset + k: the first `depth` slots draw as in a full round
                want_probs=probabilistic,
                gamma=depth,
            )
        out = pad_block(out, gamma)
        self._conf_logits = out.conf_logits  # [R, γ] or None
        self._publish_counters()
        probs = out.probs.reshape(num_req * gamma, -1) if probabilistic else None  # [R·γ, V]
        return out.tokens.reshape(-1), probs

    def _draft_depth(self, num_req: int, gamma: int, probabilistic: bool) -> int:
        """Slots the sequential head walks this round: all γ in mode static, for seeded requests (verified in full)
        and where the round replays a CUDA graph (captured at γ, cheaper than an eager shorter round); else one
        past the longest verification length the policy chose lately at this load (VerifyLengthPolicy)."""
        if (self.serving.mode == "static" or self._seeded_rows
                or self._draft_round().replays(num_req, gamma, probabilistic)):
            return gamma
        return min(gamma, self.policy.draft_depth(num_req))

    # ------------------------------------------------------------------ one round
    def _begin_round(self, cad, num_rejected_tokens_gpu) -> None:
        self._observe_step(cad, num_rejected_tokens_gpu)
        self._conf_logits = self._request_temps = None
        self._pending = None  # confidences of older drafts must never trim these
        self._phases = {}

    def round_without_inputs(self, *, runner, scheduler_output, sampling_metadata, aux_hidden_states,
                             spec_decode_metadata, common_attn_metadata) -> torch.Tensor | None:
        """This round's drafts if it drafts none, decided before vLLM prepares the drafter's inputs
        (patches/patch_round_without_inputs): [R, 0]. None: vLLM prepares them and calls `propose`, which then
        takes the decision made here instead of deciding again.

        vLLM's preparation (each request's next token, its rejected rows, a new attention metadata: ~0.3 ms a
        step at one request on a 2-core CPU) serves drafting rounds only; a round without drafts keeps the
        step's context rows in the backlog, read here from the runner as vLLM would hand them over. Taken where
        they are the same rows: on an engine that schedules from the drafts returned (`_no_draft_rounds`), with
        the backlog on, after a step that verified no drafts (each scheduled row is a context row, none was
        rejected), and on a target whose layers hand the drafter its features."""
        self._decided = None
        if not (self.is_dspark and self._no_draft_rounds and self._backlog is not None
                and spec_decode_metadata is not None and spec_decode_metadata.max_spec_len == 0
                and aux_hidden_states is not None and getattr(runner, "use_aux_hidden_state_outputs", False)):
            return None
        cad = common_attn_metadata
        self._begin_round(cad, None)  # no draft was verified: none rejected
        num_req = cad.batch_size()
        if scheduler_output.num_spec_tokens_to_schedule != 0 and compat.tp_agree(
                self._gate_says_draft(num_req, sampling_metadata)):
            self._decided = True
            return None
        n = cad.num_actual_tokens
        return self._skip_round(0, target_positions=runner._get_positions(n),
                                target_hidden_states=torch.cat([h[:n] for h in aux_hidden_states], dim=-1),
                                common_attn_metadata=cad)

    def propose(self, num_speculative_tokens, **kwargs):
        if not self.is_dspark:
            return super().propose(num_speculative_tokens, **kwargs)
        cad = kwargs["common_attn_metadata"]
        decided, self._decided = self._decided, None  # True: round_without_inputs began this round, to draft
        if not decided:
            self._begin_round(cad, kwargs.get("num_rejected_tokens_gpu"))
        num_req = cad.batch_size()
        if num_speculative_tokens == 0:  # vLLM's dynamic speculative decoding turned drafting off this step
            return self._skip_round(0, **kwargs)  # [R, 0]
        if not (decided or compat.tp_agree(self._gate_says_draft(num_req, kwargs["sampling_metadata"]))):
            if self._no_draft_rounds:
                # the next step is scheduled from these drafts: none, so it is scheduled, run and sampled as
                # without speculation (placeholders cost the scheduler and the runner γ slots per request to cut)
                drafts = self._skip_round(0, **kwargs)
            else:
                # an async scheduler has already laid out γ slots per request for the next step: placeholders,
                # which the runner patch cuts to none before the target runs
                drafts = self._skip_round(num_speculative_tokens, **kwargs)
                self._pending = PendingConfidences(list(self._runner.input_batch.req_ids[:num_req]), drafts, None,
                                                   None, skipped=True)
            return drafts
        self._timer.start()
        width = self._block_width(num_req, num_speculative_tokens, kwargs["sampling_metadata"])
        drafts = super().propose(width, **kwargs)  # [R, width]
        self._timer.stop()
        self._round_phases = self._phases
        self._last_round = (num_req, True, -1.0)
        records = self._dump_records(drafts) if self._dump_path else None
        if self.serving.mode == "static" or self._conf_logits is None:
            if records:
                self._write_dump(records, {})
            return drafts
        self._pending = self._stash_confidences(drafts.shape[0], records)
        return drafts

    def _block_width(self, num_req: int, gamma: int, sampling_metadata) -> int:
        """Block slots the backbone runs this round: the draft depth (one past the longest length the policy chose
        lately at this load) where a round may return fewer than γ drafts per request (a synchronous engine
        schedules the next step from the drafts returned: `compat.gate_off_returns_no_drafts`), else γ. The
        backbone is most of a round (60% at 16 requests on a CPU) and its block attention is bidirectional, so a
        shorter block gives other drafts, not a prefix of the full block's: measured on pycode-23m's drafter
        (block 7), a 4-slot block accepts as often at each of its 4 positions (0.545 / 0.289 / 0.187 / 0.112 vs
        0.530 / 0.277 / 0.176 / 0.098, 60 held-out prompts, T = 0). Full blocks in mode static and for seeded
        requests (verified in full, and their drafts must not depend on the load)."""
        if not self._no_draft_rounds or self.serving.mode == "static":
            return gamma
        if _seeded_rows(sampling_metadata, num_req):
            return gamma
        return max(2, min(gamma, self.policy.draft_depth(num_req)))  # keep one mask slot: the layout DSpark trains

    def _gate_says_draft(self, num_req: int, sampling_metadata) -> bool:
        """The draft gate's decision for this round. Seeded requests always get drafts (verify_lengths verifies
        theirs in full, so their output must not depend on the load), and so does a batch without a table."""
        gate = self.policy.gate
        if gate is None or self.policy.table is None or num_req < 1:
            return True
        if _seeded_rows(sampling_metadata, num_req):
            return True
        draft = gate.should_draft(num_req)
        self._publish_counters()
        return draft

    def _skip_round(self, num_speculative_tokens, *, target_positions, target_hidden_states, common_attn_metadata,
                    target_token_ids=None, next_token_ids=None, token_indices_to_sample=None,
                    num_rejected_tokens_gpu=None, **_unused) -> torch.Tensor:
        """A round that drafts nothing: keep the new context K/V, return placeholders [R, γ] (verified: none).

        Only the context K/V must be kept: a position's K/V comes from the target's hidden state there, written in
        the round after the target processed it; the draft block's own K/V (anchor and masks) is overwritten by
        those before any later round reads it. So skipping the block's forward, LM head and heads loses nothing.
        With the backlog on, the rows wait there and the next drafting round writes them (context_backlog).
        """
        self.num_speculative_tokens = num_speculative_tokens
        self._last_draft_probs = None
        cad = common_attn_metadata
        if self._backlog is not None:
            n = cad.num_actual_tokens  # the context rows (the runner's buffers may be longer)
            with self._phase("inputs"):
                positions = target_positions[:n]
                slots = self._context_slots(positions, cad.query_start_loc, cad.block_table_tensor, self.block_size,
                                            cad.batch_size(), getattr(cad, "slot_mapping", None))
            with self._phase("context_kv"):
                if self._backlog.add(target_hidden_states[:n], positions, slots):
                    self._write_backlog()
        else:
            hidden = self.model.combine_hidden_states(target_hidden_states)
            num_query, _, _ = self.set_inputs_first_pass(target_token_ids, next_token_ids, target_positions, hidden,
                                                         token_indices_to_sample, cad, num_rejected_tokens_gpu)
            self.build_model_inputs_first_pass(num_query, num_query, None)  # writes the context K/V, runs nothing
        num_req = cad.batch_size()
        self._round_phases = self._phases
        self._last_round = (num_req, False, 0.0)  # the next step observes a round without drafts
        if num_speculative_tokens == 0:
            return torch.empty((num_req, 0), dtype=torch.int64, device=self.device)
        # next_token_ids, not _anchor_ids: at γ = 0 the parent's layout runs and _anchor_ids is last round's.
        return next_token_ids[:num_req, None].to(torch.int64).expand(num_req, num_speculative_tokens).contiguous()

    def _stash_confidences(self, num_req: int, records: list[dict] | None) -> PendingConfidences:
        """Calibrated confidences [R, γ] to the host without blocking (pinned buffer + event on GPU)."""
        conf = calibrated_confidence(self._conf_logits[:num_req].float(), self.sts_temperatures)
        req_ids = list(self._runner.input_batch.req_ids[:num_req])
        seeded = frozenset(req_ids[i] for i in self._seeded_rows)
        if self.device.type != "cuda":
            return PendingConfidences(req_ids, conf, None, records, seeded, depth=self._depth)
        if self._conf_host is None:
            self._conf_host = torch.empty(self.max_batch_size * self._max_gamma, dtype=torch.float32,
                                          pin_memory=True)
            self._conf_event = torch.cuda.Event()
        host = self._conf_host[: conf.numel()].view(conf.shape)
        host.copy_(conf, non_blocking=True)
        self._conf_event.record()
        return PendingConfidences(req_ids, host, self._conf_event, records, seeded, depth=self._depth)

    def verify_lengths(self, scheduled_spec_tokens: dict[str, list[int]]) -> dict[str, int]:
        """This step's verification length per request whose scheduled drafts come from the last round.

        Called by the runner patch before the target runs (modes confidence / sla). `scheduled_spec_tokens`:
        the scheduler's drafts per request (their count bounds the length). Requests drafted in an older round
        (or without confidences) are left out: all their scheduled drafts are verified. So are seeded requests:
        vLLM's rejection sampler draws a seeded request's noise from its own generator, one draw per verified
        draft, so a load-dependent length would make its output depend on the rest of the batch; verified in
        full, it repeats whatever else runs (as in mode static). The policy decides the others' lengths without
        counting the seeded requests' tokens.
        """
        pending, self._pending = self._pending, None
        if pending is None:
            return {}
        row_of = {req_id: i for i, req_id in enumerate(pending.req_ids)}
        if pending.skipped:
            return {r: 0 for r, toks in scheduled_spec_tokens.items() if toks and r in row_of}
        if pending.event is not None:
            pending.event.synchronize()
        req_ids = [r for r, toks in scheduled_spec_tokens.items() if toks and r in row_of and r not in pending.seeded]
        lengths: dict[str, int] = {}
        if req_ids and self.policy.table is None:
            if not self._warned_no_table:
                logger.warning("vllm-dspark: no cost table (warm-up hook did not run); verifying all drafts")
                self._warned_no_table = True
        elif req_ids:
            conf = pending.conf[[row_of[r] for r in req_ids]].numpy()
            max_len = np.array([len(scheduled_spec_tokens[r]) for r in req_ids], dtype=np.int64)
            if pending.depth is not None:
                max_len = np.minimum(max_len, pending.depth)
            lengths = dict(zip(req_ids, self.policy.lengths(conf, max_len).tolist()))
            self._maybe_log_stats()
        if req_ids:
            lengths = compat.tp_agree(lengths)  # timing-based: rank 0's lengths on every rank
        if pending.dump:
            self._write_dump(pending.dump, lengths, self.policy.stats.last_mode if lengths else None)
        return lengths

    def _maybe_log_stats(self, every_s: float = 60.0) -> None:
        now = time.monotonic()
        if now - self._last_log_t < every_s:
            return
        self._last_log_t = now
        st = self.policy.stats
        logger.info(
            "vllm-dspark: %d steps, %.2f verified drafts per request-step (mode %s, last %s), SLA fallbacks %d, "
            "step-time observations kept %d / dropped %d",
            st.steps, st.verified_tokens / max(1, st.requests), self.serving.mode, st.last_mode, st.sla_fallbacks,
            st.observations, st.rejected_observations)

    def _observe_step(self, cad, num_rejected_tokens_gpu) -> None:
        """Step period = time between successive proposals. It covers the last draft round and this step's
        verification: the round's own time is the draft cost at its load, the rest is attributed to this step's
        target token count (cost table), and the tokens generated over the whole period feed the draft gate."""
        now = time.perf_counter()
        last, self._last_step_t = self._last_step_t, now
        last_round, self._last_round = self._last_round, None
        self._flush_trace()
        self._flush_gate_observation()
        if last is None or last_round is None:
            return
        num_req, drafted, draft_s = last_round
        if draft_s < 0:
            draft_s = self._timer.seconds()
            self.policy.observe_draft(num_req, draft_s)
        period = now - last
        verify_s = max(period - draft_s, 1e-9)
        prefill = cad.max_query_len > self._max_gamma + 1  # a prefill chunk: not a verification step
        if not prefill:
            self.policy.observe_step(int(cad.num_actual_tokens), verify_s)
            if self.policy.gate is not None or self._trace_path:
                self._gate_obs = _GateObservation(cad.batch_size(), drafted, int(cad.num_actual_tokens), period,
                                                  num_rejected_tokens_gpu)
        if self._trace_path:
            self._trace_step(cad, num_req, drafted, draft_s, period, verify_s, prefill)

    def _trace_step(self, cad, num_req: int, drafted: bool, draft_s: float, period: float, verify_s: float,
                    prefill: bool) -> None:
        """One line per engine step: what the cost model predicted for it before seeing it, and what it took
        (benchmarks/serving/cost_fit.py reads these). Steps with a prefill chunk are traced too (`prefill`: the
        table neither predicts nor learns them), so a trace accounts for a run's whole time. A record is written
        when the next step starts, with the tokens its step generated (`generated_tokens`, decoding steps only):
        the last step before the server stops is not written."""
        table, b = self.policy.table, int(cad.num_actual_tokens)
        record = {"requests": cad.batch_size(), "drafted_requests": num_req, "drafted": drafted, "prefill": prefill,
                  "batch_tokens": b, "period_s": period, "draft_s": draft_s, "verify_s": verify_s,
                  "predicted_verify_s": None if table is None else float(table.step_time(b)),
                  "prior_verify_s": None if table is None else float(
                      step_seconds_numpy(b, table.batch_tokens, table.prior_seconds)),
                  "predicted_draft_s": self.policy.draft_seconds(num_req) if drafted else 0.0,
                  "draft_depth": self._depth if drafted else 0,
                  "gate_rates": None if self.policy.gate is None else self.policy.gate.rates(cad.batch_size()),
                  "gate_gain": None if self.policy.gate is None else self.policy.gate.gain(cad.batch_size()),
                  "draft_phases_s": self._round_phases}
        self._trace_held = (record, self._gate_obs)  # written at the next step, with the tokens it generated

    def _flush_trace(self) -> None:
        """Write the last step's trace record, with the tokens it generated (decoding steps; its rejected count is
        read one step late, as the gate reads it)."""
        held, self._trace_held = self._trace_held, None
        if held is None:
            return
        record, obs = held
        record["generated_tokens"] = None if obs is None else obs.num_tokens - obs.rejected()
        with open(self._trace_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _flush_gate_observation(self) -> None:
        """Feed the gate the step before this one (its rejected count is read one step late: no host sync)."""
        obs, self._gate_obs = self._gate_obs, None
        if obs is not None and self.policy.gate is not None:
            self.policy.gate.observe(obs.num_req, obs.drafted, obs.num_tokens - obs.rejected(), obs.seconds)

    def _dump_records(self, drafts: torch.Tensor) -> list[dict]:
        """One record per request of the round: its drafted slots (the first `depth` of the block of `block`)."""
        runner = self._runner
        depth = self._depth
        req_ids = list(runner.input_batch.req_ids)[: drafts.shape[0]]
        conf = None if self._conf_logits is None else self._conf_logits.float().cpu().tolist()
        anchors = self._anchor_ids[: drafts.shape[0]].tolist()
        temps = [0.0] * len(anchors) if self._request_temps is None else self._request_temps.float().tolist()
        positions = self._anchor_pos[: drafts.shape[0]].tolist()
        table = self.policy.table
        table_ms = None if table is None else [round(t * 1e3, 4) for t in table.step_seconds.tolist()]
        records = []
        for i, req_id in enumerate(req_ids):
            state = runner.requests.get(req_id)
            records.append({
                "req_id": req_id,
                "prompt_token_ids": list(state.prompt_token_ids) if state is not None else None,
                "anchor_pos": int(positions[i]),
                "anchor": int(anchors[i]),
                "block": int(drafts.shape[1]),
                "drafts": drafts[i, :depth].tolist(),
                "conf_logits": None if conf is None else conf[i][:depth],
                "mode": self.serving.mode,
                "temperature": float(temps[i]),
                "table_ms": table_ms if i == 0 else None,
            })
        return records

    def _write_dump(self, records: list[dict], lengths: dict[str, int], decided_mode: str | None = None) -> None:
        """`length`: drafts the target verified in the next step (None: not trimmed by the policy);
        `decided_mode`: the rule the policy used for the round's lengths (None: no decision)."""
        with open(self._dump_path, "a", encoding="utf-8") as f:
            for rec in records:
                rec = {**rec, "length": lengths.get(rec["req_id"]), "decided_mode": decided_mode}
                f.write(json.dumps(rec) + "\n")


class _GateObservation:
    """One verification step for the draft gate; its rejected-token count is copied to the host without blocking
    and read when the next step starts (by then the step has long finished)."""

    def __init__(self, num_req: int, drafted: bool, num_tokens: int, seconds: float, num_rejected):
        self.num_req, self.drafted, self.num_tokens, self.seconds = num_req, drafted, num_tokens, seconds
        # a step that verified no drafts rejected none: no device op for it (most steps while drafting is off)
        self._rejected = None if num_rejected is None or not drafted \
            else num_rejected.sum().to("cpu", non_blocking=True)

    def rejected(self) -> int:
        return 0 if self._rejected is None else int(self._rejected)


class _RoundTimer:
    """Wall time of the last draft round: host clock on CPU, CUDA events on a GPU (read one step later, when the
    round has long finished, so timing never stalls the host while the round runs)."""

    def __init__(self, device: torch.device):
        self._cuda = device.type == "cuda"
        self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) \
            if self._cuda else None
        self._t0 = self._t1 = 0.0

    def start(self) -> None:
        if self._cuda:
            self._events[0].record()
        else:
            self._t0 = time.perf_counter()

    def stop(self) -> None:
        if self._cuda:
            self._events[1].record()
        else:
            self._t1 = time.perf_counter()

    def seconds(self) -> float:
        if self._cuda:
            self._events[1].synchronize()
            return self._events[0].elapsed_time(self._events[1]) / 1e3
        return self._t1 - self._t0
