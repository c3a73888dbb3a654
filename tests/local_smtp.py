"""A minimal local SMTP receiver (EHLO, MAIL, RCPT, DATA, QUIT) for tests of the e-mail notifier."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["SmtpSink", "smtp_sink"]


class SmtpSink:
    """Keeps every message it accepts as (recipient, message text); `port` is where it listens."""

    def __init__(self) -> None:
        self.port = 0
        self.messages: list[tuple[str, str]] = []
        self.arrived = asyncio.Event()

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 sink ready\r\n")
        recipient, in_data = "", False
        lines: list[str] = []
        while line := await reader.readline():
            text = line.decode().rstrip("\r\n")
            if in_data:
                if text == ".":
                    self.messages.append((recipient, "\n".join(lines)))
                    self.arrived.set()
                    in_data, lines = False, []
                    writer.write(b"250 queued\r\n")
                else:
                    lines.append(text)
                continue
            verb = text.split(" ", 1)[0].upper()
            if verb == "RCPT":
                recipient = text.split(":", 1)[1].strip(" <>")
            if verb == "DATA":
                in_data = True
                writer.write(b"354 go ahead\r\n")
            elif verb == "QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()


@asynccontextmanager
async def smtp_sink() -> AsyncIterator[SmtpSink]:
    """An SmtpSink listening on a free port of 127.0.0.1 until the block ends."""
    sink = SmtpSink()
    server = await asyncio.start_server(sink.session, "127.0.0.1", 0)
    sink.port = server.sockets[0].getsockname()[1]
    try:
        yield sink
    finally:
        server.close()
        await server.wait_closed()
