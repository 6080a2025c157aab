"""systemd's notify protocol without libsystemd: READY, RELOADING, STOPPING, STATUS and the watchdog.

Owns the one channel a process reports its state through. Under systemd that is ``$NOTIFY_SOCKET``,
a datagram socket named by a path or, with a leading ``@``, in the abstract namespace. A worker of
``serve --workers N`` reports to its parent instead, over a stream socket (one ``KEY=VALUE`` per
line): the parent is the only process systemd hears from (``NotifyAccess=main``).

It never raises: a notification that cannot be sent is logged once and dropped, because losing one
must not take the gateway down. When neither channel is set, nothing happens at all. It knows
nothing of HTTP or of the gateway; lifecycle.py decides when to say what.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("tensorwall_proxy")


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds: what ``MONOTONIC_USEC=`` carries next to ``RELOADING=1``."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def watchdog_interval(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between two ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled(3) advises.

    None when the watchdog is off: ``WATCHDOG_USEC`` unset, not a positive integer, or
    ``WATCHDOG_PID`` naming another process (the variables were inherited, not meant for us).
    """
    owner = environ.get("WATCHDOG_PID")
    if owner is not None and owner.strip() != str(os.getpid() if pid is None else pid):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None


def _notify_address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # the abstract namespace: a leading NUL, no file
    if value.startswith("/"):
        return value
    return None  # vsock: and other transports are not spoken here


class Notifier:
    """Sends state to systemd (a datagram per message) or to a ``--workers`` parent (a line per field).

    ``interval`` is the watchdog period of :meth:`watchdog` (None: no pings).
    """

    def __init__(self, sock: socket.socket | None = None, address: str | bytes | None = None,
                 interval: float | None = None) -> None:
        self._sock = sock
        self._address = address  # None: a connected stream socket (the parent channel)
        self.interval = interval if sock is not None else None
        self._failed = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier systemd asked for through ``$NOTIFY_SOCKET``; a silent one when it is unset."""
        env = os.environ if environ is None else environ
        value = env.get("NOTIFY_SOCKET", "")
        address = _notify_address(value) if value else None
        if address is None:
            if value:
                log.warning("NOTIFY_SOCKET=%r is not a unix socket address: not notifying systemd", value)
            return cls()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # Non-blocking: a full receive queue must drop a message, never stall the event loop.
        sock.setblocking(False)
        return cls(sock, address, watchdog_interval(env))

    @classmethod
    def to_parent(cls, fd: int, environ: Mapping[str, str] | None = None) -> Notifier:
        """A worker's channel to its parent: the inherited end of a socketpair, by descriptor."""
        env = os.environ if environ is None else environ
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        # The parent passes WATCHDOG_USEC on only when systemd's watchdog is on; it then expects
        # a ping from each worker's loop at the same pace, so that a hung worker stops its pings.
        return cls(sock, None, watchdog_interval(env))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @property
    def to_parent_channel(self) -> bool:
        return self._sock is not None and self._address is None

    def send(self, *fields: str) -> None:
        """Send ``KEY=VALUE`` fields as one message; errors are logged once, never raised."""
        if self._sock is None or not fields:
            return
        try:
            if self._address is None:
                self._sock.send("".join(f"{field}\n" for field in fields).encode())
            else:
                self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("cannot notify %s: %s (further failures are not logged)",
                            "the parent" if self._address is None else "systemd", exc.strerror or exc)

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1", *((f"STATUS={status}",) if status else ()))

    def reloading(self) -> None:
        # systemd ≥ 253 wants the monotonic time with RELOADING=1, to match it with the READY=1 after.
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")

    def stopping(self, status: str | None = None) -> None:
        self.send("STOPPING=1", *((f"STATUS={status}",) if status else ()))

    async def watchdog(self, healthy: Callable[[], bool] = lambda: True) -> None:
        """Ping ``WATCHDOG=1`` every :attr:`interval` while ``healthy()``; returns at once when off.

        It runs on the event loop on purpose: a loop stuck in a blocking call stops the pings, and
        systemd then restarts the service, which is the point of a watchdog.
        """
        if self.interval is None:
            return
        while True:
            if healthy():
                self.send("WATCHDOG=1")
            await asyncio.sleep(self.interval)

    def watch_parent(self, gone: Callable[[], None]) -> None:
        """Call ``gone()`` once when the parent's end of the channel closes (the parent died)."""
        sock = self._sock
        if sock is None or self._address is not None:
            return
        loop = asyncio.get_running_loop()

        def readable() -> None:
            try:
                data = sock.recv(64)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(sock.fileno())
                gone()

        loop.add_reader(sock.fileno(), readable)

    def close(self) -> None:
        # Called once the event loop is gone (after asyncio.run), so no reader is left to remove.
        if self._sock is not None:
            self._sock.close()
            self._sock = None
