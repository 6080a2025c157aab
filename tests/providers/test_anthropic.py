"""The Anthropic translators from golden JSON pairs, hypothesis, and the thinking round trip. Pure."""

from __future__ import annotations

import itertools
import json
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorwall_proxy.config import ProviderConfig
from tensorwall_proxy.errors import GatewayError, UnsupportedField, UpstreamError
from tensorwall_proxy.providers import ChatRequest
from tensorwall_proxy.providers.anthropic_wire import (
    AnthropicStream,
    decode_thinking,
    encode_thinking,
    translate_request,
    translate_response,
)
from tensorwall_proxy.providers.ids import attach, detach, for_upstream
from tensorwall_proxy.sse import SseEvent

GOLDEN = Path(__file__).parent / "golden" / "anthropic"
PROVIDER = ProviderConfig(name="anthropic", type="anthropic", base_url="https://api.anthropic.com/v1",
                          version="2023-06-01", default_max_tokens=4096)


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("response_*.json")), ids=lambda p: p.stem)
def test_response_golden(path: Path) -> None:
    case = json.loads(path.read_text())
    assert orjson.loads(translate_response(case["upstream"], created=0)) == case["expect"]


def _run_stream(events: list[dict[str, Any]], wants_usage: bool) -> tuple[list[Any], AnthropicStream, int | None]:
    decoder = AnthropicStream("anthropic", wants_usage)
    out: list[bytes] = []
    visible_at = None
    for i, event in enumerate(events):
        out += decoder.feed(SseEvent(event["event"], orjson.dumps(event["data"])))
        if decoder.visible and visible_at is None:
            visible_at = i
    out += decoder.close()
    parsed: list[Any] = []
    for raw in out:
        assert raw.startswith(b"data: ") and raw.endswith(b"\n\n")
        parsed.append("[DONE]" if raw == b"data: [DONE]\n\n" else orjson.loads(raw[6:]))
    return parsed, decoder, visible_at


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("stream_*.json")), ids=lambda p: p.stem)
def test_stream_golden(path: Path) -> None:
    case = json.loads(path.read_text())
    chunks, _decoder, visible_at = _run_stream(case["events"], case["wants_usage"])
    expected = case["expect"]["chunks"]
    assert len(chunks) == len(expected)
    for chunk, want in zip(chunks, expected, strict=True):
        if want == "[DONE]":
            assert chunk == "[DONE]"
            continue
        assert chunk["id"] == "msg_9" and chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == "claude-3-5-sonnet-20241022"
        if "usage" in want:
            assert chunk["choices"] == [] and chunk["usage"] == want["usage"]
            continue
        assert ("usage" in chunk) == case["wants_usage"]
        (choice,) = chunk["choices"]
        if "finish_reason" in want:
            assert choice["delta"] == {} and choice["finish_reason"] == want["finish_reason"]
        else:
            assert choice["delta"] == want and choice["finish_reason"] is None
    assert visible_at == case["expect"]["visible_at"]
    assert len({c["created"] for c in chunks if c != "[DONE]"}) == 1


def test_stream_error_event_is_classified() -> None:
    decoder = AnthropicStream("anthropic", False)
    decoder.feed(SseEvent("message_start", b'{"type":"message_start","message":{"id":"m","model":"c","usage":{}}}'))
    with pytest.raises(UpstreamError) as caught:
        decoder.feed(SseEvent("error", b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'))
    assert caught.value.kind == "overloaded" and caught.value.status == 503 and caught.value.falls_back
    assert not decoder.visible  # before the commit point: the relay may fall back


def test_stream_cut_before_message_stop_raises() -> None:
    decoder = AnthropicStream("anthropic", False)
    decoder.feed(SseEvent("message_start", b'{"type":"message_start","message":{"id":"m","model":"c","usage":{}}}'))
    with pytest.raises(UpstreamError):
        decoder.close()


def _thinking_response() -> dict[str, Any]:
    return {"id": "msg_t", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [{"type": "thinking", "thinking": "The user wants weather.", "signature": "sig-abc"},
                        {"type": "tool_use", "id": "toolu_X1", "name": "get_weather", "input": {"city": "Paris"}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 5}}


def test_thinking_travels_in_the_tool_call_id_and_comes_back_on_the_next_turn() -> None:
    """Turn 1 answers with thinking + tool use; turn 2 sends the result back with reasoning on."""
    first = orjson.loads(translate_response(_thinking_response()))
    message = first["choices"][0]["message"]
    assert message["reasoning_content"] == "The user wants weather."
    call = message["tool_calls"][0]
    base, state = detach(call["id"])
    assert base == "toolu_X1" and decode_thinking(state) == [
        {"type": "thinking", "thinking": "The user wants weather.", "signature": "sig-abc"}]
    second = translate_request(ChatRequest({"model": "c", "reasoning_effort": "low", "messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}]}), PROVIDER, "claude-sonnet-4-5")
    assistant = second["messages"][1]["content"]
    assert assistant[0] == {"type": "thinking", "thinking": "The user wants weather.", "signature": "sig-abc"}
    assert assistant[1]["id"] == "toolu_X1"
    assert second["messages"][2]["content"][0]["tool_use_id"] == "toolu_X1"
    assert second["thinking"] == {"type": "enabled", "budget_tokens": 1024}


def test_thinking_is_turned_off_when_the_tool_turn_lost_its_thinking() -> None:
    body = translate_request(ChatRequest({"model": "c", "reasoning_effort": "high", "messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_from_openai", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_from_openai", "content": "sunny"}]}), PROVIDER, "claude-sonnet-4-5")
    assert "thinking" not in body


def test_thinking_is_off_when_tool_choice_forces_a_tool() -> None:
    body = translate_request(ChatRequest({"model": "c", "reasoning_effort": "high", "tool_choice": "required",
                                          "tools": [{"type": "function", "function": {"name": "f"}}],
                                          "messages": [{"role": "user", "content": "x"}]}), PROVIDER, "m")
    assert "thinking" not in body and body["tool_choice"] == {"type": "any"}


def test_streamed_tool_call_id_carries_the_thinking() -> None:
    events = [
        {"event": "message_start", "data": {"type": "message_start", "message": {"id": "m", "model": "c", "usage": {}}}},
        {"event": "content_block_start", "data": {"type": "content_block_start", "index": 0,
                                                  "content_block": {"type": "thinking", "thinking": ""}}},
        {"event": "content_block_delta", "data": {"type": "content_block_delta", "index": 0,
                                                  "delta": {"type": "thinking_delta", "thinking": "Plan."}}},
        {"event": "content_block_delta", "data": {"type": "content_block_delta", "index": 0,
                                                  "delta": {"type": "signature_delta", "signature": "S1"}}},
        {"event": "content_block_stop", "data": {"type": "content_block_stop", "index": 0}},
        {"event": "content_block_start", "data": {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "toolu_Z", "name": "f", "input": {}}}},
        {"event": "content_block_stop", "data": {"type": "content_block_stop", "index": 1}},
        {"event": "message_delta", "data": {"type": "message_delta", "delta": {"stop_reason": "tool_use"}}},
        {"event": "message_stop", "data": {"type": "message_stop"}},
    ]
    chunks, _, _ = _run_stream(events, False)
    first_call = next(c["choices"][0]["delta"]["tool_calls"][0] for c in chunks
                      if c != "[DONE]" and c["choices"][0]["delta"].get("tool_calls"))
    assert detach(first_call["id"])[0] == "toolu_Z"
    assert decode_thinking(detach(first_call["id"])[1]) == [{"type": "thinking", "thinking": "Plan.", "signature": "S1"}]
    assert for_upstream(first_call["id"], "anthropic") == "toolu_Z"


def test_foreign_state_in_an_id_is_not_taken_for_thinking() -> None:
    assert decode_thinking(b"G1something") is None
    assert decode_thinking(b"A1not-zlib") is None
    assert decode_thinking(encode_thinking([{"type": "thinking", "thinking": "x", "signature": "s"}])) is not None


@pytest.mark.parametrize("url", ["ftp://x/y.png", "data:text/plain;base64,AAAA", "data:image/png,notbase64"])
def test_images_anthropic_cannot_take_move_on(url: str) -> None:
    with pytest.raises(UnsupportedField):
        translate_request(ChatRequest({"model": "c", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}]}]}), PROVIDER, "m")


def test_broken_tool_arguments_are_carried_not_refused() -> None:
    body = translate_request(ChatRequest({"model": "c", "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "t1", "type": "function",
                                              "function": {"name": "f", "arguments": "{not json"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "ok"}]}), PROVIDER, "m")
    assert body["messages"][1]["content"][0]["input"] == {"arguments": "{not json"}
    assert body["tools"] == [{"name": "f", "input_schema": {"type": "object"}}]  # declared from the history


# --- hypothesis -----------------------------------------------------------------------------------

_text = st.text(max_size=15)
_message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user"]),
                           "content": st.one_of(_text, st.lists(st.fixed_dictionaries(
                               {"type": st.just("text"), "text": _text}), max_size=3))}),
    st.fixed_dictionaries({"role": st.just("assistant"), "content": st.one_of(st.none(), _text)},
                          optional={"tool_calls": st.lists(st.fixed_dictionaries({
                              "id": _text.filter(bool), "type": st.just("function"),
                              "function": st.fixed_dictionaries({"name": st.sampled_from(["f", "g"]),
                                                                 "arguments": st.sampled_from(["{}", '{"a":1}', "x"])})}),
                              min_size=1, max_size=2)}),
    st.fixed_dictionaries({"role": st.just("tool"), "tool_call_id": _text.filter(bool), "content": _text}),
)
_body = st.fixed_dictionaries(
    {"model": st.just("c"), "messages": st.lists(_message, min_size=1, max_size=7)},
    optional={"stream": st.booleans(), "temperature": st.floats(0, 2), "max_tokens": st.integers(1, 8192),
              "stop": st.one_of(_text, st.lists(_text, max_size=3)), "user": _text, "n": st.integers(1, 2),
              "reasoning_effort": st.sampled_from(["none", "minimal", "low", "medium", "high"]),
              "tool_choice": st.sampled_from(["auto", "none", "required"]), "parallel_tool_calls": st.booleans(),
              "tools": st.just([{"type": "function", "function": {"name": "f"}}]),
              "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}])},
)


@settings(max_examples=200, deadline=None)
@given(body=_body)
def test_any_valid_request_translates_to_a_well_formed_anthropic_body(body: dict[str, Any]) -> None:
    try:
        out = translate_request(ChatRequest(body, stream=body.get("stream") is True), PROVIDER, "claude")
    except UnsupportedField as exc:
        assert exc.param == "n"
        return
    except Exception as exc:  # only "nothing to send" may be refused, and as a 400
        assert getattr(exc, "status", None) == 400 and getattr(exc, "param", None) == "messages"
        return
    orjson.dumps(out)
    assert out["max_tokens"] >= 1
    roles = [t["role"] for t in out["messages"]]
    assert all(a != b for a, b in itertools.pairwise(roles)), "same-role turns must be merged"
    for turn in out["messages"]:
        assert turn["content"], "no empty turns"
        kinds = [b["type"] for b in turn["content"]]
        if turn["role"] == "user" and "tool_result" in kinds:
            assert kinds == sorted(kinds, key=lambda k: k != "tool_result"), "tool results lead"
        for block in turn["content"]:
            if block["type"] == "text":
                assert block["text"]
            if block["type"] == "tool_use":
                assert isinstance(block["input"], dict)
    if "thinking" in out:
        assert out["max_tokens"] > out["thinking"]["budget_tokens"] and "temperature" not in out
    elif "temperature" in out:
        assert 0 <= out["temperature"] <= 1


_event = st.one_of(
    st.just(("ping", {"type": "ping"})),
    st.tuples(st.just("content_block_start"), st.fixed_dictionaries({
        "type": st.just("content_block_start"), "index": st.integers(0, 3),
        "content_block": st.one_of(st.fixed_dictionaries({"type": st.just("text"), "text": _text}),
                                   st.fixed_dictionaries({"type": st.just("tool_use"), "id": st.just("toolu_1"),
                                                          "name": st.just("f"), "input": st.just({})}),
                                   st.fixed_dictionaries({"type": st.just("thinking"), "thinking": st.just("")}))})),
    st.tuples(st.just("content_block_delta"), st.fixed_dictionaries({
        "type": st.just("content_block_delta"), "index": st.integers(0, 3),
        "delta": st.one_of(st.fixed_dictionaries({"type": st.just("text_delta"), "text": _text}),
                           st.fixed_dictionaries({"type": st.just("input_json_delta"), "partial_json": _text}),
                           st.fixed_dictionaries({"type": st.just("thinking_delta"), "thinking": _text}),
                           st.fixed_dictionaries({"type": st.just("signature_delta"), "signature": _text}))})),
    st.tuples(st.just("content_block_stop"), st.fixed_dictionaries({"type": st.just("content_block_stop"),
                                                                    "index": st.integers(0, 3)})),
    st.tuples(st.just("message_delta"), st.fixed_dictionaries({
        "type": st.just("message_delta"),
        "delta": st.fixed_dictionaries({"stop_reason": st.sampled_from(["end_turn", "tool_use", "max_tokens", "odd"])}),
        "usage": st.fixed_dictionaries({"output_tokens": st.integers(0, 100)})})),
)


@settings(max_examples=200, deadline=None)
@given(events=st.lists(_event, max_size=12), wants_usage=st.booleans())
def test_any_event_sequence_yields_valid_chunks(events: list[tuple[str, dict[str, Any]]], wants_usage: bool) -> None:
    decoder = AnthropicStream("anthropic", wants_usage)
    sequence = [("message_start", {"type": "message_start", "message": {"id": "m", "model": "c", "usage": {}}}),
                *events, ("message_stop", {"type": "message_stop"})]
    out: list[bytes] = []
    for name, data in sequence:
        out += decoder.feed(SseEvent(name, orjson.dumps(data)))
    out += decoder.close()
    assert out[-1] == b"data: [DONE]\n\n"
    tool_indices: list[int] = []
    for raw in out[:-1]:
        chunk = orjson.loads(raw[6:])
        assert chunk["object"] == "chat.completion.chunk" and chunk["id"] == "m"
        for choice in chunk["choices"]:
            assert choice["finish_reason"] in (None, "stop", "length", "tool_calls", "content_filter")
            for call in choice["delta"].get("tool_calls", []):
                if "id" in call:
                    tool_indices.append(call["index"])
    assert tool_indices == list(range(len(tool_indices)))  # 0, 1, 2, … over tool calls only
    usage_chunks = [orjson.loads(r[6:]) for r in out[:-1] if orjson.loads(r[6:])["choices"] == []]
    assert len(usage_chunks) == (1 if wants_usage else 0)


def test_a_bomb_in_a_packed_tool_call_id_is_a_400_naming_the_call() -> None:
    packer = zlib.compressobj(1)
    bomb = b"A1" + b"".join(packer.compress(b"[" * (1 << 20)) for _ in range(16)) + packer.flush()
    body = {"model": "claude", "messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_A", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
            {"id": attach("toolu_B", bomb), "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "toolu_A", "content": "sunny"}]}
    with pytest.raises(GatewayError) as caught:
        translate_request(ChatRequest(body), PROVIDER, "claude-3-7-sonnet-20250219")
    assert caught.value.status == 400 and caught.value.param == "messages[1].tool_calls[1].id"


@pytest.mark.parametrize(("version", "model", "sent"), [
    ("2023-06-01", "claude-opus-4-1-20250805", {"temperature": 1.0}),
    ("2023-06-01", "claude-sonnet-4-5", {"temperature": 1.0}),
    ("2023-06-01", "claude-haiku-4-5@20251001", {"temperature": 1.0}),
    ("2023-06-01", "claude-sonnet-4-20250514", {"temperature": 1.0, "top_p": 0.9}),
    ("2023-06-01", "claude-3-7-sonnet-20250219", {"temperature": 1.0, "top_p": 0.9}),
    ("2026-10-21", "claude-3-7-sonnet-20250219", {}),
    ("2027-01-01", "claude-sonnet-4-5", {}),
])
def test_temperature_and_top_p_as_the_api_version_and_model_take_them(version: str, model: str,
                                                                       sent: dict[str, float]) -> None:
    provider = ProviderConfig(name="anthropic", type="anthropic", version=version)
    body = translate_request(ChatRequest({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                          "temperature": 1.4, "top_p": 0.9, "top_k": 5}), provider, model)
    assert {k: body[k] for k in ("temperature", "top_p", "top_k") if k in body} == sent


def test_top_p_alone_is_sent_to_current_models() -> None:
    body = translate_request(ChatRequest({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": 0.5}),
                             PROVIDER, "claude-opus-4-1")
    assert body["top_p"] == 0.5 and "temperature" not in body
