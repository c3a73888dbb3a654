"""A throwaway PostgreSQL server for tests: Debian's postgresql, a temporary cluster on a free local port."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["PostgresUnavailableError", "postgres_bin_dir", "postgres_server"]

_SERVER_USER = "postgres"


class PostgresUnavailableError(RuntimeError):
    """PostgreSQL is neither installed nor installable here."""


def _find_bin_dir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    found = [Path(p).parent for p in candidates if (Path(p).parent / "pg_ctl").exists()]
    return found[-1] if found else None


def _apt_install() -> None:
    if os.geteuid() != 0:
        raise PostgresUnavailableError("PostgreSQL is not installed and installing it needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        result = subprocess.run(install, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise PostgresUnavailableError(f"apt-get install postgresql failed:\n{result.stderr[-2000:]}")


def postgres_bin_dir() -> Path:
    """The newest installed PostgreSQL's bin directory, installing Debian's postgresql when there is none."""
    bin_dir = _find_bin_dir()
    if bin_dir is None:
        _apt_install()
        bin_dir = _find_bin_dir()
    if bin_dir is None:
        raise PostgresUnavailableError("postgresql installed, but no initdb/pg_ctl under /usr/lib/postgresql")
    return bin_dir


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_server_user(args: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root.
    return ["runuser", "-u", _SERVER_USER, "--", *args] if os.geteuid() == 0 else args


def _run(args: list[str]) -> None:
    result = subprocess.run(_as_server_user(args), capture_output=True, text=True)
    if result.returncode != 0:
        raise PostgresUnavailableError(f"{' '.join(args[:2])} failed:\n{result.stdout}{result.stderr}")


@contextmanager
def postgres_server() -> Iterator[str]:
    """Run a temporary PostgreSQL cluster on 127.0.0.1; yields its DSN (superuser, trust auth)."""
    bin_dir = postgres_bin_dir()
    workdir = Path(tempfile.mkdtemp(prefix="surge-pg-"))
    if os.geteuid() == 0:
        shutil.chown(workdir, _SERVER_USER, _SERVER_USER)
    data, port = workdir / "data", _free_port()
    initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"]
    options = f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    try:
        _run([*initdb, "--locale", "C", "--no-sync"])
        _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(workdir / "server.log"), "-o", options,
              "-w", "-t", "60", "start"])  # fmt: skip
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            capture_output=True,
            check=False,
        )
        shutil.rmtree(workdir, ignore_errors=True)


def fresh_database(admin_dsn: str, prefix: str) -> str:
    """Create an empty database on the server of `admin_dsn` and return its DSN (one per test)."""
    import asyncio
    import uuid

    import asyncpg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()

    asyncio.run(create())
    return f"{admin_dsn.rsplit('/', 1)[0]}/{name}"
