"""Training curves of a recipe run: the acceptance proxy mean(1 − ½‖p_d − p_t‖₁) against wall time, per drafter.

    python examples/train_pycode/plot_curves.py runs/pycode-cpu runs/pycode-gpu --out curves.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {"dspark": "DSpark", "dflash": "DFlash", "eagle3": "EAGLE-3"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="recipe output folders (with <algo>/metrics.jsonl)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    fig, axes = plt.subplots(1, len(args.runs), figsize=(5.5 * len(args.runs), 4), squeeze=False)
    for ax, run in zip(axes[0], args.runs):
        for algo, label in LABELS.items():
            path = run / algo / "metrics.jsonl"
            if not path.is_file():
                continue
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            ax.plot([r["elapsed_s"] / 60 for r in rows], [r["accept_proxy"] for r in rows],
                    label=f"{label} ({rows[-1]['step']} steps)")
        ax.set_title(run.name)
        ax.set_xlabel("training wall time (min)")
        ax.set_ylabel("acceptance proxy, mean over the 7 slots (T=1)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
