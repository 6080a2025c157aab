"""A caller's body for a native passthrough (dialects/native.py): gateway-made state removed, the rest
left as it is, nothing copied when nothing changes; and the end the Responses dialect gives a native
stream broken past its commit point."""

from __future__ import annotations

from typing import Any

import orjson

from tensorwall_proxy.dialects.native import responses_body
from tensorwall_proxy.dialects.responses import RESPONSES
from tensorwall_proxy.errors import UpstreamError
from tensorwall_proxy.providers.ids import attach
from tensorwall_proxy.providers.responses_wire import ResponsesPassthrough
from tensorwall_proxy.sse import SseEvent


def test_a_body_without_gateway_state_is_returned_as_it_is() -> None:
    body: dict[str, Any] = {"model": "m", "input": [{"type": "function_call", "call_id": "call_1"},
                                                    {"type": "reasoning", "encrypted_content": "gAAA"}], "x": 1}
    assert responses_body(body) is body
    assert responses_body({"model": "m", "input": "hi"}) == {"model": "m", "input": "hi"}


def test_packed_ids_are_restored_and_gateway_reasoning_dropped() -> None:
    packed = attach("call_1", b"thought signature")
    user = {"role": "user", "content": "hi"}
    body: dict[str, Any] = {"model": "m", "store": False, "input": [
        user, {"type": "reasoning", "id": "rs_gw", "encrypted_content": "twr1.abc"},
        {"type": "function_call", "call_id": packed, "name": "f", "arguments": "{}"},
        {"type": "custom_tool_call_output", "call_id": packed, "output": "ok"}, "not an item"]}
    out = responses_body(body)
    assert out == {"model": "m", "store": False, "input": [
        user, {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {"type": "custom_tool_call_output", "call_id": "call_1", "output": "ok"}, "not an item"]}
    assert out["input"][0] is user and body["input"][2]["call_id"] == packed  # the caller's body untouched


def test_a_native_stream_broken_past_its_commit_point_ends_with_the_upstreams_response_failed() -> None:
    decoder = ResponsesPassthrough("openai")
    opening = {"id": "resp_up", "object": "response", "status": "in_progress", "model": "gpt-4o", "output": []}
    decoder.feed(SseEvent("response.created", orjson.dumps({"type": "response.created", "sequence_number": 0,
                                                            "response": opening})))
    decoder.feed(SseEvent(None, b'{"type":"response.output_text.delta","sequence_number":1,"delta":"a"}'))
    event = RESPONSES.error_event(UpstreamError("timeout", 504, "no answer for 5s"), decoder)
    head, data = event.decode().rstrip("\n").split("\n")
    failed = orjson.loads(data.removeprefix("data: "))
    assert head == "event: response.failed" and failed["sequence_number"] == 2
    assert failed["response"] == {**opening, "status": "failed", "completed_at": None,
                                  "error": {"code": "server_error", "message": "no answer for 5s"}}
    assert decoder.done
