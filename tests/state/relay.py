"""A TCP relay of a test's own between the store and the shared Redis, so an outage test can cut
or stall the way to Redis without touching Redis itself (DESIGN §14: never stop a shared Redis)."""

from __future__ import annotations

import asyncio
import contextlib


class TcpRelay:
    """Forwards 127.0.0.1:<port> to Redis, byte for byte, until told otherwise.

    ``close()`` refuses new connections and cuts the open ones (Redis is gone); ``start()`` again
    listens on the same port (Redis is back). While ``stalled``, what clients send is recorded in
    ``held`` and goes no further, and nothing comes back (Redis hangs).
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.stalled = False
        self.held = bytearray()
        self.accepted = 0
        self.closed_by_client = 0  # connections whose client end closed them
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        self._writers.add(client_writer)
        try:
            redis_reader, redis_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            self._tasks.discard(task)
            return
        self._writers.add(redis_writer)
        back = asyncio.create_task(self._pipe(redis_reader, client_writer, to_client=True))
        try:
            await self._pipe(client_reader, redis_writer, to_client=False)
        finally:
            back.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await back
            for writer in (client_writer, redis_writer):
                writer.transport.abort()
                self._writers.discard(writer)
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, to_client: bool) -> None:
        while data := await reader.read(65536):
            if self.stalled:
                if not to_client:
                    self.held += data
                continue
            writer.write(data)
            await writer.drain()
        if not to_client:
            self.closed_by_client += 1
