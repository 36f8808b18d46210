"""`vllm-dspark train`: train a DSpark / DFlash / EAGLE-3 drafter with an online target (or its cached features).

Several processes: `torchrun --nproc-per-node K -m vllm_dspark train ...` (DDP; NCCL on GPUs, gloo on CPU).
"""
from __future__ import annotations

import argparse
import json


def _ids(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="target model folder (transformers)")
    p.add_argument("--data", required=True, help="JSONL(.gz) of prompt + response records (see `regenerate`)")
    p.add_argument("--algo", choices=["dspark", "dflash", "eagle3"], default="dspark")
    p.add_argument("--out", required=True, help="output folder: the drafter, metrics.jsonl, checkpoints/")
    g = p.add_argument_group("drafter")
    g.add_argument("--block-size", type=int, default=7, help="γ, drafts per round")
    g.add_argument("--num-draft-layers", type=int, default=1, help="DSpark/DFlash backbone layers")
    g.add_argument("--target-layer-ids", type=_ids, default=None,
                   help="comma-separated target layers (output of layer i; -1 = embeddings). "
                        "Default: spread over the target (DSpark/DFlash), low/mid/high (EAGLE-3)")
    g.add_argument("--markov-rank", type=int, default=256)
    g.add_argument("--markov-head-type", choices=["vanilla", "gated", "rnn"], default="vanilla")
    g.add_argument("--no-confidence-head", action="store_true")
    g.add_argument("--confidence-without-markov", action="store_true", help="confidence head sees h_k only")
    g.add_argument("--mask-token-id", type=int, default=None, help="default: the tokenizer's mask token")
    g = p.add_argument_group("data")
    g.add_argument("--max-seq-len", type=int, default=2048)
    g.add_argument("--long", choices=["error", "skip", "truncate"], default="error",
                   help="records longer than --max-seq-len: fail, drop, or keep the prompt's end")
    g.add_argument("--chat", action="store_true", help="render text prompts with the chat template")
    g.add_argument("--num-records", type=int, default=None, help="use only the first N records")
    g.add_argument("--num-anchors", type=int, default=32, help="anchor blocks per record per step")
    g.add_argument("--anchor-region", choices=["response", "all"], default="response")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=8, help="records per process per step")
    g.add_argument("--max-steps", type=int, default=1000)
    g.add_argument("--time-budget-min", type=float, default=None,
                   help="stop after this many minutes of training (the LR schedule then follows time)")
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--min-lr-ratio", type=float, default=0.1)
    g.add_argument("--warmup-steps", type=int, default=50)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--grad-clip", type=float, default=1.0)
    g.add_argument("--alpha-ce", type=float, default=0.1)
    g.add_argument("--alpha-tv", type=float, default=0.9)
    g.add_argument("--alpha-conf", type=float, default=1.0)
    g.add_argument("--loss-decay", type=float, default=4.0,
                   help="slot weight exp(-k/decay), k 0-based (DeepSpec: 4; the paper's exp(-(k-1)/γ) is decay=γ)")
    g = p.add_argument_group("runtime")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    g.add_argument("--target-dtype", default="auto", help="auto = bf16 on GPU, fp32 on CPU")
    g.add_argument("--compile", action="store_true", help="torch.compile the drafter's training forward")
    g.add_argument("--autocast", choices=["auto", "bf16", "off"], default="auto",
                   help="bf16 compute with fp32 weights: auto = when the target runs in bf16 (GPU); bf16 = also on "
                        "CPUs with AMX / avx512_bf16 (several times faster there)")
    g.add_argument("--feature-cache", default=None,
                   help="folder for the target's features, computed once before training and read back at every "
                        "step (the target is frozen); reused when it matches the target, data and layers")
    g.add_argument("--feature-cache-max-gb", type=float, default=16.0,
                   help="refuse to build a feature cache larger than this")
    g.add_argument("--fused-loss", action="store_true",
                   help="CE + TV over the vocabulary block by block with a hand-written gradient (same loss, "
                        "less memory traffic: faster on CPUs)")
    g.add_argument("--init-from-target-layer", type=int, default=None,
                   help="start the draft layers as a copy of this target layer (-1 = the top one); DSpark/DFlash")
    g.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (0 = only at the end)")
    g.add_argument("--keep-checkpoints", type=int, default=2)
    g.add_argument("--save-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="dtype of the final drafter (auto: bf16 on GPU, fp32 on CPU)")
    g.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    g.add_argument("--log-every", type=int, default=10)
    g.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace):
    from vllm_dspark.training.losses import LossConfig
    from vllm_dspark.training.trainer import TrainConfig

    return TrainConfig(
        target=args.target, data=args.data, out=args.out, algo=args.algo, block_size=args.block_size,
        num_draft_layers=args.num_draft_layers, target_layer_ids=args.target_layer_ids, markov_rank=args.markov_rank,
        markov_head_type=args.markov_head_type, confidence_head=not args.no_confidence_head,
        confidence_head_with_markov=not args.confidence_without_markov, mask_token_id=args.mask_token_id,
        max_seq_len=args.max_seq_len, long=args.long, chat=args.chat, limit=args.num_records,
        num_anchors=args.num_anchors, anchor_region=args.anchor_region, batch_size=args.batch_size,
        max_steps=args.max_steps, time_budget_s=None if args.time_budget_min is None else 60 * args.time_budget_min,
        lr=args.lr, min_lr_ratio=args.min_lr_ratio, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        loss=LossConfig(alpha_ce=args.alpha_ce, alpha_tv=args.alpha_tv, alpha_conf=args.alpha_conf,
                        decay=args.loss_decay),
        seed=args.seed, device=args.device, target_dtype=args.target_dtype, compile=args.compile,
        autocast=args.autocast, feature_cache=args.feature_cache, feature_cache_max_gb=args.feature_cache_max_gb,
        init_from_target_layer=args.init_from_target_layer, fused_loss=args.fused_loss,
        save_every=args.save_every, keep_checkpoints=args.keep_checkpoints, save_dtype=args.save_dtype,
        resume=args.resume, log_every=args.log_every, progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from vllm_dspark.training.trainer import train

    summary = train(config_from_args(args))
    summary.pop("drafter", None)
    if summary.get("world_size", 1) == 1 or __import__("os").environ.get("RANK", "0") == "0":
        print(json.dumps(summary))
    return 0
