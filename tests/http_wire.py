"""HTTP on a raw socket, for requests no client library would send: each response as the server framed it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

WAIT_S = 5.0
"""Bound on reading one response."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One response: its status line, headers (names as sent) and body."""

    status_line: str
    headers: dict[str, str]
    body: bytes

    @property
    def status(self) -> int:
        return int(self.status_line.split(" ")[1])


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """The next response on `reader`, its body framed by Content-Length (the gateway always sends one)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
    status_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("Content-Length", "0"))), WAIT_S)
    return Answer(status_line, headers, body)


async def is_closed(reader: asyncio.StreamReader) -> bool:
    """True when the server closes the connection (with nothing more to say) within WAIT_S."""
    try:
        return await asyncio.wait_for(reader.read(1), WAIT_S) == b""
    except ConnectionResetError:
        return True


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A connection to 127.0.0.1:`port`, closed on exit."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def exchange(port: int, data: bytes) -> Answer:
    """Send `data` on a fresh connection; the first response."""
    async with connection(port) as (reader, writer):
        writer.write(data)
        await writer.drain()
        return await read_answer(reader)


async def exchange_then_closed(port: int, data: bytes) -> tuple[Answer, bool]:
    """Send `data` on a fresh connection; the first response, and whether the server then closed the connection."""
    async with connection(port) as (reader, writer):
        writer.write(data)
        await writer.drain()
        answer = await read_answer(reader)
        return answer, await is_closed(reader)
