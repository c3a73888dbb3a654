"""File contents on disk under the configured directory (a volume in Kubernetes), off the event loop."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from pathlib import Path

from cluster.config import PROJECT_ROOT

__all__ = ["FileContents"]

_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


class FileContents:
    """Bytes of each file at <dir>/<tenant>/<file id>; written whole to a temporary name, then renamed."""

    def __init__(self, directory: str) -> None:
        path = Path(directory)
        self._root = path if path.is_absolute() else PROJECT_ROOT / path

    def _path(self, tenant: str, file_id: str) -> Path:
        if not _SAFE.match(file_id):
            raise ValueError(f"not a file id: {file_id!r}")
        owner = tenant if _SAFE.match(tenant) else hashlib.sha256(tenant.encode()).hexdigest()[:32]
        return self._root / owner / file_id

    async def write(self, tenant: str, file_id: str, data: bytes) -> None:
        await asyncio.to_thread(self._write, self._path(tenant, file_id), data)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Durable before it is announced: a crash leaves either no file or the whole file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def read(self, tenant: str, file_id: str) -> bytes:
        return await asyncio.to_thread(self._path(tenant, file_id).read_bytes)

    async def delete(self, tenant: str, file_id: str) -> None:
        await asyncio.to_thread(self._path(tenant, file_id).unlink, missing_ok=True)
