"""The report's PNG plots (matplotlib, headless): rates and in-flight, TTFT per tier, errors, cluster state."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display here; must precede pyplot
import matplotlib.pyplot as plt
import numpy as np

from loadtests.metrics import RequestRecord
from loadtests.prom import PromSeries

__all__ = ["bin_edges", "in_flight", "plot_all"]


def bin_edges(end_s: float, bins: int = 60) -> np.ndarray:
    """Time bins over the run: about `bins` of them, each at least one second."""
    width = max(math.ceil(end_s / bins), 1)
    return np.arange(0.0, max(end_s, 1.0) + width, width)


def in_flight(records: list[RequestRecord], times: np.ndarray) -> np.ndarray:
    """Requests open at each time (sent, not yet answered)."""
    starts = np.sort([r.sent_s for r in records])
    ends = np.sort([r.sent_s + (r.e2e_s or 0.0) for r in records])
    return np.searchsorted(starts, times, side="right") - np.searchsorted(ends, times, side="right")


def _save(fig: plt.Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def _rates(records: list[RequestRecord], target: list[tuple[float, float]], edges: np.ndarray, out: Path) -> str:
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = edges[1] - edges[0]
    if target:
        ax.plot([t for t, _ in target], [r for _, r in target], label="target rate", color="black", lw=1)
    offered, _ = np.histogram([r.due_s for r in records], edges)
    achieved, _ = np.histogram([r.sent_s for r in records], edges)
    ax.step(edges[:-1], offered / width, where="post", label="offered (arrivals)", color="tab:blue")
    ax.step(edges[:-1], achieved / width, where="post", label="achieved (sent)", color="tab:orange", ls="--")
    ax.set(xlabel="run time (s)", ylabel="requests/s", title="Offered vs achieved rate, and requests in flight")
    right = ax.twinx()
    right.plot(edges, in_flight(records, edges), color="tab:green", label="in flight", alpha=0.7)
    right.set_ylabel("in flight")
    lines = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(lines, [str(h.get_label()) for h in lines], loc="upper left", fontsize=8)
    return _save(fig, out / "rates.png")


def _ttft(records: list[RequestRecord], edges: np.ndarray, out: Path) -> str:
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for tier in sorted({r.tier for r in records}):
        ok = [r for r in records if r.tier == tier and r.ok and r.ttft_s is not None]
        idx = np.digitize([r.sent_s for r in ok], edges) - 1
        for q, style in ((50, "-"), (99, ":")):
            xs, ys = [], []
            for b in range(len(edges) - 1):
                vals = [r.ttft_s for r, i in zip(ok, idx, strict=True) if i == b and r.ttft_s is not None]
                if vals:
                    xs.append(edges[b])
                    ys.append(float(np.percentile(vals, q)) * 1000)
            ax.plot(xs, ys, style, marker=".", label=f"{tier} p{q}")
    ax.set(xlabel="run time (s)", ylabel="TTFT (ms)", title="TTFT p50 / p99 per tier")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, out / "ttft.png")


def _errors(records: list[RequestRecord], edges: np.ndarray, out: Path) -> str:
    fig, ax = plt.subplots(figsize=(9, 3.0))
    kinds = {
        "all errors": [r.sent_s for r in records if not r.ok],
        "429": [r.sent_s for r in records if r.status == 429],
        "503": [r.sent_s for r in records if r.status == 503],
    }
    for label, times in kinds.items():
        counts, _ = np.histogram(times, edges)
        ax.step(edges[:-1], counts, where="post", label=label)
    ax.set(xlabel="run time (s)", ylabel="requests per bin", title="Errors, 429s and 503s")
    ax.legend(fontsize=8)
    return _save(fig, out / "errors.png")


def _cluster(panels: dict[str, PromSeries], out: Path) -> str:
    fig, ax = plt.subplots(figsize=(9, 3.0))
    replicas, kv = panels.get("replicas"), panels.get("kv_cache_usage")
    if replicas and replicas.points:
        ax.step(*zip(*replicas.points, strict=True), where="post", label="replicas", color="tab:purple")
    ax.set(xlabel="run time (s)", ylabel="replicas", title="Replicas and KV-cache use (Prometheus)")
    right = ax.twinx()
    if kv and kv.points:
        right.plot(*zip(*kv.points, strict=True), color="tab:red", label="KV-cache use")
    right.set_ylabel("KV-cache use (fraction)")
    missing = [name for name, s in panels.items() if not s.points]
    if missing:
        ax.text(0.01, 0.95, "no series: " + ", ".join(missing), transform=ax.transAxes, fontsize=8, va="top")
    return _save(fig, out / "cluster.png")


def plot_all(
    records: list[RequestRecord], target: list[tuple[float, float]], end_s: float, panels: dict[str, PromSeries] | None,
    out: Path,
) -> list[str]:
    """Write the plots into `out`; their file names, in report order."""
    edges = bin_edges(end_s)
    names = [_rates(records, target, edges, out), _ttft(records, edges, out), _errors(records, edges, out)]
    if panels is not None:
        names.append(_cluster(panels, out))
    return names
