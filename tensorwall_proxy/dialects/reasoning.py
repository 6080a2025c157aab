"""Reasoning in the Responses dialect (DESIGN §12): ``reasoning`` items in answers and streams, and
the thinking state a stateless client keeps for the gateway in their ``encrypted_content``.

Out: the pivot's answer says what the model thought in ``reasoning_content`` (``reasoning`` on some
OpenAI-compatible servers) and, when the request asked for it (``include:
["reasoning.encrypted_content"]``), the provider's state in the pivot's ``reasoning_state``
extension (``providers/reasoning.py``). Both become one ``reasoning`` item: the text as its summary,
the state sealed (``sealed.py``) as its ``encrypted_content``. A stream opens the item at the first
reasoning delta and follows OpenAI's grammar for it (``reasoning_summary_part.added``,
``reasoning_summary_text.delta``…, ``.done``, ``reasoning_summary_part.done``); state that comes
while no reasoning item is open (a Gemini text answer's signature, after the text) opens one of
its own, with no summary.

In: a ``reasoning`` item whose ``encrypted_content`` is ours is unsealed (a 400 naming the item when
it does not verify) and its state put on the assistant turn it came with: the first assistant
message of the run of assistant items around it (reasoning, assistant messages, function calls),
which is where the provider's thinking goes first. Items that carry someone else's
``encrypted_content`` (OpenAI's) or none mean nothing to a translated provider and are left out.

Pure: no I/O; the key comes with the request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson

from ..errors import GatewayError, bad_request
from ..providers.reasoning import REASONING_STATE
from ..providers.shapes import StateBudget
from .sealed import CODE, ours, seal, unseal

# The `include` value that asks for reasoning state a stateless client can send back.
INCLUDE: Final = "reasoning.encrypted_content"
# One streamed event: its type and its fields (without type and sequence number).
Event = tuple[str, dict[str, Any]]


def asks_state(body: Mapping[str, Any]) -> bool:
    """Whether a Responses body asks for reasoning state in ``encrypted_content``."""
    include = body.get("include")
    return isinstance(include, list) and INCLUDE in include


def carries_state(body: Mapping[str, Any]) -> bool:
    """Whether a Responses body sends back a reasoning item whose state claims to be ours."""
    value = body.get("input")
    return isinstance(value, list) and any(
        isinstance(item, dict) and item.get("type") == "reasoning" and ours(item.get("encrypted_content"))
        for item in value)


def needs_key(body: Mapping[str, Any]) -> bool:
    """Whether a Responses body needs the gateway's reasoning key: it asks for state, or sends back
    an item with state of ours. A plain request never makes the gateway fetch the key."""
    return asks_state(body) or carries_state(body)


def reasoning_text(message: Mapping[str, Any]) -> str:
    """What a pivot message or delta says the model thought, under either name servers give it."""
    text = message.get("reasoning_content")
    if not isinstance(text, str):
        text = message.get("reasoning")
    return text if isinstance(text, str) else ""


def _state(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _sealed(key: bytes | None, state: list[Any]) -> dict[str, str]:
    return {"encrypted_content": seal(key, orjson.dumps(state))} if key is not None and state else {}


def answer_item(message: Mapping[str, Any], item_id: str, key: bytes | None) -> dict[str, Any] | None:
    """The ``reasoning`` item of a pivot answer's message, or None when it says nothing of thinking.
    ``key`` is the sealing key when the caller asked for state (None otherwise)."""
    text = reasoning_text(message)
    state = _state(message.get(REASONING_STATE)) if key is not None else []
    if not text and not state:
        return None
    return {"id": item_id, "type": "reasoning", "summary": [{"type": "summary_text", "text": text}] if text else [],
            **_sealed(key, state)}


class StreamedReasoning:
    """One ``reasoning`` item of a Responses stream, from its ``output_item.added`` to the item its
    ``output_item.done`` carries. Each run of text between two pieces of state is a summary part of
    its own (a thinking block each, as the provider made them)."""

    __slots__ = ("_open", "_parts", "_state", "id", "index")

    def __init__(self, item_id: str, index: int) -> None:
        self.id = item_id
        self.index = index
        self._parts: list[list[str]] = []
        self._open = False  # the last part takes more text
        self._state: list[Any] = []

    def added(self) -> dict[str, Any]:
        """The item as ``output_item.added`` announces it."""
        return {"id": self.id, "type": "reasoning", "summary": []}

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.id, "output_index": self.index, "summary_index": len(self._parts) - 1}

    def feed(self, text: str, state: list[Any]) -> list[Event]:
        """The events for one pivot delta's reasoning text and reasoning state."""
        events: list[Event] = []
        if text:
            if not self._open:
                self._parts.append([])
                self._open = True
                events.append(("response.reasoning_summary_part.added",
                               {**self._where(), "part": {"type": "summary_text", "text": ""}}))
            self._parts[-1].append(text)
            events.append(("response.reasoning_summary_text.delta", {**self._where(), "delta": text}))
        if state:
            events.extend(self._end_part())  # the block the text belonged to is finished
            self._state.extend(state)
        return events

    def _end_part(self) -> list[Event]:
        if not self._open:
            return []
        self._open = False
        text = "".join(self._parts[-1])
        return [("response.reasoning_summary_text.done", {**self._where(), "text": text}),
                ("response.reasoning_summary_part.done", {**self._where(),
                                                          "part": {"type": "summary_text", "text": text}})]

    def close(self, key: bytes | None) -> tuple[list[Event], dict[str, Any]]:
        """The events that end the open part, and the finished item (its state sealed with ``key``)."""
        events = self._end_part()
        summary = [{"type": "summary_text", "text": "".join(part)} for part in self._parts]
        return events, {"id": self.id, "type": "reasoning", "summary": summary, **_sealed(key, self._state)}


def stream_delta(delta: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """The reasoning text and the reasoning state one pivot delta carries."""
    return reasoning_text(delta), _state(delta.get(REASONING_STATE))


class KeptReasoning:
    """The reasoning items of one Responses input that carry state of ours: unsealed as they are met,
    put on their assistant turn by ``attach`` once the whole input is a list of pivot messages."""

    __slots__ = ("_budget", "_found", "_key")

    def __init__(self, key: bytes | None) -> None:
        self._key = key
        self._budget = StateBudget()  # all the request's sealed state together is bounded too
        self._found: list[tuple[list[dict[str, Any]], int, list[Any]]] = []

    def item(self, item: Mapping[str, Any], where: str, messages: list[dict[str, Any]]) -> None:
        """A ``reasoning`` input item, met when ``messages`` holds the pivot messages before it."""
        token = item.get("encrypted_content")
        if not ours(token):
            return  # OpenAI's own, or no state: nothing a translated provider can read
        param = f"{where}.encrypted_content"
        if self._key is None:
            raise GatewayError(503, "The gateway's reasoning key is unavailable, so reasoning state cannot be "
                                    "verified; retry later.", param=param, code="state_unavailable")
        try:
            state = orjson.loads(unseal(self._key, token, param, self._budget))
        except orjson.JSONDecodeError:
            state = None
        if not isinstance(state, list):  # verified yet not ours in shape: only a leaked key makes this
            raise bad_request(f"'{param}' is damaged.", param=param, code=CODE)
        self._found.append((messages, len(messages), state))

    def attach(self) -> None:
        """Each item's state onto the first assistant message of its run; dropped when the run has none."""
        for messages, position, state in self._found:
            start = position
            while start > 0 and messages[start - 1].get("role") == "assistant":
                start -= 1
            if start < len(messages) and messages[start].get("role") == "assistant":
                messages[start].setdefault(REASONING_STATE, []).extend(state)
