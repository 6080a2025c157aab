"""The pivot's reasoning-state extension in each translator, from data: produced only when the
request wants it (answers and streams), restored on the next turn by the translators that use it,
ignored by the others, and never sent to an OpenAI-compatible upstream."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tensorwall_proxy.config import ProviderConfig
from tensorwall_proxy.providers import ChatRequest, bedrock, vertex
from tensorwall_proxy.providers import anthropic_wire as anthropic
from tensorwall_proxy.providers.catalog import TYPES
from tensorwall_proxy.providers.ids import attach
from tensorwall_proxy.providers.openai_wire import PassthroughStream, adapt_chat_body
from tensorwall_proxy.providers.reasoning import entries, restored
from tensorwall_proxy.sse import SseEvent

ANTHROPIC = ProviderConfig(name="anthropic", type="anthropic", base_url="https://api.anthropic.com/v1",
                           version="2023-06-01", default_max_tokens=4096)
BEDROCK = ProviderConfig(name="bedrock", type="bedrock", region="us-east-1")
THINKING = {"type": "thinking", "thinking": "The user says hi.", "signature": "sig-abc"}
REDACTED = {"type": "redacted_thinking", "data": "opaque"}
CONVERSE = {"reasoningText": {"text": "The user says hi.", "signature": "c2ln"}}


def _chunks(raw: list[bytes]) -> list[dict[str, Any]]:
    return [orjson.loads(event[6:]) for event in raw if event.startswith(b"data: {")]


def _deltas(raw: list[bytes]) -> list[dict[str, Any]]:
    return [choice["delta"] for chunk in _chunks(raw) for choice in chunk["choices"]]


# --- anthropic -----------------------------------------------------------------------------------------


ANTHROPIC_ANSWER = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                    "content": [{**THINKING, "cache_control": {"type": "ephemeral"}}, REDACTED,
                                {"type": "text", "text": "Hello"}],
                    "stop_reason": "end_turn", "usage": {"input_tokens": 5, "output_tokens": 5}}


def test_anthropic_answer_carries_its_thinking_only_when_asked() -> None:
    message = orjson.loads(anthropic.translate_response(ANTHROPIC_ANSWER, keep_state=True))["choices"][0]["message"]
    assert message["reasoning_state"] == entries("anthropic", [THINKING, REDACTED])
    assert message["reasoning_content"] == "The user says hi." and message["content"] == "Hello"
    plain = orjson.loads(anthropic.translate_response(ANTHROPIC_ANSWER))["choices"][0]["message"]
    assert "reasoning_state" not in plain


def _anthropic_stream(keep_state: bool) -> list[bytes]:
    decoder = anthropic.AnthropicStream("anthropic", False, keep_state)
    events = [
        ("message_start", {"type": "message_start", "message": {"id": "m", "model": "c", "usage": {}}}),
        ("content_block_start", {"index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "The user says hi."}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "signature_delta", "signature": "sig-abc"}}),
        ("content_block_stop", {"index": 0}),
        ("content_block_start", {"index": 1, "content_block": REDACTED}),
        ("content_block_stop", {"index": 1}),
        ("content_block_start", {"index": 2, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"index": 2, "delta": {"type": "text_delta", "text": "Hello"}}),
        ("content_block_stop", {"index": 2}),
        ("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 5}}),
        ("message_stop", {}),
    ]
    out: list[bytes] = []
    for name, data in events:
        out += decoder.feed(SseEvent(name, orjson.dumps(data)))
        if name == "content_block_delta" and "thinking" in data["delta"]:
            assert decoder.visible  # the first thinking delta commits
    return out


def test_anthropic_stream_sends_each_finished_block_as_state_after_its_text() -> None:
    deltas = [d for d in _deltas(_anthropic_stream(True)) if d]
    assert deltas == [{"role": "assistant", "content": ""}, {"reasoning_content": "The user says hi."},
                      {"reasoning_state": entries("anthropic", [THINKING])},
                      {"reasoning_state": entries("anthropic", [REDACTED])}, {"content": "Hello"}]
    assert not any("reasoning_state" in d for d in _deltas(_anthropic_stream(False)))


def _anthropic_request(assistant: dict[str, Any]) -> dict[str, Any]:
    return anthropic.translate_request(ChatRequest({"model": "c", "reasoning_effort": "low", "messages": [
        {"role": "user", "content": "hi"}, assistant, {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]}),
        ANTHROPIC, "claude-sonnet-4-5")


def test_anthropic_restores_the_blocks_first_in_the_turn_and_ignores_other_wires() -> None:
    state = [*entries("gemini", [{"thoughtSignature": "x", "on": "text"}]), *entries("anthropic", [THINKING, REDACTED])]
    id_state = anthropic.encode_thinking([{"type": "thinking", "thinking": "old", "signature": "old"}])
    body = _anthropic_request({"role": "assistant", "content": "calling", "reasoning_state": state, "tool_calls": [
        {"id": attach("call_1", id_state), "type": "function", "function": {"name": "f", "arguments": "{}"}}]})
    turn = body["messages"][1]["content"]
    assert turn[:2] == [THINKING, REDACTED]  # the restored blocks, not the id's copy
    assert [b["type"] for b in turn[2:]] == ["text", "tool_use"]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert "reasoning_state" not in orjson.dumps(body).decode()


# --- bedrock -------------------------------------------------------------------------------------------


def test_bedrock_answer_stream_and_request() -> None:
    answer = {"output": {"message": {"role": "assistant", "content": [{"reasoningContent": CONVERSE},
                                                                       {"text": "Hello"}]}},
              "stopReason": "end_turn", "usage": {"inputTokens": 1, "outputTokens": 2}}
    message = orjson.loads(bedrock.translate_response(answer, "m", keep_state=True))["choices"][0]["message"]
    assert message["reasoning_state"] == entries("converse", [CONVERSE])
    assert "reasoning_state" not in orjson.loads(bedrock.translate_response(answer, "m"))["choices"][0]["message"]

    decoder = bedrock.BedrockStream("bedrock", "m", False, True)
    out: list[bytes] = []
    for name, data in [("messageStart", {"role": "assistant"}),
                       ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {
                           "text": "The user says hi."}}}),
                       ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {
                           "signature": "c2ln"}}}),
                       ("contentBlockStop", {"contentBlockIndex": 0}),
                       ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "Hello"}}),
                       ("messageStop", {"stopReason": "end_turn"}), ("metadata", {"usage": {}})]:
        out += decoder.feed(SseEvent(name, orjson.dumps(data)))
    assert {"reasoning_state": entries("converse", [CONVERSE])} in _deltas(out)

    body = bedrock.translate_request(ChatRequest({"model": "m", "reasoning_effort": "low", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello", "reasoning_state": message["reasoning_state"]},
        {"role": "user", "content": "again"}]}), BEDROCK, "anthropic.claude-sonnet-4-5")
    assert body["messages"][1]["content"] == [{"reasoningContent": CONVERSE}, {"text": "Hello"}]


# --- vertex (Gemini) -------------------------------------------------------------------------------------


GEMINI_TEXT = {"candidates": [{"content": {"role": "model", "parts": [
    {"text": "Thinking", "thought": True}, {"text": "Hello", "thoughtSignature": "dGV4dA=="}]},
    "finishReason": "STOP"}]}
GEMINI_CALL = {"candidates": [{"content": {"role": "model", "parts": [
    {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "Y2FsbA=="}]}, "finishReason": "STOP"}]}


def test_gemini_answers_carry_every_signature_with_its_part_kind() -> None:
    text = orjson.loads(vertex.translate_response(GEMINI_TEXT, "m", keep_state=True))["choices"][0]["message"]
    assert text["reasoning_state"] == entries("gemini", [{"thoughtSignature": "dGV4dA==", "on": "text"}])
    call = orjson.loads(vertex.translate_response(GEMINI_CALL, "m", keep_state=True))["choices"][0]["message"]
    assert call["reasoning_state"] == entries("gemini", [{"thoughtSignature": "Y2FsbA==", "on": "functionCall"}])
    assert "~tw1~" in call["tool_calls"][0]["id"]  # the id still carries it, as before
    assert "reasoning_state" not in orjson.loads(vertex.translate_response(GEMINI_TEXT, "m"))["choices"][0]["message"]


def test_gemini_stream_sends_a_signature_after_its_text_and_before_its_call() -> None:
    stream = vertex.VertexStream("vertex", "m", False, True)
    deltas = _deltas(stream.feed(SseEvent("", orjson.dumps(GEMINI_TEXT))))
    assert deltas[1:4] == [{"reasoning_content": "Thinking"}, {"content": "Hello"},
                           {"reasoning_state": entries("gemini", [{"thoughtSignature": "dGV4dA==", "on": "text"}])}]
    stream = vertex.VertexStream("vertex", "m", False, True)
    deltas = _deltas(stream.feed(SseEvent("", orjson.dumps(GEMINI_CALL))))
    assert "reasoning_state" in deltas[1] and "tool_calls" in deltas[2]
    quiet = vertex.VertexStream("vertex", "m", False)
    assert not any("reasoning_state" in d for d in _deltas(quiet.feed(SseEvent("", orjson.dumps(GEMINI_TEXT)))))


def test_gemini_puts_signatures_back_on_the_part_they_came_on() -> None:
    state = [*entries("anthropic", [THINKING]),
             *entries("gemini", [{"thoughtSignature": "dGV4dA==", "on": "text"},
                                 {"thoughtSignature": "Y2FsbA==", "on": "functionCall"}])]
    body = vertex.translate_request(ChatRequest({"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello", "reasoning_state": state, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "call_2", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
        {"role": "tool", "tool_call_id": "call_2", "content": "ok"}]}))
    parts = body["contents"][1]["parts"]
    assert parts[0] == {"text": "Hello", "thoughtSignature": "dGV4dA=="}
    assert parts[1]["thoughtSignature"] == "Y2FsbA==" and "thoughtSignature" not in parts[2]
    # A call whose id carries its own signature keeps it.
    body = vertex.translate_request(ChatRequest({"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "reasoning_state": state, "tool_calls": [
            {"id": attach("call_1", vertex.encode_signature("b3du")), "type": "function",
             "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": attach("call_1", vertex.encode_signature("b3du")), "content": "ok"}]}))
    assert body["contents"][1]["parts"] == [{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "b3du"}]


# --- everyone else -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [[], "junk", [1, {"wire": "anthropic"}, {"wire": "anthropic", "block": "x"}]])
def test_restored_takes_only_well_formed_entries(state: Any) -> None:
    assert restored({"role": "assistant", "reasoning_state": state}, "anthropic") == []


def test_openai_compatible_upstreams_never_get_the_extension() -> None:
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Hello", "reasoning_state": entries("anthropic", [THINKING])},
                {"role": "assistant", "content": None, "reasoning_state": [], "tool_calls": [
                    {"id": "x" * 50, "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]
    body = adapt_chat_body(ChatRequest({"model": "m", "messages": messages}), TYPES["groq"].policy, "openai",
                           asks_usage=True)
    assert body["messages"][1] == {"role": "assistant", "content": "Hello"}
    assert "reasoning_state" not in body["messages"][2] and len(body["messages"][2]["tool_calls"][0]["id"]) <= 40
    assert "reasoning_state" in messages[1]  # the pivot itself is not changed: a fallback may need it


@pytest.mark.parametrize("name", ["reasoning_content", "reasoning"])
def test_an_openai_compatible_streams_first_thinking_is_its_commit_point(name: str) -> None:
    decoder = PassthroughStream("groq", hide_usage=False, split_usage=False)
    decoder.feed(SseEvent(None, orjson.dumps({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})))
    assert not decoder.visible
    decoder.feed(SseEvent(None, orjson.dumps({"choices": [{"index": 0, "delta": {name: "hmm"}}]})))
    assert decoder.visible
