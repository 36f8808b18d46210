"""`vllm-dspark calibrate`: Sequential Temperature Scaling of a DSpark drafter's confidence head, on held-out prompts.

Runs the reference speculative loop (`vllm_dspark.evaluate`) at the calibration temperature with every round
verifying all γ drafts, so the event of position k is exactly "the first k drafts (the drafter's own samples) were
accepted". Fits per-position temperatures (`vllm_dspark.scheduling.calibrate.fit_sts`), stores them as
`sts_temperatures` in the drafter's config.json (in place, or in a copy with --out-draft), prints ECE / Brier /
ROC-AUC per position before and after, and writes a reliability diagram.
A prompt's last round is left out when generation stopped at an end-of-sequence token inside it (the drafts after
the stop token were never judged).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="target model folder")
    p.add_argument("--draft", required=True, help="DSpark drafter folder (with a confidence head)")
    p.add_argument("--prompts", required=True, help="held-out prompts, JSONL(.gz) as for `eval`")
    p.add_argument("--out-draft", default=None, help="write the calibrated drafter here (default: update --draft)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the calibration rounds")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--num-prompts", type=int, default=None)
    p.add_argument("--chat", action="store_true")
    p.add_argument("--n-bins", type=int, default=15, help="ECE bins")
    p.add_argument("--png", default=None, help="reliability diagram (default: <drafter>/reliability.png)")
    p.add_argument("--json", dest="json_out", default=None,
                   help="report (default: <drafter>/calibration.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default=None)


def collect_rounds(per_prompt: list[dict], gamma: int, max_new_tokens: int, stop_ids: set[int]):
    """(conf_logits [N, γ], accepted [N], proposed [N]) from `evaluate`'s per-prompt records."""
    logits, accepted, proposed = [], [], []
    for rec in per_prompt:
        rounds = list(zip(rec["confidence_logits"], rec["accepted_lengths"], rec["proposed_lengths"]))
        out = rec["output_token_ids"]
        if rounds and out and out[-1] in stop_ids and len(out) < max_new_tokens:
            rounds = rounds[:-1]  # stopped inside its last round: later drafts were never judged
        for conf, committed, prop in rounds:
            if len(conf) != gamma:
                raise ValueError(f"a round has {len(conf)} confidence logits, expected γ={gamma}")
            logits.append(conf)
            accepted.append(committed - 1)  # committed = accepted drafts + the bonus token
            proposed.append(prop)
    return logits, accepted, proposed


def format_report(report: list[dict]) -> str:
    lines = ["pos  T_k    rounds  event   ECE before→after     Brier before→after   ROC-AUC before→after"]
    for r in report:
        lines.append(
            f"{r['position']:>3}  {r['temperature']:<5.3f} {r['rounds']:>6}  {r['event_rate']:.3f}   "
            f"{r['ece_before']:.4f} → {r['ece_after']:.4f}     {r['brier_before']:.4f} → {r['brier_after']:.4f}     "
            f"{r['auc_before']:.4f} → {r['auc_after']:.4f}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from vllm_dspark.checkpoint import load_drafter
    from vllm_dspark.config import DSparkConfig
    from vllm_dspark.evaluate import evaluate, read_prompts
    from vllm_dspark.scheduling.calibrate import calibration_report, fit_sts, plot_reliability
    from vllm_dspark.target import default_device, load_target, max_context, resolve_dtype, stop_token_ids

    device = torch.device(args.device) if args.device else default_device()
    dtype = resolve_dtype(args.dtype, device)
    target, tokenizer = load_target(args.target, dtype=dtype, device=device)
    drafter = load_drafter(args.draft, target, dtype=dtype, device=device)
    if drafter.confidence_head is None:
        raise SystemExit(f"{args.draft} has no confidence head (enable_confidence_head=false): nothing to calibrate")
    gamma = drafter.config.block_size
    prompts = read_prompts(args.prompts, tokenizer, chat=args.chat, max_context=max_context(target),
                           limit=args.num_prompts)
    stops = stop_token_ids(target, tokenizer)
    result = evaluate(target, drafter, prompts, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                      block_size=gamma, seed=args.seed, stop_token_ids=stops)
    logits, accepted, proposed = collect_rounds(result["prompts"], gamma, args.max_new_tokens, stops)
    if not logits:
        raise SystemExit("no calibration rounds were collected (empty generations?)")
    logits, accepted, proposed = np.array(logits), np.array(accepted), np.array(proposed)
    temps = fit_sts(logits, accepted, proposed, n_bins=args.n_bins)
    report = calibration_report(logits, accepted, temps, proposed, n_bins=args.n_bins)

    out_dir = Path(args.out_draft) if args.out_draft else Path(args.draft)
    if args.out_draft and Path(args.out_draft).resolve() != Path(args.draft).resolve():
        shutil.copytree(args.draft, out_dir, dirs_exist_ok=True)
    cfg = DSparkConfig.from_json(out_dir)
    cfg.sts_temperatures = [float(t) for t in temps]
    cfg.save(out_dir)
    png = plot_reliability(logits, accepted, temps, Path(args.png) if args.png else out_dir / "reliability.png",
                           proposed, n_bins=args.n_bins,
                           title=f"STS at T={args.temperature} on {len(logits)} rounds")
    summary = {
        "temperatures": cfg.sts_temperatures, "rounds": int(len(logits)), "prompts": len(prompts),
        "temperature": args.temperature, "mean_accepted_length": result["summary"]["mean_accepted_length"],
        "ece_before_mean": float(np.mean([r["ece_before"] for r in report])),
        "ece_after_mean": float(np.mean([r["ece_after"] for r in report])),
        "per_position": report, "drafter": str(out_dir), "png": str(png),
    }
    json_out = Path(args.json_out) if args.json_out else out_dir / "calibration.json"
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(summary, indent=1) + "\n")
    print(format_report(report))
    print(f"mean ECE {summary['ece_before_mean']:.4f} → {summary['ece_after_mean']:.4f}; temperatures "
          f"{[round(t, 3) for t in cfg.sts_temperatures]} stored in {out_dir}/config.json; wrote {png}, {json_out}")
    return 0
