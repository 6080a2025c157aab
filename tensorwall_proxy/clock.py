"""A stream's silence clock: it cancels the stream's task when the upstream says nothing for too long.

Two phases share it (DESIGN §8): ``first_byte`` from sending until the first upstream event, then
``idle`` between events. It is paused while the relay writes to the client, so a slow reader is
never taken for a silent upstream; but a write that stays blocked for a whole limit is a client
that has stopped reading, and that ends the stream too (``stalled``): otherwise it would hold its
slot and its upstream connection for as long as it likes.

``asyncio.timeout`` would do the same, but moving its deadline cancels one timer and schedules
another; the relay would do that twice per upstream read (paused for the write, then re-armed),
about 3 µs a read on uvloop. Here a read only notes the time. The one timer, when it fires,
looks at when the last event came: it re-arms for the time left, or expires. A stalled client
costs the write path nothing either: the timer finds the clock paused twice, a limit apart, with
nothing heard in between.
"""

from __future__ import annotations

import asyncio


class SilenceClock:
    """Cancel ``task`` once nothing arrived for ``limit`` seconds (``expired`` tells that cancel apart),
    or once one write to the client stayed blocked for ``limit`` seconds (``stalled`` as well)."""

    __slots__ = ("_handle", "_loop", "_seen", "_task", "expired", "last", "limit", "paused", "stalled")

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[object], limit: float) -> None:
        self._loop = loop
        self._task = task
        self.limit = limit
        self.last = loop.time()
        self.paused = False
        self.expired = False
        self.stalled = False
        self._seen: float | None = None  # `last` when the timer last found the clock paused
        self._handle = loop.call_at(self.last + limit, self._check)

    def heard(self) -> None:
        """Something arrived (or the client write finished): the silence starts over."""
        self.last = self._loop.time()

    def change(self, limit: float) -> None:
        """Start a phase with another limit, counted from now."""
        self.last = self._loop.time()
        if limit < self.limit:
            # The armed timer would fire too late for the shorter limit: arm it again.
            self._handle.cancel()
            self._handle = self._loop.call_at(self.last + limit, self._check)
        self.limit = limit

    def stop(self) -> None:
        """The stream is over, one way or another."""
        self._handle.cancel()

    def _check(self) -> None:
        now = self._loop.time()
        if self.paused:
            if self._seen != self.last:
                # A write in progress is not silence: look again a whole limit later.
                self._seen = self.last
                self._handle = self._loop.call_at(now + self.limit, self._check)
                return
            # Paused then and now, nothing heard in between (the relay notes an event after each
            # write): one write has been blocked for at least a limit. The client stopped reading.
            self.stalled = True
        else:
            self._seen = None
            due = self.last + self.limit
            if now < due:
                self._handle = self._loop.call_at(due, self._check)
                return
        self.expired = True
        self._task.cancel()
