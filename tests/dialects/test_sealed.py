"""Unit tests for tensorwall_proxy/dialects/sealed.py: reasoning state sealed for stateless clients.

Pure: bytes and strings. Hypothesis checks the two promises over arbitrary state and arbitrary
damage: what is sealed comes back unchanged under the same key, and any change to a token (or
another key) is a 400 in OpenAI's shape naming the item, never an exception of another kind.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tensorwall_proxy.dialects.sealed import VERSION, ours, seal, unseal
from tensorwall_proxy.errors import GatewayError
from tensorwall_proxy.providers.shapes import MAX_STATE_BYTES, StateBudget

KEY = b"k" * 32
OTHER = b"o" * 32
PARAM = "input[3].encrypted_content"


def _refusal(token: object, key: bytes = KEY, budget: StateBudget | None = None) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        unseal(key, token, PARAM, budget)
    error = caught.value
    assert error.status == 400 and error.param == PARAM and error.type == "invalid_request_error"
    return error


def _forged(payload: bytes, key: bytes = KEY, version: str = VERSION) -> str:
    """A token made the way the format says, written out here rather than by the module."""
    mac = hmac.new(key, version.encode() + payload, hashlib.sha256).digest()
    return version + base64.urlsafe_b64encode(payload + mac).rstrip(b"=").decode()


@given(st.binary(max_size=4096))
def test_what_is_sealed_comes_back(state: bytes) -> None:
    token = seal(KEY, state)
    assert token.startswith("twr1.") and "=" not in token
    assert set(token[5:]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert ours(token)
    assert unseal(KEY, token, PARAM) == state


def test_the_format_is_the_documented_one() -> None:
    """Version, base64url of the compressed state, then the HMAC over version and compressed state."""
    state = b'[{"wire":"anthropic"}]'
    raw = base64.urlsafe_b64decode(seal(KEY, state)[5:] + "==")
    payload, mac = raw[:-32], raw[-32:]
    assert zlib.decompress(payload) == state
    assert mac == hmac.new(KEY, b"twr1." + payload, hashlib.sha256).digest()
    assert unseal(KEY, _forged(zlib.compress(state)), PARAM) == state


@given(st.binary(min_size=1, max_size=512), st.data())
def test_any_changed_character_is_refused(state: bytes, data: st.DataObject) -> None:
    token = seal(KEY, state)
    position = data.draw(st.integers(min_value=0, max_value=len(token) - 1))
    replacement = data.draw(st.sampled_from("AQgw_-.=+/a0~ ").filter(lambda c: c != token[position]))
    changed = token[:position] + replacement + token[position + 1:]
    try:
        result = unseal(KEY, changed, PARAM)
    except GatewayError as error:
        assert error.status == 400 and error.param == PARAM
    else:
        # Only a change in the last character's unused bits decodes to the same bytes.
        assert position == len(token) - 1 and result == state


@given(st.binary(max_size=256))
def test_another_key_is_refused(state: bytes) -> None:
    error = _refusal(seal(OTHER, state))
    assert error.code == "invalid_encrypted_content" and "does not verify" in error.message


@given(st.text(max_size=200))
def test_any_string_is_a_400_or_ours(token: str) -> None:
    try:
        unseal(KEY, token, PARAM)
    except GatewayError as error:
        assert error.status == 400 and error.param == PARAM


@pytest.mark.parametrize(("token", "words"), [
    ("gAAAAABpZ3Xq-openai-own-token", "not made by this gateway"),
    ("twr9." + "A" * 60, "does not know"),
    ("twr1.", "does not verify"),
    ("twr1.A", "damaged"),
    ("twr1.!!!!", "damaged"),
    (12, "must be a string"),
    (None, "must be a string"),
])
def test_what_is_refused_and_why(token: object, words: str) -> None:
    assert words in _refusal(token).message


def test_truncated_but_signed_state_is_refused() -> None:
    """Only a leaked key makes this; it is still a 400, not an exception."""
    assert "damaged" in _refusal(_forged(zlib.compress(b"x" * 100)[:-3])).message
    assert "damaged" in _refusal(_forged(b"not zlib at all")).message


def test_a_bomb_is_refused_without_inflating_it() -> None:
    bomb = _forged(zlib.compress(b"\0" * (MAX_STATE_BYTES + 1), 9))
    error = _refusal(bomb)
    assert error.code == "packed_state_too_large" and "4 MiB" in error.message
    exactly = _forged(zlib.compress(b"\0" * MAX_STATE_BYTES, 9))
    assert len(unseal(KEY, exactly, PARAM)) == MAX_STATE_BYTES


def test_the_request_budget_bounds_many_tokens_together() -> None:
    budget = StateBudget(3000)
    token = seal(KEY, b"a" * 1000)
    assert unseal(KEY, token, PARAM, budget) and unseal(KEY, token, PARAM, budget)
    assert budget.left == 1000
    unseal(KEY, token, PARAM, budget)
    error = _refusal(token, budget=budget)
    assert error.code == "packed_state_too_large" and "this request" in error.message.lower()


@pytest.mark.parametrize(("token", "claimed"), [
    ("twr1.abc", True), ("twr12.abc", True), ("twr.abc", False), ("gAAAAA", False), ("", False), (None, False),
    (b"twr1.", False),
])
def test_ours_tells_our_tokens_from_others(token: object, claimed: bool) -> None:
    assert ours(token) is claimed
