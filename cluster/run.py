"""`make run`: serve the configured pools on a local Ray cluster until Ctrl-C or SIGTERM.

Two processes. The outer one never starts Ray: it is the child subreaper of the run, so every process orphaned
below it (vLLM's engine processes, Ray's HAProxy) is reparented to it, and once the server process has exited,
however it exited, it stops whatever of the run is left. The server process (`--serve`) starts Ray and the app;
Ray may end it with `_exit` (its core worker does when the GCS goes away under it), which skips any cleanup
of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from cluster.config import PROJECT_ROOT, ConfigError, SurgeConfig, load_config
from cluster.processes import adopt_orphans, port_holder, stop_descendants
from cluster.serving import metrics_url, serving

__all__ = ["main"]

# The development key in plain text, for this machine's developer only (the store keeps hashes).
_DEV_KEY_FILE = Path(os.environ.get("SURGE_DEV_KEY_FILE") or PROJECT_ROOT / ".cache" / "dev-api-key")


def _banner(url: str, config: SurgeConfig, key_line: str) -> str:
    model = config.pools[0].model_id
    auth = " -H \"Authorization: Bearer $SURGE_API_KEY\"" if key_line else ""
    return (
        f"\nsurge is serving on {url}/v1  (models: {', '.join(config.route_table())})\n"
        f"{key_line}"
        f"  curl {url}/v1/chat/completions{auth} -H 'Content-Type: application/json' \\\n"
        f"    -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'\n"
        f"{_metrics_line(config)}"
        "Press Ctrl-C to stop.\n"
    )


def _metrics_line(config: SurgeConfig) -> str:
    url = metrics_url(config)
    if not config.observability.metrics.enabled or url is None:
        return ""
    return f"Prometheus metrics (surge's ray_surge_*, vLLM's ray_vllm_*, Ray's own): {url}\n"


def _dev_token_warning(config: SurgeConfig) -> str:
    """A banner line when OAuth tokens will be signed with the generated development key."""
    tokens = config.admission.tokens
    configured = tokens.signing_key_files or os.environ.get(tokens.signing_key_env)
    if not config.admission.enabled or not tokens.dev_key_file or configured:
        return ""
    return (f"  WARNING: OAuth access tokens are signed with a DEVELOPMENT key ({tokens.dev_key_file});"
            " configure admission.tokens.signing_key_files for anything but local use.\n")  # fmt: skip


def _dev_key(dsn: str) -> str:
    """A working development key: the one saved by an earlier run if still valid, else a new one."""
    from deployments.admission.store import open_store

    async def fetch() -> str:
        async with await open_store(dsn) as store:
            if _DEV_KEY_FILE.exists():
                saved = _DEV_KEY_FILE.read_text().strip()
                if await store.lookup(saved) is not None:
                    return saved
            _, plaintext = await store.create_key(f"dev-{int(time.time())}", "enterprise")
        _DEV_KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
        _DEV_KEY_FILE.write_text(plaintext + "\n")
        _DEV_KEY_FILE.chmod(0o600)
        return plaintext

    return asyncio.run(fetch())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--serve"]:
        return _serve(args[1:])
    return _supervise(args)


_STOP_GRACE_S = 120.0  # the server process's own shutdown (Serve's, then Ray's) is bounded well within this


def _supervise(args: list[str]) -> int:
    """Run the server process, pass it Ctrl-C/SIGTERM, then stop what of the run outlived it."""
    adopt_orphans()
    server = subprocess.Popen([sys.executable, "-m", "cluster.run", "--serve", *args])
    signalled: list[float] = []

    def forward(sig: int, _frame: object) -> None:
        signalled.append(time.monotonic())
        with contextlib.suppress(ProcessLookupError):
            server.send_signal(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    while server.poll() is None:
        if signalled and time.monotonic() - signalled[0] > _STOP_GRACE_S:
            server.kill()
        time.sleep(0.2)
    if left := stop_descendants():
        print(f"surge: stopped processes that outlived Ray: {', '.join(left)}", file=sys.stderr, flush=True)
    return server.returncode if server.returncode >= 0 else 128 - server.returncode


def _serve(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.run", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config (default: $SURGE_CONFIG or configs/local.yaml)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"surge: {exc}", file=sys.stderr)
        return 2
    holder = port_holder(config.server.host, config.server.port)
    if holder is not None:
        print(f"surge: cannot serve on {config.server.host}:{config.server.port}: the port is in use by {holder}",
              file=sys.stderr)  # fmt: skip
        return 2
    key_line = ""
    if config.admission.enabled:
        key_line = f"  export SURGE_API_KEY={_dev_key(config.admission.key_store_dsn)}\n"
        key_line += _dev_token_warning(config)
    _serve_until(threading.Event(), config, key_line)
    return 0


def _serve_until(stop: threading.Event, config: SurgeConfig, key_line: str) -> None:
    with serving(config) as url:
        # Installed after Ray starts: ray.init replaces SIGTERM's handler with one that exits at once.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        print(_banner(url, config, key_line), flush=True)
        stop.wait()
        print("surge: shutting down Serve and Ray ...", flush=True)


if __name__ == "__main__":
    sys.exit(main())
