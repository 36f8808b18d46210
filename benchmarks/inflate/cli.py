"""Command line: `python -m benchmarks.inflate --help`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import benchmarks.inflate
from benchmarks.inflate.checks import check_drafter, check_target
from benchmarks.inflate.drafters import inflate_drafter
from benchmarks.inflate.layers import build_device
from benchmarks.inflate.plan import SHAPES, Shape
from benchmarks.inflate.target import inflate_target


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.inflate",
                                description=benchmarks.inflate.__doc__.splitlines()[0])
    p.add_argument("--target", required=True, type=Path, help="small Qwen3 HF folder")
    p.add_argument("--out", required=True, type=Path, help="output folder for the inflated target")
    p.add_argument("--draft", type=Path, help="drafter folder of --target: DSpark (DeepSpec layout), or vLLM-native "
                   "DFlash / EAGLE-3 (kind read from its config.json architectures)")
    p.add_argument("--draft-out", type=Path, help="output folder for the inflated drafter")
    p.add_argument("--draft-layers", type=int, help="draft layers after inflation (extra ones are identities)")
    p.add_argument("--shape", choices=[*SHAPES, "custom"], default="qwen3-4b")
    for name in ("hidden", "layers", "heads", "kv-heads", "head-dim", "intermediate"):
        p.add_argument(f"--{name}", type=int, help="custom shape (overrides the preset's value)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    p.add_argument("--device", help="build device (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-shard-gb", type=float, default=4.0)
    p.add_argument("--check", type=int, default=0, metavar="N", help="compare with the source on N eval prompts")
    p.add_argument("--check-tokens", type=int, default=32)
    p.add_argument("--prompts", type=Path, help="jsonl with a 'prompt' field (default: TARGET/eval_prompts.jsonl)")
    p.add_argument("--json", type=Path, help="also write the summary here")
    args = p.parse_args(argv)
    if (args.draft is None) != (args.draft_out is None):
        p.error("--draft and --draft-out go together")
    return args


def resolve_shape(args: argparse.Namespace) -> Shape:
    base = SHAPES.get(args.shape)
    names = {"hidden": "hidden_size", "layers": "num_hidden_layers", "heads": "num_attention_heads",
             "kv_heads": "num_key_value_heads", "head_dim": "head_dim", "intermediate": "intermediate_size"}
    values = {field: getattr(args, arg) for arg, field in names.items()}
    if base is None:
        missing = [f"--{a.replace('_', '-')}" for a, f in names.items() if values[f] is None]
        if missing:
            raise SystemExit(f"--shape custom needs {' '.join(missing)}")
        return Shape(**values)
    return Shape(**{f: v if v is not None else getattr(base, f) for f, v in values.items()})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dtype = getattr(torch, args.dtype)
    shape = resolve_shape(args)
    shard = int(args.max_shard_gb * (1 << 30))
    summary = {"target": inflate_target(args.target, args.out, shape, dtype=dtype, device=args.device,
                                        seed=args.seed, max_shard_bytes=shard)}
    t = summary["target"]
    print(f"target: {t['params_before'] / 1e6:.1f}M -> {t['params_after'] / 1e6:.1f}M params, {shape}, "
          f"layers {t['layer_map']} (others identities), {t['shards']} shard(s), {t['seconds']} s on {t['device']}")
    target_config = json.loads((args.target / "config.json").read_text())
    if args.draft:
        summary["drafter"] = inflate_drafter(
            args.draft, args.draft_out, target_config, shape, num_layers=args.draft_layers, dtype=dtype,
            device=args.device, seed=args.seed + 1, max_shard_bytes=shard,
        )
        dd = summary["drafter"]
        print(f"drafter: {dd['params_before'] / 1e6:.1f}M -> {dd['params_after'] / 1e6:.1f}M params, "
              f"target_layer_ids {dd['target_layer_ids'][0]} -> {dd['target_layer_ids'][1]}, "
              f"layers {dd['num_hidden_layers'][0]} -> {dd['num_hidden_layers'][1]}, {dd['seconds']} s")
    if args.check:
        prompts = args.prompts or args.target / "eval_prompts.jsonl"
        device = build_device(args.device)
        summary["check"] = []
        for check_dtype in dict.fromkeys([dtype, torch.float32]):
            c = check_target(args.target, args.out, prompts, args.check, args.check_tokens, device, check_dtype)
            summary["check"].append(c)
            print(f"check target ({c['dtype']}): greedy tokens equal before first mismatch "
                  f"{c['greedy_tokens_equal_before_first_mismatch']}, max |logit diff| {c['max_abs_logit_diff']:.3g}")
            if "baseline_source_vs_source_fp32" in c:
                base = c["baseline_source_vs_source_fp32"]
                print(f"  baseline, source {c['dtype']} vs source float32: "
                      f"{base['greedy_tokens_equal_before_first_mismatch']}, "
                      f"max |logit diff| {base['max_abs_logit_diff']:.3g}")
            if args.draft:
                try:
                    dc = check_drafter(args.target, args.out, args.draft, args.draft_out, prompts, args.check, device,
                                       check_dtype)
                except ImportError as e:
                    print(f"check drafter skipped: {e}")
                else:
                    dc["dtype"] = str(check_dtype)
                    summary["check"].append({"drafter": dc})
                    print(f"check drafter ({check_dtype}): draft tokens equal before first mismatch "
                          f"{dc['tokens_equal']}/{dc['tokens']}, "
                          f"max |logit diff| {dc['max_abs_logit_diff']:.3g}, "
                          f"max |confidence logit diff| {dc['max_abs_confidence_logit_diff']:.3g}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return 0
