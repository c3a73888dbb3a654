"""`python -m cluster.keys client ...`: create prints client_id and client_secret once, list and revoke."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from cluster.keys import main
from deployments.admission import open_store
from deployments.admission.clients import Client, verify_client


def verify(dsn: str, client_id: str, secret: str) -> Client | None:
    async def check() -> Client | None:
        async with await open_store(dsn) as store:
            return await verify_client(store, client_id, secret)

    return asyncio.run(check())


def test_create_prints_id_and_secret_on_lines_of_their_own(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = f"sqlite:///{tmp_path / 'keys.db'}"
    assert main(["client", "create", "--tier", "pro", "--name", "acme", "--dsn", dsn]) == 0
    out = capsys.readouterr().out
    client_id = re.search(r"^client_id: (\S+)$", out, re.MULTILINE)
    secret = re.search(r"^client_secret: (\S+)$", out, re.MULTILINE)
    assert client_id and secret
    client = verify(dsn, client_id[1], secret[1])
    assert client is not None and (client.name, client.tier) == ("acme", "pro")


def test_list_never_shows_a_secret_and_revoke_ends_the_client(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = f"sqlite:///{tmp_path / 'keys.db'}"
    main(["client", "create", "--tier", "free", "--name", "acme", "--dsn", dsn])
    out = capsys.readouterr().out
    client_id, secret = (line.split(": ", 1)[1] for line in out.splitlines())
    assert main(["client", "list", "--dsn", dsn]) == 0
    listing = capsys.readouterr().out
    assert client_id in listing and "acme" in listing and secret not in listing
    assert main(["client", "revoke", "acme", "--dsn", dsn]) == 0
    assert verify(dsn, client_id, secret) is None
    assert main(["client", "revoke", "acme", "--dsn", dsn]) == 1


def test_an_unknown_tier_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = f"sqlite:///{tmp_path / 'k.db'}"
    assert main(["client", "create", "--tier", "platinum", "--name", "x", "--dsn", dsn]) == 2
    assert "unknown tier" in capsys.readouterr().err
