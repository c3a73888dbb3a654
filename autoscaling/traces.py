"""Traffic traces for the simulator, in two formats told apart by the CSV header.

* `t_s,rps`: one row per second, Poisson arrivals at that rate; prompt and completion lengths drawn from
  log-normal distributions (medians 1,020 / 129 tokens, as in the Azure conversation trace).
* `TIMESTAMP,ContextTokens,GeneratedTokens`: one row per request (Azure LLM inference trace format).

Every request gets a tier drawn from the mix (enterprise / pro / free by default), hence a priority and an SLO.
`time_scale` X plays the trace X times faster (same requests, arrival times / X); `rate_scale` Y multiplies the
number of requests (rates x Y; per-request traces repeat each row, fractional parts by chance).
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cluster.config import slos_by_priority

__all__ = ["DEFAULT_TIERS", "Arrival", "TierMix", "load_trace", "offered_rps", "tier_slos"]


@dataclass(frozen=True, slots=True)
class TierMix:
    name: str
    share: float
    priority: int
    ttft_slo_s: float


# surge's default tiers (cluster/config/admission.py default_priority) with illustrative TTFT SLOs.
DEFAULT_TIERS = (
    TierMix("enterprise", 0.2, 2, 1.0),
    TierMix("pro", 0.3, 3, 2.0),
    TierMix("free", 0.5, 5, 5.0),
)


@dataclass(frozen=True, slots=True)
class Arrival:
    t_s: float
    prompt_tokens: int
    output_tokens: int
    tier: TierMix


def tier_slos(arrivals: Iterable[Arrival]) -> dict[int, float]:
    """The trace's tiers' TTFT SLOs by priority (the tightest where tiers share one), as admission reads them
    (AdmissionConfig.ttft_slos)."""
    return slos_by_priority((tier.priority, tier.ttft_slo_s) for tier in {a.tier for a in arrivals})


def _tier(rng: random.Random, tiers: tuple[TierMix, ...]) -> TierMix:
    x, acc = rng.random() * sum(t.share for t in tiers), 0.0
    for tier in tiers:
        acc += tier.share
        if x < acc:
            return tier
    return tiers[-1]


def _lognormal(rng: random.Random, median: float, sigma: float, cap: int) -> int:
    return max(1, min(cap, round(median * math.exp(rng.gauss(0, sigma)))))


def _from_rates(rows: list[dict[str, str]], rng: random.Random, tiers: tuple[TierMix, ...],
                time_scale: float, rate_scale: float) -> Iterator[Arrival]:  # fmt: skip
    for row in rows:
        start, rate = float(row["t_s"]), float(row["rps"]) * rate_scale
        t = 0.0
        while rate > 0:
            t += rng.expovariate(rate)
            if t >= 1.0:
                break
            prompt, output = _lognormal(rng, 1020, 0.8, 8000), _lognormal(rng, 129, 0.9, 2000)
            yield Arrival((start + t) / time_scale, prompt, output, _tier(rng, tiers))


def _timestamp_s(text: str) -> float:
    # Azure's timestamps carry 7 fractional digits; Python parses at most 6.
    head, _, frac = text.strip().partition(".")
    return datetime.fromisoformat(head).timestamp() + (float("0." + frac) if frac else 0.0)


def _from_requests(rows: list[dict[str, str]], rng: random.Random, tiers: tuple[TierMix, ...],
                   time_scale: float, rate_scale: float) -> Iterator[Arrival]:  # fmt: skip
    t0 = _timestamp_s(rows[0]["TIMESTAMP"]) if rows else 0.0
    for row in rows:
        t = (_timestamp_s(row["TIMESTAMP"]) - t0) / time_scale
        copies = int(rate_scale) + (1 if rng.random() < rate_scale - int(rate_scale) else 0)
        for i in range(copies):
            # Copies spread over the next 100 ms, so a scaled trace keeps its bursts without exact duplicates.
            jitter = 0.0 if i == 0 else rng.random() * 0.1 / time_scale
            yield Arrival(t + jitter, int(row["ContextTokens"]), max(1, int(row["GeneratedTokens"])),
                          _tier(rng, tiers))  # fmt: skip


def load_trace(path: str | Path, *, time_scale: float = 1.0, rate_scale: float = 1.0, seed: int = 0,
               tiers: tuple[TierMix, ...] = DEFAULT_TIERS) -> list[Arrival]:  # fmt: skip
    """Every request of the trace, sorted by arrival time."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = set(reader.fieldnames or [])
        rows = list(reader)
    rng = random.Random(seed)
    if {"t_s", "rps"} <= header:
        arrivals = list(_from_rates(rows, rng, tiers, time_scale, rate_scale))
    elif {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} <= header:
        arrivals = list(_from_requests(rows, rng, tiers, time_scale, rate_scale))
    else:
        raise ValueError(f"{path}: header {sorted(header)} is neither t_s,rps nor TIMESTAMP,ContextTokens,...")
    return sorted(arrivals, key=lambda a: a.t_s)


def offered_rps(arrivals: list[Arrival], bucket_s: float) -> list[float]:
    """Arrivals per second in consecutive buckets (for the plot)."""
    if not arrivals:
        return []
    counts = [0] * (int(arrivals[-1].t_s // bucket_s) + 1)
    for a in arrivals:
        counts[int(a.t_s // bucket_s)] += 1
    return [c / bucket_s for c in counts]
