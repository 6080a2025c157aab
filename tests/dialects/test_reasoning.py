"""Reasoning in the Responses dialect, from data: reasoning items in answers and streams (checked
against the openai SDK's own types), sealed state put back on the right assistant turn, and the
refusals (tampered state, a chat caller sending the pivot's extension)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import ResponseReasoningItem, ResponseStreamEvent
from pydantic import TypeAdapter

from tensorwall_proxy.dialects.chat import parse_chat
from tensorwall_proxy.dialects.reasoning import needs_key
from tensorwall_proxy.dialects.responses import RESPONSES, ResponsesRequest, parse_responses, response_answer
from tensorwall_proxy.dialects.sealed import seal, unseal
from tensorwall_proxy.errors import GatewayError
from tensorwall_proxy.sse import SseEvent
from tests.dialects.test_responses import USAGE, Pivot, _answer, _chunk, _events

KEY = b"fixed-test-key-of-thirty-two-by!"
THINKING = {"wire": "anthropic", "block": {"type": "thinking", "thinking": "hmm", "signature": "sig"}}
SIGNATURE = {"wire": "gemini", "block": {"thoughtSignature": "c2ln", "on": "text"}}
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def _parse(key: bytes | None = KEY, **body: Any) -> ResponsesRequest:
    return parse_responses({"model": "m", **body}, {}, key)


def _item(*state: dict[str, Any], key: bytes = KEY) -> dict[str, Any]:
    return {"type": "reasoning", "id": "rs_1", "summary": [],
            "encrypted_content": seal(key, orjson.dumps(list(state)))}


ASSISTANT = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hi"}]}
CALL = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}


# --- in: sealed state back on its turn ---------------------------------------------------------------


def test_state_goes_on_the_assistant_turn_it_precedes() -> None:
    req = _parse(input=[{"role": "user", "content": "q"}, _item(THINKING), ASSISTANT, CALL,
                        {"type": "function_call_output", "call_id": "c1", "output": "ok"}])
    user, assistant, tool = req.body["messages"]
    assert assistant["reasoning_state"] == [THINKING] and assistant["tool_calls"][0]["id"] == "c1"
    assert "reasoning_state" not in user and "reasoning_state" not in tool


def test_state_that_came_after_the_text_joins_the_same_turn_in_order() -> None:
    """A Gemini text answer's signature streams after the text: its item follows the message."""
    req = _parse(input=[{"role": "user", "content": "q"}, _item(THINKING), ASSISTANT, _item(SIGNATURE),
                        {"role": "user", "content": "again"}])
    assert req.body["messages"][1]["reasoning_state"] == [THINKING, SIGNATURE]
    assert [m["role"] for m in req.body["messages"]] == ["user", "assistant", "user"]


def test_state_of_two_turns_stays_with_each() -> None:
    req = _parse(input=[{"role": "user", "content": "q"}, _item(THINKING), CALL,
                        {"type": "function_call_output", "call_id": "c1", "output": "ok"}, _item(SIGNATURE), ASSISTANT])
    first, second = (m for m in req.body["messages"] if m["role"] == "assistant")
    assert first["reasoning_state"] == [THINKING] and second["reasoning_state"] == [SIGNATURE]


def test_state_with_no_assistant_turn_and_items_not_ours_are_left_out() -> None:
    req = _parse(input=[{"role": "user", "content": "q"}, _item(THINKING),
                        {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "gAAAAABopenai"},
                        {"type": "reasoning", "id": "rs_3", "summary": [{"type": "summary_text", "text": "x"}]},
                        {"role": "user", "content": "more"}, ASSISTANT])
    assert all("reasoning_state" not in m for m in req.body["messages"])


@pytest.mark.parametrize("token", [
    seal(b"another gateway's key", b"[]"), "twr1.AAAA", "twr2.abc", seal(KEY, b"not json"), seal(KEY, b"{}")])
def test_state_that_does_not_verify_is_a_400_naming_the_item(token: str) -> None:
    item = {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": token}
    with pytest.raises(GatewayError) as caught:
        _parse(input=[{"role": "user", "content": "q"}, ASSISTANT, item])
    assert caught.value.status == 400 and caught.value.param == "input[2].encrypted_content"
    assert caught.value.code == "invalid_encrypted_content"


def test_state_of_ours_without_the_key_is_a_503_not_a_silent_drop() -> None:
    with pytest.raises(GatewayError) as caught:
        _parse(None, input=[{"role": "user", "content": "q"}, _item(THINKING), ASSISTANT])
    assert caught.value.status == 503 and caught.value.param == "input[1].encrypted_content"


def test_which_bodies_need_the_key() -> None:
    assert needs_key({"include": ["reasoning.encrypted_content"], "input": "x"})
    assert needs_key({"input": [_item(THINKING)]})
    assert not needs_key({"input": "x", "include": ["message.output_text.logprobs"]})
    assert not needs_key({"input": [{"type": "reasoning", "encrypted_content": "gAAAA"}, "junk"]})
    assert not needs_key({"input": 7})


def test_a_chat_caller_cannot_send_the_extension() -> None:
    with pytest.raises(GatewayError) as caught:
        parse_chat({"model": "m", "messages": [{"role": "user", "content": "q"},
                                               {"role": "assistant", "content": "a", "reasoning_state": [THINKING]}]},
                   {})
    assert caught.value.status == 400 and caught.value.param == "messages[1].reasoning_state"


def test_only_a_key_and_include_together_ask_the_translators_for_state() -> None:
    assert _parse(input="x", include=["reasoning.encrypted_content"]).wants_reasoning_state
    assert not _parse(None, input="x", include=["reasoning.encrypted_content"]).wants_reasoning_state
    assert not _parse(input="x").wants_reasoning_state
    assert "fixed-test-key" not in repr(_parse(input="x"))  # the key never shows in a log or a traceback


# --- out: answers ----------------------------------------------------------------------------------------


def _reasoning_answer(req: ResponsesRequest, message: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(response_answer(req, _answer(message, usage={
        "prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12,
        "completion_tokens_details": {"reasoning_tokens": 7}})))
    return out


def test_an_answer_with_reasoning_has_the_item_first_with_its_state_sealed() -> None:
    req = _parse(input="x", include=["reasoning.encrypted_content"])
    out = _reasoning_answer(req, {"role": "assistant", "content": "hi", "reasoning_content": "let me think",
                                  "reasoning_state": [THINKING]})
    reasoning, message = out["output"]
    ResponseReasoningItem.model_validate(reasoning)
    assert reasoning["id"].startswith("rs_") and reasoning["type"] == "reasoning"
    assert reasoning["summary"] == [{"type": "summary_text", "text": "let me think"}]
    assert orjson.loads(unseal(KEY, reasoning["encrypted_content"])) == [THINKING]
    assert message["type"] == "message" and message["content"][0]["text"] == "hi"
    assert out["usage"]["output_tokens_details"] == {"reasoning_tokens": 7}
    assert "reasoning_state" not in json.dumps(out)


def test_without_include_the_item_has_no_state_and_without_reasoning_there_is_no_item() -> None:
    out = _reasoning_answer(_parse(input="x"), {"role": "assistant", "content": "hi", "reasoning": "thought"})
    assert out["output"][0] == {"id": out["output"][0]["id"], "type": "reasoning",
                                "summary": [{"type": "summary_text", "text": "thought"}]}
    plain = _reasoning_answer(_parse(input="x", include=["reasoning.encrypted_content"]),
                              {"role": "assistant", "content": "hi"})
    assert [item["type"] for item in plain["output"]] == ["message"]


def test_state_without_text_still_makes_an_item() -> None:
    """A Gemini 3 text answer: a signature, no thought text shown."""
    out = _reasoning_answer(_parse(input="x", include=["reasoning.encrypted_content"]),
                            {"role": "assistant", "content": "hi", "reasoning_state": [SIGNATURE]})
    assert out["output"][0]["summary"] == [] and out["output"][0]["encrypted_content"].startswith("twr1.")


# --- out: streams ----------------------------------------------------------------------------------------


class ThinkingPivot(Pivot):
    """The pivot decoder, with a reasoning delta visible as translators make it (DESIGN §14)."""

    def feed(self, event: SseEvent) -> list[bytes]:
        out = super().feed(event)
        if b"reasoning_content" in event.data:
            self.visible = True
        return out


def _stream(req: ResponsesRequest, *chunks: SseEvent) -> list[dict[str, Any]]:
    stream = RESPONSES.encode_stream(req, ThinkingPivot())
    raw: list[bytes] = []
    for chunk in (*chunks, _chunk(usage=USAGE), SseEvent(None, b"[DONE]")):
        raw += stream.feed(chunk)
    assert stream.done
    events = _events(raw)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        EVENTS.validate_python(event)  # every event one of the SDK's declared types
    return events


def test_a_reasoning_stream_follows_openais_grammar_before_the_message() -> None:
    req = _parse(input="x", stream=True, include=["reasoning.encrypted_content"])
    stream = RESPONSES.encode_stream(req, ThinkingPivot())
    assert stream.feed(_chunk({"role": "assistant", "content": ""})) == []
    first = stream.feed(_chunk({"reasoning_content": "let "}))
    assert stream.visible and first  # the first reasoning delta is the commit point
    events = _stream(req, _chunk({"reasoning_content": "let "}), _chunk({"reasoning_content": "me"}),
                     _chunk({"reasoning_state": [THINKING]}), _chunk({"content": "hi"}), _chunk({}, "stop"))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    added, part = events[2], events[3]
    assert added["item"] == {"id": added["item"]["id"], "type": "reasoning", "summary": []}
    assert part["part"] == {"type": "summary_text", "text": ""} and part["summary_index"] == 0
    assert {e["item_id"] for e in events[3:8]} == {added["item"]["id"]}
    assert events[6]["text"] == "let me" and events[7]["part"]["text"] == "let me"
    done = events[8]["item"]
    ResponseReasoningItem.model_validate(done)
    assert done["summary"] == [{"type": "summary_text", "text": "let me"}]
    assert orjson.loads(unseal(KEY, done["encrypted_content"])) == [THINKING]
    output = events[-1]["response"]["output"]
    assert [item["type"] for item in output] == ["reasoning", "message"] and output[0] == done
    assert events[9]["output_index"] == 1


def test_state_after_the_text_opens_an_item_of_its_own_and_blocks_are_parts() -> None:
    req = _parse(input="x", stream=True, include=["reasoning.encrypted_content"])
    events = _stream(req, _chunk({"reasoning_content": "a"}), _chunk({"reasoning_state": [THINKING]}),
                     _chunk({"reasoning_content": "b"}), _chunk({"reasoning_state": [THINKING]}),
                     _chunk({"content": "hi"}), _chunk({"reasoning_state": [SIGNATURE]}), _chunk({}, "stop"))
    output = events[-1]["response"]["output"]
    assert [item["type"] for item in output] == ["reasoning", "message", "reasoning"]
    assert output[0]["summary"] == [{"type": "summary_text", "text": "a"}, {"type": "summary_text", "text": "b"}]
    assert orjson.loads(unseal(KEY, output[0]["encrypted_content"])) == [THINKING, THINKING]
    assert output[2]["summary"] == [] and orjson.loads(unseal(KEY, output[2]["encrypted_content"])) == [SIGNATURE]
    assert [e["summary_index"] for e in events if e["type"] == "response.reasoning_summary_part.added"] == [0, 1]
    late = [e["type"] for e in events if e.get("output_index") == 2]
    assert late == ["response.output_item.added", "response.output_item.done"]


def test_a_reasoning_stream_without_include_carries_no_state() -> None:
    events = _stream(_parse(input="x", stream=True), _chunk({"reasoning": "hmm"}), _chunk({"content": "hi"}),
                     _chunk({}, "stop"))
    reasoning = events[-1]["response"]["output"][0]
    assert reasoning["type"] == "reasoning" and "encrypted_content" not in reasoning
    assert reasoning["summary"] == [{"type": "summary_text", "text": "hmm"}]


JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=10)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(JSON.map(lambda state: seal(KEY, orjson.dumps(state))), st.text(max_size=40), JSON),
                max_size=4))
def test_any_reasoning_items_parse_or_are_a_400(tokens: list[Any]) -> None:
    items: list[Any] = [{"role": "user", "content": "q"}]
    for token in tokens:
        items += [{"type": "reasoning", "summary": [], "encrypted_content": token}, ASSISTANT]
    try:
        req = _parse(input=items)
    except GatewayError as error:
        assert error.status == 400 and error.param is not None and error.param.endswith(".encrypted_content")
    else:
        for message in req.body["messages"]:
            assert isinstance(message.get("reasoning_state", []), list)
