"""What every dialect's stream encoder shares: it wraps the pivot decoder of one attempt.

The pivot decoder (the provider's translator, or the passthrough of an OpenAI-shaped upstream)
keeps the commit point, the end and the usage; a dialect's encoder is fed what it produces and
re-encodes it. ``PivotStream`` is that wrapping; ``ChunkStream`` adds the reading of the pivot's
chunks that the Responses and Messages grammars both need: the model, the usage, the finish reason
and choice 0's deltas, a start when the pivot turns visible (so a dialect's prelude is held with the
commit point) and a finish when it ends. This module does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ..providers import ChatRequest, StreamDecoder
from ..sse import DONE_EVENT, SseEvent


class PivotStream:
    """A dialect's encoder over one attempt's pivot decoder; every event goes through ``_out``."""

    __slots__ = ("_inner", "done", "usage", "visible")

    def __init__(self, inner: StreamDecoder) -> None:
        self._inner = inner
        self.visible = False
        self.done = False
        self.usage: Mapping[str, Any] | None = None

    def feed(self, event: SseEvent) -> list[bytes]:
        return self._out(self._inner.feed(event))

    def close(self) -> list[bytes]:
        return self._out(self._inner.close())

    def split_plain(self, chunk: bytes) -> tuple[bytes, bytes]:
        return b"", chunk  # every event is re-encoded: none passes plain

    def _out(self, events: list[bytes]) -> list[bytes]:
        """The dialect's events for what the pivot decoder produced."""
        raise NotImplementedError


class ChunkStream(PivotStream):
    """Reads the pivot's chunks for a dialect with a grammar of its own.

    Subclasses say what choice 0's delta becomes (``_choice``), what opens their stream
    (``_start``, called once, at the latest with the first visible chunk) and what ends it
    (``_finish_stream``, once the pivot stream has ended, after its usage chunk).
    """

    __slots__ = ("_finish", "_model", "_pivot_usage", "_started")

    def __init__(self, req: ChatRequest, inner: StreamDecoder) -> None:
        super().__init__(inner)
        self._model = str(req.body.get("model"))
        self._started = False
        self._finish: Any = None  # the pivot's finish_reason, once it came
        self._pivot_usage: Any = None

    def _out(self, events: list[bytes]) -> list[bytes]:
        inner = self._inner
        out: list[bytes] = []
        for event in events:
            if event == DONE_EVENT or not event.startswith(b"data: {"):
                continue
            chunk = orjson.loads(event[6:].rstrip(b"\n"))
            if not isinstance(chunk, dict):
                continue
            if isinstance(chunk.get("model"), str) and chunk["model"]:
                self._model = chunk["model"]
            if chunk.get("usage") is not None:
                self._pivot_usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                if isinstance(choice, dict) and choice.get("index", 0) == 0:
                    delta = choice.get("delta")
                    if isinstance(delta, dict):
                        self._choice(delta, out)
                    if choice.get("finish_reason") is not None:
                        self._finish = choice["finish_reason"]
        if inner.visible and not self._started:
            self._start(out)
        self.visible, self.usage = inner.visible, inner.usage
        if inner.done and not self.done:
            self._finish_stream(out)
            self.done = True
        return out

    def _choice(self, delta: Mapping[str, Any], out: list[bytes]) -> None:
        """Choice 0's ``delta`` as the dialect's events."""
        raise NotImplementedError

    def _start(self, out: list[bytes]) -> None:
        """The dialect's opening events; sets ``_started``."""
        raise NotImplementedError

    def _finish_stream(self, out: list[bytes]) -> None:
        """The dialect's closing events."""
        raise NotImplementedError
