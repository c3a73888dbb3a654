"""`python -m cluster.keys client create|list|revoke`: OAuth clients, beside the API keys.

`create` prints `client_id: <id>` and `client_secret: <secret>` on lines of their own; the secret is shown only
this once (the store keeps an scrypt hash).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from deployments.admission.clients import Client, create_client, list_clients, revoke_client
from deployments.admission.store import KeyStore

__all__ = ["add_client_commands", "run_client_command"]

_EXIT_NOT_FOUND = 1
_EXIT_USAGE = 2


def add_client_commands(commands: Any, dsn: argparse.ArgumentParser) -> None:
    """Add `client create|list|revoke` to the keys CLI's subcommands."""
    client = commands.add_parser("client", help="manage OAuth clients (client credentials)")
    actions = client.add_subparsers(dest="client_command", required=True)
    create = actions.add_parser("create", parents=[dsn], help="create a client and print its secret once")
    create.add_argument("--tier", required=True, help="a tier of the configuration (free, pro, enterprise)")
    create.add_argument("--name", required=True, help="a name for the client, unique among active clients")
    create.add_argument("--webhook-url", help="where this client's quota warnings are POSTed")
    create.add_argument("--email", help="where this client's quota warnings are e-mailed (when SMTP is set up)")
    actions.add_parser("list", parents=[dsn], help="list clients (never their secrets)")
    revoke = actions.add_parser("revoke", parents=[dsn], help="revoke a client by name or id; its tokens stop")
    revoke.add_argument("name_or_id")


def _format_time(epoch_s: float | None) -> str:
    return "-" if epoch_s is None else datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _format_clients(clients: Sequence[Client]) -> str:
    rows = [("ID", "NAME", "TIER", "WEBHOOK", "CREATED", "REVOKED")]
    rows += [(c.id, c.name, c.tier, c.webhook_url or "-", _format_time(c.created_at), _format_time(c.revoked_at))
             for c in clients]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


async def run_client_command(args: argparse.Namespace, store: KeyStore) -> int:
    """Run one `client` subcommand against the store; returns the exit status."""
    if args.client_command == "create":
        if args.webhook_url and not args.webhook_url.startswith(("http://", "https://")):
            print("error: --webhook-url must be an http:// or https:// URL", file=sys.stderr)
            return _EXIT_USAGE
        try:
            client, secret = await create_client(
                store, args.name, args.tier, webhook_url=args.webhook_url, email=args.email
            )
        except ValueError as exc:  # a taken or invalid name
            print(f"error: {exc}", file=sys.stderr)
            return _EXIT_USAGE
        note = f"created client {client.name} (tier {client.tier}); the secret is shown only this once:"
        print(note, file=sys.stderr)
        print(f"client_id: {client.id}")
        print(f"client_secret: {secret}")
        return 0
    if args.client_command == "list":
        print(_format_clients(await list_clients(store)))
        return 0
    if await revoke_client(store, args.name_or_id):
        print(f"revoked client {args.name_or_id}")
        return 0
    print(f"error: no active client named or with id {args.name_or_id!r}", file=sys.stderr)
    return _EXIT_NOT_FOUND
