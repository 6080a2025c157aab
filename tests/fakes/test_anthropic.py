"""Tests of the fake upstream's anthropic flavor: Anthropic's Messages API on `/anthropic/v1/messages`.

The official `anthropic` SDK is the judge of the wire format: every body and every stream event the
fake sends is parsed with the SDK's own response models, with no key left over that the models do
not know, so the fake cannot drift from what the real service sends. The request checks are tested
one rule at a time with a plain aiohttp client, because the SDK would refuse to send most of them.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import anthropic
import orjson
import pydantic
import pytest
from anthropic.types import Message, RawMessageStreamEvent

from tests.fakes import (
    ANTHROPIC_CACHE_CREATION_TOKENS,
    ANTHROPIC_CACHE_READ_TOKENS,
    ANTHROPIC_FAULT_WORDS,
    ANTHROPIC_THINKING_PREFIX,
    ANTHROPIC_TOOL_INPUT,
    ANTHROPIC_TOOL_PREAMBLE,
    FAULT_WORDS,
    TOOL_ARGUMENTS,
    FakeUpstream,
    anthropic_signature,
    anthropic_thinking_block,
)
from tests.fakes.fixtures import fake, http  # noqa: F401  (pytest fixtures, used by name)

PATH = "/anthropic/v1/messages"
HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
MODEL = "claude-test"
HELLO: Any = [{"role": "user", "content": "Hello there world"}]
WEATHER_TOOL: Any = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}},
}
OTHER_TOOL: Any = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
THINKING: Any = {"type": "enabled", "budget_tokens": 1024}
SCHEMA: Any = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
# A 1x1 PNG, so the base64 is real image data.
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
ID_24 = re.compile(r"[A-Za-z0-9]{24}")

EVENT_ADAPTER: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RawMessageStreamEvent)


@pytest.fixture
async def client(fake: FakeUpstream) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """The official SDK (2.x: Bearer auth, its own anthropic-version); it appends /v1/messages."""
    async with anthropic.AsyncAnthropic(
        base_url=fake.base_url + "/anthropic", api_key="sk-ant-test", max_retries=0
    ) as sdk:
        yield sdk


def request(**fields: Any) -> dict[str, Any]:
    """A valid body: the defaults, overridden (or, with a value of None, removed) by `fields`."""
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 100, "messages": HELLO, **fields}
    return {key: value for key, value in body.items() if value is not None}


async def post(
    http: aiohttp.ClientSession,
    fake: FakeUpstream,
    body: Any,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with http.post(
        fake.base_url + PATH, data=data, headers=HEADERS if headers is None else headers
    ) as resp:
        return resp.status, orjson.loads(await resp.read())


async def events_of(
    http: aiohttp.ClientSession, fake: FakeUpstream, body: dict[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    """The named events of a streamed answer, as (event name, data), checking the SSE framing."""
    async with http.post(fake.base_url + PATH, json={**body, "stream": True}, headers=HEADERS) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        text = (await resp.read()).decode()
    assert text.endswith("\n\n")
    assert "[DONE]" not in text
    events = []
    for raw in text.removesuffix("\n\n").split("\n\n"):
        event_line, data_line = raw.split("\n")
        assert event_line.startswith("event: ")
        assert data_line.startswith("data: ")
        events.append((event_line.removeprefix("event: "), orjson.loads(data_line.removeprefix("data: "))))
    return events


def assert_refused(status: int, body: Any, expected_status: int, error_type: str, message: str) -> None:
    assert status == expected_status, body
    assert body == {"type": "error", "error": {"type": error_type, "message": body["error"]["message"]}}
    assert message in body["error"]["message"]


def no_unknown_keys(value: Any, where: str = "") -> None:
    """Fail when any SDK model in `value` kept a key it has no field for (the SDK allows extras)."""
    if isinstance(value, pydantic.BaseModel):
        assert not value.model_extra, f"{where or type(value).__name__}: unknown keys {value.model_extra}"
        for name in type(value).model_fields:
            no_unknown_keys(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            no_unknown_keys(item, f"{where}[{i}]")


def parse_message(body: dict[str, Any]) -> Message:
    """Parse with the SDK's model; its dump must give back exactly the body (nothing lost or renamed)."""
    message = Message.model_validate(body)
    no_unknown_keys(message)
    assert message.to_dict() == body
    return message


def parse_event(name: str, data: dict[str, Any]) -> Any:
    """Parse one event with the SDK's union (ping is outside it: the SDK skips it by name)."""
    assert data["type"] == name
    if name == "ping":
        assert data == {"type": "ping"}
        return None
    event = EVENT_ADAPTER.validate_python(data)
    no_unknown_keys(event)
    assert event.to_dict() == data
    return event


def reassemble(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The message a stream describes, built the way a client builds it from the deltas."""
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    message = dict(events[0][1]["message"])
    assert message["content"] == []
    assert message["stop_reason"] is None
    assert message["usage"]["output_tokens"] == 1
    blocks: list[dict[str, Any]] = []
    open_index: int | None = None
    for name, data in events[2:-2]:
        if name == "content_block_start":
            assert open_index is None
            assert data["index"] == len(blocks)  # Anthropic's index counts every block
            open_index = data["index"]
            blocks.append(dict(data["content_block"]))
            continue
        assert data["index"] == open_index
        if name == "content_block_stop":
            open_index = None
            continue
        assert name == "content_block_delta"
        block, delta = blocks[data["index"]], data["delta"]
        if delta["type"] == "text_delta":
            block["text"] += delta["text"]
        elif delta["type"] == "thinking_delta":
            block["thinking"] += delta["thinking"]
        elif delta["type"] == "signature_delta":
            assert block["signature"] == ""
            block["signature"] = delta["signature"]
        else:
            assert delta["type"] == "input_json_delta"
            block["json"] = block.get("json", "") + delta["partial_json"]
    assert open_index is None
    for block in blocks:
        if block["type"] == "tool_use":
            assert block["input"] == {}
            block["input"] = orjson.loads(block.pop("json"))
    final = events[-2][1]
    message["content"] = blocks
    message["stop_reason"] = final["delta"]["stop_reason"]
    message["stop_sequence"] = final["delta"]["stop_sequence"]
    message["usage"] = {**message["usage"], "output_tokens": final["usage"]["output_tokens"]}
    return message


def without_ids(message: dict[str, Any]) -> dict[str, Any]:
    content = [{k: v for k, v in block.items() if k != "id"} for block in message["content"]]
    return {**{k: v for k, v in message.items() if k != "id"}, "content": content}


# --------------------------------------------------------------------------------------------------
# The format, judged by the SDK's own models

SHAPES: dict[str, dict[str, Any]] = {
    "plain text": request(system="Be brief"),
    "tool use": request(tools=[WEATHER_TOOL, OTHER_TOOL]),
    "forced tool": request(
        tools=[WEATHER_TOOL, OTHER_TOOL], tool_choice={"type": "tool", "name": "get_time"}
    ),
    "thinking and tool use": request(max_tokens=2048, thinking=THINKING, tools=[WEATHER_TOOL]),
    "thinking and text": request(max_tokens=2048, thinking=THINKING),
    "json output": request(output_config={"format": {"type": "json_schema", "schema": SCHEMA}}),
    "max_tokens truncation": request(max_tokens=2),
    "stop sequence": request(stop_sequences=["world"]),
    "cache usage": request(model="claude-cache-test"),
}


@pytest.mark.parametrize("shape", SHAPES)
async def test_every_body_and_event_parses_with_the_sdk_models(
    fake: FakeUpstream, http: aiohttp.ClientSession, shape: str
) -> None:
    body = SHAPES[shape]
    status, message = await post(http, fake, body)
    assert status == 200, message
    parsed = parse_message(message)
    assert parsed.stop_reason is not None
    assert list(message) == [
        "id",
        "type",
        "role",
        "model",
        "content",
        "stop_reason",
        "stop_sequence",
        "usage",
    ]

    events = await events_of(http, fake, body)
    for name, data in events:
        parse_event(name, data)
    streamed = reassemble(events)
    parse_message(streamed)
    # The stream tells exactly what the non-streamed body tells, ids aside.
    assert without_ids(streamed) == without_ids(message)


# --------------------------------------------------------------------------------------------------
# What it answers


async def test_echo_usage_ids_and_headers(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = request(system=[{"type": "text", "text": "Be brief"}])
    async with http.post(fake.base_url + PATH, json=body, headers=HEADERS) as resp:
        assert resp.status == 200
        assert resp.headers["request-id"].startswith("req_")
        message = await resp.json()
    assert message["id"].startswith("msg_")
    assert ID_24.fullmatch(message["id"].removeprefix("msg_"))
    assert message["model"] == MODEL
    assert message["content"] == [{"type": "text", "text": "[anthropic] Hello there world"}]
    assert message["stop_reason"] == "end_turn"
    assert message["stop_sequence"] is None
    # Words: "Hello there world" + "Be brief" in; "[anthropic] Hello there world" out.
    assert message["usage"] == {"input_tokens": 5, "output_tokens": 4}
    rec = fake.last("anthropic")
    assert rec.path == PATH
    assert rec.json == body
    assert rec.finished_at is not None


async def test_shout_in_the_system_prompt_upper_cases_the_reply(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    for system in (
        "Please shout.",
        [{"type": "text", "text": "Be brief"}, {"type": "text", "text": "SHOUT"}],
    ):
        status, message = await post(http, fake, request(system=system))
        assert status == 200
        assert message["content"][0]["text"] == "[ANTHROPIC] HELLO THERE WORLD"
    status, message = await post(http, fake, request(system="shouting is rude"))
    assert message["content"][0]["text"] == "[anthropic] Hello there world"


async def test_images_count_as_a_word_in_the_echo(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    content = [
        {"type": "text", "text": "Look at"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "please"},
    ]
    status, message = await post(http, fake, request(messages=[{"role": "user", "content": content}]))
    assert status == 200, message
    assert message["content"][0]["text"] == "[anthropic] Look at <image> <image> please"
    assert message["usage"]["input_tokens"] == 5


async def test_tool_use_and_tool_choice(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    tools = [WEATHER_TOOL, OTHER_TOOL]
    status, message = await post(http, fake, request(tools=tools))
    assert status == 200
    preamble, use = message["content"]
    assert preamble == {"type": "text", "text": ANTHROPIC_TOOL_PREAMBLE}
    assert use["type"] == "tool_use"
    assert use["id"].startswith("toolu_")
    assert ID_24.fullmatch(use["id"].removeprefix("toolu_"))
    assert use["name"] == "get_weather"
    assert use["input"] == ANTHROPIC_TOOL_INPUT == orjson.loads(TOOL_ARGUMENTS)
    assert message["stop_reason"] == "tool_use"
    # "Let me check." and the input's two words.
    assert message["usage"]["output_tokens"] == 5

    # A forced choice gets the tool_use alone, like the real API.
    _, named = await post(http, fake, request(tools=tools, tool_choice={"type": "tool", "name": "get_time"}))
    assert [(b["type"], b.get("name")) for b in named["content"]] == [("tool_use", "get_time")]
    _, any_tool = await post(http, fake, request(tools=tools, tool_choice={"type": "any"}))
    assert [(b["type"], b.get("name")) for b in any_tool["content"]] == [("tool_use", "get_weather")]
    _, none = await post(http, fake, request(tools=tools, tool_choice={"type": "none"}))
    assert none["content"] == [{"type": "text", "text": "[anthropic] Hello there world"}]
    assert none["stop_reason"] == "end_turn"


async def test_a_tool_result_turn_is_echoed_as_what_the_tool_said(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    for content in ("22 degrees", [{"type": "text", "text": "22"}, {"type": "text", "text": "degrees"}]):
        messages = [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": content},
                    {"type": "text", "text": "Thanks"},
                ],
            },
        ]
        status, message = await post(http, fake, request(messages=messages, tools=[WEATHER_TOOL]))
        assert status == 200, message
        # No new tool call after a tool result, even with tools defined.
        assert message["content"] == [{"type": "text", "text": "[anthropic] tool said: 22 degrees"}]
        assert message["stop_reason"] == "end_turn"


async def test_thinking_comes_first_and_is_signed(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, message = await post(
        http, fake, request(max_tokens=2048, thinking=THINKING, tools=[WEATHER_TOOL])
    )
    assert status == 200, message
    thinking, preamble, use = message["content"]
    text = ANTHROPIC_THINKING_PREFIX + "[anthropic] Hello there world"
    assert thinking == {"type": "thinking", "thinking": text, "signature": anthropic_signature(text)}
    assert thinking == anthropic_thinking_block(text)
    assert preamble["text"] == ANTHROPIC_TOOL_PREAMBLE
    assert use["type"] == "tool_use"
    # Adaptive thinking thinks too; disabled thinking does not.
    _, adaptive = await post(http, fake, request(thinking={"type": "adaptive"}))
    assert adaptive["content"][0]["type"] == "thinking"
    _, disabled = await post(http, fake, request(thinking={"type": "disabled"}))
    assert [b["type"] for b in disabled["content"]] == ["text"]


async def test_json_output_is_a_compact_json_text(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = request(system="shout", output_config={"format": {"type": "json_schema", "schema": SCHEMA}})
    status, message = await post(http, fake, body)
    assert status == 200, message
    text = message["content"][0]["text"]
    assert text == '{"answer":"[ANTHROPIC] HELLO THERE WORLD"}'
    assert orjson.loads(text) == {"answer": "[ANTHROPIC] HELLO THERE WORLD"}


async def test_max_tokens_and_stop_sequences(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    _, cut = await post(http, fake, request(max_tokens=2))
    assert cut["content"] == [{"type": "text", "text": "[anthropic] Hello"}]
    assert (cut["stop_reason"], cut["stop_sequence"]) == ("max_tokens", None)
    assert cut["usage"]["output_tokens"] == 2

    _, stopped = await post(http, fake, request(stop_sequences=["nothing", "there"]))
    assert stopped["content"] == [{"type": "text", "text": "[anthropic] Hello "}]
    assert (stopped["stop_reason"], stopped["stop_sequence"]) == ("stop_sequence", "there")

    # A stop sequence beyond the limit: the limit stops it first.
    _, limited = await post(http, fake, request(max_tokens=1, stop_sequences=["world"]))
    assert (limited["content"][0]["text"], limited["stop_reason"]) == ("[anthropic]", "max_tokens")


async def test_cache_words_add_cache_usage(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    _, message = await post(http, fake, request(model="claude-cache-test"))
    assert message["usage"] == {
        "input_tokens": 3,
        "output_tokens": 4,
        "cache_creation_input_tokens": ANTHROPIC_CACHE_CREATION_TOKENS,
        "cache_read_input_tokens": ANTHROPIC_CACHE_READ_TOKENS,
    }
    events = await events_of(http, fake, request(model="claude-cache-test"))
    assert events[0][1]["message"]["usage"] == {**message["usage"], "output_tokens": 1}


async def test_stream_blocks_indices_and_deltas(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    events = await events_of(http, fake, request(max_tokens=2048, thinking=THINKING, tools=[WEATHER_TOOL]))
    starts = [(d["index"], d["content_block"]) for n, d in events if n == "content_block_start"]
    assert [(i, b["type"]) for i, b in starts] == [(0, "thinking"), (1, "text"), (2, "tool_use")]
    assert starts[0][1] == {"type": "thinking", "thinking": "", "signature": ""}
    assert starts[1][1] == {"type": "text", "text": ""}
    assert starts[2][1]["input"] == {}
    deltas = [d for n, d in events if n == "content_block_delta"]
    thinking = [d["delta"] for d in deltas if d["index"] == 0]
    assert [d["type"] for d in thinking][-1] == "signature_delta"
    assert all(d["type"] == "thinking_delta" for d in thinking[:-1])
    assert len(thinking) > 2  # one per word
    json_parts = [d["delta"]["partial_json"] for d in deltas if d["index"] == 2]
    assert json_parts[0] == ""  # the real API opens with an empty fragment
    assert 2 <= len(json_parts[1:]) <= 3
    assert "".join(json_parts) == TOOL_ARGUMENTS
    final = events[-2][1]
    assert final["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert set(final["usage"]) == {"output_tokens"}

    plain = await events_of(http, fake, request())
    texts = [d["delta"]["text"] for n, d in plain if n == "content_block_delta"]
    assert texts == ["[anthropic] ", "Hello ", "there ", "world"]


async def test_every_request_is_recorded_even_when_refused(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    status, _ = await post(http, fake, b"not json", headers={})
    assert status == 401
    rec = fake.last("anthropic")
    assert rec.body == b"not json"
    assert rec.json is None
    assert rec.method == "POST"


async def test_unknown_anthropic_path_and_models(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    async with http.post(fake.base_url + "/anthropic/v1/complete", json={}, headers=HEADERS) as resp:
        assert resp.status == 404
        body = await resp.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    assert fake.last().flavor == "anthropic"
    async with http.get(fake.base_url + "/anthropic/v1/models", headers=HEADERS) as resp:
        assert resp.status == 200
        models = await resp.json()
    assert [m["id"] for m in models["data"]] == ["claude-sonnet-4-6", "claude-haiku-4-5"]
    assert models["data"][0]["type"] == "model"
    assert models["has_more"] is False
    assert fake.url("anthropic") == fake.base_url + "/anthropic"


async def test_script_overrides_the_anthropic_answer(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    fake.script["claude-scripted"] = (
        418,
        {},
        {"type": "error", "error": {"type": "teapot", "message": "no"}},
    )
    status, body = await post(http, fake, request(model="claude-scripted"))
    assert (status, body["error"]["type"]) == (418, "teapot")


# --------------------------------------------------------------------------------------------------
# The checks: each rule refused the way the real service refuses it


def tool_turns(
    *, use_id: str = "toolu_01A", result_id: str | None = None, result_first: bool = True
) -> list[dict[str, Any]]:
    """user asks, assistant calls a tool, user answers it (and says thanks)."""
    result = {"type": "tool_result", "tool_use_id": result_id or use_id, "content": "22 degrees"}
    thanks = {"type": "text", "text": "Thanks"}
    return [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": use_id, "name": "get_weather", "input": {"location": "Paris"}},
            ],
        },
        {"role": "user", "content": [result, thanks] if result_first else [thanks, result]},
    ]


def with_thinking_first(messages: list[dict[str, Any]], block: dict[str, Any]) -> list[dict[str, Any]]:
    assistant = {**messages[1], "content": [block, *messages[1]["content"]]}
    return [messages[0], assistant, *messages[2:]]


def says(role: str, *blocks: Any) -> dict[str, Any]:
    """One message made of these content blocks."""
    return {"role": role, "content": list(blocks)}


def image(**source: Any) -> dict[str, Any]:
    return {"type": "image", "source": source}


def use(tool_id: str, tool_input: Any = None) -> dict[str, Any]:
    return {"type": "tool_use", "id": tool_id, "name": "get_weather", "input": tool_input or {}}


def result(tool_id: str, content: Any = "22 degrees", **extra: Any) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_id, "content": content, **extra}


SIGNED = anthropic_thinking_block("I should look up the weather.")
TOOLS = [WEATHER_TOOL]
THINK = {"thinking": THINKING, "max_tokens": 2048}
LAST_TURN_THINKING = (
    "Expected `thinking` or `redacted_thinking`, but found `{}`. When `thinking` is enabled, a final "
    "`assistant` message must start with a thinking block"
)

# name: (body, a part of the 400 invalid_request_error message)
BAD_REQUESTS: dict[str, tuple[Any, str]] = {
    "not json": (b"{", "JSON"),
    "unknown key": (request(n=2), "n: Extra inputs are not permitted"),
    "missing model": (request(model=None), "model: Field required"),
    "missing max_tokens": (request(max_tokens=None), "max_tokens: Field required"),
    "zero max_tokens": (request(max_tokens=0), "max_tokens: Input should be greater than or equal to 1"),
    "string max_tokens": (request(max_tokens="5"), "max_tokens: Input should be a valid integer"),
    "missing messages": (request(messages=None), "messages: Field required"),
    "empty messages": (request(messages=[]), "messages: at least one message is required"),
    "tool role": (
        request(messages=[{"role": "tool", "content": "Be brief"}, *HELLO]),
        "messages.0.role: Input should be 'user', 'assistant' or 'system'",
    ),
    "system an object": (request(system={"text": "x"}), "system"),
    "empty system block": (request(system=[{"type": "text", "text": ""}]), "system.0: text content blocks"),
    "empty text block": (
        request(messages=[says("user", {"type": "text", "text": ""})]),
        "messages.0.content.0: text content blocks must be non-empty",
    ),
    "blank text block": (
        request(messages=[says("user", {"type": "text", "text": "  "})]),
        "text content blocks must contain non-whitespace text",
    ),
    "empty content": (
        request(messages=[says("user")]),
        "messages.0: all messages must have non-empty content",
    ),
    "openai image part": (
        request(messages=[says("user", {"type": "image_url", "image_url": {"url": "https://x"}})]),
        "messages.0.content.0: Input tag 'image_url'",
    ),
    "image media type": (
        request(messages=[says("user", image(type="base64", media_type="image/bmp", data=PNG_B64))]),
        "image.source.base64.media_type",
    ),
    "image not base64": (
        request(messages=[says("user", image(type="base64", media_type="image/png", data="not base64!"))]),
        "invalid base64 data",
    ),
    "data URI left in": (
        request(
            messages=[
                says(
                    "user",
                    image(type="base64", media_type="image/png", data="data:image/png;base64," + PNG_B64),
                )
            ]
        ),
        "invalid base64 data",
    ),
    "image http url": (
        request(messages=[says("user", image(type="url", url="http://example.com/a.png"))]),
        "only https URLs",
    ),
    "tool_use in a user turn": (
        request(messages=[says("user", use("t1"))], tools=TOOLS),
        "messages.0.content.0: `tool_use` blocks can only be in `assistant` messages",
    ),
    "tool_result in an assistant turn": (
        request(messages=[*HELLO, says("assistant", result("t1"))], tools=TOOLS),
        "`tool_result` blocks can only be in `user` messages",
    ),
    "tool_use id characters": (
        request(messages=tool_turns(use_id="functions.get_weather:0"), tools=TOOLS),
        "messages.1.content.1.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'",
    ),
    "tool_result id characters": (
        request(messages=tool_turns(result_id="call 1"), tools=TOOLS),
        "messages.2.content.0.tool_result.tool_use_id: String should match pattern",
    ),
    "tool_use input a JSON string": (
        request(
            messages=[*HELLO, says("assistant", use("t1", '{"a": 1}')), says("user", result("t1"))],
            tools=TOOLS,
        ),
        "tool_use.input: Input should be a valid dictionary",
    ),
    "tool_result not first": (
        request(messages=tool_turns(result_first=False), tools=TOOLS),
        "messages.2.content.1: `tool_result` blocks must come first",
    ),
    "unpaired tool_use": (
        request(messages=[*tool_turns()[:2], {"role": "user", "content": "What now?"}], tools=TOOLS),
        "messages.2: `tool_use` ids were found without `tool_result` blocks immediately after: toolu_01A",
    ),
    "one of two tool_uses unanswered": (
        request(
            messages=[*HELLO, says("assistant", use("a"), use("b")), says("user", result("b"))], tools=TOOLS
        ),
        "`tool_use` ids were found without `tool_result` blocks immediately after: a.",
    ),
    "tool_use with no turn after it": (
        request(messages=tool_turns()[:2], tools=TOOLS),
        "`tool_use` ids were found without `tool_result` blocks immediately after",
    ),
    "tool_result for an unknown id": (
        request(messages=[*HELLO, {"role": "assistant", "content": "Hi"}, tool_turns()[2]], tools=TOOLS),
        "messages.2.content.0: unexpected `tool_use_id` found in `tool_result` blocks: toolu_01A",
    ),
    "tool_result for an older turn's id": (
        request(
            messages=[*tool_turns(), {"role": "assistant", "content": "Sunny."}, tool_turns()[2]], tools=TOOLS
        ),
        "messages.4.content.0: unexpected `tool_use_id`",
    ),
    "duplicate tool_use ids": (
        request(
            messages=[*HELLO, says("assistant", use("a"), use("a")), says("user", result("a"))], tools=TOOLS
        ),
        "`tool_use` ids must be unique",
    ),
    "history without tools": (
        request(messages=tool_turns()),
        "Requests which include `tool_use` or `tool_result` blocks must define tools.",
    ),
    "history with empty tools": (request(messages=tool_turns(), tools=[]), "must define tools"),
    "tool without input_schema": (
        request(tools=[{"name": "f"}]),
        "tools.0.custom.input_schema: Field required",
    ),
    "tool schema not an object": (
        request(tools=[{"name": "f", "input_schema": {"type": "string"}}]),
        "tools.0.custom.input_schema.type: Input should be 'object'",
    ),
    "openai-style tool": (
        request(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]),
        "tools.0.type",
    ),
    "tool name characters": (
        request(tools=[{"name": "get weather", "input_schema": {"type": "object"}}]),
        "tools.0.custom.name: String should match pattern",
    ),
    "duplicate tool names": (
        request(tools=[WEATHER_TOOL, WEATHER_TOOL]),
        "tools: Tool names must be unique.",
    ),
    "openai tool_choice string": (request(tools=TOOLS, tool_choice="auto"), "tool_choice"),
    "tool_choice required": (
        request(tools=TOOLS, tool_choice={"type": "required"}),
        "tool_choice: Input tag 'required'",
    ),
    "disable_parallel_tool_use with none": (
        request(tools=TOOLS, tool_choice={"type": "none", "disable_parallel_tool_use": True}),
        "tool_choice.none.disable_parallel_tool_use: Extra inputs are not permitted",
    ),
    "disable_parallel_tool_use not a bool": (
        request(tools=TOOLS, tool_choice={"type": "auto", "disable_parallel_tool_use": "yes"}),
        "tool_choice.auto.disable_parallel_tool_use: Input should be a valid boolean",
    ),
    "tool_choice names an unknown tool": (
        request(tools=TOOLS, tool_choice={"type": "tool", "name": "nope"}),
        "Tool 'nope' not found",
    ),
    "thinking budget too small": (
        request(thinking={"type": "enabled", "budget_tokens": 1023}, max_tokens=4096),
        "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
    ),
    "thinking budget not below max_tokens": (
        request(thinking={"type": "enabled", "budget_tokens": 2048}, max_tokens=2048),
        "`max_tokens` must be greater than `thinking.budget_tokens`",
    ),
    "thinking with temperature": (
        request(**THINK, temperature=0.5),
        "`temperature` may only be set to 1 when thinking is enabled",
    ),
    "thinking with top_k": (request(**THINK, top_k=5), "`top_k` must be unset when thinking is enabled"),
    "thinking with a forced tool": (
        request(**THINK, tools=TOOLS, tool_choice={"type": "any"}),
        "Thinking may not be enabled when tool_choice forces tool use.",
    ),
    "thinking, last tool turn starts with text": (
        request(**THINK, messages=tool_turns(), tools=TOOLS),
        "messages.1.content.0.type: " + LAST_TURN_THINKING.format("text"),
    ),
    "thinking, last tool turn starts with tool_use": (
        request(
            **THINK, messages=[*HELLO, says("assistant", use("t1")), says("user", result("t1"))], tools=TOOLS
        ),
        LAST_TURN_THINKING.format("tool_use"),
    ),
    "thinking block with a forged signature": (
        request(
            **THINK, messages=with_thinking_first(tool_turns(), {**SIGNED, "signature": "sig_x"}), tools=TOOLS
        ),
        "messages.1.content.0: Invalid `signature` in `thinking` block",
    ),
    "thinking block with edited text": (
        request(
            **THINK, messages=with_thinking_first(tool_turns(), {**SIGNED, "thinking": "Else."}), tools=TOOLS
        ),
        "Invalid `signature` in `thinking` block",
    ),
    "temperature above 1": (request(temperature=1.5), "temperature: Input should be less than or equal to 1"),
    "temperature below 0": (
        request(temperature=-0.1),
        "temperature: Input should be greater than or equal to 0",
    ),
    "top_p above 1": (request(top_p=1.01), "top_p: Input should be less than or equal to 1"),
    "openai response_format": (
        request(response_format={"type": "json_object"}),
        "response_format: Extra inputs are not permitted",
    ),
    "output_config json_object": (
        request(output_config={"format": {"type": "json_object"}}),
        "output_config.format.type: Input should be 'json_schema'",
    ),
    "output_config without a schema": (
        request(output_config={"format": {"type": "json_schema"}}),
        "output_config.format.schema: Field required",
    ),
    "metadata extra key": (request(metadata={"user": "u1"}), "metadata.user: Extra inputs are not permitted"),
    "stop_sequences a string": (request(stop_sequences="END"), "stop_sequences"),
    "prefill with trailing whitespace": (
        request(messages=[*HELLO, {"role": "assistant", "content": "Sure, "}]),
        "final assistant content cannot end with trailing whitespace",
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
async def test_bad_requests(fake: FakeUpstream, http: aiohttp.ClientSession, case: str) -> None:
    body, message = BAD_REQUESTS[case]
    status, got = await post(http, fake, body)
    assert_refused(status, got, 400, "invalid_request_error", message)
    assert len(fake.for_flavor("anthropic")) == 1  # recorded all the same


@pytest.mark.parametrize(
    ("headers", "status", "error_type"),
    [
        pytest.param({"x-api-key": "k", "anthropic-version": "2023-06-01"}, 200, None, id="x-api-key"),
        pytest.param(
            {"Authorization": "Bearer t", "anthropic-version": "2026-10-21"}, 200, None, id="bearer"
        ),
        pytest.param({"anthropic-version": "2023-06-01"}, 401, "authentication_error", id="no key"),
        pytest.param(
            {"x-api-key": " ", "anthropic-version": "2023-06-01"}, 401, "authentication_error", id="blank key"
        ),
        pytest.param(
            {"Authorization": "Bearer ", "anthropic-version": "v"},
            401,
            "authentication_error",
            id="blank bearer",
        ),
        pytest.param({"x-api-key": "k"}, 400, "invalid_request_error", id="no anthropic-version"),
    ],
)
async def test_auth_and_version_headers(
    fake: FakeUpstream,
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    status: int,
    error_type: str | None,
) -> None:
    got_status, got = await post(http, fake, request(), headers)
    if error_type is None:
        assert got_status == 200
        return
    expected = "x-api-key header is required" if status == 401 else "anthropic-version: header is required"
    assert_refused(got_status, got, status, error_type, expected)


GOOD_REQUESTS: dict[str, dict[str, Any]] = {
    "system as text blocks": request(
        system=[{"type": "text", "text": "Be brief", "cache_control": {"type": "ephemeral"}}]
    ),
    "metadata user_id": request(metadata={"user_id": "u-1"}),
    "sampling in range": request(temperature=0.7, top_p=0.9, top_k=40),
    "service tier": request(service_tier="standard_only"),
    "tool_choice auto, no parallel": request(
        tools=TOOLS, tool_choice={"type": "auto", "disable_parallel_tool_use": True}
    ),
    "a tool round trip": request(messages=tool_turns(), tools=TOOLS),
    "tool round trip with tool_choice none": request(
        messages=tool_turns(), tools=TOOLS, tool_choice={"type": "none"}
    ),
    "tool result with text blocks and is_error": request(
        messages=[
            *tool_turns()[:2],
            says("user", result("toolu_01A", [{"type": "text", "text": "x"}], is_error=True)),
        ],
        tools=TOOLS,
    ),
    "tool results in consecutive user messages, merged": request(
        messages=[
            *HELLO,
            says("assistant", use("call_a"), use("call_b")),
            says("user", result("call_a")),
            says("user", result("call_b")),
        ],
        tools=TOOLS,
    ),
    "thinking with the signed block first": request(
        **THINK, messages=with_thinking_first(tool_turns(), SIGNED), tools=TOOLS
    ),
    "thinking with a redacted block first": request(
        **THINK,
        messages=with_thinking_first(tool_turns(), {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3p"}),
        tools=TOOLS,
    ),
    "thinking disabled needs no thinking block": request(
        thinking={"type": "disabled"}, messages=tool_turns(), tools=TOOLS
    ),
    "thinking: only the last assistant turn must start with thinking": request(
        **THINK,
        messages=[
            *tool_turns(),
            {"role": "assistant", "content": "22."},
            {"role": "user", "content": "And?"},
        ],
        tools=TOOLS,
    ),
    "thinking with temperature 1": request(**THINK, temperature=1),
    "a prefill": request(messages=[*HELLO, {"role": "assistant", "content": "Sure"}]),
    "json output with effort": request(
        output_config={"effort": "low", "format": {"type": "json_schema", "schema": SCHEMA}}
    ),
}


@pytest.mark.parametrize("case", GOOD_REQUESTS)
async def test_good_requests(fake: FakeUpstream, http: aiohttp.ClientSession, case: str) -> None:
    status, message = await post(http, fake, GOOD_REQUESTS[case])
    assert status == 200, message
    parse_message(message)


async def test_a_tool_result_answered_text_is_the_tool_output(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    body = request(**THINK, messages=with_thinking_first(tool_turns(), SIGNED), tools=TOOLS)
    _, message = await post(http, fake, body)
    thinking, text = message["content"]
    assert thinking == anthropic_thinking_block(
        ANTHROPIC_THINKING_PREFIX + "[anthropic] tool said: 22 degrees"
    )
    assert text == {"type": "text", "text": "[anthropic] tool said: 22 degrees"}


# --------------------------------------------------------------------------------------------------
# Faults


def test_anthropic_fault_words_extend_the_common_ones() -> None:
    assert ANTHROPIC_FAULT_WORDS[: len(FAULT_WORDS)] == FAULT_WORDS
    assert set(ANTHROPIC_FAULT_WORDS) - set(FAULT_WORDS) == {"fail-529", "error-before-content"}


@pytest.mark.parametrize(
    ("word", "status", "error_type"),
    [
        ("fail-500", 500, "api_error"),
        ("fail-503", 503, "overloaded_error"),
        ("fail-529", 529, "overloaded_error"),
        ("fail-400", 400, "invalid_request_error"),
        ("fail-401", 401, "authentication_error"),
        ("fail-429", 429, "rate_limit_error"),
        ("error-mid-stream", 529, "overloaded_error"),  # not streamed
        ("error-before-content", 529, "overloaded_error"),  # not streamed
    ],
)
async def test_failure_words(
    fake: FakeUpstream, http: aiohttp.ClientSession, word: str, status: int, error_type: str
) -> None:
    async with http.post(fake.base_url + PATH, json=request(model=f"claude-{word}"), headers=HEADERS) as resp:
        body = await resp.json()
        assert_refused(resp.status, body, status, error_type, "")
        assert resp.headers["request-id"].startswith("req_")
        assert resp.headers.get("retry-after") == ("7" if word == "fail-429" else None)


async def test_faults_come_after_validation(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, fake, request(model="claude-fail-529", max_tokens=None))
    assert_refused(status, body, 400, "invalid_request_error", "max_tokens")


async def test_sdk_sees_529_and_429(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.OverloadedError) as overloaded:
        await client.messages.create(model="claude-fail-529", max_tokens=10, messages=HELLO)
    assert overloaded.value.status_code == 529
    with pytest.raises(anthropic.RateLimitError) as limited:
        await client.messages.create(model="claude-fail-429", max_tokens=10, messages=HELLO)
    assert limited.value.response.headers["retry-after"] == "7"
    assert limited.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": limited.value.body["error"]["message"]},  # type: ignore[index]
    }


async def test_error_mid_stream_after_the_first_text_delta(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    events = await events_of(http, fake, request(model="claude-error-mid-stream"))
    names = [name for name, _ in events]
    assert names == ["message_start", "ping", "content_block_start", "content_block_delta", "error"]
    assert events[3][1]["delta"] == {"type": "text_delta", "text": "[anthropic] "}
    assert events[-1][1] == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}

    # With thinking first, the error still waits for the first text_delta.
    events = await events_of(
        http, fake, request(model="claude-error-mid-stream", thinking=THINKING, max_tokens=2048)
    )
    deltas = [d["delta"]["type"] for n, d in events if n == "content_block_delta"]
    assert deltas[-2:] == ["signature_delta", "text_delta"]
    assert events[-1][0] == "error"


async def test_error_before_content(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    events = await events_of(http, fake, request(model="claude-error-before-content"))
    assert [name for name, _ in events] == ["message_start", "ping", "error"]
    assert events[-1][1]["error"]["type"] == "overloaded_error"
    parse_event(*events[0])


async def test_sdk_raises_on_the_error_event(client: anthropic.AsyncAnthropic) -> None:
    text = ""
    with pytest.raises(anthropic.APIStatusError) as raised:
        async with client.messages.stream(
            model="claude-error-mid-stream", max_tokens=10, messages=HELLO
        ) as stream:
            async for piece in stream.text_stream:
                text += piece
    assert text == "[anthropic] "
    assert raised.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }


async def test_cut_mid_stream_breaks_the_connection(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(
            fake.base_url + PATH, json=request(model="claude-cut-mid-stream", stream=True), headers=HEADERS
        ) as resp:
            async for piece in resp.content.iter_any():
                received += piece
    assert received.count(b"event: content_block_delta") == 2
    assert b"message_stop" not in received


async def test_slow_stream_pauses_after_the_first_delta(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    stamps: list[tuple[float, bytes]] = []
    async with http.post(
        fake.base_url + PATH, json=request(model="claude-slow-stream", stream=True), headers=HEADERS
    ) as resp:
        async for line in resp.content:
            stamps.append((time.monotonic(), line))
    first = next(t for t, line in stamps if line.startswith(b"event: content_block_delta"))
    second = [t for t, line in stamps if line.startswith(b"event: content_block_delta")][1]
    assert second - first >= 0.15
    assert stamps[-2][1] == b'data: {"type":"message_stop"}\n'  # the stream still finishes


async def test_hang_records_the_caller_leaving(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    with pytest.raises(TimeoutError):
        async with http.post(
            fake.base_url + PATH,
            json=request(model="claude-hang"),
            headers=HEADERS,
            timeout=aiohttp.ClientTimeout(total=0.2),
        ):
            pass
    rec = fake.last("anthropic")
    for _ in range(100):
        if rec.disconnected_at is not None:
            break
        await asyncio.sleep(0.01)
    assert rec.disconnected_at is not None
    assert rec.finished_at is None


async def test_slow_first_byte(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    started = time.monotonic()
    status, message = await post(http, fake, request(model="claude-slow-first-byte"))
    assert time.monotonic() - started >= 0.15
    assert status == 200
    parse_message(message)


# --------------------------------------------------------------------------------------------------
# The official SDK as the client


async def test_sdk_create_sends_bearer_and_its_version(
    fake: FakeUpstream, client: anthropic.AsyncAnthropic
) -> None:
    message = await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, system="shout")
    assert message.content[0].type == "text"
    assert message.content[0].text == "[ANTHROPIC] HELLO THERE WORLD"
    rec = fake.last("anthropic")
    assert rec.header("Authorization") == "Bearer sk-ant-test"
    assert rec.header("anthropic-version")
    assert rec.path == PATH


async def test_sdk_stream_reassembles_text(client: anthropic.AsyncAnthropic) -> None:
    async with client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "[anthropic] Hello there world"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 4


async def test_sdk_stream_reassembles_tool_input(client: anthropic.AsyncAnthropic) -> None:
    snapshots: list[object] = []
    async with client.messages.stream(
        model=MODEL,
        max_tokens=100,
        messages=HELLO,
        tools=[WEATHER_TOOL],
    ) as stream:
        async for event in stream:
            if event.type == "input_json":
                snapshots.append(event.snapshot)
        final = await stream.get_final_message()
    assert [block.type for block in final.content] == ["text", "tool_use"]
    use = final.content[1]
    assert use.type == "tool_use"
    assert use.input == ANTHROPIC_TOOL_INPUT
    assert use.name == "get_weather"
    assert snapshots[-1] == ANTHROPIC_TOOL_INPUT
    assert final.stop_reason == "tool_use"


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
async def test_sdk_thinking_tool_loop_round_trips(client: anthropic.AsyncAnthropic, streamed: bool) -> None:
    """The fake accepts back what it sent: the assistant turn as the SDK rebuilt it, thinking first."""
    tools: Any = [WEATHER_TOOL]
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    ask: Callable[..., Any]
    if streamed:

        async def ask(**kwargs: Any) -> Message:
            async with client.messages.stream(**kwargs) as stream:
                return await stream.get_final_message()
    else:
        ask = client.messages.create

    first = await ask(model=MODEL, max_tokens=2048, thinking=THINKING, tools=tools, messages=messages)
    assert [block.type for block in first.content] == ["thinking", "text", "tool_use"]
    use = first.content[2]
    assert use.type == "tool_use"
    assistant = [block.to_dict() for block in first.content]
    result = {"type": "tool_result", "tool_use_id": use.id, "content": "22 degrees"}
    messages += [{"role": "assistant", "content": assistant}, {"role": "user", "content": [result]}]
    second = await ask(model=MODEL, max_tokens=2048, thinking=THINKING, tools=tools, messages=messages)
    assert second.content[-1].type == "text"
    assert second.content[-1].text == "[anthropic] tool said: 22 degrees"

    # Without the thinking block, the same history is refused.
    messages[1] = {"role": "assistant", "content": assistant[1:]}
    with pytest.raises(anthropic.BadRequestError) as refused:
        await ask(model=MODEL, max_tokens=2048, thinking=THINKING, tools=tools, messages=messages)
    assert "Expected `thinking` or `redacted_thinking`, but found `text`" in str(refused.value)


async def test_sdk_json_output(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=HELLO,
        output_config={"format": {"type": "json_schema", "schema": SCHEMA}},
    )
    assert message.content[0].type == "text"
    assert orjson.loads(message.content[0].text) == {"answer": "[anthropic] Hello there world"}


def test_base64_helper_matches_real_png() -> None:
    # Guards the test data itself: the 1x1 PNG above decodes to a PNG.
    assert base64.b64decode(PNG_B64).startswith(b"\x89PNG")
