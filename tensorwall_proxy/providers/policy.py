"""The field policy (DESIGN §7): what a provider type refuses, drops, clamps and maps of a chat body.

Each type's ``FieldPolicy`` is part of its catalog entry, so the table of every type's policy is
read in one place; the functions here apply it, the same way for the types that receive the
caller's body (``adapt``) and for the translators that build their own (``check``,
``temperature``, ``reasoning_budget``). A field is refused when dropping it would change the
count or the shape of the result (``n`` past what the type honours, ``logprobs``, audio output);
it is dropped when it is only a hint the type rejects.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import UnsupportedField
from .shapes import strings


@dataclass(frozen=True, slots=True)
class FieldPolicy:
    """One type's policy. ``label`` names the type in the 400s (``provider type 'groq'``, ``Anthropic``)."""

    label: str
    max_n: int | None = None         # largest `n` the type honours (None: no limit of ours)
    refused: tuple[str, ...] = ()    # fields that would change the result's shape if dropped: 400
    refused_modalities: tuple[str, ...] = ()  # output modalities the type cannot produce: 400
    dropped: tuple[str, ...] = ()    # fields the type rejects but that are only hints
    renamed: tuple[tuple[str, str], ...] = ()  # caller's name → the type's name for the same field
    strips_message_names: bool = False  # the type refuses messages[].name
    temperature: tuple[float, float] | None = None  # the range temperature is clamped into
    # reasoning_effort → the type's thinking budget in tokens; an effort not listed sends none.
    reasoning_budgets: Mapping[str, int] = field(default_factory=dict, hash=False)


def has_value(value: Any) -> bool:
    """Whether a refused field asks for something: null, false and 0 ask for nothing."""
    return value is not None and value is not False and value != 0


def check(body: Mapping[str, Any], policy: FieldPolicy) -> None:
    """400 ``UnsupportedField`` for what the type cannot honour; the body is left as it is."""
    n = body.get("n")
    if n is not None and policy.max_n is not None and n > policy.max_n:
        raise UnsupportedField("n", f"'n' greater than {policy.max_n} is not supported by {policy.label}.")
    for name in policy.refused:
        if has_value(body.get(name)):
            raise UnsupportedField(name, f"'{name}' is not supported by {policy.label}.")
    if policy.refused_modalities:
        modalities = strings(body, "modalities")
        for modality in policy.refused_modalities:
            if modality in modalities:
                raise UnsupportedField("modalities", f"{modality.capitalize()} output is not supported by "
                                                     f"{policy.label}.")


def adapt(body: dict[str, Any], policy: FieldPolicy) -> None:
    """``check``, then the caller's body (a copy) made fit to send as it is: refused fields that ask
    for nothing, an ``n`` within bounds, and dropped fields removed; renamed fields renamed."""
    check(body, policy)
    if policy.max_n is not None and body.get("n") is not None:
        del body["n"]  # n up to max_n is the default: dropped silently
    for name in policy.refused:
        body.pop(name, None)
    for name in policy.dropped:
        body.pop(name, None)
    for old, new in policy.renamed:
        if old in body:
            value = body.pop(old)
            body.setdefault(new, value)
    if policy.strips_message_names and any(isinstance(m, dict) and "name" in m for m in body["messages"]):
        body["messages"] = [
            {k: v for k, v in m.items() if k != "name"} if isinstance(m, dict) else m for m in body["messages"]
        ]


def temperature(body: Mapping[str, Any], policy: FieldPolicy) -> float | None:
    """The caller's temperature clamped into the type's range, or None when the caller sent none."""
    value = body.get("temperature")
    if value is None:
        return None
    if policy.temperature is None:
        return float(value)
    low, high = policy.temperature
    return min(max(float(value), low), high)


def reasoning_budget(body: Mapping[str, Any], policy: FieldPolicy) -> int | None:
    """The thinking budget ``reasoning_effort`` maps to, or None."""
    effort = body.get("reasoning_effort")
    return policy.reasoning_budgets.get(effort) if isinstance(effort, str) else None
