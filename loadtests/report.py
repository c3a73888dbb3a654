"""A run's report: summary.json, PNG plots and report.html in the report directory, and the exit code.

The Locust process writes `run.json` (the schedule and clock) and `requests.jsonl` (one record per request) when
it quits and builds the report from them; `python -m loadtests report DIR` builds it again from the same files.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtests.metrics import RequestRecord
from loadtests.prom import PromSeries, fetch_panels
from loadtests.slo import Verdict, evaluate, goodput_rps, load_slo, percentile

__all__ = ["RunLog", "build_report", "print_tail", "rate_summary", "read_records", "tier_summary", "write_run"]

# More late arrivals than this share means the generator, not the server, set the pace.
_SATURATED_LATE_SHARE = 0.01


@dataclass
class RunLog:
    """The run as the Locust process saw it: what was asked and the schedule's clock."""

    spec: dict[str, Any]
    start_epoch: float
    duration_s: float
    end_s: float
    target: list[tuple[float, float]]  # (run s, requests/s)
    scheduled: int
    late: int
    max_lateness_s: float
    locust_users_max: int = 0
    notes: list[str] = field(default_factory=list)


def write_run(out: Path, log: RunLog, records: list[RequestRecord]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps(asdict(log), indent=1))
    with open(out / "requests.jsonl", "w") as handle:
        for record in records:
            handle.write(json.dumps(record.to_json(), separators=(",", ":")) + "\n")


def read_records(out: Path) -> tuple[RunLog, list[RequestRecord]]:
    log = RunLog(**json.loads((out / "run.json").read_text()))
    with open(out / "requests.jsonl") as handle:
        records = [RequestRecord.from_json(json.loads(line)) for line in handle if line.strip()]
    return log, records


def rate_summary(log: RunLog, records: list[RequestRecord]) -> dict[str, Any]:
    """Target, offered and achieved rates; a warning when the generator could not keep up."""
    duration = log.duration_s
    points = log.target
    target = sum(r for _, r in points) / len(points) if points else 0.0
    sent_in_window = sum(r.sent_s < duration for r in records)
    achieved = sent_in_window / duration if duration else 0.0
    offered = log.scheduled / duration if duration else 0.0
    saturated = log.scheduled > 0 and log.late / log.scheduled > _SATURATED_LATE_SHARE
    warning = None
    if saturated:
        warning = (
            f"generator saturated: {log.late} of {log.scheduled} arrivals were sent more than 0.1 s late "
            f"(worst {log.max_lateness_s:.2f} s); raise --max-users or lower the rate"
        )
    return {
        "target_rps": target,
        # The schedule drawn from the target (random: a Poisson count over the run is off by ~poisson_rel_sd).
        "offered_rps": offered,
        "poisson_rel_sd": 1 / math.sqrt(target * duration) if target and duration else None,
        "achieved_rps": achieved,
        # The generator's own fidelity: arrivals sent in the run window against those scheduled in it.
        "achieved_vs_offered": achieved / offered if offered else None,
        "within_5pct": bool(offered) and abs(achieved / offered - 1) <= 0.05,
        "late_arrivals": log.late,
        "max_lateness_s": log.max_lateness_s,
        "saturated": saturated,
        "warning": warning,
    }


def tier_summary(records: list[RequestRecord]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for tier in sorted({r.tier for r in records}):
        mine = [r for r in records if r.tier == tier]
        ok = [r for r in mine if r.ok]
        ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
        itl = [g for r in ok for g in r.itl_s]
        tpot = [r.tpot_s for r in ok if r.tpot_s is not None]
        e2e = [r.e2e_s for r in ok if r.e2e_s]
        tok_s = [r.output_tokens / r.e2e_s for r in ok if r.e2e_s]
        counting: dict[str, int] = {}
        for r in ok:
            if r.stream:
                counting[r.counting] = counting.get(r.counting, 0) + 1
        out[tier] = {
            "requests": len(mine), "ok": len(ok), "streamed": sum(r.stream for r in mine),
            "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99),
            "itl_p50_s": percentile(itl, 50), "itl_p99_s": percentile(itl, 99),
            "tpot_p50_s": percentile(tpot, 50), "e2e_p50_s": percentile(e2e, 50),
            "output_tok_s_p50": percentile(tok_s, 50), "output_tokens": sum(r.output_tokens for r in ok),
            "token_counting": counting,
        }
    return out


def _status_counts(records: list[RequestRecord]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        key = str(r.status) if r.status else "no response"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def _refusals(records: list[RequestRecord]) -> dict[str, dict[str, Any]]:
    """429 and 503 answers by status: how many, how many said when to come back (Retry-After), and the range."""
    out: dict[str, dict[str, Any]] = {}
    for status in (429, 503):
        refused = [r for r in records if r.status == status]
        told = [r.retry_after_s for r in refused if r.retry_after_s is not None]
        if refused:
            out[str(status)] = {"count": len(refused), "with_retry_after": len(told),
                                "retry_after_min_s": min(told, default=None),
                                "retry_after_max_s": max(told, default=None)}  # fmt: skip
    return out


def _prometheus(log: RunLog) -> tuple[dict[str, PromSeries] | None, str | None]:
    url = log.spec.get("prometheus")
    if not url:
        return None, None
    return fetch_panels(url, log.start_epoch, log.start_epoch + log.end_s)


def build_report(out: Path) -> int:
    """Write summary.json, the plots and report.html; print the verdicts last. 0: every SLO holds, 1: not."""
    from loadtests.plots import plot_all  # matplotlib only where a report is drawn

    log, records = read_records(out)
    slo = load_slo(log.spec.get("slo_file"))
    verdicts = evaluate(records, slo, log.duration_s)
    panels, prom_error = _prometheus(log)
    plots = plot_all(records, log.target, log.end_s, panels, out)
    code = 0 if all(v.ok for v in verdicts) else 1
    summary = {
        "scenario": log.spec.get("scenario"), "host": log.spec.get("host"),
        "verdict": "pass" if code == 0 else "fail", "exit_code": code,
        "rates": rate_summary(log, records),
        "requests": {"total": len(records), "ok": sum(r.ok for r in records), "by_status": _status_counts(records),
                     "refusals": _refusals(records)},
        "goodput_rps": goodput_rps(records, slo, log.duration_s),
        "tiers": tier_summary(records),
        "slo": [asdict(v) for v in verdicts],
        "prometheus": None if panels is None else {k: asdict(v) for k, v in panels.items()},
        "prometheus_error": prom_error,
        "plots": plots, "notes": log.notes,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "report.html").write_text(_html(summary, verdicts, plots))
    return code


def print_tail(out: Path) -> int:
    """The last lines a run prints: rates, the report's path, each SLO's verdict; the exit code (1 without a
    summary: the run did not get that far)."""
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        print(f"loadtests: no report in {out} (see Locust's output above)", flush=True)
        return 1
    rates = summary["rates"]
    print(f"rate: {_rate_line(rates)}")
    if rates["warning"]:
        print(f"WARNING: {rates['warning']}")
    print(f"report: {out.resolve() / 'report.html'}")
    for v in summary["slo"]:
        print(Verdict(**v).line())
    print(f"verdict: {summary['verdict'].upper()}", flush=True)
    return int(summary["exit_code"])


def _rate_line(rates: dict[str, Any]) -> str:
    """Target, offered (the arrivals drawn, off the target by chance) and achieved (sent on time) rates."""
    spread = f" (a random draw: +-{rates['poisson_rel_sd']:.0%} expected)" if rates["poisson_rel_sd"] else ""
    ratio = f" ({rates['achieved_vs_offered']:.0%} of offered)" if rates["achieved_vs_offered"] is not None else ""
    return (f"target {rates['target_rps']:.3g}/s, offered {rates['offered_rps']:.3g}/s{spread}, "
            f"achieved {rates['achieved_rps']:.3g}/s{ratio}")


def _table(rows: list[list[Any]], head: list[str]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))

    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + f"</tr>{body}</table>"


def _html(summary: dict[str, Any], verdicts: list[Verdict], plots: list[str]) -> str:
    rates = summary["rates"]
    slo_rows = [["PASS" if v.ok else "FAIL", v.name, "n/a" if v.measured is None else v.measured, f"{v.op} {v.bound:g}"]
                for v in verdicts]
    tier_rows = [[t, s["requests"], s["ok"], s["ttft_p50_s"], s["ttft_p99_s"], s["itl_p50_s"], s["itl_p99_s"],
                  s["tpot_p50_s"], s["output_tok_s_p50"]] for t, s in summary["tiers"].items()]
    warn = f"<p class='warn'>{html.escape(rates['warning'])}</p>" if rates["warning"] else ""
    warn += "".join(f"<p class='warn'>{html.escape(note)}</p>" for note in summary["notes"])
    prom = "" if not summary["prometheus_error"] else f"<p class='warn'>{html.escape(summary['prometheus_error'])}</p>"
    images = "".join(f"<figure><img src='{html.escape(p)}' alt='{html.escape(p)}'></figure>" for p in plots)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>surge load test: {summary['verdict']}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}
.warn{{color:#b00}}img{{max-width:100%}}</style></head><body>
<h1>surge load test ({html.escape(str(summary['scenario']))}): {summary['verdict'].upper()}</h1>
<p>Target {html.escape(str(summary['host']))}. Rate: {html.escape(_rate_line(rates))};
goodput {summary['goodput_rps']:.3g}/s;
{summary['requests']['total']} requests, by status {html.escape(json.dumps(summary['requests']['by_status']))};
refusals and their Retry-After {html.escape(json.dumps(summary['requests']['refusals']))}.</p>
{warn}{prom}<h2>SLOs</h2>{_table(slo_rows, ["verdict", "SLO", "measured", "goal"])}
<h2>Per tier (seconds)</h2>{_table(tier_rows, ["tier", "requests", "ok", "TTFT p50", "TTFT p99", "ITL p50",
                                              "ITL p99", "TPOT p50", "tok/s p50"])}
<h2>Over time</h2>{images}</body></html>
"""
