"""What every store call goes through: the ``state.timeout_ms`` bound, and the one place a backend's
failure becomes a ``StoreError`` and is counted (``tensorwall_state_errors_total``).

It knows no backend: each one says which of its exceptions are failures of the store (a lost
connection, a locked database) rather than bugs, which are left to surface as they are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import Any, Final, TypeVar

from . import ErrorCounter, StoreError

T = TypeVar("T")
# A failure's own words in the log: long enough for "Error 111 connecting to host:port", no more.
MESSAGE_CHARS: Final = 200


class CallGuard:
    """Bounds a backend's calls by its timeout, and turns its failures into counted ``StoreError``s."""

    def __init__(self, backend: str, timeout_seconds: float, failures: tuple[type[BaseException], ...],
                 on_error: ErrorCounter | None = None) -> None:
        self.backend = backend
        self.timeout_seconds = timeout_seconds
        self.failures = failures
        self.on_error = on_error
        self.closed = False  # set by the store's close(): every call after it fails

    async def run(self, operation: str, call: Awaitable[T], *, seconds: float | None = None) -> T:
        """``call``'s result, or StoreError when it fails or takes longer than the timeout (or
        ``seconds``); past the bound a coroutine is cancelled and a future is failed with
        TimeoutError, which each backend makes safe."""
        if self.closed:
            if isinstance(call, Coroutine):
                call.close()  # never started: nothing to cancel, and no "never awaited" warning
            raise self.fail(operation, "the store is closed")
        bound = self.timeout_seconds if seconds is None else seconds
        try:
            if isinstance(call, asyncio.Future):
                return await _within(call, bound)
            async with asyncio.timeout(bound):
                return await call
        except TimeoutError:
            raise self.fail(operation, f"no answer within {bound * 1000:g} ms") from None
        except self.failures as exc:
            raise self.fail(operation, describe(exc)) from None

    def fail(self, operation: str, message: str) -> StoreError:
        """Count a failed ``operation`` and make its error (for the caller to raise)."""
        if self.on_error is not None:
            self.on_error(self.backend, operation)
        return StoreError(f"state store ({self.backend}) {operation}: {message}")


async def _within(future: asyncio.Future[T], seconds: float) -> T:
    """``future``'s outcome, or TimeoutError set on it once ``seconds`` have passed: one timer, where
    ``asyncio.timeout`` would arm a timer and cancel and uncancel the awaiting task (about 5 µs a call
    on every limited request)."""
    loop = future.get_loop()
    handle = loop.call_at(loop.time() + seconds, _expire, future)
    try:
        return await future
    finally:
        handle.cancel()


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def describe(exc: BaseException) -> str:
    """An exception in a few words for the log: its type and its message, cut short."""
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text[:MESSAGE_CHARS]}" if text else name
