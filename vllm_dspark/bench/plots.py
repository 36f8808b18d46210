"""PNG plots of bench results (matplotlib, Agg backend); every function takes run dicts as stored in the JSON."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # NOTE: headless; must precede pyplot's import
import matplotlib.pyplot as plt  # noqa: E402


def _load_x(point: dict) -> float | None:
    """Concurrency in closed-loop mode, request rate otherwise ("inf" has no position on the axis)."""
    load = point["load"]
    if load["request_rate"] is None:
        return load["concurrency"]
    return None if load["request_rate"] == "inf" else float(load["request_rate"])


def _load_label(runs: list[dict]) -> str:
    modes = {p["load"]["request_rate"] is None for r in runs for p in r["points"]}
    return "concurrency" if modes == {True} else "request rate (req/s)" if modes == {False} else "load"


def _load_axis(ax, runs: list[dict]) -> None:
    """Log2 axis with the measured loads as plain tick labels."""
    ticks = sorted({x for r in runs for p in r["points"] if (x := _load_x(p)) is not None})
    ax.set_xscale("log", base=2)
    if ticks:
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
    ax.set_xlabel(_load_label(runs))


def _save(fig, path: str | Path) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def plot_frontier(runs: list[dict], slas: list[float], path: str | Path) -> str:
    """Throughput against per-user speed: measured points, each run's upper frontier, SLA lines."""
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        stat = run["frontier"]["speed_stat"]
        xs = [p["per_user_speed"][stat] for p in run["points"]]
        ys = [p["output_throughput"] for p in run["points"]]
        pts = [(x, y, p) for x, y, p in zip(xs, ys, run["points"]) if x is not None and y is not None]
        ax.scatter([x for x, _, _ in pts], [y for _, y, _ in pts], color=color, s=18, alpha=0.6)
        for x, y, p in pts:
            load = p["load"]
            tag = load["concurrency"] if load["request_rate"] is None else load["request_rate"]
            ax.annotate(str(tag), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7, color=color)
        front = run["frontier"]["points"]
        ax.plot([p[0] for p in front], [p[1] for p in front], "-o", color=color, ms=4, label=run["label"])
    for sla in slas:
        ax.axvline(sla, color="gray", ls="--", lw=0.8)
        ax.annotate(f"SLA {sla:g}", (sla, 1), xycoords=("data", "axes fraction"), xytext=(2, -12),
                    textcoords="offset points", fontsize=8, color="gray")
    stat = runs[0]["frontier"]["speed_stat"] if runs else "p50"
    ax.set_xlabel(f"per-user speed, {stat} over requests (tok/s/user)")
    ax.set_ylabel("output throughput (tok/s)")
    ax.set_title("throughput vs per-user speed (labels: load)")
    ax.grid(alpha=0.3)
    if runs:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_throughput_vs_load(runs: list[dict], path: str | Path) -> str:
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        pts = sorted(((x, p) for p in run["points"] if (x := _load_x(p)) is not None), key=lambda t: t[0])
        xs = [x for x, _ in pts]
        ax_t.plot(xs, [p["output_throughput"] for _, p in pts], "-o", color=color, ms=4, label=run["label"])
        ax_s.plot(xs, [p["per_user_speed"]["p50"] for _, p in pts], "-o", color=color, ms=4,
                  label=f"{run['label']} p50")
        ax_s.plot(xs, [p["per_user_speed_vllm"] for _, p in pts], ":", color=color, label=f"{run['label']} tput/conc")
    for ax in (ax_t, ax_s):
        _load_axis(ax, runs)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax_t.set_ylabel("output throughput (tok/s)")
    ax_s.set_ylabel("per-user speed (tok/s/user)")
    return _save(fig, path)


def plot_acceptance_vs_load(runs: list[dict], path: str | Path) -> str:
    """Mean accepted and verification length per load, plus histogram means of our plugin's metrics."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        pts = sorted(((x, p) for p in run["points"] if (x := _load_x(p)) is not None), key=lambda t: t[0])
        series = {
            "accepted len": [(x, (p.get("spec_decode") or {}).get("mean_accepted_length")) for x, p in pts],
            "verification len": [(x, (p.get("spec_decode") or {}).get("mean_verification_length")) for x, p in pts],
            "verification len, all steps": [
                (x, (p.get("spec_decode") or {}).get("mean_verification_length_all_steps")) for x, p in pts],
        }
        extra = sorted({k for _, p in pts for k in (p.get("server_metrics") or {})
                        if k.startswith(("dspark:", "vllm_dspark:")) and k.partition("{")[0].endswith("_mean")})
        for key in extra:
            series[key] = [(x, (p.get("server_metrics") or {}).get(key)) for x, p in pts]
        for j, (name, values) in enumerate(series.items()):
            values = [(x, y) for x, y in values if y is not None]
            if values:
                ax.plot([x for x, _ in values], [y for _, y in values], ["-o", "--s", ":^", "-.v"][j % 4],
                        color=color, ms=4, label=f"{run['label']}: {name}")
                drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no speculative-decoding metrics in these runs", ha="center", va="center",
                transform=ax.transAxes)
    else:
        _load_axis(ax, runs)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    ax.set_ylabel("tokens per verification step")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_all(runs: list[dict], slas: list[float], out_dir: str | Path, stem: str = "") -> dict[str, str]:
    out_dir = Path(out_dir)
    prefix = f"{stem}_" if stem else ""
    return {
        "frontier": plot_frontier(runs, slas, out_dir / f"{prefix}frontier.png"),
        "throughput_vs_load": plot_throughput_vs_load(runs, out_dir / f"{prefix}throughput_vs_load.png"),
        "acceptance_vs_load": plot_acceptance_vs_load(runs, out_dir / f"{prefix}acceptance_vs_load.png"),
    }
