"""The PNGs of head_to_head (latency vs load, every target) and promo_day (both targets' timelines)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display here; must precede pyplot
import matplotlib.pyplot as plt

__all__ = ["plot_head_to_head", "plot_promo_day"]


def _levels(target: dict[str, Any], prefix: str) -> list[tuple[float, dict[str, Any]]]:
    """(load, summary) of a target's closed (load = clients) or open (load = offered req/s) levels."""
    points = []
    for name, level in target.get("levels", {}).items():
        if name.startswith(prefix) and level.get("requests"):
            points.append((float(level["rate_rps"] if prefix == "open_" else level["concurrency"]), level))
    return sorted(points, key=lambda p: p[0])


def _ms(level: dict[str, Any], key: str) -> float:
    value = level.get(key)
    return float("nan") if value is None else float(value) * 1000


def plot_head_to_head(targets: dict[str, Any], path: Path) -> Path:
    """TTFT p50/p99 vs clients and vs offered rate, and output tokens/s vs clients, one line per target."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for name, target in targets.items():
        closed, opened = _levels(target, "closed_"), _levels(target, "open_")
        if not closed and not opened:
            continue
        line = axes[0].plot([c for c, _ in closed], [_ms(lv, "ttft_p50_s") for _, lv in closed], "o-", label=name)
        color = line[0].get_color()
        axes[0].plot([c for c, _ in closed], [_ms(lv, "ttft_p99_s") for _, lv in closed], "x--", color=color)
        axes[1].plot([r for r, _ in opened], [_ms(lv, "ttft_p50_s") for _, lv in opened], "o-", color=color, label=name)
        axes[1].plot([r for r, _ in opened], [_ms(lv, "ttft_p99_s") for _, lv in opened], "x--", color=color)
        axes[2].plot([c for c, _ in closed], [lv["output_tok_s"] for _, lv in closed], "o-", color=color, label=name)
    axes[0].set(xscale="log", yscale="log", xlabel="closed-loop clients", ylabel="TTFT ms (solid p50, dashed p99)",
                title="TTFT vs clients")  # fmt: skip
    axes[1].set(yscale="log", xlabel="offered req/s (Poisson)", ylabel="TTFT ms (solid p50, dashed p99)",
                title="TTFT vs offered rate")  # fmt: skip
    axes[2].set(xscale="log", xlabel="closed-loop clients", ylabel="output tokens/s", title="throughput")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_promo_day(runs: dict[str, Any], path: Path) -> Path:
    """Per target, one row: offered rate and refusals per bin, and each tier's TTFT p99 through the day."""
    names = [n for n, run in runs.items() if run.get("timeline")]
    fig, axes = plt.subplots(max(len(names), 1), 2, figsize=(14, 4 * max(len(names), 1)), squeeze=False)
    for row, name in enumerate(names):
        run = runs[name]
        left, right = axes[row]
        total = run["timeline"]["all"]
        ts = [b["t_s"] for b in total]
        left.plot(ts, [b["sent"] / run["bin_s"] for b in total], label="sent req/s")
        left.plot(ts, [b["refused"] / run["bin_s"] for b in total], label="refused req/s")
        left.axvspan(*run["spike_window_s"], color="orange", alpha=0.15, label="spike")
        left.set(title=f"{name}: load", xlabel="run s", ylabel="req/s")
        for tier, bins in run["timeline"]["tiers"].items():
            right.plot([b["t_s"] for b in bins], [_ms(b, "ttft_p99_s") for b in bins], label=f"{tier} p99")
        right.axvspan(*run["spike_window_s"], color="orange", alpha=0.15)
        right.set(title=f"{name}: TTFT p99 per tier", xlabel="run s", ylabel="TTFT ms", yscale="log")
        for ax in (left, right):
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
