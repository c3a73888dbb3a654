"""Manage API keys: `python -m cluster.keys create --tier pro --name NAME | list | revoke NAME_OR_ID`, and
OAuth clients: `python -m cluster.keys client create --tier pro --name NAME | client list | client revoke ID`.

The key store is `--dsn`, else `$SURGE_KEY_STORE_DSN`, else the configuration's `admission.key_store_dsn`.
A key's plaintext is printed once, by `create`, and is never stored or shown again.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from cluster.client_cli import add_client_commands, run_client_command
from cluster.config import AdmissionConfig
from deployments.admission.store import ApiKey, KeyNameTakenError, KeyStore, open_store

__all__ = ["DEV_KEY_NAME", "DEV_KEY_TIER", "admission_config", "default_dsn", "ensure_dev_key", "main"]

DEV_KEY_NAME = "dev"
DEV_KEY_TIER = "enterprise"
_DSN_ENV = "SURGE_KEY_STORE_DSN"
_EXIT_NOT_FOUND = 1
_EXIT_USAGE = 2


def admission_config() -> AdmissionConfig:
    """The admission section of surge's configuration, or the defaults when the configuration has none."""
    from cluster.config import ConfigError, load_config

    try:
        config = load_config()
    except ConfigError as exc:
        print(f"warning: using default admission settings: {exc}", file=sys.stderr)
        return AdmissionConfig()
    admission = getattr(config, "admission", None)
    return admission if isinstance(admission, AdmissionConfig) else AdmissionConfig()


def default_dsn(config: AdmissionConfig | None = None) -> str:
    """`$SURGE_KEY_STORE_DSN`, else the configured key store."""
    return os.environ.get(_DSN_ENV) or (config or AdmissionConfig()).key_store_dsn


async def ensure_dev_key_async(dsn: str | None = None) -> str | None:
    """Create an enterprise key named "dev" when the store has no active key; its plaintext, else None."""
    store = await open_store(dsn or default_dsn())
    async with store:
        if any(not key.revoked for key in await store.list_keys()):
            return None
        try:
            _, plaintext = await store.create_key(DEV_KEY_NAME, DEV_KEY_TIER)
        except KeyNameTakenError:  # another process created it first
            return None
        return plaintext


def ensure_dev_key(dsn: str | None = None) -> str | None:
    """`ensure_dev_key_async` for callers without an event loop (e.g. `make run`)."""
    return asyncio.run(ensure_dev_key_async(dsn))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cluster.keys", description="Manage surge API keys.")
    dsn = argparse.ArgumentParser(add_help=False)
    dsn.add_argument("--dsn", help=f"key store DSN (default: ${_DSN_ENV} or the configuration's)")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", parents=[dsn], help="create a key and print it once")
    create.add_argument("--tier", required=True, help="a tier of the configuration (free, pro, enterprise)")
    create.add_argument("--name", required=True, help="a name for the key, unique among active keys")
    commands.add_parser("list", parents=[dsn], help="list keys (never the keys themselves)")
    revoke = commands.add_parser("revoke", parents=[dsn], help="revoke a key by name or id")
    revoke.add_argument("name_or_id")
    add_client_commands(commands, dsn)
    return parser


def _format_time(epoch_s: float | None) -> str:
    if epoch_s is None:
        return "-"
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _format_keys(keys: Sequence[ApiKey]) -> str:
    rows = [("ID", "NAME", "TIER", "PREFIX", "CREATED", "REVOKED")]
    rows += [
        (k.id, k.name, k.tier, k.prefix + "...", _format_time(k.created_at), _format_time(k.revoked_at)) for k in keys
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


async def _run(args: argparse.Namespace, store: KeyStore) -> int:
    if args.command == "client":
        return await run_client_command(args, store)
    if args.command == "create":
        try:
            key, plaintext = await store.create_key(args.name, args.tier)
        except ValueError as exc:  # a taken or invalid name
            print(f"error: {exc}", file=sys.stderr)
            return _EXIT_USAGE
        note = f"created key {key.id} ({key.name}, tier {key.tier}); it is shown only this once:"
        print(note, file=sys.stderr)
        print(plaintext)
        return 0
    if args.command == "list":
        print(_format_keys(await store.list_keys()))
        return 0
    if await store.revoke(args.name_or_id):
        print(f"revoked {args.name_or_id}")
        return 0
    print(f"error: no active key named or with id {args.name_or_id!r}", file=sys.stderr)
    return _EXIT_NOT_FOUND


async def _main(args: argparse.Namespace, dsn: str) -> int:
    store = await open_store(dsn)
    async with store:
        return await _run(args, store)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 for usage errors such as an unknown tier)."""
    args = _parser().parse_args(argv)
    config = admission_config()
    creating = args.command == "create" or getattr(args, "client_command", None) == "create"
    if creating and args.tier not in config.tiers:
        known = ", ".join(sorted(config.tiers))
        print(f"error: unknown tier {args.tier!r}; known tiers: {known}", file=sys.stderr)
        return _EXIT_USAGE
    return asyncio.run(_main(args, args.dsn or default_dsn(config)))


if __name__ == "__main__":
    sys.exit(main())
