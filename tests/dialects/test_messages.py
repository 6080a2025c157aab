"""The Messages dialect from data: Messages bodies into the pivot, pivot answers and chunks into
Message objects and Anthropic's event grammar (checked with the anthropic SDK's own types and its
stream accumulator), and errors in Anthropic's shape."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from tensorwall_proxy.dialects.messages import MESSAGES, MessagesRequest, count_tokens_body, parse_messages
from tensorwall_proxy.errors import GatewayError, ProviderNotConfigured, UpstreamError
from tensorwall_proxy.sse import SseEvent
from tests.dialects.test_messages_e2e import declared_only
from tests.dialects.test_responses import USAGE, Pivot, _chunk, _events

EVENTS: TypeAdapter[RawMessageStreamEvent] = TypeAdapter(RawMessageStreamEvent)
USER = [{"role": "user", "content": "hi"}]


def _parse(**body: Any) -> MessagesRequest:
    return parse_messages({"model": "m", "max_tokens": 100, "messages": USER, **body}, {})


def _error(body: dict[str, Any], counting: bool = False) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        parse_messages({"model": "m", **body}, {}, counting=counting)
    return caught.value


def test_system_blocks_and_markers() -> None:
    req = _parse(system=[{"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}},
                         {"type": "text", "text": "B"}], cache_control={"type": "ephemeral"},
                 tools=[{"name": "t", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}])
    assert req.body["messages"][0] == {"role": "system", "content": "A\n\nB"}
    assert req.cache_markers == 3 and not req.stream and req.body["max_tokens"] == 100


@pytest.mark.parametrize(("thinking", "config", "effort"), [
    ({"type": "enabled", "budget_tokens": 1024}, None, "low"),
    ({"type": "enabled", "budget_tokens": 2048}, None, "medium"),
    ({"type": "enabled", "budget_tokens": 31999}, None, "high"),
    ({"type": "adaptive"}, None, None),
    ({"type": "adaptive"}, {"effort": "max"}, "high"),
    ({"type": "adaptive"}, {"effort": "medium"}, "medium"),
    ({"type": "disabled"}, {"effort": "low"}, None),
    (None, {"effort": "low"}, None),  # effort without thinking is a hint
])
def test_thinking_becomes_reasoning_effort(thinking: Any, config: Any, effort: str | None) -> None:
    body: dict[str, Any] = {}
    if thinking is not None:
        body["thinking"] = thinking
    if config is not None:
        body["output_config"] = config
    assert _parse(**body).body.get("reasoning_effort") == effort


def test_blocks_the_pivot_carries_and_those_it_drops() -> None:
    req = _parse(messages=[
        {"role": "user", "content": [
            {"type": "document", "title": "r.pdf", "source": {"type": "base64", "media_type": "application/pdf",
                                                              "data": "JVBE"}},
            {"type": "search_result", "title": "T", "source": "https://s", "content": [{"type": "text", "text": "x"}]},
            {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "inner"}]}}]},
        {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "opaque"},
                                          {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"},
                                     {"type": "tool_result", "tool_use_id": "t1", "is_error": True}]}],
        metadata={"user_id": "u" * 300}, top_k=3)
    assert req.body["messages"] == [
        {"role": "user", "content": [{"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE",
                                                               "filename": "r.pdf"}},
                                     {"type": "text", "text": "T — https://s\nx"}, {"type": "text", "text": "inner"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": ""},
        {"role": "tool", "tool_call_id": "t1", "content": "Error"}]
    assert "user" not in req.body and req.top_k == 3  # a user id past 256 characters is a hint dropped


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": USER}, "max_tokens"),
    ({"max_tokens": True, "messages": USER}, "max_tokens"),
    ({"max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "messages[0].content[0].type"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages[0].content[0]"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document", "source": {
        "type": "url", "url": "https://x/a.pdf"}}]}]}, "messages[0].content[0].source"),
    ({"max_tokens": 5, "messages": [{"role": "assistant", "content": [{"type": "thinking", "thinking": "t",
                                                                       "signature": "s"}]}]}, "messages"),
    ({"max_tokens": 5, "messages": USER, "tools": [{"name": "t"}]}, "tools[0].input_schema"),
    ({"max_tokens": 5, "messages": USER, "tools": [{"name": "t", "input_schema": {}}],
      "tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
    ({"max_tokens": 5, "messages": USER, "thinking": {"type": "deep"}}, "thinking.type"),
    ({"max_tokens": 5, "messages": USER, "thinking": {"type": "adaptive"}, "output_config": {"effort": "huge"}},
     "output_config.effort"),
    ({"max_tokens": 5, "messages": USER, "output_config": {"format": {"type": "text"}}}, "output_config.format"),
    ({"max_tokens": 5, "messages": USER, "stop_sequences": "END"}, "stop_sequences"),
    ({"max_tokens": 5, "messages": USER, "temperature": "hot"}, "temperature"),
    ({"max_tokens": 5, "messages": USER, "top_k": 1.5}, "top_k"),
])
def test_bad_bodies_name_the_field(body: dict[str, Any], param: str) -> None:
    error = _error(body)
    assert error.status == 400 and error.param == param


def test_count_tokens_needs_no_max_tokens_and_estimates_the_text() -> None:
    req = parse_messages({"model": "m", "system": "abcd", "messages": [
        {"role": "user", "content": "efgh"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}]}]}, {},
        counting=True)
    assert req.estimate == 4  # "abcd" + "efgh" + '{"a":1}' = 15 characters, / 4 rounded up
    assert json.loads(count_tokens_body(req)) == {"input_tokens": 4}
    assert "max_tokens" not in req.body and not req.stream


# --- answers --------------------------------------------------------------------------------------


def _answer(message: dict[str, Any], finish: str, usage: Any = USAGE, answer_id: str = "chatcmpl-1") -> dict[str, Any]:
    body = orjson.dumps({"id": answer_id, "object": "chat.completion", "model": "up-model",
                         "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage})
    out = json.loads(MESSAGES.encode_answer(_parse(), body))
    declared_only(Message.model_validate(out))
    return out


def test_an_answer_becomes_a_message() -> None:
    usage = {"prompt_tokens": 100, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 60},
             "cache_creation_input_tokens": 30}
    out = _answer({"role": "assistant", "content": "Hi", "reasoning_content": "think",
                   "tool_calls": [{"id": "call_1", "type": "function",
                                   "function": {"name": "f", "arguments": '{"x": 1}'}},
                                  {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "oops"}}]},
                  "tool_calls", usage, answer_id="msg_upstream")
    assert out["id"] == "msg_upstream" and out["model"] == "up-model"
    assert out["content"] == [{"type": "thinking", "thinking": "think", "signature": ""}, {"type": "text", "text": "Hi"},
                              {"type": "tool_use", "id": "call_1", "name": "f", "input": {"x": 1}},
                              {"type": "tool_use", "id": "call_2", "name": "g", "input": {}}]
    assert out["stop_reason"] == "tool_use" and out["stop_sequence"] is None
    # Anthropic counts cache reads and writes outside input_tokens: subtracted, never copied.
    assert out["usage"] == {"input_tokens": 10, "output_tokens": 7, "cache_creation_input_tokens": 30,
                            "cache_read_input_tokens": 60}


@pytest.mark.parametrize(("message", "finish", "reason"), [
    ({"role": "assistant", "content": "a"}, "length", "max_tokens"),
    ({"role": "assistant", "content": "a"}, "content_filter", "refusal"),
    ({"role": "assistant", "content": None, "refusal": "I can't."}, "stop", "refusal"),
    ({"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, "stop", "tool_use"),
    ({"role": "assistant", "content": "a"}, "stop", "end_turn"),
])
def test_stop_reasons(message: dict[str, Any], finish: str, reason: str) -> None:
    out = _answer(message, finish)
    assert out["stop_reason"] == reason and out["id"].startswith("msg_") and len(out["id"]) == 28


def test_an_answer_without_usage_carries_the_estimate() -> None:
    assert _answer({"role": "assistant", "content": "a"}, "stop", usage=None)["usage"]["input_tokens"] == 1


# --- streams --------------------------------------------------------------------------------------


def _run(chunks: list[SseEvent]) -> tuple[Any, list[dict[str, Any]]]:
    """Feed pivot chunks through the encoder; the events, each checked against the SDK's types, and
    the SDK accumulator's final message."""
    stream = MESSAGES.encode_stream(_parse(stream=True), Pivot())
    raw: list[bytes] = []
    for chunk in chunks:
        raw += stream.feed(chunk)
    raw += stream.feed(SseEvent(None, b"[DONE]"))
    assert stream.done
    events = _events(raw)
    snapshot, buffers = None, {}  # type: ignore[var-annotated]
    for event in events:
        if event["type"] != "ping":
            parsed = EVENTS.validate_python(event)
            declared_only(parsed)
            snapshot = accumulate_event(event=parsed, current_snapshot=snapshot, json_bufs=buffers)
    return snapshot, events


def test_the_prelude_is_held_until_the_first_content() -> None:
    stream = MESSAGES.encode_stream(_parse(stream=True), Pivot())
    assert stream.feed(_chunk({"role": "assistant", "content": ""})) == [] and not stream.visible
    out = stream.feed(_chunk({"content": "Hi"}))
    assert stream.visible
    assert [json.loads(e.split(b"\n")[1][6:])["type"] for e in out] == [
        "message_start", "ping", "content_block_start", "content_block_delta"]


def test_thinking_text_and_tool_calls_become_contiguous_blocks() -> None:
    usage = {**USAGE, "prompt_tokens_details": {"cached_tokens": 3}}
    final, events = _run([
        _chunk({"role": "assistant", "content": ""}), _chunk({"reasoning_content": "let me "}),
        _chunk({"reasoning_content": "see"}), _chunk({"content": "Sure."}),
        _chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}),
        _chunk({"tool_calls": [{"index": 1, "id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}),
        _chunk({}, "tool_calls"), _chunk(usage=usage)])
    assert [(e["type"], e.get("index")) for e in events] == [
        ("message_start", None), ("ping", None),
        ("content_block_start", 0), ("content_block_delta", 0), ("content_block_delta", 0), ("content_block_stop", 0),
        ("content_block_start", 1), ("content_block_delta", 1), ("content_block_stop", 1),
        ("content_block_start", 2), ("content_block_delta", 2), ("content_block_delta", 2), ("content_block_stop", 2),
        ("content_block_start", 3), ("content_block_delta", 3), ("content_block_stop", 3),
        ("message_delta", None), ("message_stop", None)]
    assert events[0]["message"]["usage"]["input_tokens"] == 1  # the estimate: "hi"
    assert events[-2]["usage"] == {"input_tokens": 1, "output_tokens": 2, "cache_creation_input_tokens": 0,
                                   "cache_read_input_tokens": 3}
    assert [block.type for block in final.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert final.content[0].thinking == "let me see" and final.content[1].text == "Sure."
    assert final.content[2].input == {"a": 1} and final.content[3].id == "c2" and final.content[3].input == {}
    assert final.stop_reason == "tool_use" and final.usage.output_tokens == 2


def test_a_refusal_streams_as_text_with_stop_reason_refusal() -> None:
    final, _ = _run([_chunk({"refusal": "No."}), _chunk({}, "stop"), _chunk(usage=USAGE)])
    assert final.content[0].text == "No." and final.stop_reason == "refusal"


def test_a_stream_without_content_still_has_its_frame() -> None:
    final, events = _run([_chunk({}, "length"), _chunk(usage=USAGE)])
    assert [e["type"] for e in events] == ["message_start", "ping", "message_delta", "message_stop"]
    assert final.stop_reason == "max_tokens" and final.content == []


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("error", "status", "kind", "code"), [
    (GatewayError(400, "bad", code="invalid_json"), 400, "invalid_request_error", "invalid_json"),
    (GatewayError(401, "key", code="invalid_gateway_key"), 401, "authentication_error", "invalid_gateway_key"),
    (GatewayError(403, "no", code="forbidden_host"), 403, "permission_error", "forbidden_host"),
    (GatewayError(404, "none", code="model_not_found"), 404, "not_found_error", "model_not_found"),
    (GatewayError(405, "method"), 405, "invalid_request_error", None),
    (GatewayError(413, "big", code="request_too_large"), 413, "request_too_large", "request_too_large"),
    (GatewayError(429, "slow", code="rate_limit_exceeded"), 429, "rate_limit_error", "rate_limit_exceeded"),
    (GatewayError(503, "busy", code="overloaded"), 529, "overloaded_error", "overloaded"),
    (ProviderNotConfigured("p", "detail"), 503, "api_error", "provider_not_configured"),
    (UpstreamError("overloaded", 503, "upstream busy", code="x"), 529, "overloaded_error", None),
    (UpstreamError("server", 502, "upstream broke", code="x"), 502, "api_error", None),
    (UpstreamError("timeout", 504, "slow upstream"), 504, "timeout_error", None),
    (UpstreamError("bad_request", 422, "unprocessable", code="x"), 422, "invalid_request_error", None),
])
def test_errors_in_anthropic_shape(error: GatewayError, status: int, kind: str, code: str | None) -> None:
    assert MESSAGES.error_status(error) == status
    body = json.loads(MESSAGES.error_body(error))
    assert body["type"] == "error" and body["error"]["type"] == kind and body["error"]["message"] == error.message
    assert body["error"].get("code") == code
    event = MESSAGES.error_event(error)
    assert event.startswith(b"event: error\ndata: ") and json.loads(event.split(b"\n")[1][6:]) == body
