"""A caller's body as a native passthrough sends it: as it came, less the state the gateway made.

A route may mix native and translated endpoints (DESIGN §14), so a caller's conversation may hold
state the gateway made for a translated provider. Before the body goes to a provider that speaks
the dialect itself, that state is removed — never forwarded to a provider that did not make it:

- tool call ids the gateway packed with provider state (``providers/ids.py``) go back to the id
  they were made from, in every item that names a call;
- reasoning items whose ``encrypted_content`` is the gateway's own signed state (``twr1.``, or any
  version of it: ``sealed.ours``) are dropped: only the gateway can read them;
- in a Messages body, ``tool_use.id`` and ``tool_result.tool_use_id`` lose their packed state, and
  thinking blocks the gateway made for a translated provider (the Messages dialect gives them an
  empty ``signature``; or a signature that is the gateway's own) are dropped: no provider can verify them.

Everything else, fields the gateway does not know included, is left as it is. A body with nothing
to remove is returned as it is, not copied. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from ..providers.ids import STATE_MARKER, base_id
from .sealed import ours

# Responses input items that name a tool call by `call_id`.
_CALL_ITEMS: Final = frozenset({"function_call", "function_call_output", "custom_tool_call",
                                "custom_tool_call_output"})
# Messages blocks that name a tool call, and the field that does.
_TOOL_ID_FIELDS: Final[dict[Any, tuple[str, ...]]] = {"tool_use": ("id",), "tool_result": ("tool_use_id",)}


def responses_body(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """A Responses body for a native provider: packed call ids restored, gateway reasoning dropped."""
    items = body.get("input")
    if not isinstance(items, list):
        return body
    kept = _edited(items, _responses_item)
    return body if kept is items else {**body, "input": kept}


def _edited(items: list[Any], edit: Callable[[Any], Any]) -> list[Any]:
    """``items`` with ``edit`` applied to each (None drops one): the list itself when nothing changed,
    so a body with no gateway state is never copied."""
    kept: list[Any] | None = None  # made on the first change only
    for i, item in enumerate(items):
        new = edit(item)
        if new is item and kept is None:
            continue
        if kept is None:
            kept = list(items[:i])
        if new is not None:
            kept.append(new)
    return items if kept is None else kept


def _responses_item(item: Any) -> Any:
    """The item as sent natively: itself, a copy with its call id restored, or None (dropped)."""
    if not isinstance(item, dict):
        return item
    kind = item.get("type")
    if kind == "reasoning":
        return None if ours(item.get("encrypted_content")) else item
    if kind in _CALL_ITEMS:
        call_id = item.get("call_id")
        if isinstance(call_id, str) and STATE_MARKER in call_id:
            return {**item, "call_id": base_id(call_id)}
    return item


def messages_body(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """A Messages body for a native provider: packed tool ids restored, gateway-made thinking dropped."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return body
    kept = _edited(messages, _messages_turn)
    return body if kept is messages else {**body, "messages": kept}


def _messages_turn(message: Any) -> Any:
    """A turn as sent natively: itself, or a copy with its blocks edited."""
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        return message
    blocks = _edited(content, _messages_block)
    return message if blocks is content else {**message, "content": blocks}


def _messages_block(block: Any) -> Any:
    """A block as sent natively: itself, a copy with its tool id restored, or None (dropped)."""
    if not isinstance(block, dict):
        return block
    kind = block.get("type")
    if kind == "thinking":
        signature = block.get("signature")
        return None if not signature or ours(signature) else block
    for name in _TOOL_ID_FIELDS.get(kind, ()):
        value = block.get(name)
        if isinstance(value, str) and STATE_MARKER in value:
            return {**block, name: base_id(value)}
    return block
