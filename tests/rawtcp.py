"""A raw TCP server on 127.0.0.1 for the faults an HTTP server cannot produce on purpose.

The fake upstream (`tests.fakes`) answers in well-formed HTTP, so it can misbehave only as far as
aiohttp lets it. This server speaks HTTP by hand: each connection runs a *script*, a list of steps
(read the request, send these bytes, pause, reset, half-close, stay silent), so a test can place
a reset before the request is read, end a chunked body halfway through a chunk, or cut one
response into many TCP writes at the worst possible offsets.

It records every connection: when it opened, what request arrived, when it closed and who closed
it. `closed_by == "peer"` after a timeout or a client's disconnect is how a test sees that the
gateway really abandoned the upstream connection instead of leaving it open.

It runs on the servers thread of `tests.conftest` (`servers.run(raw.start())`), like the fake; the
test's thread only reads the records. It must not import `tensorwall_proxy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

# --------------------------------------------------------------------------------------------------
# Steps of a script


@dataclass(frozen=True, slots=True)
class Read:
    """Read one HTTP/1.1 request: the head, then a Content-Length or chunked body."""


@dataclass(frozen=True, slots=True)
class Send:
    """Write bytes. With `cuts`, each piece between two cut offsets is a write of its own, `gap`
    seconds apart (TCP_NODELAY is on), so the reader gets them as separate segments."""

    data: bytes
    cuts: Sequence[int] = ()
    gap: float = 0.02


@dataclass(frozen=True, slots=True)
class Pause:
    seconds: float


@dataclass(frozen=True, slots=True)
class Reset:
    """SO_LINGER 0, then close: the peer gets a RST, not a FIN."""


@dataclass(frozen=True, slots=True)
class HalfClose:
    """shutdown(SHUT_WR): a FIN, while the connection stays open for reading."""


@dataclass(frozen=True, slots=True)
class Close:
    """An orderly close (FIN) from our side."""


@dataclass(frozen=True, slots=True)
class Silence:
    """Send nothing more and wait until the peer closes (or `seconds` pass, or the server stops)."""

    seconds: float = 60.0


Step = Read | Send | Pause | Reset | HalfClose | Close | Silence
Script = Sequence[Step]

READ = Read()
RESET = Reset()
HALF_CLOSE = HalfClose()
CLOSE = Close()
SILENCE = Silence()


# --------------------------------------------------------------------------------------------------
# What a script sends: HTTP heads, chunks, SSE events in OpenAI's shape


def head(status: int = 200, headers: dict[str, str] | None = None, *, reason: str = "") -> bytes:
    """A status line and headers, ending with the blank line."""
    reasons = {200: "OK", 429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway"}
    lines = [f"HTTP/1.1 {status} {reason or reasons.get(status, 'Status')}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


SSE_HEAD = head(200, {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked",
                      "Connection": "close"})
"""The head of a chunked SSE response that closes its connection afterwards."""

LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def sse(data: dict[str, Any] | str) -> bytes:
    """One `data:` event."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


DONE = sse("[DONE]")


def completion_chunk(content: str | None = None, *, role: bool = False, finish: str | None = None) -> bytes:
    """An OpenAI `chat.completion.chunk` event."""
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
        delta["content"] = ""
    if content is not None:
        delta["content"] = content
    return sse({"id": "chatcmpl-raw", "object": "chat.completion.chunk", "created": 1715367049,
                "model": "raw-model", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def completion_body(content: str) -> bytes:
    """A complete, non-streamed OpenAI `chat.completion` body."""
    return json.dumps({
        "id": "chatcmpl-raw", "object": "chat.completion", "created": 1715367049, "model": "raw-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }).encode()


def json_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> bytes:
    """A whole response with Content-Length, closing its connection."""
    return head(status, {"Content-Type": "application/json", "Content-Length": str(len(body)),
                         "Connection": "close", **(headers or {})}) + body


# --------------------------------------------------------------------------------------------------
# The server


ClosedBy = Literal["server", "peer", "stopped"]


@dataclass(slots=True)
class RawConnection:
    """One accepted connection, as the server saw it (times are `time.monotonic()`)."""

    number: int
    opened_at: float
    request: bytes = b""  # head and body, when a Read step ran
    request_read_at: float | None = None
    writes: int = 0
    closed_at: float | None = None
    closed_by: ClosedBy | None = None
    peer_reset: bool = False  # the peer closed with a RST rather than a FIN
    errors: list[str] = field(default_factory=list)

    @property
    def request_body(self) -> bytes:
        return self.request.partition(b"\r\n\r\n")[2]


class RawServer:
    """A TCP server whose every connection plays a script.

    `script` is one list of steps for every connection, or a function of the connection's number
    (0, 1, …) returning its script, for a server whose second connection behaves unlike its first.
    """

    def __init__(self, script: Script | Callable[[int], Script]) -> None:
        self._script = script
        self.connections: list[RawConnection] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0

    async def start(self) -> str:
        """Listen on a free 127.0.0.1 port; returns `http://127.0.0.1:PORT`."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.base_url

    async def stop(self) -> None:
        """Stop listening and end every connection still playing its script."""
        if self._server is None:
            return
        self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        await self._server.wait_closed()
        self._server = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = len(self.connections)
        record = RawConnection(number, time.monotonic())
        self.connections.append(record)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        sock = writer.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        script = self._script(number) if callable(self._script) else self._script
        try:
            for step in script:
                if record.closed_at is not None:
                    break
                await self._play(step, reader, writer, record)
            if record.closed_at is None:
                await _drain_quietly(writer)
                _closed(record, "server")
        except asyncio.CancelledError:
            # Only stop() cancels: the record says the connection was still open then.
            if record.closed_at is None:
                _closed(record, "stopped")
            raise
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            # The peer went away while we were reading or writing.
            record.errors.append(type(exc).__name__)
            record.peer_reset = record.peer_reset or isinstance(exc, ConnectionResetError)
            if record.closed_at is None:
                _closed(record, "peer")
        finally:
            self._tasks.discard(task)
            # Whoever ended it, the transport is ours to close: an orderly close after a script that
            # ran to its end, an abort (already done for a Reset) otherwise.
            if record.closed_by == "server" and not writer.transport.is_closing():
                writer.close()
            else:
                writer.transport.abort()

    async def _play(self, step: Step, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    record: RawConnection) -> None:
        match step:
            case Read():
                record.request = await _read_request(reader)
                record.request_read_at = time.monotonic()
            case Send(data=data, cuts=cuts, gap=gap):
                offsets = [0, *sorted(c for c in cuts if 0 < c < len(data)), len(data)]
                for i, (start, end) in enumerate(itertools.pairwise(offsets)):
                    if i and gap:
                        await asyncio.sleep(gap)
                    writer.write(data[start:end])
                    await writer.drain()
                    record.writes += 1
            case Pause(seconds=seconds):
                await asyncio.sleep(seconds)
            case Reset():
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                _closed(record, "server")
                writer.transport.abort()
            case HalfClose():
                await writer.drain()
                writer.write_eof()
            case Close():
                await _drain_quietly(writer)
                _closed(record, "server")  # the transport is closed when the script ends
            case Silence(seconds=seconds):
                await _until_peer_closes(reader, record, seconds)


def _closed(record: RawConnection, by: ClosedBy) -> None:
    record.closed_at = time.monotonic()
    record.closed_by = by


async def _drain_quietly(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        await writer.drain()


async def _until_peer_closes(reader: asyncio.StreamReader, record: RawConnection, seconds: float) -> None:
    """Read and discard until EOF or a reset: the peer closing is what we are waiting to see."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return
    except ConnectionResetError:
        record.peer_reset = True
    _closed(record, "peer")


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    request_head = await reader.readuntil(b"\r\n\r\n")
    headers = {}
    for line in request_head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        return request_head + await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                return request_head + body
            body += data[:-2]
    return request_head
