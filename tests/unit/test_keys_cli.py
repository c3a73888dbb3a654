"""`python -m cluster.keys`: create prints the key once, list never shows keys, revoke takes effect."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cluster.keys import main
from deployments.admission import open_store


def lookup(dsn: str, key: str) -> object:
    async def find() -> object:
        async with await open_store(dsn) as store:
            return await store.lookup(key)

    return asyncio.run(find())


def test_create_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = f"sqlite:///{tmp_path / 'keys.db'}"
    assert main(["create", "--tier", "pro", "--name", "shop", "--dsn", dsn]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("sk-surge-") and lookup(dsn, key) is not None

    assert main(["list", "--dsn", dsn]) == 0
    listing = capsys.readouterr().out
    assert "shop" in listing and "pro" in listing and key not in listing

    assert main(["revoke", "shop", "--dsn", dsn]) == 0
    assert lookup(dsn, key) is None


def test_unknown_tier_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["create", "--tier", "platinum", "--name", "x", "--dsn", f"sqlite:///{tmp_path / 'k.db'}"]) == 2
    assert "unknown tier" in capsys.readouterr().err


def test_revoking_an_unknown_key_fails(tmp_path: Path) -> None:
    assert main(["revoke", "ghost", "--dsn", f"sqlite:///{tmp_path / 'k.db'}"]) == 1
