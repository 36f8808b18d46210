"""Training loop for DSpark, DFlash and EAGLE-3 drafters with an online target, on one device or with DDP.

One optimizer step (per rank): the records of the step (a deterministic slice of a per-epoch shuffle), anchors
sampled per record, ONE frozen target forward (features + logits at the anchor slots), ONE drafter forward over all
anchor blocks, the loss of `losses.py`. Data parallel: launch with `torchrun --nproc-per-node K` (NCCL on GPUs,
gloo on CPU); each rank takes `batch_size` records of a global batch of K·batch_size, and the loss is divided by the
*global* slot weight (all-reduced) times K, so DDP's gradient average equals one process on the whole batch.
Precision: the drafter's weights stay fp32; with a bf16 target (the default on GPUs) the drafter's forward runs
under bf16 autocast.
Checkpoints (`<out>/checkpoints/step_XXXXXXX/`): trainable weights, optimizer, step, elapsed time, RNG states;
`resume=True` continues from the newest complete one and reproduces an uninterrupted run (anchors and batches are
functions of (seed, step), not of RNG state). A time budget stops the run early; the learning-rate schedule then
follows elapsed time (so such a run is not bit-reproducible, and says so in its summary).
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from vllm_dspark.config import DSparkConfig, check_fits_target, default_target_layer_ids
from vllm_dspark.model import DSparkDrafter
from vllm_dspark.training.data import (
    AnchorRegion,
    Batch,
    DataError,
    LongPolicy,
    global_batch_indices,
    make_batch,
    read_records,
)
from vllm_dspark.training.dflash import DFlashDrafter, save_dflash
from vllm_dspark.training.eagle3 import Eagle3Config, Eagle3Drafter, init_weights, save_eagle3
from vllm_dspark.training.losses import LossConfig, LossSums, slot_losses
from vllm_dspark.training.online_target import run_target
from vllm_dspark.training.parallel import ParallelDraftForward

Algo = Literal["dspark", "dflash", "eagle3"]
SHARED = ("embed_tokens.weight", "lm_head.weight")


@dataclass
class TrainConfig:
    target: str
    data: str
    out: str
    algo: Algo = "dspark"
    # drafter shape
    block_size: int = 7
    num_draft_layers: int = 1
    target_layer_ids: list[int] | None = None
    markov_rank: int = 256
    markov_head_type: str = "vanilla"
    confidence_head: bool = True
    confidence_head_with_markov: bool = True
    mask_token_id: int | None = None
    # data
    max_seq_len: int = 2048
    long: LongPolicy = "error"
    chat: bool = False
    limit: int | None = None
    num_anchors: int = 32
    anchor_region: AnchorRegion = "response"
    # optimisation
    batch_size: int = 8  # records per rank per step
    max_steps: int = 1000
    time_budget_s: float | None = None
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    adam_eps: float = 1e-8
    loss: LossConfig = field(default_factory=LossConfig)
    # runtime
    seed: int = 0
    device: str | None = None
    target_dtype: str = "auto"
    compile: bool = False
    save_every: int = 500
    keep_checkpoints: int = 2
    save_dtype: str = "auto"
    resume: bool = False
    log_every: int = 10
    progress: bool = True
    stop_after_steps: int | None = None  # stop (with a checkpoint) after this many steps of this invocation

    def __post_init__(self):
        if self.algo not in ("dspark", "dflash", "eagle3"):
            raise ValueError(f"algo must be dspark, dflash or eagle3, got {self.algo!r}")
        for name in ("block_size", "num_draft_layers", "num_anchors", "batch_size", "max_steps", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_seq_len < self.block_size + 2:
            raise ValueError(f"max_seq_len={self.max_seq_len} is too short for block_size={self.block_size}")
        if isinstance(self.loss, dict):
            self.loss = LossConfig(**self.loss)


# --------------------------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_sum(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        x = x.clone()
        dist.all_reduce(x)
    return x


# --------------------------------------------------------------------------------------------- building
def build_drafter(cfg: TrainConfig, target: nn.Module, mask_token_id: int) -> nn.Module:
    tconf = target.config
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts them)
    if cfg.algo == "eagle3":
        d_cfg = Eagle3Config.from_target(tconf, block_size=cfg.block_size, target_layer_ids=cfg.target_layer_ids)
        drafter = Eagle3Drafter(d_cfg)
    else:
        dspark = cfg.algo == "dspark"
        d_cfg = DSparkConfig.from_target(
            tconf,
            block_size=cfg.block_size,
            mask_token_id=mask_token_id,
            target_layer_ids=cfg.target_layer_ids or default_target_layer_ids(tconf.num_hidden_layers),
            num_draft_layers=cfg.num_draft_layers,
            markov_rank=cfg.markov_rank if dspark else 0,
            markov_head_type=cfg.markov_head_type,
            enable_confidence_head=cfg.confidence_head and dspark,
            confidence_head_with_markov=cfg.confidence_head_with_markov,
        )
        check_fits_target(d_cfg, tconf)
        drafter = DSparkDrafter(d_cfg) if dspark else DFlashDrafter(d_cfg)
    init_weights(drafter, std=getattr(tconf, "initializer_range", 0.02))
    if getattr(drafter, "markov_head", None) is not None:
        # Start as the parallel drafter (zero bias); W1 small so that W2 gets a gradient signal from step 1.
        nn.init.zeros_(drafter.markov_head.markov_w2.weight)
        nn.init.normal_(drafter.markov_head.markov_w1.weight, std=0.02)
    if getattr(drafter, "confidence_head", None) is not None:
        nn.init.zeros_(drafter.confidence_head.proj.weight)
        nn.init.zeros_(drafter.confidence_head.proj.bias)
    drafter.share_target_embeddings(target)
    return drafter


def trainable_state(drafter: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in drafter.state_dict().items() if k not in SHARED}


def save_final(drafter: nn.Module, cfg: TrainConfig, out: Path, dtype: torch.dtype | None) -> Path:
    if cfg.algo == "eagle3":
        return save_eagle3(drafter, out, dtype=dtype)
    if cfg.algo == "dflash":
        return save_dflash(drafter, out, dtype=dtype)
    from vllm_dspark.checkpoint import save_drafter

    return save_drafter(drafter, out, include_shared=True, dtype=dtype)


def lr_factor(cfg: TrainConfig, step: int, elapsed: float) -> float:
    """Linear warm-up, then cosine from 1 to min_lr_ratio over max_steps (or over the time budget, if sooner)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    if cfg.time_budget_s:
        progress = max(progress, elapsed / cfg.time_budget_s)
    progress = min(1.0, progress)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------------------------- checkpoints
def _rng_state() -> dict[str, Any]:
    """Plain tensors, ints and tuples only, so `torch.load(..., weights_only=True)` reads it back."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(out: Path) -> Path | None:
    done = sorted(p for p in (out / "checkpoints").glob("step_*") if (p / "COMPLETE").is_file())
    return done[-1] if done else None


def save_checkpoint(out: Path, step: int, drafter: nn.Module, opt, elapsed: float, d: Dist, keep: int) -> Path:
    path = out / "checkpoints" / f"step_{step:07d}"
    if d.main:
        path.mkdir(parents=True, exist_ok=True)
    if d.world > 1:
        dist.barrier()
    torch.save(_rng_state(), path / f"rng.rank{d.rank}.pt")
    if d.main:
        torch.save({"model": trainable_state(drafter), "optimizer": opt.state_dict(), "step": step,
                    "elapsed": elapsed, "world": d.world}, path / "training_state.pt")
    if d.world > 1:
        dist.barrier()
    if d.main:
        (path / "COMPLETE").write_text(str(step))
        old = sorted(p for p in (out / "checkpoints").glob("step_*") if (p / "COMPLETE").is_file())
        for p in old[:-keep] if keep > 0 else []:
            shutil.rmtree(p, ignore_errors=True)
    return path


def load_checkpoint(path: Path, drafter: nn.Module, opt, d: Dist) -> tuple[int, float]:
    state = torch.load(path / "training_state.pt", map_location="cpu", weights_only=True)
    if state["world"] != d.world:
        raise ValueError(f"checkpoint {path} was written by {state['world']} processes, resuming with {d.world}")
    missing, unexpected = drafter.load_state_dict(state["model"], strict=False)
    missing = [k for k in missing if k not in SHARED]
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit the drafter: missing {missing}, unexpected {unexpected}")
    opt.load_state_dict(state["optimizer"])
    rng = path / f"rng.rank{d.rank}.pt"
    if rng.is_file():
        _set_rng_state(torch.load(rng, weights_only=True))
    return state["step"], state["elapsed"]


# --------------------------------------------------------------------------------------------- one step
def compute_loss(
    module: nn.Module, target: nn.Module, batch: Batch, layer_ids: list[int], gamma: int, loss_cfg: LossConfig,
    autocast: torch.autocast | None,
) -> LossSums:
    n, a, _ = batch.labels.shape
    t = batch.input_ids.shape[1]
    positions = batch.target_positions.clamp_max(t - 1).view(n, a * gamma)
    tp = run_target(target, batch.input_ids, batch.attention_mask, layer_ids, positions)
    anchor_ids = torch.gather(batch.input_ids, 1, batch.anchors)
    ctx = autocast if autocast is not None else torch.autocast("cpu", enabled=False)
    with ctx:
        if isinstance(module_inner(module), Eagle3Drafter):
            logits, conf = module(tp.features, batch.input_ids, batch.anchors, batch.prev_ids, batch.slot_valid)
        else:
            logits, conf = module(tp.features, anchor_ids, batch.anchors, batch.prev_ids, batch.slot_valid)
    valid = batch.slot_valid
    slots = torch.arange(gamma, device=valid.device).expand_as(valid)[valid]
    target_logits = tp.logits.view(n, a, gamma, -1)[valid]
    return slot_losses(logits, target_logits, batch.labels[valid], slots, gamma, loss_cfg, conf)


def module_inner(module: nn.Module) -> nn.Module:
    m = getattr(module, "module", module)  # DDP
    return getattr(m, "_orig_mod", m)  # torch.compile


def _layer_ids(drafter: nn.Module) -> list[int]:
    return list(drafter.config.target_layer_ids)


# --------------------------------------------------------------------------------------------- the loop
def train(cfg: TrainConfig) -> dict[str, Any]:
    from vllm_dspark.target import load_target, resolve_dtype

    device = torch.device(cfg.device) if cfg.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = init_distributed(device.type)
    if device.type == "cuda" and d.world > 1:
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    random.seed(cfg.seed + d.rank)
    np.random.seed(cfg.seed + d.rank)
    out = Path(cfg.out)
    target_dtype = resolve_dtype(cfg.target_dtype, device)
    target, tokenizer = load_target(cfg.target, dtype=target_dtype, device=device)
    vocab = target.config.vocab_size
    mask_id = cfg.mask_token_id if cfg.mask_token_id is not None else getattr(tokenizer, "mask_token_id", None)
    if cfg.algo != "eagle3" and mask_id is None:
        raise DataError("no mask token: the target's tokenizer defines none; pass --mask-token-id")
    if mask_id is not None and not 0 <= mask_id < vocab:
        raise DataError(f"mask_token_id={mask_id} is outside the target's vocab_size={vocab}")
    records, data_stats = read_records(cfg.data, vocab_size=vocab, tokenizer=tokenizer, chat=cfg.chat,
                                       max_seq_len=min(cfg.max_seq_len, target.config.max_position_embeddings),
                                       long=cfg.long, limit=cfg.limit)
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0

    drafter = build_drafter(cfg, target, mask_id if mask_id is not None else 0).to(device)
    layer_ids = _layer_ids(drafter)
    module: nn.Module = drafter if cfg.algo == "eagle3" else ParallelDraftForward(drafter, cfg.algo)
    if cfg.compile:
        module = torch.compile(module, dynamic=True)
    if d.world > 1:
        module = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None
        )
    params = [p for p in drafter.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95),
                            eps=cfg.adam_eps)
    # bf16 compute (autocast) whenever the target runs in bf16 (the default on GPUs); fp32 master weights.
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if target_dtype == torch.bfloat16 else None

    start_step, elapsed0 = 0, 0.0
    resumed_from = None
    if cfg.resume:
        ckpt = latest_checkpoint(out)
        if ckpt is not None:
            start_step, elapsed0 = load_checkpoint(ckpt, drafter, opt, d)
            resumed_from = str(ckpt)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_args.json").write_text(json.dumps(asdict(cfg), indent=1, default=str) + "\n")

    gamma = cfg.block_size
    global_batch = cfg.batch_size * d.world
    t_start = time.perf_counter() - elapsed0
    metrics_path = out / "metrics.jsonl"
    bar = tqdm(total=cfg.max_steps, initial=start_step, desc=f"train {cfg.algo}", unit="step",
               disable=not (cfg.progress and d.main), dynamic_ncols=True)
    step, steps_run, stop_reason = start_step, 0, "max_steps"
    window: list[torch.Tensor] = []
    last_log: dict[str, Any] = {}
    module.train()
    while step < cfg.max_steps:
        elapsed = time.perf_counter() - t_start
        over = torch.tensor(float(cfg.time_budget_s is not None and elapsed >= cfg.time_budget_s))
        if all_reduce_sum(over, d).item() > 0:
            stop_reason = "time_budget"
            break
        if cfg.stop_after_steps is not None and steps_run >= cfg.stop_after_steps:
            stop_reason = "stop_after_steps"
            break
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, step, elapsed)
        indices = global_batch_indices(len(records), global_batch, cfg.seed, step)
        mine = indices[d.rank * cfg.batch_size: (d.rank + 1) * cfg.batch_size]
        batch = make_batch(records, mine, gamma=gamma, num_anchors=cfg.num_anchors, region=cfg.anchor_region,
                           seed=cfg.seed, step=step, pad_id=pad_id).to(device)
        sums = compute_loss(module, target, batch, layer_ids, gamma, cfg.loss, autocast)
        global_weight = all_reduce_sum(sums.weight.detach(), d)
        loss = sums.weighted * d.world / global_weight.clamp_min(1e-12)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip > 0 else torch.tensor(0.0)
        opt.step()
        step += 1
        steps_run += 1
        s = sums.detached()
        stats = torch.cat([torch.stack([s.weighted, s.weight, s.count, s.ce, s.tv, s.bce, s.accept]).float().cpu(),
                           s.accept_by_slot.float().cpu(), s.count_by_slot.float().cpu()])
        window.append(all_reduce_sum(stats.to(device), d).cpu())
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            tot = torch.stack(window).sum(0)
            window.clear()
            wsum, w, cnt = tot[0], tot[1], tot[2]
            last_log = {
                "step": step, "loss": float(wsum / w), "ce": float(tot[3] / cnt), "tv": float(tot[4] / cnt),
                "bce": float(tot[5] / cnt), "accept_proxy": float(tot[6] / cnt),
                "accept_proxy_by_slot": (tot[7: 7 + gamma] / tot[7 + gamma:].clamp_min(1)).tolist(),
                "lr": opt.param_groups[0]["lr"], "grad_norm": float(grad_norm),
                "elapsed_s": time.perf_counter() - t_start,
            }
            if d.main:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(last_log) + "\n")
            bar.set_postfix(loss=f"{last_log['loss']:.3f}", acc=f"{last_log['accept_proxy']:.3f}")
        bar.update(1)
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
            save_checkpoint(out, step, drafter, opt, time.perf_counter() - t_start, d, cfg.keep_checkpoints)
    bar.close()
    elapsed = time.perf_counter() - t_start
    if stop_reason != "max_steps" or (cfg.save_every and step % cfg.save_every == 0):
        save_checkpoint(out, step, drafter, opt, elapsed, d, cfg.keep_checkpoints)
    summary = {
        "algo": cfg.algo, "steps": step, "steps_this_run": steps_run, "resumed_from": resumed_from,
        "stop_reason": stop_reason, "wall_seconds": elapsed, "records": len(records), "data": data_stats,
        "world_size": d.world, "device": str(device), "target_dtype": str(target_dtype).removeprefix("torch."),
        "last_log": last_log, "deterministic": cfg.time_budget_s is None,
        "trainable_parameters": sum(p.numel() for p in params),
    }
    if d.main and stop_reason != "stop_after_steps":
        save_dtype = {"auto": torch.bfloat16 if device.type == "cuda" else None, "float32": None,
                      "bfloat16": torch.bfloat16}[cfg.save_dtype]
        save_final(drafter, cfg, out, save_dtype)
        (out / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    summary["drafter"] = drafter
    if d.world > 1:
        dist.barrier()
    return summary
