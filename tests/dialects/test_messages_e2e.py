"""``/v1/messages`` through the proxy and the fake upstream, for every provider type, with the official
anthropic SDK (``messages.create``, ``messages.stream`` whose accumulator checks the event grammar, the
beta client's ``?beta=true``, ``count_tokens``; sync and async), raw requests for what the SDK hides,
and a recorded Claude Code conversation replayed against every type."""

from __future__ import annotations

import http.client
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anthropic
import pytest
from anthropic.types import Message, MessageTokensCount, RawMessageStreamEvent
from pydantic import BaseModel, TypeAdapter

from tests.conftest import GATEWAY_KEY, PNG, PROVIDER_KEY, Proxy, config_text, post_json, raw_request
from tests.e2e.test_conformance import BY_TYPE, Type
from tests.fakes import FakeUpstream
from tests.fakes.upstream import anthropic_thinking_block

WEATHER: list[Any] = [{"name": "get_weather", "description": "Weather for a city",
                       "input_schema": {"type": "object", "properties": {"location": {"type": "string"}},
                                        "required": ["location"]}}]
PNG_DATA = PNG.split(",", 1)[1]
CLAUDE_CODE = json.loads((Path(__file__).parent / "fixtures" / "claude_code.json").read_text())
EVENTS: TypeAdapter[RawMessageStreamEvent] = TypeAdapter(RawMessageStreamEvent)
# The types that speak Messages natively for the models of BY_TYPE: their answers are the provider's own.
NATIVE = {"anthropic", "bedrock"}
# What Bedrock adds to its own message_stop (C.3): passed through natively, unknown to the SDK's types.
BEDROCK_METRICS = "amazon-bedrock-invocationMetrics"


_CLIENTS: list[anthropic.Anthropic] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Every client a test made is closed after it, its pooled connections with it."""
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def client(proxy: Proxy, api_key: str = PROVIDER_KEY, gateway_key: str | None = GATEWAY_KEY) -> anthropic.Anthropic:
    """The anthropic SDK as a user points it at the gateway: its api_key (sent as a Bearer by 2.x) is the
    caller's provider key, the gateway key in X-API-Key."""
    sdk = anthropic.Anthropic(base_url=proxy.url, api_key=api_key, max_retries=0,
                              default_headers={"X-API-Key": gateway_key} if gateway_key else None)
    _CLIENTS.append(sdk)
    return sdk


def declared_only(model: BaseModel, where: str = "") -> None:
    """No field the SDK's types do not declare, at any depth (the SDK's models keep extras silently)."""
    assert not model.model_extra, f"{where or type(model).__name__}: undeclared {sorted(model.model_extra or {})}"
    for name in type(model).model_fields:
        value = getattr(model, name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, BaseModel):
                declared_only(item, f"{where}.{name}")


def sse(body: bytes) -> list[dict[str, Any]]:
    """The events of a Messages stream, each parsed into the SDK's own event type, its ``event:`` line
    checked against its ``type``, and the grammar checked (B.4)."""
    events = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = json.loads(lines["data"])
        assert lines.get("event") == data["type"]
        if data["type"] not in ("ping", "error"):
            declared_only(EVENTS.validate_python({k: v for k, v in data.items() if k != BEDROCK_METRICS}), data["type"])
        events.append(data)
    check_grammar(events)
    return events


def check_grammar(events: list[dict[str, Any]]) -> None:
    """message_start first (with usage), ping, blocks 0, 1, 2… one open at a time, each started and
    stopped once; then message_delta and message_stop — or one error event at the end."""
    kinds = [e["type"] for e in events]
    assert kinds[0] == "message_start" and kinds[1] == "ping"
    assert events[0]["message"]["usage"]["input_tokens"] > 0
    open_index, next_index = None, 0
    for event in events[2:]:
        if event["type"] == "content_block_start":
            assert open_index is None and event["index"] == next_index
            open_index, next_index = event["index"], next_index + 1
        elif event["type"] == "content_block_delta":
            assert event["index"] == open_index
        elif event["type"] == "content_block_stop":
            assert event["index"] == open_index
            open_index = None
    if kinds[-1] == "error":
        assert "message_stop" not in kinds
        return
    assert kinds[-2:] == ["message_delta", "message_stop"] and open_index is None
    assert kinds.count("message_delta") == 1


def text_of(message: Message | Any) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


# --- messages.create --------------------------------------------------------------------------------


@BY_TYPE
def test_text(proxy: Proxy, fake: FakeUpstream, kind: Type) -> None:
    raw = client(proxy).messages.with_raw_response.create(
        model=kind.model, max_tokens=200, system="Be brief.", messages=[{"role": "user", "content": "hello there"}])
    message = raw.parse()
    declared_only(message)
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert text_of(message) == f"[{kind.name}] hello there"
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    usage = message.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    if kind.name in NATIVE:  # the provider's own usage, which names cache counts only when it has them
        assert usage.cache_read_input_tokens in (0, None) and usage.cache_creation_input_tokens in (0, None)
    else:
        assert usage.cache_read_input_tokens == 0 and usage.cache_creation_input_tokens == 0
    assert raw.headers["x-tensorwall-provider"] == kind.name
    assert raw.headers["request-id"] == raw.headers["x-request-id"] == message._request_id
    assert set(raw.http_response.json()) == {"id", "type", "role", "model", "content", "stop_reason",
                                             "stop_sequence", "usage"}
    assert not kind.streamed(fake.last(kind.name))


@BY_TYPE
def test_length_stop_is_max_tokens(proxy: Proxy, kind: Type) -> None:
    message = client(proxy).messages.create(model=kind.model, max_tokens=2,
                                            messages=[{"role": "user", "content": "one two three four five"}])
    assert message.stop_reason == "max_tokens"


@BY_TYPE
def test_stop_sequences(proxy: Proxy, fake: FakeUpstream, kind: Type) -> None:
    message = client(proxy).messages.create(model=kind.model, max_tokens=100, stop_sequences=["HALT"],
                                            messages=[{"role": "user", "content": "one two HALT three"}])
    assert text_of(message).rstrip() == f"[{kind.name}] one two"
    # Natively the provider says which stop it met; the pivot has no word for it.
    assert message.stop_reason == ("stop_sequence" if kind.name in NATIVE else "end_turn")


@BY_TYPE
def test_tool_round_trip(proxy: Proxy, kind: Type) -> None:
    sdk = client(proxy)
    question = {"role": "user", "content": "weather in Paris?"}
    first = sdk.messages.create(model=kind.model, max_tokens=100, tools=WEATHER, messages=[question])
    declared_only(first)
    assert first.stop_reason == "tool_use"
    call = first.content[-1]  # some types say a word before the call
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"location": "Paris"}
    # The next turn as the SDK's users send it: the whole content back, then the tool's result.
    second = sdk.messages.create(model=kind.model, max_tokens=100, tools=WEATHER, messages=[
        question, {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"}]}])
    assert text_of(second) == f"[{kind.name}] tool said: sunny, 21 C"
    assert second.stop_reason == "end_turn"


@BY_TYPE
def test_a_system_turn_mid_conversation(proxy: Proxy, kind: Type) -> None:
    """Claude Code sends a system message between turns (its mid-conversation-system beta)."""
    message = client(proxy).messages.create(model=kind.model, max_tokens=100, system="Be brief.", messages=[
        {"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
        {"role": "system", "content": "Now answer in French."}, {"role": "user", "content": "second"}])
    assert text_of(message) == f"[{kind.name}] second"


@BY_TYPE
def test_image(proxy: Proxy, kind: Type) -> None:
    message = client(proxy).messages.create(model=kind.model, max_tokens=100, messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_DATA}}]}])
    assert text_of(message).startswith(f"[{kind.name}] what is")


def test_the_pivot_request(proxy: Proxy, fake: FakeUpstream) -> None:
    """What an OpenAI upstream receives for the Messages fields that have a chat counterpart."""
    client(proxy).messages.create(
        # The 2.x SDK's types no longer name the sampling fields; older clients send them.
        model="openai/gpt-4o", max_tokens=50, extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 5},
        stop_sequences=["END"],
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        metadata={"user_id": "user-1"}, thinking={"type": "enabled", "budget_tokens": 1024},
        tools=[*WEATHER, {"type": "web_search_20250305", "name": "web_search"}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        messages=[
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "sig"},
                                              {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                               "input": {"location": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "text", "text": "and now?"},
                {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True, "content": [
                    {"type": "text", "text": "no network"},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}]},
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": [{"type": "document", "title": "Notes", "source": {
                "type": "text", "media_type": "text/plain", "data": "some notes"}}]}])
    sent = fake.last("openai").json
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "toolu_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"location":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: no network"},
        {"role": "user", "content": [{"type": "text", "text": "and now?"},
                                     {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]},
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": [{"type": "text", "text": "Notes\n\nsome notes"}]}]
    assert sent["max_tokens"] == 50 and sent["temperature"] == 0.5 and sent["top_p"] == 0.9
    assert sent["stop"] == ["END"] and sent["user"] == "user-1" and sent["reasoning_effort"] == "low"
    assert sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is False
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]
    assert not {"top_k", "thinking", "system", "metadata", "stop_sequences"} & set(sent)


SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
          "additionalProperties": False}


@pytest.mark.parametrize("model", ["openai/gpt-4o", "anthropic/claude-3-5-sonnet-20241022", "vertex/gemini-2.5-flash"])
def test_a_json_schema_output_reaches_the_provider(proxy: Proxy, fake: FakeUpstream, model: str) -> None:
    message = client(proxy).messages.create(model=model, max_tokens=100, messages=[{"role": "user", "content": "hi"}],
                                            output_config={"format": {"type": "json_schema", "schema": SCHEMA}})
    assert message.stop_reason == "end_turn" and text_of(message)
    if model.startswith("openai/"):
        assert fake.last("openai").json["response_format"] == {
            "type": "json_schema", "json_schema": {"name": "response", "schema": SCHEMA}}


def test_cache_markers_dropped_are_counted(proxy: Proxy) -> None:
    client(proxy).messages.create(
        model="openai/gpt-4o", max_tokens=50, cache_control={"type": "ephemeral"},
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}])
    metrics = raw_request(proxy.url + "/metrics", method="GET").text
    assert 'tensorwall_cache_markers_dropped_total{provider="openai"} 3.0' in metrics


# Anthropic's API with Messages translated through the pivot, as for any type that does not speak it.
TRANSLATED_ANTHROPIC = """\
  claude-chat:
    type: anthropic
    base_url: "{fake}/anthropic/v1"
    dialects: [chat]
"""


def test_the_answer_carries_thinking_without_a_signature(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    """A translated provider's reasoning has a place (a thinking block); no signature is made up for it."""
    proxy = make_proxy(text=config_text(fake, providers=TRANSLATED_ANTHROPIC.format(fake=fake.base_url)))
    message = client(proxy).messages.create(model="claude-chat/claude-3-7-sonnet-20250219-thinking", max_tokens=100,
                                            thinking={"type": "enabled", "budget_tokens": 2048},
                                            messages=[{"role": "user", "content": "think"}])
    declared_only(message)
    assert message.content[0].type == "thinking" and message.content[0].thinking
    assert message.content[0].signature == ""
    assert text_of(message) == "[anthropic] think"


@pytest.mark.parametrize("model", ["anthropic/claude-3-7-sonnet-20250219-thinking",
                                   "bedrock/anthropic.claude-3-7-sonnet-20250219-thinking-v1:0"])
def test_thinking_with_its_signature_survives_a_tool_round_trip(proxy: Proxy, fake: FakeUpstream, model: str) -> None:
    """Natively, the provider's signed thinking block the client sends back reaches it unchanged."""
    sdk = client(proxy)
    thinking: Any = {"type": "enabled", "budget_tokens": 2048}
    question = {"role": "user", "content": "weather in Paris?"}
    first = sdk.messages.create(model=model, max_tokens=4096, thinking=thinking, tools=WEATHER, messages=[question])
    assert first.content[0].type == "thinking" and first.content[-1].type == "tool_use"
    flavor = model.split("/")[0]
    signed = fake.last(flavor)
    second = sdk.messages.create(model=model, max_tokens=4096, thinking=thinking, tools=WEATHER, messages=[
        question, {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": first.content[-1].id,
                                      "content": "sunny"}]}])
    assert text_of(second) == f"[{flavor}] tool said: sunny"
    sent = fake.last(flavor)
    assert sent is not signed
    # Both speak Messages natively: the signed block the client sent back is what the provider gets.
    assistant = sent.json["messages"][1]["content"]
    assert assistant[0] == first.content[0].model_dump(exclude_none=True)
    assert "thinking" in sent.json


# --- streams ----------------------------------------------------------------------------------------


def test_streamed_thinking_comes_first_in_its_own_block(proxy: Proxy) -> None:
    response = post_json(proxy, "/v1/messages", {
        "model": "anthropic/claude-3-7-sonnet-20250219-thinking", "max_tokens": 4096, "stream": True,
        "thinking": {"type": "enabled", "budget_tokens": 2048}, "messages": [{"role": "user", "content": "think"}]})
    events = sse(response.body)
    starts = [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"]
    assert starts == ["thinking", "text"]
    assert any(e["type"] == "content_block_delta" and e["delta"]["type"] == "thinking_delta" for e in events)


@BY_TYPE
def test_streamed_text(proxy: Proxy, fake: FakeUpstream, kind: Type) -> None:
    with client(proxy).messages.stream(model=kind.model, max_tokens=200,
                                       messages=[{"role": "user", "content": "stream these words please"}]) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"]  # the SDK leaves out ping
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    declared_only(final)
    assert text_of(final) == f"[{kind.name}] stream these words please"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    sent = fake.last(kind.name)
    assert kind.streamed(sent) or sent.path.endswith("/invoke-with-response-stream")
    response = post_json(proxy, "/v1/messages", {"model": kind.model, "max_tokens": 200, "stream": True,
                                                 "messages": [{"role": "user", "content": "raw words"}]})
    assert response.status == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["request-id"] == response.headers["x-request-id"]
    raw = sse(response.body)
    assert raw[-2]["usage"]["output_tokens"] > 0
    assert (raw[0]["message"] if kind.name in NATIVE else raw[-2])["usage"]["input_tokens"] > 0


@BY_TYPE
def test_streamed_tool_call(proxy: Proxy, kind: Type) -> None:
    with client(proxy).messages.stream(model=kind.model, max_tokens=100, tools=WEATHER,
                                       messages=[{"role": "user", "content": "weather?"}]) as stream:
        final = stream.get_final_message()
    call = final.content[-1]
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"location": "Paris"}
    assert final.stop_reason == "tool_use"
    response = post_json(proxy, "/v1/messages", {"model": kind.model, "max_tokens": 100, "stream": True,
                                                 "tools": WEATHER, "messages": [{"role": "user", "content": "w?"}]})
    events = sse(response.body)
    assert any(e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta" for e in events)
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


@BY_TYPE
def test_streamed_length_stop(proxy: Proxy, kind: Type) -> None:
    response = post_json(proxy, "/v1/messages", {"model": kind.model, "max_tokens": 2, "stream": True,
                                                 "messages": [{"role": "user", "content": "one two three four"}]})
    assert sse(response.body)[-2]["delta"]["stop_reason"] == "max_tokens"


@BY_TYPE
@pytest.mark.parametrize("word", ["error-mid-stream", "cut-mid-stream"])
def test_a_stream_broken_after_content_ends_with_an_error_event(proxy: Proxy, kind: Type, word: str) -> None:
    response = post_json(proxy, "/v1/messages", {"model": kind.fault.format(word), "max_tokens": 100, "stream": True,
                                                 "messages": [{"role": "user", "content": "a b c"}]})
    assert response.status == 200
    events = sse(response.body)
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text and f"[{kind.name}] a b c".startswith(text)
    error = events[-1]
    assert error["type"] == "error" and error["error"]["type"] in ("api_error", "overloaded_error", "timeout_error")
    assert error["error"]["message"] and "code" not in error["error"]


def test_a_stream_the_sdk_cannot_finish_raises() -> None:
    """The accumulator the tests rely on refuses a broken grammar, so it can tell a good stream."""
    from anthropic.lib.streaming._messages import accumulate_event
    start = EVENTS.validate_python({"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [], "stop_reason": None,
        "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 0}}})
    snapshot = accumulate_event(event=start, current_snapshot=None, json_bufs={})
    gap = EVENTS.validate_python({"type": "content_block_delta", "index": 2,
                                  "delta": {"type": "text_delta", "text": "x"}})
    with pytest.raises(IndexError):
        accumulate_event(event=gap, current_snapshot=snapshot, json_bufs={})


# --- the beta client, count_tokens, the async SDK ----------------------------------------------------


def test_the_beta_client(proxy: Proxy, fake: FakeUpstream) -> None:
    sdk = client(proxy)
    raw = sdk.beta.messages.with_raw_response.create(model="openai/gpt-4o", max_tokens=50,
                                                     betas=["interleaved-thinking-2025-05-14"],
                                                     messages=[{"role": "user", "content": "beta words"}])
    message = raw.parse()
    declared_only(message)
    assert text_of(message) == "[openai] beta words"
    with sdk.beta.messages.stream(model="vertex/gemini-2.5-flash", max_tokens=50,
                                  messages=[{"role": "user", "content": "beta stream"}]) as stream:
        assert text_of(stream.get_final_message()) == "[vertex] beta stream"
    counted = sdk.beta.messages.count_tokens(model="openai/gpt-4o", messages=[{"role": "user", "content": "12345"}])
    assert counted.input_tokens == 2
    # The SDK 2.17 beta client keeps `?beta=true` to itself; Claude Code and other SDKs send it.
    created = post_json(proxy, "/v1/messages?beta=true", {"model": "openai/gpt-4o", "max_tokens": 50,
                                                          "messages": [{"role": "user", "content": "beta words"}]})
    assert created.status == 200 and created.json()["content"][0]["text"] == "[openai] beta words"
    count = post_json(proxy, "/v1/messages/count_tokens?beta=true",
                      {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "12345"}]})
    assert count.status == 200 and count.json() == {"input_tokens": 2}


def test_count_tokens_is_an_estimate(proxy: Proxy, fake: FakeUpstream) -> None:
    text = "count these characters, please"
    raw = client(proxy).messages.with_raw_response.count_tokens(  # openai has no counter of its own
        model="openai/gpt-4o", system="Be brief.", tools=WEATHER,
        messages=[{"role": "user", "content": text}])
    counted = raw.parse()
    assert isinstance(counted, MessageTokensCount) and set(raw.http_response.json()) == {"input_tokens"}
    assert counted.input_tokens == math.ceil(len("Be brief." + text) / 4)
    assert raw.headers["x-tensorwall-estimate"] == "true" and raw.headers["request-id"]
    assert fake.requests == []
    with pytest.raises(anthropic.NotFoundError) as missing:
        client(proxy).messages.count_tokens(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert missing.value.body == {"type": "error", "error": {
        "type": "not_found_error", "message": missing.value.body["error"]["message"], "code": "model_not_found"}}


async def test_the_async_sdk(proxy: Proxy) -> None:
    async with anthropic.AsyncAnthropic(base_url=proxy.url, api_key=PROVIDER_KEY, max_retries=0,
                                        default_headers={"X-API-Key": GATEWAY_KEY}) as sdk:
        created = await sdk.messages.create(model="bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0", max_tokens=50,
                                            messages=[{"role": "user", "content": "async words"}])
        async with sdk.messages.stream(model="groq/llama3-70b-8192", max_tokens=50, tools=WEATHER,
                                       messages=[{"role": "user", "content": "async call"}]) as stream:
            final = await stream.get_final_message()
        counted = await sdk.messages.count_tokens(model="groq/llama3-70b-8192",
                                                  messages=[{"role": "user", "content": "four"}])
    assert text_of(created) == "[bedrock] async words"
    assert final.content[-1].type == "tool_use" and final.stop_reason == "tool_use"
    assert counted.input_tokens == 1


# --- errors -----------------------------------------------------------------------------------------


# What each fault word becomes on this door: Anthropic's status and type (a 503 upstream is overloaded: 529).
FAULTS = {"fail-429": (429, "rate_limit_error"), "fail-400": (400, "invalid_request_error"),
          "fail-500": (502, "api_error"), "fail-503": (529, "overloaded_error")}


@BY_TYPE
@pytest.mark.parametrize("word", list(FAULTS))
def test_upstream_errors_in_anthropic_shape(proxy: Proxy, fake: FakeUpstream, kind: Type, word: str) -> None:
    response = post_json(proxy, "/v1/messages", {"model": kind.fault.format(word), "max_tokens": 10,
                                                 "messages": [{"role": "user", "content": "x"}]})
    status, error_type = FAULTS[word]
    assert response.status == status, response.body
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == error_type and body["error"]["message"]
    assert response.headers["request-id"] == response.headers["x-request-id"]
    assert fake.last(kind.name).model is not None  # it did reach the upstream
    if word == "fail-429":
        assert response.headers["retry-after"] == "7"
    if word == "fail-400":
        assert response.headers["x-should-retry"] == "false"


def test_the_sdk_raises_its_own_errors(proxy: Proxy) -> None:
    sdk = client(proxy)
    with pytest.raises(anthropic.RateLimitError) as limited:
        sdk.messages.create(model="openai/fail-429", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert limited.value.type == "rate_limit_error" and limited.value.request_id
    with pytest.raises(anthropic.BadRequestError) as bad:
        sdk.messages.create(model="openai/gpt-4o", max_tokens=0, messages=[{"role": "user", "content": "x"}])
    assert bad.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.AuthenticationError) as refused:
        client(proxy, gateway_key="wrong").messages.create(model="openai/gpt-4o", max_tokens=10,
                                                           messages=[{"role": "user", "content": "x"}])
    assert refused.value.body["error"]["code"] == "invalid_gateway_key"
    with pytest.raises(anthropic.NotFoundError):
        sdk.messages.create(model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "x"}])


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"model": "openai/gpt-4o", "max_tokens": 5, "messages": []}, "messages"),
    ({"model": "openai/gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "file", "file_id": "file_1"}}]}]}, "messages[0].content[0].source"),
    ({"model": "openai/gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
      "tools": [{"type": "web_search_20250305", "name": "web_search"}],
      "tool_choice": {"type": "tool", "name": "web_search"}}, "tool_choice"),
    ({"model": "openai/gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
      "thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
])
def test_bad_bodies_are_400_in_anthropic_shape(proxy: Proxy, fake: FakeUpstream, body: dict[str, Any],
                                               param: str) -> None:
    response = post_json(proxy, "/v1/messages", body)
    assert response.status == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and f"'{param}" in error["message"]
    assert fake.requests == []


def test_the_gateways_own_refusals_in_anthropic_shape(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    small = make_proxy(config_text(fake, "server:\n  max_body_bytes: 2048\n"))
    big = post_json(small, "/v1/messages", {"model": "openai/gpt-4o", "max_tokens": 5,
                                            "messages": [{"role": "user", "content": "x" * 4096}]})
    assert big.status == 413 and big.json()["error"]["type"] == "request_too_large"
    assert big.json()["error"]["code"] == "request_too_large" and big.headers["request-id"]
    open_door = make_proxy(text=config_text(fake).replace(f"gateway_keys: [{GATEWAY_KEY}]", "gateway_keys: []"))
    foreign = raw_request(open_door.url + "/v1/messages", json.dumps({"model": "openai/gpt-4o", "max_tokens": 5,
                                                                      "messages": [{"role": "user", "content": "x"}]}),
                          {"Content-Type": "application/json", "Host": "evil.example", "x-api-key": PROVIDER_KEY})
    assert foreign.status == 403
    assert foreign.json()["error"] == {"type": "permission_error", "message": foreign.json()["error"]["message"],
                                       "code": "forbidden_host"}
    assert fake.requests == []


def test_paths_and_probe(proxy: Proxy) -> None:
    assert raw_request(proxy.url + "/", None, {}, method="HEAD").status == 200
    unknown = raw_request(proxy.url + "/v1/messages/batches", None, {"X-API-Key": GATEWAY_KEY}, method="GET")
    assert unknown.status == 404 and unknown.json()["error"]["type"] == "not_found_error"
    wrong_method = raw_request(proxy.url + "/v1/messages", None, {"X-API-Key": GATEWAY_KEY}, method="GET")
    assert wrong_method.status == 405 and wrong_method.json()["type"] == "error"
    assert wrong_method.headers["allow"] == "POST"


# --- credentials on this door (DESIGN §14) -------------------------------------------------------------


@pytest.fixture
def two_keys(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> Proxy:
    text = config_text(fake).replace(f"gateway_keys: [{GATEWAY_KEY}]", f"gateway_keys: [{GATEWAY_KEY}, second-key]")
    return make_proxy(text=text)


def test_a_bearer_that_is_a_gateway_key_is_consumed(two_keys: Proxy, fake: FakeUpstream) -> None:
    """``Anthropic(api_key=<gateway key>)`` where the gateway holds the provider's credential."""
    sdk = client(two_keys, api_key="second-key", gateway_key=None)
    message = sdk.messages.create(model="azure-eu/gpt-4o-eu", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert text_of(message) == "[azure] hi"
    sent = fake.last("azure")
    assert sent.header("api-key") == "server-side-azure-key" and sent.header("authorization") is None
    # The same key in both headers (Claude Code's apiKeyHelper) is one key, not a provider key.
    same = post_json(two_keys, "/v1/messages", {"model": "azure-eu/gpt-4o-eu", "max_tokens": 10,
                                                "messages": [{"role": "user", "content": "hi"}]},
                     key=GATEWAY_KEY, gateway_key=GATEWAY_KEY)
    assert same.status == 200
    # A gateway key as the Bearer leaves no provider key for a provider that needs the caller's.
    keyless = post_json(two_keys, "/v1/messages", {"model": "openai/gpt-4o", "max_tokens": 10,
                                                   "messages": [{"role": "user", "content": "hi"}]},
                        key="second-key", gateway_key=None)
    assert keyless.status == 401 and keyless.json()["error"]["code"] == "missing_provider_key"
    assert "second-key" not in keyless.text


def test_two_different_gateway_keys_are_refused(two_keys: Proxy, fake: FakeUpstream) -> None:
    response = post_json(two_keys, "/v1/messages", {"model": "azure-eu/gpt-4o-eu", "max_tokens": 10,
                                                    "messages": [{"role": "user", "content": "hi"}]},
                         key="second-key", gateway_key=GATEWAY_KEY)
    assert response.status == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error" and error["code"] == "invalid_gateway_key"
    assert "Authorization" in error["message"]
    chat = post_json(two_keys, "/v1/chat/completions", {"model": "azure-eu/gpt-4o-eu", "messages": [
        {"role": "user", "content": "hi"}]}, key="second-key", gateway_key=GATEWAY_KEY)
    assert chat.status == 401 and chat.json()["error"]["param"] == "Authorization"
    assert fake.requests == []


def _send_twice(proxy: Proxy, path: str, header: str, values: tuple[str, str]) -> tuple[int, Any]:
    parts = urlsplit(proxy.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        body = json.dumps({"model": "openai/gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
        connection.putrequest("POST", path)
        for name, value in (("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                            (header, values[0]), (header, values[1])):
            connection.putheader(name, value)
        if header != "X-API-Key":
            connection.putheader("X-API-Key", GATEWAY_KEY)
        connection.endheaders(body.encode())
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/chat/completions"])
@pytest.mark.parametrize(("header", "values"), [("X-API-Key", (GATEWAY_KEY, "other")),
                                                ("Authorization", (f"Bearer {PROVIDER_KEY}", "Bearer sk-other-key"))])
def test_a_credential_header_sent_twice_differently_is_401(proxy: Proxy, fake: FakeUpstream, path: str, header: str,
                                                          values: tuple[str, str]) -> None:
    status, body = _send_twice(proxy, path, header, values)
    assert status == 401
    error = body["error"]
    assert error["code"] == "invalid_gateway_key" and header in error["message"]
    assert PROVIDER_KEY not in json.dumps(body) and fake.requests == []


@pytest.fixture
def keys_off(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> Proxy:
    return make_proxy(text=config_text(fake).replace(f"gateway_keys: [{GATEWAY_KEY}]", "gateway_keys: []"))


def test_with_keys_off_x_api_key_is_the_callers_provider_key(keys_off: Proxy, fake: FakeUpstream) -> None:
    """The anthropic SDK 1.x and Claude Code's ANTHROPIC_API_KEY send the key as x-api-key, as at Anthropic."""
    body = {"model": "anthropic/claude-3-5-sonnet-20241022", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}]}
    response = raw_request(keys_off.url + "/v1/messages", json.dumps(body),
                           {"Content-Type": "application/json", "x-api-key": PROVIDER_KEY})
    assert response.status == 200, response.body
    assert fake.last("anthropic").header("x-api-key") == PROVIDER_KEY
    # A Bearer, when there is one, is the provider key.
    both = raw_request(keys_off.url + "/v1/messages", json.dumps(body), {
        "Content-Type": "application/json", "x-api-key": "sk-ignored-key-0000", "Authorization": f"Bearer {PROVIDER_KEY}"})
    assert both.status == 200 and fake.last("anthropic").header("x-api-key") == PROVIDER_KEY
    with anthropic.Anthropic(base_url=keys_off.url, api_key=PROVIDER_KEY, max_retries=0) as sdk:
        assert text_of(sdk.messages.create(**body)) == "[anthropic] hi"


# --- Claude Code, as recorded ----------------------------------------------------------------------------


def claude_code_turns(model: str, signed: bool = False) -> Iterator[tuple[dict[str, str], dict[str, Any]]]:
    """The recorded requests with their keys filled in (the caller's provider key as ANTHROPIC_AUTH_TOKEN,
    the gateway key through ANTHROPIC_CUSTOM_HEADERS) and the model under test; ``signed``: thinking
    blocks carry the fake's signature, as the upstream that made them would check it."""
    headers = dict(CLAUDE_CODE["headers"])
    headers["Authorization"] = f"Bearer {PROVIDER_KEY}"
    headers["X-API-Key"] = GATEWAY_KEY
    for messages in CLAUDE_CODE["turns"]:
        if signed:
            messages = [{**m, "content": [anthropic_thinking_block(b["thinking"]) if b.get("type") == "thinking" else b
                                          for b in m["content"]]} if isinstance(m["content"], list) else m
                        for m in messages]
        yield headers, {**CLAUDE_CODE["body"], "model": model, "messages": messages}


def test_the_recording_is_what_claude_code_sends() -> None:
    """What the replay depends on is in the recording: the probe, the path, and the body's features."""
    assert CLAUDE_CODE["probe"]["method"] == "HEAD" and CLAUDE_CODE["probe"]["path"] == "/"
    assert CLAUDE_CODE["path"] == "/v1/messages?beta=true"
    body = CLAUDE_CODE["body"]
    assert body["stream"] is True and len(body["tools"]) == 24 and body["metadata"]["user_id"]
    assert any("cache_control" in block for block in body["system"])
    kinds = {block["type"] for turn in CLAUDE_CODE["turns"][-1] for block in turn["content"]
             if isinstance(turn["content"], list)}
    assert {"thinking", "tool_use", "tool_result", "text"} <= kinds


@BY_TYPE
def test_a_recorded_claude_code_conversation(proxy: Proxy, fake: FakeUpstream, kind: Type) -> None:
    probe = raw_request(proxy.url + "/", None, CLAUDE_CODE["probe"]["headers"], method="HEAD")
    assert probe.status == 200
    first, second = claude_code_turns(kind.model, signed=kind.name in NATIVE)
    for headers, body in (first, second):
        response = raw_request(proxy.url + CLAUDE_CODE["path"], json.dumps(body), headers)
        assert response.status == 200, response.body[:500]
        events = sse(response.body)
        assert events[-1]["type"] == "message_stop"
        assert response.headers["x-tensorwall-provider"] == kind.name
    # The second turn answered the tool's result; no gateway key went upstream.
    text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    assert text == f"[{kind.name}] tool said: a.txt\nb.txt"
    sent = fake.last(kind.name)
    assert GATEWAY_KEY not in str(dict(sent.headers))
    if kind.name == "anthropic":  # the caller's own key: every beta Claude Code sent passes
        assert sent.header("anthropic-beta") == CLAUDE_CODE["headers"]["anthropic-beta"]
