"""Stored conversations of the Responses dialect (DESIGN §12 "State", §14 "Stored responses"), pure.

A stored response is one turn: the input items that turn added, the Response the gateway answered
with (its ``output`` included), the id of the response it continued, and its owner. A
conversation is the chain of turns from a response back to the first one; a follow-up's model
input is the chain's items in order — each turn's input, then its output — and then the
follow-up's own input. ``instructions`` are not carried over, as at OpenAI.

A turn is kept compressed (zlib over JSON) and read back with its inflated size bounded, so a
chain costs the store what it holds and a damaged or hostile value cannot inflate without bound.
The I/O (the store's calls) is ``stored.py``'s; this module does none.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from ..errors import GatewayError, bad_request

# A chain longer than this many turns, or than this many bytes inflated, is refused (DESIGN §14).
MAX_TURNS: Final = 256
MAX_CHAIN_BYTES: Final = 16 * 1024 * 1024
# The store keys of a stored response, and of the affinity record of one a provider stored.
KEY_PREFIX: Final = "resp:"
AFFINITY_PREFIX: Final = "aff:"
# Affinity records outlive stored responses: a provider may keep its own for 30 days (DESIGN §14).
AFFINITY_MIN_TTL: Final = 30 * 24 * 3600
# Version of the packed form, first in every value, so a later format can read older ones.
_VERSION: Final = 1
# Item types and the id prefix a stored input item gets when the caller gave it none.
_ITEM_PREFIXES: Final = {"message": "msg_", "function_call": "fc_", "function_call_output": "fco_",
                         "custom_tool_call": "ctc_", "custom_tool_call_output": "ctco_", "reasoning": "rs_"}
MAX_PAGE: Final = 100
DEFAULT_PAGE: Final = 20

# Who a stored response belongs to: (principal id, caller-key digest). The principal id is
# ``sha256:<digest>`` of the gateway key, or None with gateway keys off; the caller-key digest is
# that of the provider key the caller sent, or None.
Owner = tuple[str | None, str | None]


def key(response_id: str) -> str:
    """The store key of a stored response."""
    return KEY_PREFIX + response_id


def affinity_key(response_id: str) -> str:
    """The store key of the affinity record of a response a provider stored."""
    return AFFINITY_PREFIX + response_id


@dataclass(frozen=True, slots=True)
class Affinity:
    """A response a provider stored itself (a native passthrough): where a follow-up must go."""

    provider: str
    model: str  # the upstream model the endpoint sent
    owner: Owner

    def pack(self) -> bytes:
        """The value the store keeps."""
        return orjson.dumps({"v": _VERSION, "provider": self.provider, "model": self.model, "owner": list(self.owner)})

    @staticmethod
    def unpack(data: bytes) -> Affinity:
        """A stored value → the record; ValueError for one that is not."""
        value = orjson.loads(data)
        owner = value.get("owner") if isinstance(value, dict) else None
        if not (isinstance(value, dict) and value.get("v") == _VERSION and isinstance(value.get("provider"), str)
                and isinstance(value.get("model"), str) and isinstance(owner, list) and len(owner) == 2):
            raise ValueError("not an affinity record")
        return Affinity(value["provider"], value["model"], (owner[0], owner[1]))


def made_elsewhere(response_id: str, provider: str, model: str) -> GatewayError:
    """400 for a follow-up whose model is not served where its previous response was made."""
    return not_found(response_id, f" for this model: it was made by provider '{provider}', which does not serve "
                                  f"'{model}' on this route; continue it with a model that provider serves")


@dataclass(frozen=True, slots=True)
class Turn:
    """One stored response: what its turn added to the conversation."""

    id: str
    parent: str | None
    owner: Owner
    items: list[dict[str, Any]]  # the input items this turn added, each with an id
    response: dict[str, Any]  # the Response object as the caller received it

    @property
    def output(self) -> list[dict[str, Any]]:
        """The turn's output items."""
        output = self.response.get("output")
        return output if isinstance(output, list) else []


def pack(turn: Turn) -> bytes:
    """A turn as the value the store keeps."""
    value = {"v": _VERSION, "id": turn.id, "parent": turn.parent, "owner": list(turn.owner), "items": turn.items,
             "response": turn.response}
    return zlib.compress(orjson.dumps(value), 1)  # level 1: most of the gain at a fraction of the CPU


def unpack(data: bytes, limit: int = MAX_CHAIN_BYTES) -> tuple[Turn, int]:
    """A stored value → the turn and its inflated size; ValueError for a value that is not one, or
    inflates past ``limit`` bytes."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, limit)
    except zlib.error as exc:
        raise ValueError(f"not a stored response: {exc}") from None
    if inflater.unconsumed_tail:
        raise ValueError(f"a stored response inflates past {limit} bytes")
    value = orjson.loads(raw)
    if not isinstance(value, dict) or value.get("v") != _VERSION:
        raise ValueError("not a stored response of a known version")
    owner = value.get("owner")
    items, response = value.get("items"), value.get("response")
    if not (isinstance(owner, list) and len(owner) == 2 and isinstance(items, list) and isinstance(response, dict)
            and isinstance(value.get("id"), str)):
        raise ValueError("a stored response lacks its fields")
    parent = value.get("parent")
    return Turn(value["id"], parent if isinstance(parent, str) else None, (owner[0], owner[1]), items,
                response), len(raw)


def _shown(response_id: object) -> str:
    """An id as an error message quotes it: a caller's value, so bounded whatever its type."""
    text = response_id if isinstance(response_id, str) else str(response_id)
    return repr(text if len(text) <= 64 else text[:64] + "…")


def not_found(response_id: str, why: str = "") -> GatewayError:
    """400 ``previous_response_not_found``: unknown, expired, deleted or someone else's — never a
    silent fresh start (DESIGN §12). The message does not say which, so it tells nobody whether
    another caller's id exists."""
    return GatewayError(400, f"Previous response with id {_shown(response_id)} not found{why}.",
                        param="previous_response_id", code="previous_response_not_found")


def too_large(response_id: str, why: str) -> GatewayError:
    """400 ``conversation_too_large``: the chain past its bounds (DESIGN §14)."""
    return GatewayError(400, f"The conversation of {_shown(response_id)} is too large to continue ({why}); start a new "
                             "one with the context it needs in 'input'.",
                        param="previous_response_id", code="conversation_too_large")


def stored_missing(response_id: str) -> GatewayError:
    """404 for ``GET`` / ``DELETE`` of an id that is unknown, expired or another caller's."""
    return GatewayError(404, f"No response with id {_shown(response_id)} found.", param="response_id", code="not_found")


class Chain:
    """A chain being read from the store, newest turn first; checks each turn as it arrives."""

    __slots__ = ("first", "owner", "size", "turns")

    def __init__(self, first: str, owner: Owner) -> None:
        self.first = first
        self.owner = owner
        self.turns: list[Turn] = []
        self.size = 0

    def add(self, response_id: str, data: bytes | None) -> str | None:
        """The stored value of ``response_id`` (None: not there) → the id of the turn before it,
        or None at the chain's start. Raises 400 for a missing, foreign or oversized chain."""
        if data is None:
            raise not_found(self.first, "" if not self.turns else " (part of its conversation has expired or "
                                                                    "was deleted)")
        try:
            turn, size = unpack(data, MAX_CHAIN_BYTES - self.size)
        except ValueError as exc:
            if "inflates past" in str(exc):
                raise too_large(self.first, f"more than {MAX_CHAIN_BYTES // (1024 * 1024)} MiB") from None
            raise not_found(self.first) from None
        if turn.owner != self.owner or turn.id != response_id:
            raise not_found(self.first)
        self.turns.append(turn)
        self.size += size
        if len(self.turns) >= MAX_TURNS:  # this follow-up would be one more
            raise too_large(self.first, f"it has reached {MAX_TURNS} turns")
        return turn.parent

    def items(self) -> list[dict[str, Any]]:
        """The conversation so far as input items, oldest first: each turn's input, then its output."""
        out: list[dict[str, Any]] = []
        for turn in reversed(self.turns):
            out.extend(turn.items)
            out.extend(turn.output)
        return out

    def keys(self) -> list[str]:
        """The store keys of every turn, whose time to live a use renews."""
        return [key(turn.id) for turn in self.turns]


def input_items(value: Any, make_id: Any) -> list[dict[str, Any]]:
    """A request's ``input`` (a string or items) as the items a turn stores, each with an id
    (``make_id(prefix)`` makes one where the caller gave none). The parse has validated it."""
    if isinstance(value, str):
        return [{"id": make_id("msg_"), "type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": value}]}]
    items: list[dict[str, Any]] = []
    for item in value if isinstance(value, list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        # A copy: the caller's body is still to be parsed, and passed on as it came.
        item = {"id": make_id(_ITEM_PREFIXES.get(kind, "item_")), **item} if not isinstance(item.get("id"), str) \
            else dict(item)
        item["type"] = kind
        if kind == "message" and isinstance(item.get("content"), str):
            # Listed as OpenAI lists them: content as parts, whatever shorthand the caller used.
            part = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": part, "text": item["content"]}]
        items.append(item)
    return items


def continued(body: Mapping[str, Any], history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A follow-up's body with the conversation before it in front of its own input, ready for the
    dialect's parse as if the caller had sent it all."""
    own = body.get("input")
    own_items: list[Any] = [{"type": "message", "role": "user", "content": own}] if isinstance(own, str) else \
        list(own) if isinstance(own, list) else []
    merged = dict(body)
    merged["input"] = [*history, *own_items]
    merged.pop("previous_response_id", None)
    return merged


def page(items: Sequence[dict[str, Any]], query: Mapping[str, str]) -> bytes:
    """``GET /v1/responses/{id}/input_items``: one page of ``items`` (oldest first) as OpenAI's list
    object; ``limit`` (1 to 100, default 20), ``order`` (``desc``, the default, or ``asc``), ``after``
    (an item id: the page starts past it)."""
    raw_limit = query.get("limit", str(DEFAULT_PAGE))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE:
        raise bad_request(f"'limit' must be an integer from 1 to {MAX_PAGE}.", param="limit")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise bad_request("'order' must be asc or desc.", param="order")
    ordered: Iterable[dict[str, Any]] = items if order == "asc" else reversed(items)
    listed = list(ordered)
    after = query.get("after")
    if after is not None:
        position = next((i for i, item in enumerate(listed) if item.get("id") == after), None)
        if position is None:
            raise bad_request(f"No input item with id {after!r} in this response.", param="after")
        listed = listed[position + 1:]
    limit = int(raw_limit)
    data = listed[:limit]
    return orjson.dumps({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None, "has_more": len(listed) > limit})


def deleted(response_id: str) -> bytes:
    """The body of a successful ``DELETE /v1/responses/{id}``."""
    return orjson.dumps({"id": response_id, "object": "response.deleted", "deleted": True})
