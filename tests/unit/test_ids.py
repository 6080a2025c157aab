"""Unit tests for tensorwall_proxy/providers/ids.py: the tool call id codec of DESIGN §7.

Pure: strings in, strings out. Hypothesis checks the two promises over arbitrary ids: every
upstream gets an id in the form it accepts, and the same id in always gives the same id out.
"""

from __future__ import annotations

import re
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorwall_proxy.providers.ids import STATE_MARKER, IdStyle, attach, detach, for_upstream

STYLES: tuple[IdStyle, ...] = get_args(IdStyle)

# DESIGN §7, written out again here rather than imported, so a wrong rule in the module cannot pass.
RULES: dict[IdStyle, re.Pattern[str]] = {
    "openai": re.compile(r"[A-Za-z0-9_-]{1,40}"),
    "anthropic": re.compile(r"[A-Za-z0-9_-]+"),
    "bedrock": re.compile(r"[A-Za-z0-9_.:-]{1,64}"),
    "mistral": re.compile(r"[A-Za-z0-9]{9}"),
}

any_id = st.text(max_size=120)


def test_the_four_styles_are_covered() -> None:
    assert set(STYLES) == set(RULES)


# --- ids that are already valid --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("style", "tool_id"),
    [
        ("openai", "call_abc123XYZ"),
        ("openai", "call_" + "a" * 35),
        ("openai", "x"),
        ("openai", "tool-1_A"),
        ("anthropic", "toolu_01A09q90qw90lq917835lq9"),
        ("anthropic", "call_abc-def_123"),
        ("bedrock", "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q"),
        ("bedrock", "functions.get_weather:0"),
        ("bedrock", "a" * 64),
        ("mistral", "D681PevKs"),
        ("mistral", "123456789"),
    ],
)
def test_a_valid_id_passes_unchanged(style: IdStyle, tool_id: str) -> None:
    assert for_upstream(tool_id, style) == tool_id


@pytest.mark.parametrize(
    ("style", "tool_id"),
    [
        ("openai", "call_" + "a" * 36),  # 41 characters
        ("openai", "functions.get_weather:0"),
        ("openai", ""),
        ("anthropic", "functions.get_weather:0"),
        ("anthropic", "id with spaces"),
        ("bedrock", "a" * 65),
        ("bedrock", "call/with/slashes"),
        ("mistral", "call_abc123XYZ"),
        ("mistral", "D681PevK"),
        ("mistral", "D681PevKs0"),
        ("mistral", "D681-evKs"),
    ],
)
def test_an_invalid_id_is_replaced_by_one_of_the_styles_form(style: IdStyle, tool_id: str) -> None:
    upstream = for_upstream(tool_id, style)
    assert upstream != tool_id
    assert RULES[style].fullmatch(upstream), upstream
    assert for_upstream(tool_id, style) == upstream


def test_a_long_anthropic_id_is_valid_for_anthropic_but_not_for_openai() -> None:
    long_id = "toolu_" + "a" * 50
    assert for_upstream(long_id, "anthropic") == long_id
    assert for_upstream(long_id, "openai") != long_id
    assert RULES["openai"].fullmatch(for_upstream(long_id, "openai"))


# --- any id ----------------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(tool_id=any_id)
def test_any_id_comes_out_in_every_styles_form(tool_id: str) -> None:
    for style in STYLES:
        upstream = for_upstream(tool_id, style)
        assert RULES[style].fullmatch(upstream), (style, tool_id, upstream)


@settings(max_examples=300, deadline=None)
@given(tool_id=any_id)
def test_the_same_id_always_gives_the_same_upstream_id(tool_id: str) -> None:
    copy = "".join(list(tool_id))  # an equal string, not the same object
    for style in STYLES:
        assert for_upstream(copy, style) == for_upstream(tool_id, style)


@settings(max_examples=300, deadline=None)
@given(tool_id=any_id)
def test_an_upstream_id_is_a_fixed_point(tool_id: str) -> None:
    """Sending an id upstream twice (a later turn, a fallback) never changes it again."""
    for style in STYLES:
        once = for_upstream(tool_id, style)
        assert for_upstream(once, style) == once


def test_distinct_ids_rarely_collide() -> None:
    ids = [f"functions.lookup:{i}" for i in range(2000)]
    for style in STYLES:
        assert len({for_upstream(i, style) for i in ids}) == 2000, style


def test_distinct_long_ids_with_a_shared_prefix_do_not_collide() -> None:
    prefix = "x" * 200
    ids = [f"{prefix}{i}" for i in range(2000)]
    assert len({for_upstream(i, "mistral") for i in ids}) == 2000
    assert len({for_upstream(i, "openai") for i in ids}) == 2000


def test_an_assistant_call_and_its_tool_result_pair_across_providers() -> None:
    client_id = "toolu_01A09q90qw90lq917835lq9-very-long-anthropic-style-identifier"
    assistant_turn = {style: for_upstream(client_id, style) for style in STYLES}
    tool_result_turn = {style: for_upstream(str(client_id), style) for style in STYLES}
    assert assistant_turn == tool_result_turn


# --- attach / detach -------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(tool_id=st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:",
                       min_size=1, max_size=40),
       state=st.binary(min_size=1, max_size=300))
def test_attach_then_detach_round_trips_arbitrary_bytes(tool_id: str, state: bytes) -> None:
    carried = attach(tool_id, state)
    assert carried != tool_id
    assert detach(carried) == (tool_id, state)


@settings(max_examples=300, deadline=None)
@given(tool_id=any_id, state=st.binary(min_size=1, max_size=100))
def test_attach_then_detach_round_trips_for_any_id(tool_id: str, state: bytes) -> None:
    assert detach(attach(tool_id, state)) == (tool_id, state)


@pytest.mark.parametrize("tool_id", ["call~tw1", "a~tw1~b", "x~tw1~~tw1~"])
def test_attach_then_detach_round_trips_for_ids_that_look_like_the_marker(tool_id: str) -> None:
    """The upstream's own id is opaque: one ending in `~tw1` or holding the marker must come back intact."""
    assert detach(attach(tool_id, b"thoughtSignature")) == (tool_id, b"thoughtSignature")


def test_a_carried_id_is_url_safe_text() -> None:
    carried = attach("call_1", bytes(range(256)))
    assert carried.startswith("call_1" + STATE_MARKER)
    assert re.fullmatch(r"[A-Za-z0-9_~-]+", carried)
    assert "=" not in carried


def test_attach_without_state_returns_the_id() -> None:
    assert attach("call_1", b"") == "call_1"


@pytest.mark.parametrize("tool_id", ["call_abc", "", "toolu_01", "weird id/with:chars", "~tw1"])
def test_detach_of_a_plain_id_gives_the_id_and_no_state(tool_id: str) -> None:
    assert detach(tool_id) == (tool_id, None)


@pytest.mark.parametrize("encoded", ["A", "é", "AAAAA"])
def test_detach_of_state_that_cannot_be_base64_gives_the_id_and_no_state(encoded: str) -> None:
    assert detach("call_1" + STATE_MARKER + encoded) == ("call_1", None)


@pytest.mark.parametrize("encoded", ["AAAA~", "AA AA", "AAAA!", "QUJD+/=="])
def test_detach_of_state_outside_the_base64url_alphabet_gives_no_state(encoded: str) -> None:
    """The docstring's promise: state is None when the id is mangled. Garbage bytes decoded from a
    mangled id would go upstream as, say, a thoughtSignature the provider then rejects."""
    assert detach("call_1" + STATE_MARKER + encoded) == ("call_1", None)


@settings(max_examples=300, deadline=None)
@given(tool_id=any_id, state=st.binary(min_size=1, max_size=200))
def test_a_carried_ids_upstream_form_is_valid_for_every_style(tool_id: str, state: bytes) -> None:
    carried = attach(tool_id, state)
    for style in STYLES:
        upstream = for_upstream(carried, style)
        assert RULES[style].fullmatch(upstream), (style, carried, upstream)
        assert STATE_MARKER not in upstream
        assert for_upstream(carried, style) == upstream


def test_a_carried_valid_id_goes_upstream_as_the_bare_id() -> None:
    carried = attach("call_abc123", b"signature-bytes")
    assert for_upstream(carried, "openai") == "call_abc123"
    assert for_upstream(carried, "anthropic") == "call_abc123"
    assert for_upstream(carried, "bedrock") == "call_abc123"
    assert RULES["mistral"].fullmatch(for_upstream(carried, "mistral"))


def test_carried_ids_differing_only_in_state_do_not_collide_when_hashed() -> None:
    first = attach("functions.lookup:0", b"state-one")
    second = attach("functions.lookup:0", b"state-two")
    assert for_upstream(first, "openai") != for_upstream(second, "openai")
    assert for_upstream(first, "mistral") != for_upstream(second, "mistral")
