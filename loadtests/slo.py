"""SLOs from YAML and their verdicts on a run's requests: pure functions of the records.

    error_rate_max: 0.02          # failed / all requests (429s and 503s count)
    goodput_min_rps: 0.5          # requests/s that met their tier's SLO
    tiers:
      enterprise: {ttft_p50_s: 0.3, ttft_p99_s: 1.5, itl_p50_s: 0.05, itl_p99_s: 0.2}

A request met its tier's SLO when it succeeded within the tier's p99 TTFT bound and, if streamed, with a TPOT
within the tier's p99 ITL bound (vLLM's goodput takes per-request TTFT/TPOT bounds the same way). A tier named in
the file that sent no request fails: an SLO that was not measured does not hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loadtests.metrics import RequestRecord
from loadtests.spec import UsageError

__all__ = ["SloFile", "TierSlo", "Verdict", "evaluate", "goodput_rps", "load_slo", "percentile", "request_meets"]


class TierSlo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ttft_p50_s: float | None = Field(None, gt=0)
    ttft_p99_s: float | None = Field(None, gt=0)
    itl_p50_s: float | None = Field(None, gt=0)
    itl_p99_s: float | None = Field(None, gt=0)


class SloFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    error_rate_max: float = Field(0.02, ge=0, le=1)
    goodput_min_rps: float | None = Field(None, ge=0)
    tiers: dict[str, TierSlo] = Field(default_factory=dict)


def load_slo(path: str | Path | None) -> SloFile:
    """The SLO file, or the default (error rate < 2 % only) without one; a bad file is a usage error."""
    if path is None:
        return SloFile()
    try:
        return SloFile.model_validate(yaml.safe_load(Path(path).read_text()) or {})
    except OSError as exc:
        raise UsageError(f"cannot read SLO file {path}: {exc.strerror}") from exc
    except (yaml.YAMLError, ValidationError) as exc:
        raise UsageError(f"SLO file {path} is not valid: {exc}") from exc


@dataclass(frozen=True)
class Verdict:
    """One SLO: what was measured against which bound; `measured` None means nothing to measure."""

    name: str
    measured: float | None
    bound: float
    op: str  # "<=" or ">="
    ok: bool

    def line(self) -> str:
        shown = "n/a (no requests)" if self.measured is None else f"{self.measured:.4g}"
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name}: {shown} (goal {self.op} {self.bound:g})"


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def request_meets(record: RequestRecord, slo: TierSlo | None) -> bool:
    """Whether one request counts towards goodput."""
    if not record.ok:
        return False
    if slo is None:
        return True
    if slo.ttft_p99_s is not None and (record.ttft_s is None or record.ttft_s > slo.ttft_p99_s):
        return False
    return not (record.stream and slo.itl_p99_s is not None and (record.tpot_s or 0.0) > slo.itl_p99_s)


def goodput_rps(records: list[RequestRecord], slo: SloFile, window_s: float) -> float:
    good = sum(request_meets(r, slo.tiers.get(r.tier)) for r in records)
    return good / window_s if window_s > 0 else 0.0


def _bound(name: str, values: list[float], q: float, bound: float | None) -> Verdict | None:
    if bound is None:
        return None
    measured = percentile(values, q)
    return Verdict(name, measured, bound, "<=", measured is not None and measured <= bound)


def _tier_verdicts(tier: str, slo: TierSlo, records: list[RequestRecord]) -> list[Verdict]:
    ok = [r for r in records if r.tier == tier and r.ok]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    itl = [gap for r in ok for gap in r.itl_s]
    checks = [
        _bound(f"{tier} TTFT p50 (s)", ttft, 50, slo.ttft_p50_s),
        _bound(f"{tier} TTFT p99 (s)", ttft, 99, slo.ttft_p99_s),
        _bound(f"{tier} ITL p50 (s)", itl, 50, slo.itl_p50_s),
        _bound(f"{tier} ITL p99 (s)", itl, 99, slo.itl_p99_s),
    ]
    return [v for v in checks if v is not None]


def evaluate(records: list[RequestRecord], slo: SloFile, window_s: float) -> list[Verdict]:
    """Every SLO's verdict: error rate, each tier's percentiles, goodput."""
    errors = sum(not r.ok for r in records)
    rate = errors / len(records) if records else None
    verdicts = [Verdict("error rate", rate, slo.error_rate_max, "<=", rate is not None and rate < slo.error_rate_max)]
    for tier, tier_slo in slo.tiers.items():
        verdicts.extend(_tier_verdicts(tier, tier_slo, records))
    if slo.goodput_min_rps is not None:
        good, bound = (goodput_rps(records, slo, window_s) if records else None), slo.goodput_min_rps
        verdicts.append(Verdict("goodput (req/s)", good, bound, ">=", good is not None and good >= bound))
    return verdicts
