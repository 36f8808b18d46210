"""The results table (markdown) of a recipe run: τ at T=0 / T=1, per-position acceptance, ECE, wall times."""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def held_out_ece(draft_dir: Path, ev: dict | None):
    """Mean ECE over positions of the raw and STS-calibrated survival on the eval rounds (not used by the fit)."""
    cfg = _load(draft_dir / "config.json") or {}
    if not ev or not cfg.get("sts_temperatures") or not ev["prompts"] or ev["prompts"][0].get("confidence_logits") is None:
        return None
    import numpy as np

    from vllm_dspark.cli.calibrate import collect_rounds
    from vllm_dspark.scheduling.calibrate import calibration_report

    s = ev["summary"]
    eos = (_load(Path(s["target"]) / "config.json") or {}).get("eos_token_id", [])
    stops = set(eos if isinstance(eos, list) else [eos])
    logits, acc, prop = collect_rounds(ev["prompts"], s["block_size"], s["max_new_tokens"], stops)
    rep = calibration_report(np.array(logits), np.array(acc), cfg["sts_temperatures"], np.array(prop))
    return float(np.mean([r["ece_before"] for r in rep])), float(np.mean([r["ece_after"] for r in rep]))


def main(run_dir: str) -> None:
    run = Path(run_dir)
    names = ["dspark", "dflash", "eagle3"]
    labels = {"dspark": "DSpark", "dflash": "DFlash", "eagle3": "EAGLE-3"}
    tau = {}
    rows = []
    for name in names:
        train = _load(run / name / "train_summary.json") or {}
        ev = {t: _load(run / "eval" / f"eval_{name}_T{t}.json") for t in ("0", "1")}
        tau[name] = {t: (e["summary"]["mean_accepted_length"] if e else None) for t, e in ev.items()}
        cal = _load(run / name / "calibration.json")
        ece = (f"{100 * cal['ece_before_mean']:.2f}% → {100 * cal['ece_after_mean']:.2f}%" if cal else "n/a")
        held_out = held_out_ece(run / name, ev["1"])
        if held_out:
            ece += f"; eval T=1: {100 * held_out[0]:.2f}% → {100 * held_out[1]:.2f}%"
        acc = {t: (" ".join(f"{a:.2f}" for a in e["summary"]["per_position_acceptance"]) if e else "-")
               for t, e in ev.items()}
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        rows.append(f"| {labels[name]} | {fmt(tau[name]['0'])} | {fmt(tau[name]['1'])} | {acc['0']} | {acc['1']} | "
                    f"{ece} | {train.get('steps', '-')} | {train.get('wall_seconds', 0) / 60:.1f} |")
    out = ["| drafter | τ T=0 | τ T=1 | acceptance per position, T=0 | acceptance per position, T=1 | "
           "ECE (mean over positions) before → after STS: calibration set (fit); eval T=1 rounds (held out) | steps | train wall (min) |",
           "|---|---|---|---|---|---|---|---|", *rows, ""]
    for t in ("0", "1"):
        d, f, e = tau["dspark"][t], tau["dflash"][t], tau["eagle3"][t]
        if d and f and e:
            out.append(f"T={t}: DSpark/DFlash = {d / f:.3f}× (target ≥ 1.18×), DSpark/EAGLE-3 = {d / e:.3f}× "
                       f"(target ≥ 1.30×)")
    ev0 = _load(run / "eval" / "eval_dspark_T0.json")
    if ev0:
        s = ev0["summary"]
        out.append(f"\nEval: {s['num_prompts']} prompts of {s['prompts_file']}, max_new_tokens={s['max_new_tokens']}, "
                   f"γ={s['block_size']}, seed {s['seed']}, {s['device']} {s['dtype']}.")
    import torch
    import transformers
    out.append(f"Machine: {platform.node()} {platform.processor() or platform.machine()}, python "
               f"{platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}.")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
