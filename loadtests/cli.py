"""Command line: check the run, then run Locust in a process of its own (never beside Ray) and pass on its code.

    python -m loadtests run --scenario promo-day|steady|replay --host URL [--trace FILE] --compress N
        --report DIR [--slo FILE] [--prometheus URL] [--web] [--keys FILE] [--tiers free=0.6@4,pro=0.4@2]
    python -m loadtests report DIR          # rebuild a report from a finished run's files

Exit codes: 0 every SLO holds, 1 one fails, 2 the run could not start as asked.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from loadtests.spec import SPEC_ENV, RunSpec, TierShare, UsageError, resolve_keys

__all__ = ["build_parser", "locust_command", "main", "parse_tiers", "spec_from_args"]

_LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def parse_tiers(text: str) -> dict[str, TierShare]:
    """`free=0.6@4,pro=0.3@2,enterprise=0.1`: tier=weight, optionally @priority."""
    tiers: dict[str, TierShare] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, rest = part.partition("=")
        weight, _, priority = rest.partition("@")
        try:
            tiers[name] = TierShare(weight=float(weight or 1), priority=int(priority) if priority else None)
        except ValueError as exc:
            raise UsageError(f"--tiers: cannot read '{part}' (tier=weight[@priority])") from exc
    if not tiers:
        raise UsageError("--tiers names no tier")
    return tiers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtests", description="surge promo-day load tests")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a scenario and write its report")
    run.add_argument("--scenario", required=True, choices=["steady", "promo-day", "replay"])
    run.add_argument("--host", required=True, help="base URL of the OpenAI API, e.g. http://127.0.0.1:8000")
    run.add_argument("--report", required=True, help="report directory")
    run.add_argument("--trace", help="replay: a t_s,rps or TIMESTAMP,ContextTokens,GeneratedTokens CSV")
    run.add_argument("--compress", type=float, default=1.0, help="profile seconds per run second")
    run.add_argument("--slo", help="SLO YAML (default: error rate < 2 %% only)")
    run.add_argument("--prometheus", help="Prometheus base URL for the replicas / KV-cache plots")
    run.add_argument("--web", action="store_true", help="open Locust's web UI instead of running headless")
    run.add_argument("--web-port", type=int, default=8089)
    run.add_argument("--keys", help="API keys: one bare key, or a YAML mapping tier -> key")
    run.add_argument("--tiers", help="tier mix, e.g. free=0.6@4,pro=0.3@2,enterprise=0.1@1")
    run.add_argument("--model", default="surge-tiny")
    run.add_argument("--rate", type=float, default=2.0, help="steady rate or promo-day baseline, requests/s")
    run.add_argument("--rate-scale", type=float, default=1.0, help="replay: multiply the trace's rate")
    run.add_argument("--duration", type=float, default=60.0, help="steady: run seconds")
    run.add_argument("--arrivals", choices=["poisson", "gamma"], default="poisson")
    run.add_argument("--cv", type=float, default=1.0, help="gamma arrivals: CV of the gaps (> 1: bursty)")
    run.add_argument("--stream-fraction", type=float, default=0.9)
    run.add_argument("--max-tokens", type=int, default=64)
    run.add_argument("--ignore-eos", action="store_true", help="answers of exactly --max-tokens tokens")
    run.add_argument("--max-turns", type=int, help="turns per conversation at most (default: all)")
    run.add_argument("--max-users", type=int, default=256)
    run.add_argument("--seed", type=int, default=0)
    report = sub.add_parser("report", help="rebuild the report of a finished run")
    report.add_argument("dir")
    return parser


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    """The run's spec, checked before Locust starts: every problem here is a usage error."""
    from pydantic import ValidationError

    from loadtests.profiles import load_trace
    from loadtests.slo import load_slo

    if not args.host.startswith(("http://", "https://")):
        raise UsageError(f"--host must be an http(s) URL, not {args.host!r}")
    if args.scenario == "replay" and not args.trace:
        raise UsageError("--scenario replay needs --trace FILE")
    if args.trace:
        load_trace(args.trace)
    load_slo(args.slo)
    fields = {
        "scenario": args.scenario, "host": args.host.rstrip("/"), "model": args.model,
        "report_dir": str(Path(args.report).resolve()),
        "trace": str(Path(args.trace).resolve()) if args.trace else None,
        "slo_file": str(Path(args.slo).resolve()) if args.slo else None, "prometheus": args.prometheus,
        "compress": args.compress, "rate_rps": args.rate, "rate_scale": args.rate_scale,
        "duration_s": args.duration, "process": args.arrivals, "cv": args.cv,
        "stream_fraction": args.stream_fraction, "max_tokens": args.max_tokens,
        "ignore_eos": args.ignore_eos, "max_turns": args.max_turns,
        "max_users": args.max_users,
        "seed": args.seed,
    }
    if args.tiers:
        fields["tiers"] = parse_tiers(args.tiers)
    try:
        spec = RunSpec.model_validate(fields)
    except ValidationError as exc:
        raise UsageError(str(exc)) from exc
    return spec.model_copy(update={"keys": resolve_keys(list(spec.tiers), args.keys)})


def locust_command(spec: RunSpec, web: bool = False, web_port: int = 8089) -> list[str]:
    out = Path(spec.report_dir)
    cmd = [sys.executable, "-m", "locust", "-f", str(_LOCUSTFILE), "--host", spec.host,
           "--csv", str(out / "locust"), "--csv-full-history", "--html", str(out / "locust.html"),
           "--loglevel", "WARNING", "--exit-code-on-error", "1"]
    if web:
        return [*cmd, "--web-host", "127.0.0.1", "--web-port", str(web_port)]
    return [*cmd, "--headless", "--only-summary"]


def _run(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    Path(spec.report_dir).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, SPEC_ENV: spec.model_dump_json()}
    if args.web:
        print(f"Locust web UI on http://127.0.0.1:{args.web_port} (Ctrl-C writes the report)", flush=True)
    (Path(spec.report_dir) / "summary.json").unlink(missing_ok=True)  # a stale verdict must not be printed
    # Its own process: Locust's gevent patching and Ray cannot share one (../shared/notes/ray-serve.md).
    # A session of its own: a terminal's Ctrl-C reaching Locust's web mode leaves it hung; SIGTERM from here
    # makes it quit cleanly, writing the report.
    proc = subprocess.Popen(locust_command(spec, args.web, args.web_port), env=env, start_new_session=True)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        code = proc.wait()
    from loadtests.report import print_tail

    verdict = print_tail(Path(spec.report_dir))
    return code if code != 0 else verdict


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "report":
            from loadtests.report import build_report, print_tail

            build_report(Path(args.dir))
            return print_tail(Path(args.dir))
        return _run(args)
    except UsageError as exc:
        print(f"loadtests: {exc}", file=sys.stderr)
        return 2
