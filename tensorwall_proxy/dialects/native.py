"""A caller's body as a native passthrough sends it: as it came, less the state the gateway made.

A route may mix native and translated endpoints (DESIGN §14), so a caller's conversation may hold
state the gateway made for a translated provider. Before the body goes to a provider that speaks
the dialect itself, that state is removed — never forwarded to a provider that did not make it:

- tool call ids the gateway packed with provider state (``providers/ids.py``) go back to the id
  they were made from, in every item that names a call;
- reasoning items whose ``encrypted_content`` is the gateway's own signed state (``twr1.``, or any
  version of it: ``sealed.ours``) are dropped: only the gateway can read them.

Everything else, fields the gateway does not know included, is left as it is. A body with nothing
to remove is returned as it is, not copied. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ..providers.ids import STATE_MARKER, base_id
from .sealed import ours

# Responses input items that name a tool call by `call_id`.
_CALL_ITEMS: Final = frozenset({"function_call", "function_call_output", "custom_tool_call",
                                "custom_tool_call_output"})


def responses_body(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """A Responses body for a native provider: packed call ids restored, gateway reasoning dropped."""
    items = body.get("input")
    if not isinstance(items, list):
        return body
    kept: list[Any] | None = None  # made on the first change only
    for i, item in enumerate(items):
        new = _responses_item(item)
        if new is item and kept is None:
            continue
        if kept is None:
            kept = list(items[:i])
        if new is not None:
            kept.append(new)
    if kept is None:
        return body
    return {**body, "input": kept}


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
