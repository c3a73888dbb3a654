"""Pure helpers of the side-by-side benchmarks (head_to_head, promo_day): goodput at an SLO, the best of a
target's variants, per-tier summaries through a window, timelines, and what refused clients were told."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks._common import percentile

__all__ = [
    "Slo", "best_of", "goodput", "ratio", "refusals", "tier_window", "timeline", "window_of",
]  # fmt: skip


@dataclass(frozen=True)
class Slo:
    """A request meets the SLO when it succeeded, its TTFT is at most `ttft_s` and its token-accurate time per
    output token at most `tpot_s`."""

    ttft_s: float
    tpot_s: float

    def met(self, record: Mapping[str, Any]) -> bool:
        ttft, tokens = record.get("ttft_s"), int(record.get("output_tokens") or 0)
        if record.get("error") is not None or ttft is None or ttft > self.ttft_s:
            return False
        tpot = (float(record["latency_s"]) - ttft) / (tokens - 1) if tokens > 1 else 0.0
        return tpot <= self.tpot_s


def goodput(records: Sequence[Mapping[str, Any]], wall_s: float, slo: Slo) -> dict[str, float]:
    """Requests/s and output tokens/s of the requests that met `slo`, and their share of all requests."""
    good = [r for r in records if slo.met(r)]
    wall = wall_s if wall_s > 0 else math.nan
    return {
        "goodput_rps": len(good) / wall,
        "goodput_tok_s": sum(int(r.get("output_tokens") or 0) for r in good) / wall,
        "slo_met_share": len(good) / len(records) if records else math.nan,
    }


def ratio(numerator: float | None, denominator: float | None) -> float:
    """numerator / denominator; NaN when either is missing or the denominator is not positive."""
    if numerator is None or denominator is None or not denominator > 0:
        return math.nan
    return numerator / denominator


def best_of(values: Mapping[str, float | None], higher_is_better: bool = True) -> tuple[str | None, float]:
    """The variant with the best finite value (a target "at its best"); (None, NaN) when none has one."""
    finite = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}
    if not finite:
        return None, math.nan
    name = (max if higher_is_better else min)(finite, key=lambda k: finite[k])
    return name, finite[name]


def window_of(rates: Sequence[tuple[float, float]], fraction: float = 0.5) -> tuple[float, float]:
    """The span of a rate curve ((t_s, rps) points, sorted by time) where the rate is at least `fraction` of its
    peak: a spike's window."""
    if not rates:
        raise ValueError("no rate points")
    peak = max(r for _, r in rates)
    inside = [t for t, r in rates if r >= fraction * peak]
    return min(inside), max(inside)


def _pct(values: list[float], q: float) -> float | None:
    return percentile(values, q) if values else None


def tier_window(records: Iterable[Mapping[str, Any]], start_s: float = -math.inf,
                end_s: float = math.inf) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per tier, over the requests sent in [start_s, end_s]: count, success rate, TTFT p50/p99 of the
    successful ones, and their statuses."""
    by_tier: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        if start_s <= float(r["sent_s"]) <= end_s:
            by_tier.setdefault(str(r["tier"]), []).append(r)
    out: dict[str, dict[str, Any]] = {}
    for tier, mine in sorted(by_tier.items()):
        ok = [r for r in mine if r.get("error") is None and 200 <= int(r.get("status") or 0) < 300]
        ttft = [float(r["ttft_s"]) for r in ok if r.get("ttft_s") is not None]
        out[tier] = {
            "requests": len(mine), "ok": len(ok), "success_rate": len(ok) / len(mine),
            "ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99),
            "statuses": dict(sorted(Counter(str(r.get("status") or "no response") for r in mine).items())),
        }  # fmt: skip
    return out


def timeline(records: Iterable[Mapping[str, Any]], bin_s: float, tier: str | None = None) -> list[dict[str, Any]]:
    """Per `bin_s` bin of send time (optionally one tier's requests): sent, ok, refused (4xx/5xx or no answer)
    and the TTFT p50/p99 of the successful ones; bins in time order."""
    if bin_s <= 0:
        raise ValueError("bin_s must be positive")
    bins: dict[int, list[Mapping[str, Any]]] = {}
    for r in records:
        if tier is None or r["tier"] == tier:
            bins.setdefault(int(float(r["sent_s"]) // bin_s), []).append(r)
    rows = []
    for index in sorted(bins):
        mine = bins[index]
        ok = [r for r in mine if r.get("error") is None and 200 <= int(r.get("status") or 0) < 300]
        ttft = [float(r["ttft_s"]) for r in ok if r.get("ttft_s") is not None]
        rows.append({"t_s": index * bin_s, "sent": len(mine), "ok": len(ok), "refused": len(mine) - len(ok),
                     "ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99)})  # fmt: skip
    return rows


def refusals(records: Iterable[Mapping[str, Any]], examples: int = 3) -> dict[str, Any]:
    """What the refused requests were told: their count per status, and the most common messages per status."""
    by_status: dict[str, Counter[str]] = {}
    for r in records:
        status = int(r.get("status") or 0)
        if r.get("error") is None and 200 <= status < 300:
            continue
        key = str(status) if status else "no response"
        by_status.setdefault(key, Counter())[str(r.get("error") or "")[:160]] += 1
    return {
        status: {"count": sum(messages.values()), "messages": dict(messages.most_common(examples))}
        for status, messages in sorted(by_status.items())
    }
