"""Drop or restore the target's copies of embed_tokens / lm_head in trained drafters (to move them cheaply).

The drafters share (frozen) the target's embedding and LM head, and the recipe saves copies of both, which are most
of a drafter's bytes at a small width. `strip` removes them (to copy drafters between machines cheaply); `restore`
copies them back from the target, so the folders are again what `vllm-dspark train` writes (loadable by vLLM's
native methods).

    python examples/train_pycode/shared_weights.py strip   runs/pycode-gpu/{dspark,dflash,eagle3}
    python examples/train_pycode/shared_weights.py restore runs/pycode-gpu/{dspark,dflash,eagle3} --target T

`strip --bf16` also stores the rest in bfloat16 (how the drafters in examples/train_pycode/trained/ are kept). A
stripped drafter loads as it is in vLLM, which shares the target's embedding and LM head with a drafter that has
none, and in `vllm_dspark.checkpoint.load_drafter(folder, target)`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

SHARED = {"embed_tokens.weight": "model.embed_tokens.weight", "lm_head.weight": "lm_head.weight"}


def target_tensors(target: Path) -> dict:
    files = sorted(target.glob("*.safetensors"))
    if not files:
        raise SystemExit(f"{target}: no *.safetensors")
    found = {}
    for f in files:
        with safe_open(str(f), "pt") as h:
            for mine, theirs in SHARED.items():
                if theirs in h.keys():
                    found[mine] = h.get_tensor(theirs)
    if "embed_tokens.weight" not in found:
        raise SystemExit(f"{target}: no model.embed_tokens.weight")
    found.setdefault("lm_head.weight", found["embed_tokens.weight"])  # tied embeddings
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["strip", "restore"])
    p.add_argument("drafters", nargs="+", type=Path)
    p.add_argument("--target", type=Path, help="target folder (restore)")
    p.add_argument("--bf16", action="store_true", help="strip: store the remaining tensors in bfloat16")
    args = p.parse_args()
    if args.action == "restore" and args.target is None:
        raise SystemExit("restore needs --target")
    shared = target_tensors(args.target) if args.action == "restore" else None
    for d in args.drafters:
        path = d / "model.safetensors"
        state = load_file(str(path))
        dtype = next(v.dtype for k, v in state.items() if k not in SHARED)
        if args.action == "strip":
            state = {k: v for k, v in state.items() if k not in SHARED}
            if args.bf16:
                state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}
                config = json.loads((d / "config.json").read_text())
                for key in ("dtype", "torch_dtype"):
                    if key in config:
                        config[key] = "bfloat16"
                (d / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        else:
            state.update({k: v.to(dtype).clone() for k, v in shared.items()})
        save_file(state, str(path), metadata={"format": "pt"})
        print(f"{args.action}: {path} ({sum(v.numel() for v in state.values()) / 1e6:.1f}M parameters)")


if __name__ == "__main__":
    main()
