"""``/v1/responses`` through the proxy and the fake upstream, for every provider type, with the
official openai SDK (``responses.create`` and ``responses.stream``, whose accumulator checks the
event grammar), raw requests for what the SDK hides, and a Codex CLI request replayed as recorded."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import GATEWAY_KEY, PNG, PROVIDER_KEY, Proxy, post_json, raw_request
from tests.e2e.test_conformance import BY_TYPE, TYPES, Type
from tests.fakes import FakeUpstream

# The one tool offered, as Responses spells a function tool; the fake calls it with {"location": "Paris"}.
WEATHER: list[Any] = [{"type": "function", "name": "get_weather", "description": "Weather for a city",
                       "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                                      "required": ["location"]}, "strict": False}]
# The types that take images: OpenAI's own and the translated ones, which turn the data: URL into
# their own image blocks (the fake checks each type's shape).
IMAGE_TYPES = [t for t in TYPES if t.name in {"openai", "azure", "anthropic", "vertex", "bedrock"}]
# The types that speak Responses themselves by default: their requests are passed through.
NATIVE = {"openai", "azure"}


def _sse(body: bytes) -> list[dict[str, Any]]:
    """The events of a Responses stream, each ``data:`` parsed, its ``event:`` line checked against its type."""
    events = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        event = json.loads(lines["data"])
        assert lines.get("event") == event["type"]
        events.append(event)
    return events


@BY_TYPE
def test_text(proxy: Proxy, fake: FakeUpstream, kind: Type) -> None:
    raw = proxy.client().responses.with_raw_response.create(model=kind.model, input="hello there",
                                                           instructions="Be brief.", max_output_tokens=200)
    response = raw.parse()
    assert response.object == "response" and response.status == "completed" and response.error is None
    if kind.name in NATIVE:
        assert response.id in fake.responses  # the upstream's own Response, relayed as it came
    else:
        assert response.id.startswith("resp_") and len(response.id) == len("resp_") + 24
    assert response.output_text == f"[{kind.name}] hello there"
    (item,) = response.output
    assert item.type == "message" and item.id.startswith("msg_") and item.role == "assistant"
    assert item.content[0].type == "output_text" and item.content[0].annotations == []
    usage = response.usage
    assert usage is not None and usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0 and usage.input_tokens_details.cached_tokens == 0
    assert response.instructions == "Be brief." and response.max_output_tokens == 200
    # Kept: by the upstream when it speaks Responses itself, by the gateway otherwise (store defaults to true).
    assert response.store is True and response.incomplete_details is None
    assert raw.headers["x-tensorwall-provider"] == kind.name
    body = raw.http_response.json()
    assert body["output"][0]["content"][0]["logprobs"] == []
    assert body["usage"]["output_tokens_details"] == {"reasoning_tokens": 0}


def test_the_pivot_request(proxy: Proxy, fake: FakeUpstream) -> None:
    """What a translated OpenAI-compatible upstream receives: instructions first, the input items as
    chat messages."""
    proxy.client().responses.create(
        model="lmstudio/qwen2.5-7b-instruct", instructions="Be brief.", max_output_tokens=50, temperature=0.5,
        metadata={"k": "v"}, store=True, prompt_cache_key="p", reasoning={"effort": "low"},
        input=[{"role": "developer", "content": "dev"},
               {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}])
    sent = fake.last("lmstudio").json
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "system", "content": "dev"},
                                {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert sent["max_tokens"] == 50 and sent["temperature"] == 0.5 and sent["reasoning_effort"] == "low"
    assert not {"metadata", "store", "prompt_cache_key", "input", "instructions"} & set(sent)


@BY_TYPE
def test_length_stop_is_incomplete(proxy: Proxy, kind: Type) -> None:
    response = proxy.client().responses.create(model=kind.model, input="one two three four five",
                                               max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"


@BY_TYPE
def test_tool_round_trip(proxy: Proxy, kind: Type) -> None:
    client = proxy.client()
    first = client.responses.create(model=kind.model, input="weather in Paris?", tools=WEATHER)
    # Some types say a word before the call (a message item first); the call is the last item.
    call = first.output[-1]
    assert call.type == "function_call" and call.name == "get_weather" and call.id and call.id.startswith("fc_")
    assert json.loads(call.arguments) == {"location": "Paris"}
    assert first.status == "completed"
    # The next turn as Responses clients send it: the whole output back, then the tool's result.
    second = client.responses.create(model=kind.model, tools=WEATHER, input=[
        {"role": "user", "content": "weather in Paris?"},
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}])
    assert second.output_text == f"[{kind.name}] tool said: sunny, 21 C"
    echoed = second.tools[0]
    assert echoed.type == "function" and echoed.name == "get_weather"


@BY_TYPE
def test_streamed_text(proxy: Proxy, kind: Type) -> None:
    with proxy.client().responses.stream(model=kind.model, input="stream these words please") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.output_text == f"[{kind.name}] stream these words please"
    assert final.usage is not None and final.usage.output_tokens > 0
    assert final.usage.output_tokens_details.reasoning_tokens == 0
    assert len({e.response.id for e in events if hasattr(e, "response")}) == 1


@BY_TYPE
def test_streamed_tool_call(proxy: Proxy, kind: Type) -> None:
    stream = proxy.client().responses.create(model=kind.model, input="weather?", tools=WEATHER, stream=True)
    events = list(stream)
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    assert kinds[-1] == "response.completed"
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done.name == "get_weather" and json.loads(done.arguments) == {"location": "Paris"}
    call = events[-1].response.output[-1]  # after the word some types say first
    assert call.type == "function_call" and json.loads(call.arguments) == {"location": "Paris"}
    with proxy.client().responses.stream(model=kind.model, input="weather?", tools=WEATHER) as accumulated:
        final = accumulated.get_final_response()
    assert final.output[-1].type == "function_call" and final.output[-1].name == "get_weather"


@BY_TYPE
def test_streamed_length_stop_is_incomplete(proxy: Proxy, kind: Type) -> None:
    response = post_json(proxy, "/v1/responses", {"model": kind.model, "input": "one two three four five",
                                                  "max_output_tokens": 2, "stream": True})
    events = _sse(response.body)
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-1]["response"]["usage"]["output_tokens_details"]["reasoning_tokens"] == 0


SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
          "additionalProperties": False}


@pytest.mark.parametrize("model", ["openai/gpt-4o", "anthropic/claude-3-5-sonnet-20241022", "vertex/gemini-2.5-flash"])
def test_json_schema_reaches_the_provider(proxy: Proxy, fake: FakeUpstream, model: str) -> None:
    response = proxy.client().responses.create(
        model=model, input="hello", text={"format": {"type": "json_schema", "name": "reply", "schema": SCHEMA,
                                                     "strict": True}})
    assert response.status == "completed" and response.output_text
    assert response.text.format is not None and response.text.format.type == "json_schema"
    if model.startswith("openai/"):  # native: the caller's text.format as it came
        assert fake.last("openai").json["text"] == {
            "format": {"type": "json_schema", "name": "reply", "schema": SCHEMA, "strict": True}}


@pytest.mark.parametrize("kind", IMAGE_TYPES, ids=[t.name for t in IMAGE_TYPES])
def test_image_input(proxy: Proxy, kind: Type) -> None:
    response = proxy.client().responses.create(model=kind.model, input=[{"role": "user", "content": [
        {"type": "input_text", "text": "what is"}, {"type": "input_image", "image_url": PNG, "detail": "low"}]}])
    assert response.status == "completed" and response.output_text.startswith(f"[{kind.name}] what is")


def test_websocket_upgrade_is_426(proxy: Proxy) -> None:
    response = raw_request(proxy.url + "/v1/responses", None, {
        "X-API-Key": GATEWAY_KEY, "Authorization": f"Bearer {PROVIDER_KEY}", "Connection": "Upgrade",
        "Upgrade": "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
        method="GET")
    assert response.status == 426 and response.headers["connection"] == "close"
    assert response.json()["error"]["code"] == "websocket_not_supported"
    plain = raw_request(proxy.url + "/v1/responses", None, {"X-API-Key": GATEWAY_KEY}, method="GET")
    assert plain.status == 405 and plain.headers["allow"] == "POST"


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "openai/gpt-4o"}, "input"),
    ({"model": "openai/gpt-4o", "input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
    ({"model": "openai/gpt-4o", "input": "x", "tools": [{"type": "web_search"}],
      "tool_choice": {"type": "web_search"}}, "tool_choice"),
    ({"model": "openai/gpt-4o", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
     "input[0].content[0].image_url"),
])
def test_bad_bodies_are_400_naming_the_field(proxy: Proxy, body: dict[str, Any], param: str) -> None:
    response = post_json(proxy, "/v1/responses", body)
    assert response.status == 400
    assert response.json()["error"]["param"] == param


# A Codex CLI 0.171 request as it records (A.13): developer and user items, function tools, a custom
# tool, a namespace tool and the hosted web_search, its state and caching fields, and its headers.
CODEX_TOOLS: list[Any] = [
    {"type": "function", "name": "shell", "description": "Runs a shell command", "strict": False,
     "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}},
                    "required": ["command"], "additionalProperties": False}},
    {"type": "custom", "name": "apply_patch", "description": "Applies a patch",
     "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
    {"type": "namespace", "name": "mcp__docs", "description": "Docs server",
     "tools": [{"type": "function", "name": "search", "description": "Search the docs", "strict": False,
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}]},
    {"type": "web_search"},
]


def codex_body(model: str, tools: list[Any]) -> dict[str, Any]:
    return {
        "model": model, "instructions": "You are Codex, a coding agent.", "stream": True, "store": False,
        "include": ["reasoning.encrypted_content"], "reasoning": {"summary": "auto"}, "tool_choice": "auto",
        "parallel_tool_calls": True, "prompt_cache_key": "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        "client_metadata": {"originator": "codex_exec"}, "text": {"verbosity": "medium"},
        "tools": tools,
        "input": [{"type": "message", "role": "developer",
                   "content": [{"type": "input_text", "text": "<permissions>sandbox: read-only</permissions>"}]},
                  {"type": "message", "role": "user",
                   "content": [{"type": "input_text", "text": "<environment_context>cwd: /src</environment_context>"},
                               {"type": "input_text", "text": "list the files"}]}],
    }


CODEX_HEADERS = {"originator": "codex_exec", "session-id": "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
                 "thread-id": "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c", "x-client-request-id": "req-1",
                 "x-codex-turn-metadata": '{"turn":1}', "User-Agent": "codex_exec/0.171.0", "Accept": "text/event-stream"}


def _check_codex_stream(events: list[dict[str, Any]]) -> dict[str, Any]:
    """What Codex's parser insists on (A.13, F.1): items opened before their deltas, a message item's
    part added with "text": "", one terminal event with every usage counter."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created" and events[1]["type"] == "response.in_progress"
    opened: set[str] = set()
    for event in events:
        if event["type"] == "response.output_item.added":
            opened.add(event["item"]["id"])
        if event["type"] == "response.content_part.added":
            assert event["part"]["text"] == ""
        if "item_id" in event:
            assert event["item_id"] in opened
    terminal = [e for e in events if e["type"] in ("response.completed", "response.incomplete", "response.failed")]
    assert terminal == [events[-1]] and events[-1]["type"] == "response.completed"
    usage = events[-1]["response"]["usage"]
    assert {"input_tokens", "output_tokens", "total_tokens"} <= set(usage)
    assert usage["input_tokens_details"]["cached_tokens"] == 0
    assert usage["output_tokens_details"]["reasoning_tokens"] == 0
    return events[-1]["response"]  # type: ignore[no-any-return]


@BY_TYPE
def test_codex_request_replayed(proxy: Proxy, fake: FakeUpstream, kind: Type) -> None:
    response = post_json(proxy, "/v1/responses", codex_body(kind.model, CODEX_TOOLS), **CODEX_HEADERS)
    assert response.status == 200 and response.headers["content-type"].startswith("text/event-stream")
    final = _check_codex_stream(_sse(response.body))
    call = final["output"][-1]  # the fake calls the first tool, after a word for some types
    assert call["type"] == "function_call" and call["name"] == "shell"
    echoed = [tool["type"] for tool in final["tools"]]
    assert echoed == ["function", "custom", "namespace", "web_search"]


@BY_TYPE
def test_codex_text_turn_replayed(proxy: Proxy, kind: Type) -> None:
    response = post_json(proxy, "/v1/responses", codex_body(kind.model, []), **CODEX_HEADERS)
    final = _check_codex_stream(_sse(response.body))
    (message,) = final["output"]
    # The fake echoes the user turn's text parts, joined by a space.
    assert message["content"][0]["text"] == f"[{kind.name}] <environment_context>cwd: /src</environment_context> list the files"


@BY_TYPE
def test_codex_custom_and_namespaced_tools_come_back_as_theirs(proxy: Proxy, fake: FakeUpstream, kind: Type) -> None:
    """The fake calls the first tool: a custom tool comes back as a custom_tool_call with its input, a
    namespaced function with its own name and its namespace."""
    response = post_json(proxy, "/v1/responses", codex_body(kind.model, CODEX_TOOLS[1:]), **CODEX_HEADERS)
    final = _check_codex_stream(_sse(response.body))
    call = final["output"][-1]
    assert call["type"] == "custom_tool_call" and call["name"] == "apply_patch" and isinstance(call["input"], str)
    response = post_json(proxy, "/v1/responses", codex_body(kind.model, CODEX_TOOLS[2:]), **CODEX_HEADERS)
    final = _check_codex_stream(_sse(response.body))
    call = final["output"][-1]
    assert call["type"] == "function_call" and call["name"] == "search" and call["namespace"] == "mcp__docs"


@BY_TYPE
@pytest.mark.parametrize("word", ["error-mid-stream", "cut-mid-stream"])
def test_a_stream_broken_after_content_ends_with_response_failed(proxy: Proxy, kind: Type, word: str) -> None:
    """Past the commit point: what came, then response.failed with the created id and the next number."""
    response = post_json(proxy, "/v1/responses", {"model": kind.fault.format(word), "input": "a b c", "stream": True})
    assert response.status == 200
    events = _sse(response.body)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created"
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text and f"[{kind.name}] a b c".startswith(text)
    failed = events[-1]
    assert failed["type"] == "response.failed" and failed["response"]["status"] == "failed"
    assert failed["response"]["id"] == events[0]["response"]["id"]
    assert failed["response"]["error"]["code"] in ("server_error", "rate_limit_exceeded")
    assert not [e for e in events if e["type"] in ("response.completed", "response.incomplete")]


async def test_the_async_sdk_streams_and_accumulates(proxy: Proxy) -> None:
    async with proxy.async_client() as client:
        async with client.responses.stream(model="anthropic/claude-3-5-sonnet-20241022", input="async words") as s:
            final = await s.get_final_response()
        created = await client.responses.create(model="vertex/gemini-2.5-flash", input="async words")
    assert final.output_text == "[anthropic] async words" and created.output_text == "[vertex] async words"
