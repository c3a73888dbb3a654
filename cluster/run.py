"""`make run`: serve the configured pools on a local Ray cluster until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from cluster.config import ConfigError, SurgeConfig, load_config
from cluster.serving import serving

__all__ = ["main"]


def _banner(url: str, config: SurgeConfig) -> str:
    model = config.pools[0].model_id
    return (
        f"\nsurge is serving on {url}/v1  (models: {', '.join(n for p in config.pools for n in p.model_names)})\n"
        f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        f"    -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'\n"
        "Press Ctrl-C to stop.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", help="YAML config (default: $SURGE_CONFIG or configs/local.yaml)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"surge: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    with serving(config) as url:
        # Installed after Ray starts: ray.init replaces SIGTERM's handler with one that exits at once.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        print(_banner(url, config), flush=True)
        stop.wait()
        print("surge: shutting down Serve and Ray ...", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
