"""The Responses dialect from data: a body → the pivot, a chat answer → a Response, and the stream
state machine fed pivot chunks (the event grammar, the held prelude, the terminal events)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import orjson
import pytest

from tensorwall_proxy.dialects.responses import RESPONSES, ResponsesRequest, parse_responses, response_answer
from tensorwall_proxy.errors import GatewayError, UpstreamError
from tensorwall_proxy.sse import DONE_EVENT, SseEvent, encode


def _parse(**body: Any) -> ResponsesRequest:
    return parse_responses({"model": "m", **body}, {})


def test_a_string_input_is_one_user_message_after_the_instructions() -> None:
    req = _parse(input="hi", instructions="be brief", max_output_tokens=9, temperature=0.2, top_p=0.9,
                 metadata={"a": "b"}, store=True, include=["reasoning.encrypted_content"], truncation="auto",
                 prompt_cache_key="k", safety_identifier="s", client_metadata={"x": 1}, user="u")
    assert req.body == {"model": "m", "messages": [{"role": "system", "content": "be brief"},
                                                   {"role": "user", "content": "hi"}],
                        "temperature": 0.2, "top_p": 0.9, "user": "u", "max_tokens": 9}
    assert not req.stream
    assert req.echo["store"] is False and req.echo["metadata"] == {"a": "b"} and req.echo["instructions"] == "be brief"


def test_items_become_chat_turns() -> None:
    req = _parse(input=[
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "rules"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "look"},
                                     {"type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "original"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "calling", "annotations": []}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "*** Begin"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        {"type": "custom_tool_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "done"}]},
    ])
    assert req.body["messages"] == [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA",
                                                                         "detail": "high"}}]},
        {"role": "assistant", "content": "calling", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "apply_patch",
                                                          "arguments": '{"input":"*** Begin"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        {"role": "tool", "tool_call_id": "c2", "content": "done"},
    ]


def test_tools_custom_namespace_and_hosted() -> None:
    req = _parse(input="x", tool_choice="auto", parallel_tool_calls=False, tools=[
        {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True},
        {"type": "custom", "name": "apply_patch", "description": "patch"},
        {"type": "namespace", "name": "ns", "tools": [{"type": "function", "name": "g", "parameters": None}]},
        {"type": "web_search"},
    ])
    assert [t["function"]["name"] for t in req.body["tools"]] == ["f", "apply_patch", "ns__g"]
    assert req.body["tools"][1]["function"]["parameters"]["required"] == ["input"]
    assert req.body["tools"][0]["function"]["strict"] is True
    assert req.body["tool_choice"] == "auto" and req.body["parallel_tool_calls"] is False
    assert req.custom == frozenset({"apply_patch"}) and req.namespaced == {"ns__g": ("ns", "g")}
    # Echoed as the caller sent them, function tools with the nullable fields the schema requires.
    assert [t["type"] for t in req.echo["tools"]] == ["function", "custom", "namespace", "web_search"]


def test_tool_choice_text_format_reasoning_and_stream() -> None:
    req = _parse(input="x", stream=True, reasoning={"effort": "high", "summary": "auto"},
                 tools=[{"type": "custom", "name": "p"}], tool_choice={"type": "custom", "name": "p"},
                 text={"format": {"type": "json_schema", "name": "r", "schema": {"type": "object"}, "strict": True}})
    assert req.body["tool_choice"] == {"type": "function", "function": {"name": "p"}}
    assert req.body["response_format"] == {"type": "json_schema",
                                           "json_schema": {"name": "r", "schema": {"type": "object"}, "strict": True}}
    assert req.body["reasoning_effort"] == "high"
    assert req.stream and req.wants_usage and req.body["stream_options"] == {"include_usage": True}
    assert _parse(input="x", text={"format": {"type": "json_object"}}).body["response_format"] == {"type": "json_object"}
    assert "response_format" not in _parse(input="x", text={"format": {"type": "text"}}).body


@pytest.mark.parametrize(("body", "status", "param", "code"), [
    ({}, 400, "input", None),
    ({"input": "x", "stream": "yes"}, 400, "stream", None),
    ({"input": [{"type": "item_reference", "id": "i"}]}, 400, "input[0]", None),
    ({"input": [{"type": "computer_call_output"}]}, 400, "input[0].type", None),
    ({"input": [{"role": "tool", "content": "x"}]}, 400, "input[0].role", None),
    ({"input": "x", "tools": [{"type": "web_search"}], "tool_choice": {"type": "web_search"}}, 400, "tool_choice", None),
    ({"input": "x", "tools": [{"type": "function", "name": "f"}],
      "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}}, 400, "tool_choice", None),
    ({"input": "x", "text": {"format": {"type": "json_schema"}}}, 400, "text.format", None),
    ({"input": "x", "background": True}, 400, "background", None),
])
def test_refusals_name_the_field(body: dict[str, Any], status: int, param: str, code: str | None) -> None:
    with pytest.raises(GatewayError) as caught:
        _parse(**body)
    assert caught.value.status == status and caught.value.param == param
    if code is not None:
        assert caught.value.code == code


def _answer(message: dict[str, Any], finish: str = "stop", usage: Any = None) -> bytes:
    return orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "up",
                         "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                         "usage": usage or {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})


def test_an_answer_becomes_a_response() -> None:
    req = _parse(input="x", tools=[{"type": "custom", "name": "p"},
                                   {"type": "namespace", "name": "ns", "tools": [{"type": "function", "name": "g"}]}])
    out = json.loads(response_answer(req, _answer({"role": "assistant", "content": "hi", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "p", "arguments": '{"input":"diff"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "ns__g", "arguments": "{}"}}]}, "tool_calls",
        {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5,
         "prompt_tokens_details": {"cached_tokens": 1}, "completion_tokens_details": {"reasoning_tokens": 1}})))
    assert out["object"] == "response" and out["status"] == "completed" and out["id"].startswith("resp_")
    assert out["created_at"] == 7 and out["model"] == "up" and out["error"] is None
    message, custom, namespaced = out["output"]
    assert message["content"] == [{"type": "output_text", "text": "hi", "annotations": [], "logprobs": []}]
    assert custom["type"] == "custom_tool_call" and custom["input"] == "diff" and custom["call_id"] == "call_1"
    assert namespaced == {"id": namespaced["id"], "type": "function_call", "status": "completed", "call_id": "call_2",
                          "name": "g", "arguments": "{}", "namespace": "ns"}
    assert out["usage"] == {"input_tokens": 3, "input_tokens_details": {"cached_tokens": 1, "cache_write_tokens": 0},
                            "output_tokens": 2, "output_tokens_details": {"reasoning_tokens": 1}, "total_tokens": 5}
    for name in ("instructions", "tools", "tool_choice", "parallel_tool_calls", "temperature", "top_p", "metadata",
                 "text", "reasoning", "store", "max_output_tokens", "incomplete_details"):
        assert name in out


def test_a_length_stop_is_incomplete_and_usage_is_never_missing() -> None:
    out = json.loads(response_answer(_parse(input="x"), orjson.dumps(
        {"created": 1, "model": "m", "choices": [{"message": {"content": "a"}, "finish_reason": "length"}]})))
    assert out["status"] == "incomplete" and out["incomplete_details"] == {"reason": "max_output_tokens"}
    assert out["usage"]["output_tokens_details"] == {"reasoning_tokens": 0}


class Pivot:
    """A pivot decoder fed ready chat chunks: each event's data is passed on as the chunk it is."""

    def __init__(self) -> None:
        self.visible = False
        self.done = False
        self.usage: Mapping[str, Any] | None = None

    def feed(self, event: SseEvent) -> list[bytes]:
        if event.data == b"[DONE]":
            self.done = True
            return [DONE_EVENT]
        chunk = json.loads(event.data)
        choices = chunk.get("choices") or []
        if any(c["delta"].get("content") or c["delta"].get("tool_calls") or c.get("finish_reason") for c in choices):
            self.visible = True
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        return [encode(event.data)]

    def close(self) -> list[bytes]:
        return []

    def split_plain(self, chunk: bytes) -> tuple[bytes, bytes]:
        return b"", chunk


def _chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: Any = None) -> SseEvent:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return SseEvent(None, orjson.dumps({"id": "c", "model": "up", "choices": choices, "usage": usage}))


USAGE = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


def _events(raw: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for block in b"".join(raw).decode().split("\n\n"):
        if block:
            event_line, data_line = block.split("\n")
            event = json.loads(data_line.removeprefix("data: "))
            assert event_line == f"event: {event['type']}"
            out.append(event)
    return out


def test_a_text_stream_holds_its_prelude_until_the_first_text() -> None:
    stream = RESPONSES.encode_stream(_parse(input="x", stream=True), Pivot())
    assert stream.feed(_chunk({"role": "assistant", "content": ""})) == [] and not stream.visible
    raw = stream.feed(_chunk({"content": "Hel"}))
    assert stream.visible
    raw += stream.feed(_chunk({"content": "lo"}))
    raw += stream.feed(_chunk({}, "stop"))
    assert not stream.done
    raw += stream.feed(_chunk(usage=USAGE))
    raw += stream.feed(SseEvent(None, b"[DONE]"))
    assert stream.done
    events = _events(raw)
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(10))
    assert events[2]["item"]["content"] == [] and events[3]["part"]["text"] == ""
    assert events[6]["text"] == "Hello"
    completed = events[-1]["response"]
    assert completed["id"] == events[0]["response"]["id"] and completed["status"] == "completed"
    assert completed["output"][0]["content"][0]["text"] == "Hello"
    assert completed["usage"]["output_tokens_details"] == {"reasoning_tokens": 0}
    assert completed["usage"]["input_tokens"] == 4


def test_a_tool_call_closes_the_message_and_streams_its_arguments() -> None:
    req = _parse(input="x", stream=True, tools=[{"type": "function", "name": "f"}, {"type": "custom", "name": "p"}])
    stream = RESPONSES.encode_stream(req, Pivot())
    raw = stream.feed(_chunk({"content": "let me"}))
    raw += stream.feed(_chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": ""}}]}))
    raw += stream.feed(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}))
    raw += stream.feed(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}))
    raw += stream.feed(_chunk({"tool_calls": [{"index": 1, "id": "call_2", "function": {"name": "p",
                                                                                        "arguments": '{"input":"d"}'}}]},
                              "tool_calls"))
    raw += stream.feed(_chunk(usage=USAGE))
    raw += stream.feed(SseEvent(None, b"[DONE]"))
    kinds = [e["type"] for e in _events(raw)]
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done", "response.output_item.done",
        "response.output_item.added", "response.custom_tool_call_input.delta", "response.custom_tool_call_input.done",
        "response.output_item.done", "response.completed"]
    events = _events(raw)
    assert events[8]["item"]["arguments"] == "" and events[8]["item"]["call_id"] == "call_1"
    assert events[11]["name"] == "f" and events[11]["arguments"] == '{"a":1}'
    assert events[15]["input"] == "d"
    output = events[-1]["response"]["output"]
    assert [item["type"] for item in output] == ["message", "function_call", "custom_tool_call"]
    assert output[2]["input"] == "d" and all(item["status"] == "completed" for item in output)


def test_a_length_stop_ends_incomplete() -> None:
    stream = RESPONSES.encode_stream(_parse(input="x", stream=True), Pivot())
    raw = stream.feed(_chunk({"content": "a"}, "length")) + stream.feed(_chunk(usage=USAGE))
    raw += stream.feed(SseEvent(None, b"[DONE]"))
    events = _events(raw)
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-2]["item"]["status"] == "incomplete"


def test_a_failure_after_the_commit_is_response_failed_with_the_created_id_and_the_next_number() -> None:
    stream = RESPONSES.encode_stream(_parse(input="x", stream=True), Pivot())
    events = _events(stream.feed(_chunk({"content": "a"})))
    failed = _events([RESPONSES.error_event(UpstreamError("server", 502, "upstream broke"), stream)])
    assert [e["type"] for e in failed] == ["response.failed"]
    assert failed[0]["sequence_number"] == events[-1]["sequence_number"] + 1
    assert failed[0]["response"]["id"] == events[0]["response"]["id"]
    assert failed[0]["response"]["status"] == "failed"
    assert failed[0]["response"]["error"] == {"code": "server_error", "message": "upstream broke"}
    # Without a stream (an error of the gateway's own), OpenAI's `error` event.
    (plain,) = _events([RESPONSES.error_event(GatewayError(500, "bug", code="internal_error"), None)])
    assert plain["type"] == "error" and plain["code"] == "internal_error"
