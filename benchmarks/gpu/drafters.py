"""Drafters for the first GPU run when no trained ones are given: a bigram DSpark drafter of the small target (from
its eval prompts, so the target's small files are all that must travel) and its DFlash twin (same backbone, no
heads) for the `dflash-native` configuration.

    python -m benchmarks.gpu.drafters --target SMALL --out DIR [--gamma 4]     # DIR/dspark, DIR/dflash
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.bigram_drafter import build_dflash_twin, eval_prompts_bigram_drafter


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.drafters", description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--gamma", type=int, default=4, help="block size (drafts per round)")
    args = p.parse_args(argv)
    dspark = eval_prompts_bigram_drafter(args.target, args.out / "dspark", block_size=args.gamma)
    dflash = build_dflash_twin(dspark, args.out / "dflash")
    print(f"dspark drafter {dspark}\ndflash drafter {dflash}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
