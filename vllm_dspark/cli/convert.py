"""`vllm-dspark convert`: rewrite a drafter in the DeepSpec layout (with embedding/LM-head copies) or the
vLLM-native layout (without them; vLLM shares the target's). Both are readable by DeepSpec-style loaders, vLLM's
native `Qwen3DSparkModel` and this package; the written folder is read back and checked."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="drafter folder to read (any supported layout)")
    p.add_argument("dst", help="folder to write")
    p.add_argument("--to", choices=["deepspec", "native"], default="deepspec", dest="layout")
    p.add_argument("--target", default=None,
                   help="target folder: needed when the source omits embed_tokens/lm_head; also checks the fit")
    p.add_argument("--dtype", default="bfloat16", help="dtype of the written tensors (default bfloat16)")


def run(args: argparse.Namespace) -> int:
    import torch

    from vllm_dspark.checkpoint import convert, detect_layout
    from vllm_dspark.target import load_target, resolve_dtype

    target = None
    if args.target:
        target, _ = load_target(args.target, dtype=torch.float32, device=torch.device("cpu"))
    out = convert(args.src, args.dst, layout=args.layout, target=target,
                  dtype=resolve_dtype(args.dtype, torch.device("cpu")))
    print(f"{args.src} ({detect_layout(args.src)}) -> {out} ({args.layout})")
    return 0
