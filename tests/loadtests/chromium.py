"""Headless Chromium (Debian's package, installed when absent) and a look at a page's images through the
DevTools protocol: whether each loaded, and its natural size."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["ensure_chromium", "page_images"]

# The machine's network is closed: without the background-networking flags Chromium keeps dialling out.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def ensure_chromium() -> str:
    """The chromium binary, installing Debian's `chromium` package when it is missing."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError("chromium is not installed and installing it needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-o", "DPkg::Lock::Timeout=600", "--no-install-recommends", "chromium"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        result = subprocess.run(install, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"apt-get install chromium failed:\n{result.stderr[-2000:]}")
    found = shutil.which("chromium")
    assert found, "chromium installed but not on PATH"
    return found


_IMAGES_JS = """
JSON.stringify({href: location.href, ready: document.readyState, images: Array.from(document.images).map(i => ({
  src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}))})
"""


async def _evaluate(port: int, url: str, timeout_s: float) -> Any:
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + timeout_s
        while True:  # the page is listed as about:blank until its navigation starts
            async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                pages = [p for p in await resp.json() if p.get("type") == "page" and p.get("url") == url]
            if pages:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"chromium did not open {url}")
            await asyncio.sleep(0.2)
        async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            for call in range(1, 10_000):
                # Until the document is the page itself, fully loaded (images included), not the blank one before.
                state = await _call(ws, call, _IMAGES_JS)
                if state["href"] == url and state["ready"] == "complete":
                    return state["images"]
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{url} did not finish loading: {state}")
                await asyncio.sleep(0.2)
    raise RuntimeError("unreachable")


async def _call(ws: aiohttp.ClientWebSocketResponse, call: int, expression: str) -> Any:
    params = {"expression": expression, "returnByValue": True}
    await ws.send_json({"id": call, "method": "Runtime.evaluate", "params": params})
    async for msg in ws:
        data = json.loads(msg.data)
        if data.get("id") == call:
            return json.loads(data["result"]["result"]["value"])
    raise RuntimeError("Chromium closed the DevTools connection")


def _devtools_port(profile: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    """Chromium writes the port it chose into its profile once DevTools listens."""
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}")
        if marker.exists() and marker.read_text().strip():
            return int(marker.read_text().split()[0])
        time.sleep(0.2)
    raise TimeoutError(f"chromium did not open DevTools within {timeout_s:g} s")


def page_images(page: Path, timeout_s: float = 120) -> list[dict[str, Any]]:
    """Open `page` in a fresh headless Chromium; each <img>'s src, whether it loaded, and its natural size."""
    binary = ensure_chromium()
    with tempfile.TemporaryDirectory(prefix="surge-chromium-") as profile:
        url = page.resolve().as_uri()
        cmd = [binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", url]
        # A session of its own: its renderers and crash handler go with it, not on writing into the profile.
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port = _devtools_port(Path(profile), proc, timeout_s)
            return list(asyncio.run(asyncio.wait_for(_evaluate(port, url, timeout_s), timeout_s)))
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Chromium and every process of its session: its profile is removed next, and a renderer still writing
    there made the removal fail ("Directory not empty: 'Default'")."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until the session's last process is gone (reaped by init)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
