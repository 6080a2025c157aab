"""The stream state machine of the content-block wires: Anthropic's Messages events and Bedrock's
ConverseStream events say the same things in different words.

Both stream an answer as content blocks by index (text, reasoning, tool use) between a message
start and a stop reason. What they share lives here once: the role chunk, text and reasoning
deltas, tool calls numbered over tool calls only (the upstream's block index counts text and
reasoning blocks too), the reasoning that preceded the first tool call packed into that call's id
(``ids.attach``) so it can be restored on the next turn, each finished reasoning block as a
``reasoning_state`` chunk when the request wants it (``providers/reasoning.py``), a tool call that
received no arguments closed with ``{}``, the finish chunk and the end. Each translator only reads
its own events.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .ids import attach
from .reasoning import REASONING_STATE, Wire, entries
from .shapes import ChunkEncoder


class BlockStream:
    """The part of a content-block stream decoder that does not depend on the wire's words.

    A block is a dict the subclass keeps per upstream block index; a tool block gets
    ``tool_index`` and ``arguments_seen`` from ``_tool_start``. ``_reasoning`` holds the finished
    reasoning blocks in the wire's own form, for ``_pack`` (and, when ``keep_state``, for the
    ``reasoning_state`` chunks of the pivot's extension, under the subclass's ``_wire``).
    """

    __slots__ = ("_blocks", "_chunks", "_keep_state", "_provider", "_reasoning", "_tool_count", "done", "usage",
                 "visible")
    _wire: Wire

    def __init__(self, provider: str, wants_usage: bool, keep_state: bool = False) -> None:
        self._provider = provider
        self._keep_state = keep_state
        self._chunks = ChunkEncoder(wants_usage)
        self._blocks: dict[int, dict[str, Any]] = {}  # upstream block index → what we know of it
        self._reasoning: list[dict[str, Any]] = []
        self._tool_count = 0
        self.visible = False
        self.done = False
        self.usage: Mapping[str, Any] | None = None

    def _pack(self, reasoning: list[dict[str, Any]]) -> bytes:
        """The reasoning blocks as the state a tool call id carries (the wire's own tag)."""
        raise NotImplementedError

    def _role(self) -> list[bytes]:
        return [self._chunks.chunk({"role": "assistant", "content": ""})]

    def _text(self, text: str) -> list[bytes]:
        if not text:
            return []
        self.visible = True
        return [self._chunks.content(text)]

    def _reasoning_text(self, text: str) -> list[bytes]:
        if not text:
            return []
        self.visible = True
        return [self._chunks.chunk({"reasoning_content": text})]

    def _reasoning_done(self, block: dict[str, Any]) -> list[bytes]:
        """A finished reasoning block: kept for the first tool call's id, and sent on as state when wanted.
        Not visible by itself: the thinking text before it, or what follows, commits."""
        self._reasoning.append(block)
        if not self._keep_state:
            return []
        return [self._chunks.chunk({REASONING_STATE: entries(self._wire, [block])})]

    def _tool_start(self, block: dict[str, Any], tool_id: str, name: Any) -> list[bytes]:
        index = block["tool_index"] = self._tool_count
        block["arguments_seen"] = False
        self._tool_count += 1
        if index == 0 and self._reasoning:
            tool_id = attach(tool_id, self._pack(self._reasoning))
        self.visible = True
        return [self._chunks.chunk({"tool_calls": [{"index": index, "id": tool_id, "type": "function",
                                                    "function": {"name": name, "arguments": ""}}]})]

    def _tool_arguments(self, block: dict[str, Any], fragment: str) -> list[bytes]:
        if not fragment:
            return []
        block["arguments_seen"] = True
        return [self._chunks.chunk({"tool_calls": [{"index": block["tool_index"],
                                                    "function": {"arguments": fragment}}]})]

    def _tool_stop(self, block: dict[str, Any]) -> list[bytes]:
        if block.get("arguments_seen"):
            return []
        # A tool that received no JSON at all was called with no arguments.
        return [self._chunks.chunk({"tool_calls": [{"index": block["tool_index"], "function": {"arguments": "{}"}}]})]

    def _finish(self, reason: str) -> list[bytes]:
        self.visible = True
        return [self._chunks.chunk({}, reason)]

    def _end(self, usage: Mapping[str, Any] | None) -> list[bytes]:
        self.done = True
        self.usage = usage
        return self._chunks.end(usage)

    def split_plain(self, chunk: bytes) -> tuple[bytes, bytes]:
        return b"", chunk  # every event is translated
