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
The symbol `DFlashProposer` of vLLM's V1 runner module is replaced by this class (patches/patch_dflash_proposer),
so a non-DSpark DFlash drafter must behave exactly like the parent: every override checks `self.is_dspark`.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from vllm.v1.spec_decode.dflash import DFlashProposer

from vllm_dspark.adapter import compat, spec_config
from vllm_dspark.adapter.policy import VerifyLengthPolicy
from vllm_dspark.adapter.sequential import DraftRound, SequentialStage, draft_keys
from vllm_dspark.adapter.shared_counters import SharedCounters, path_for
from vllm_dspark.config import DrafterMismatchError, DSparkConfig
from vllm_dspark.kernels.markov_step import block_backend
from vllm_dspark.model.heads import calibrated_confidence

logger = compat.get_logger(__name__)

DUMP_ENV = "VLLM_DSPARK_DEBUG_DUMP"  # path of a JSONL file: one record per request per draft round (tests)


@dataclass
class PendingConfidences:
    """Calibrated confidences of the last draft round, for the step that verifies those drafts."""

    req_ids: list[str]  # row i <-> request req_ids[i] (the runner's batch order when drafting)
    conf: torch.Tensor  # [R, γ] float32 on the host (pinned on GPU; read after `event`)
    event: object | None  # torch.cuda.Event of the host copy; None on CPU
    dump: list[dict] | None  # debug-dump records of the round, written once the lengths are known
    seeded: frozenset[str] = frozenset()  # seeded requests: verified in full (see verify_lengths)


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
        self._pending: PendingConfidences | None = None  # confidences of the drafts the next step verifies
        self._conf_host: torch.Tensor | None = None  # pinned host buffer for them (GPU)
        self._conf_event = None
        self._last_step_t: float | None = None
        self._last_log_t = time.monotonic()
        self._dump_path = os.environ.get(DUMP_ENV) or None
        self._round: DraftRound | None = None
        self._counters = self._shared_counters(vllm_config)
        self.policy.on_decision = lambda _stats: self._publish_counters()
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
            spec_config.pin_target_layers(hf, cfg)
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
                                           s.profile_time_budget_s)
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
            self._round = DraftRound(stage, self.model.compute_logits)
        return self._round

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
        self._seeded_rows = [i for i in (sampling_metadata.generators or {}) if i < num_req]
        out = self._draft_round()(
            hidden_states,  # [R·γ, H]; the round computes the base logits
            self._anchor_ids[:num_req],
            self._draft_temperatures(sampling_metadata, num_req, probabilistic),
            seeds,
            offsets,
            want_probs=probabilistic,
            gamma=gamma,
        )
        self._conf_logits = out.conf_logits  # [R, γ] or None
        self._publish_counters()
        probs = out.probs.reshape(num_req * gamma, -1) if probabilistic else None  # [R·γ, V]
        return out.tokens.reshape(-1), probs

    # ------------------------------------------------------------------ one round
    def propose(self, num_speculative_tokens, *args, **kwargs):
        if not self.is_dspark:
            return super().propose(num_speculative_tokens, *args, **kwargs)
        self._observe_step(kwargs.get("common_attn_metadata"))
        self._conf_logits = self._request_temps = None
        self._pending = None  # confidences of older drafts must never trim these
        drafts = super().propose(num_speculative_tokens, *args, **kwargs)  # [R, γ]
        if drafts.shape[1] == 0:
            return drafts
        records = self._dump_records(drafts) if self._dump_path else None
        if self.serving.mode == "static" or self._conf_logits is None:
            if records:
                self._write_dump(records, {})
            return drafts
        self._pending = self._stash_confidences(drafts.shape[0], records)
        return drafts

    def _stash_confidences(self, num_req: int, records: list[dict] | None) -> PendingConfidences:
        """Calibrated confidences [R, γ] to the host without blocking (pinned buffer + event on GPU)."""
        conf = calibrated_confidence(self._conf_logits[:num_req].float(), self.sts_temperatures)
        req_ids = list(self._runner.input_batch.req_ids[:num_req])
        seeded = frozenset(req_ids[i] for i in self._seeded_rows)
        if self.device.type != "cuda":
            return PendingConfidences(req_ids, conf, None, records, seeded)
        if self._conf_host is None:
            self._conf_host = torch.empty(self.max_batch_size * self._max_gamma, dtype=torch.float32,
                                          pin_memory=True)
            self._conf_event = torch.cuda.Event()
        host = self._conf_host[: conf.numel()].view(conf.shape)
        host.copy_(conf, non_blocking=True)
        self._conf_event.record()
        return PendingConfidences(req_ids, host, self._conf_event, records, seeded)

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
        if pending.event is not None:
            pending.event.synchronize()
        row_of = {req_id: i for i, req_id in enumerate(pending.req_ids)}
        req_ids = [r for r, toks in scheduled_spec_tokens.items() if toks and r in row_of and r not in pending.seeded]
        lengths: dict[str, int] = {}
        if req_ids and self.policy.table is None:
            if not self._warned_no_table:
                logger.warning("vllm-dspark: no cost table (warm-up hook did not run); verifying all drafts")
                self._warned_no_table = True
        elif req_ids:
            conf = pending.conf[[row_of[r] for r in req_ids]].numpy()
            max_len = np.array([len(scheduled_spec_tokens[r]) for r in req_ids], dtype=np.int64)
            lengths = dict(zip(req_ids, self.policy.lengths(conf, max_len).tolist()))
            self._maybe_log_stats()
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

    def _observe_step(self, cad) -> None:
        """Step period = time between successive proposals; attribute it to this step's target token count."""
        now = time.perf_counter()
        last, self._last_step_t = self._last_step_t, now
        if last is None or cad is None:
            return
        if cad.max_query_len > self.num_speculative_tokens + 1:  # a prefill chunk: not a verification step
            return
        self.policy.observe_step(int(cad.num_actual_tokens), now - last)

    def _dump_records(self, drafts: torch.Tensor) -> list[dict]:
        runner = self._runner
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
                "drafts": drafts[i].tolist(),
                "conf_logits": None if conf is None else conf[i],
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
