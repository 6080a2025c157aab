"""The pivot's reasoning-state extension (DESIGN §12): a provider's thinking state, as the provider
translators hand it to a dialect and get it back on the next turn.

Some providers need state from an answer's thinking back with the conversation: Anthropic its
thinking blocks with their signatures, Bedrock Converse its signed ``reasoningContent``, Gemini its
thought signatures. A tool call id carries some of it (``ids.attach``); a turn without a tool call
has no id to carry anything, so a dialect that can keep state for its caller (Responses, in a
sealed ``reasoning`` item) asks for it with ``ChatRequest.wants_reasoning_state``, and then:

- an answer's message carries ``reasoning_state``: a list of entries ``{"wire": <wire>, "block":
  <the provider's block>}``, in the order the provider produced them;
- a stream carries the same entries in ``delta.reasoning_state`` chunks, each holding the entries
  completed since the last one (the consumer appends them, as it appends content deltas);
- on the request side a dialect puts the entries it kept on the assistant message of the turn
  they came with (``reasoning_state`` again), and each translator takes the entries of its own
  wire and ignores the rest (OpenAI-compatible upstreams get none).

Wires: ``anthropic`` (Messages ``thinking`` / ``redacted_thinking`` blocks), ``converse`` (Bedrock
Converse ``reasoningContent`` values), ``gemini`` (``{"thoughtSignature", "on": "functionCall" |
"text"}``: the signature and the kind of part it came on). Only translators produce the field and
only dialects put it on a request: a chat caller never sees it, and one that sends it is refused.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

REASONING_STATE: Final = "reasoning_state"
Wire = Literal["anthropic", "converse", "gemini"]


def entries(wire: Wire, blocks: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The extension's entries for ``blocks`` of one wire."""
    return [{"wire": wire, "block": dict(block)} for block in blocks]


def restored(message: Mapping[str, Any], wire: Wire) -> list[dict[str, Any]]:
    """The blocks of ``wire`` a dialect restored on an assistant message (none when it restored none)."""
    state = message.get(REASONING_STATE)
    if type(state) is not list:
        return []
    return [entry["block"] for entry in state
            if type(entry) is dict and entry.get("wire") == wire and type(entry.get("block")) is dict]
