"""Stored conversations, pure: a turn packed and read back, a chain checked turn by turn, the
follow-up's input, and the input_items page."""

from __future__ import annotations

import itertools
import json
import zlib
from typing import Any

import pytest

from tensorwall_proxy.dialects import conversations
from tensorwall_proxy.dialects.conversations import Chain, Turn
from tensorwall_proxy.errors import GatewayError

OWNER = ("sha256:" + "ab" * 32, "cd" * 32)
_counter = itertools.count()


def _id(prefix: str) -> str:
    return f"{prefix}{next(_counter):024x}"


def _turn(response_id: str, parent: str | None, text: str, owner: Any = OWNER) -> Turn:
    items = conversations.input_items(text, _id)
    output = [{"id": _id("msg_"), "type": "message", "role": "assistant", "status": "completed",
               "content": [{"type": "output_text", "text": f"re: {text}", "annotations": [], "logprobs": []}]}]
    return Turn(response_id, parent, owner, items, {"id": response_id, "object": "response", "output": output})


def test_a_turn_round_trips_compressed() -> None:
    turn = _turn("resp_" + "1" * 24, "resp_" + "0" * 24, "hello " * 500)
    data = conversations.pack(turn)
    assert len(data) < len(json.dumps(turn.response)) + len(json.dumps(turn.items))
    back, size = conversations.unpack(data)
    assert back == turn and size == len(zlib.decompress(data))


@pytest.mark.parametrize("data", [b"", b"not zlib", zlib.compress(b"[1,2]"), zlib.compress(b'{"v": 99}'),
                                  zlib.compress(b'{"v": 1, "id": "x"}')])
def test_what_is_not_a_turn_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        conversations.unpack(data)


def test_inflating_past_the_bound_stops_there() -> None:
    bomb = zlib.compress(b'{"v":1,"pad":"' + b"x" * 5_000_000 + b'"}')
    assert len(bomb) < 10_000
    with pytest.raises(ValueError, match="inflates past"):
        conversations.unpack(bomb, limit=1_000_000)


def _chain(turns: list[Turn]) -> Chain:
    """Read ``turns`` (oldest first) the way stored.py does: from the newest back."""
    by_id = {t.id: conversations.pack(t) for t in turns}
    chain = Chain(turns[-1].id, OWNER)
    current: str | None = turns[-1].id
    while current is not None:
        current = chain.add(current, by_id.get(current))
    return chain


def test_the_chain_gives_the_conversation_oldest_first() -> None:
    first = _turn(_id("resp_"), None, "one")
    second = _turn(_id("resp_"), first.id, "two")
    third = _turn(_id("resp_"), second.id, "three")
    chain = _chain([first, second, third])
    texts = [item["content"][0]["text"] for item in chain.items()]
    assert texts == ["one", "re: one", "two", "re: two", "three", "re: three"]
    assert chain.keys() == ["resp:" + t.id for t in (third, second, first)]


def test_a_missing_turn_is_previous_response_not_found() -> None:
    first = _turn(_id("resp_"), None, "one")
    second = _turn(_id("resp_"), first.id, "two")
    chain = Chain(second.id, OWNER)
    with pytest.raises(GatewayError) as caught:
        chain.add(second.id, None)
    assert caught.value.status == 400 and caught.value.code == "previous_response_not_found"
    assert caught.value.param == "previous_response_id"
    chain = Chain(second.id, OWNER)
    parent = chain.add(second.id, conversations.pack(second))
    assert parent == first.id
    with pytest.raises(GatewayError, match="expired or was deleted"):
        chain.add(first.id, None)


@pytest.mark.parametrize("owner", [("sha256:" + "ee" * 32, OWNER[1]), (OWNER[0], None), (None, None)])
def test_another_owners_turn_reads_as_missing(owner: Any) -> None:
    theirs = _turn(_id("resp_"), None, "secret", owner=owner)
    chain = Chain(theirs.id, OWNER)
    with pytest.raises(GatewayError) as caught:
        chain.add(theirs.id, conversations.pack(theirs))
    assert caught.value.code == "previous_response_not_found"
    assert "secret" not in caught.value.message


def test_a_value_under_the_wrong_id_reads_as_missing() -> None:
    turn = _turn(_id("resp_"), None, "one")
    with pytest.raises(GatewayError, match="not found"):
        Chain("resp_" + "f" * 24, OWNER).add("resp_" + "f" * 24, conversations.pack(turn))


def test_a_chain_stops_at_its_turn_bound() -> None:
    turns: list[Turn] = []
    for _ in range(conversations.MAX_TURNS):
        turns.append(_turn(_id("resp_"), turns[-1].id if turns else None, "x"))
    with pytest.raises(GatewayError) as caught:
        _chain(turns)
    assert caught.value.status == 400 and caught.value.code == "conversation_too_large"
    assert _chain(turns[: conversations.MAX_TURNS - 1]).turns  # one fewer may still be continued


def test_a_chain_stops_at_its_size_bound() -> None:
    big = "y" * (6 * 1024 * 1024)
    first = _turn(_id("resp_"), None, big)
    second = _turn(_id("resp_"), first.id, big)
    third = _turn(_id("resp_"), second.id, big)
    with pytest.raises(GatewayError) as caught:
        _chain([first, second, third])
    assert caught.value.code == "conversation_too_large" and "MiB" in caught.value.message


def test_input_items_get_ids_and_types() -> None:
    items = conversations.input_items(
        [{"role": "user", "content": "hi"}, {"type": "function_call_output", "call_id": "c", "output": "o"},
         {"id": "msg_mine", "type": "message", "role": "user", "content": "kept"}], _id)
    assert [i["type"] for i in items] == ["message", "function_call_output", "message"]
    assert items[0]["id"].startswith("msg_") and items[1]["id"].startswith("fco_") and items[2]["id"] == "msg_mine"


def test_a_follow_up_carries_the_conversation_before_its_input() -> None:
    history = [{"type": "message", "role": "user", "content": "one"}]
    body = {"model": "m", "input": "two", "previous_response_id": "resp_x", "instructions": "i"}
    merged = conversations.continued(body, history)
    assert merged["input"] == [*history, {"type": "message", "role": "user", "content": "two"}]
    assert "previous_response_id" not in merged and merged["instructions"] == "i"
    assert body["input"] == "two"  # the caller's body is not changed


def _items(n: int) -> list[dict[str, Any]]:
    return [{"id": f"msg_{i}", "type": "message"} for i in range(n)]


def test_pages_are_newest_first_by_default() -> None:
    page = json.loads(conversations.page(_items(30), {}))
    assert page["object"] == "list" and len(page["data"]) == 20 and page["has_more"] is True
    assert page["first_id"] == "msg_29" and page["last_id"] == "msg_10"
    rest = json.loads(conversations.page(_items(30), {"after": "msg_10"}))
    assert [i["id"] for i in rest["data"]] == [f"msg_{i}" for i in range(9, -1, -1)] and rest["has_more"] is False


def test_pages_in_order_and_limited() -> None:
    page = json.loads(conversations.page(_items(5), {"order": "asc", "limit": "2"}))
    assert [i["id"] for i in page["data"]] == ["msg_0", "msg_1"] and page["has_more"] is True
    empty = json.loads(conversations.page([], {}))
    assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


@pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "101"}, {"limit": "x"}, {"order": "up"},
                                   {"after": "msg_nope"}])
def test_bad_page_queries_are_400(query: dict[str, str]) -> None:
    with pytest.raises(GatewayError) as caught:
        conversations.page(_items(3), query)
    assert caught.value.status == 400


def test_error_messages_quote_ids_bounded() -> None:
    error = conversations.not_found("resp_" + "z" * 10_000)
    assert len(error.message) < 200
