"""One conformance battery for the nine provider types: the same cases, the same assertions, each type
reached through the base test config (tests/conftest.py points all nine at the fake).

What every type owes an OpenAI SDK user is asserted here once: a unary answer with usage and the
provider header, a stream that ends once with the right finish reason, exactly one usage chunk when
asked, a tool call round trip (unary and streamed), upstream errors in OpenAI's shape, and a stream
broken after its first content ending in one in-band error. What only one type does (SigV4, ambient
credentials, Gemini's names, Anthropic's thinking) stays in that type's own file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import TOOLS, Proxy, post_json
from tests.fakes import FakeUpstream, Recorded


@dataclass(frozen=True)
class Type:
    """How the battery reaches one provider type, and how the fake shows what reached it."""

    name: str
    model: str  # what the caller sends
    upstream: str  # the model (or deployment) the fake must see
    fault: str  # the caller's model for a fault word, `{}` standing for the word
    streamed: Callable[[Recorded], bool]  # the upstream request asked for a stream


def _stream_field(record: Recorded) -> bool:
    return bool(record.json.get("stream"))


TYPES = [
    Type("openai", "openai/gpt-4o", "gpt-4o", "openai/{}", _stream_field),
    Type("groq", "groq/llama3-70b-8192", "llama3-70b-8192", "groq/{}", _stream_field),
    Type("mistral", "mistral/mistral-small-latest", "mistral-small-latest", "mistral/{}", _stream_field),
    Type("lmstudio", "lmstudio/qwen2.5-7b-instruct", "qwen2.5-7b-instruct", "lmstudio/{}", _stream_field),
    Type("ollama", "ollama/llama3.2", "llama3.2", "ollama/{}", _stream_field),
    Type("azure", "azure/gpt-4o", "gpt-4o", "azure/{}", _stream_field),
    Type("anthropic", "anthropic/claude-3-5-sonnet-20241022", "claude-3-5-sonnet-20241022",
         "anthropic/claude-{}", _stream_field),
    Type("vertex", "vertex/gemini-2.5-flash", "gemini-2.5-flash", "vertex/gemini-{}",
         lambda r: r.path.endswith(":streamGenerateContent") and r.query.get("alt") == "sse"),
    Type("bedrock", "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0", "anthropic.claude-3-5-sonnet-20240620-v1:0",
         "bedrock/anthropic.claude-{}-v1:0", lambda r: r.path.endswith("/converse-stream")),
]
BY_TYPE = pytest.mark.parametrize("kind", TYPES, ids=[t.name for t in TYPES])


def _upstream_model(fake: FakeUpstream, kind: Type) -> str | None:
    record = fake.last(kind.name)
    return record.deployment if kind.name == "azure" else record.model


def _finish_reasons(chunks: list[Any]) -> list[str]:
    return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


def _ids(chunks: list[Any], kind: Type) -> set[str]:
    """The completion ids of a stream; Azure's prompt-filter chunk has none of its own."""
    return {c.id for c in chunks if c.id or kind.name != "azure"}


@BY_TYPE
def test_chat(proxy: Proxy, fake: FakeUpstream, kind: Type) -> None:
    response = proxy.client().chat.completions.with_raw_response.create(
        model=kind.model, messages=[{"role": "user", "content": "hello there"}])
    completion = response.parse()
    assert completion.choices[0].message.content == f"[{kind.name}] hello there"
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.total_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert response.headers["x-tensorwall-provider"] == kind.name
    assert response.headers["x-request-id"]
    assert _upstream_model(fake, kind) == kind.upstream
    assert not kind.streamed(fake.last(kind.name))


@BY_TYPE
def test_stream(proxy: Proxy, fake: FakeUpstream, kind: Type) -> None:
    chunks = list(proxy.client().chat.completions.create(
        model=kind.model, messages=[{"role": "user", "content": "stream these words please"}], stream=True))
    # Azure opens with its prompt-filter results, a chunk without choices; the others with the role.
    opening = next(c for c in chunks if c.choices) if kind.name == "azure" else chunks[0]
    assert opening.choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"[{kind.name}] stream these words please"
    assert _finish_reasons(chunks) == ["stop"]
    assert len(_ids(chunks, kind)) == 1
    # The caller did not ask for usage: the usage chunk the proxy asked for is not shown.
    assert all(c.choices for c in chunks if c.usage is not None) or kind.name == "mistral"
    assert not [c for c in chunks if not c.choices and c.usage is not None]
    assert _upstream_model(fake, kind) == kind.upstream
    assert kind.streamed(fake.last(kind.name))


@BY_TYPE
def test_stream_include_usage_gives_exactly_one_usage_chunk(proxy: Proxy, kind: Type) -> None:
    chunks = list(proxy.client().chat.completions.create(
        model=kind.model, messages=[{"role": "user", "content": "count me"}], stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"[{kind.name}] count me"
    assert _finish_reasons(chunks) == ["stop"]
    usage_chunks = [c for c in chunks if not c.choices and c.usage is not None]
    assert len(usage_chunks) == 1
    assert chunks[-1] is usage_chunks[0]
    assert len(_ids(chunks, kind)) == 1  # the usage chunk is one of the same completion
    usage = usage_chunks[0].usage
    assert usage is not None and usage.total_tokens > 0 and usage.completion_tokens > 0


@BY_TYPE
def test_tool_call_round_trip(proxy: Proxy, kind: Type) -> None:
    client = proxy.client()
    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    first = client.chat.completions.create(model=kind.model, messages=messages, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris"}
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"})
    second = client.chat.completions.create(model=kind.model, messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == f"[{kind.name}] tool said: sunny, 21 C"


@BY_TYPE
def test_streamed_tool_call(proxy: Proxy, kind: Type) -> None:
    """The raw deltas as the protocol has them, and the SDK's own helper reassembling them."""
    with proxy.client().chat.completions.stream(
            model=kind.model, messages=[{"role": "user", "content": "weather?"}], tools=TOOLS) as events:
        chunks = [e.chunk for e in events if e.type == "chunk"]
        final = events.get_final_completion()
    calls = [tc for c in chunks if c.choices and c.choices[0].delta.tool_calls for tc in c.choices[0].delta.tool_calls]
    assert calls[0].index == 0 and calls[0].id and calls[0].function and calls[0].function.name == "get_weather"
    arguments = "".join(tc.function.arguments or "" for tc in calls if tc.function)
    assert json.loads(arguments) == {"location": "Paris"}
    assert _finish_reasons(chunks) == ["tool_calls"]
    (call,) = final.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"location": "Paris"}
    assert final.choices[0].finish_reason == "tool_calls"


# What the caller gets for each upstream fault: the upstream's status, but an upstream 500 is the
# gateway's 502 for every type (DESIGN §7), and AWS answers a bad key with 403. Each type's own
# faults (Anthropic's 529, Gemini's 403, AWS's 408/424 and the rest) are in that type's file.
FAULTS = {"fail-429": 429, "fail-400": 400, "fail-401": 401, "fail-500": 502, "fail-503": 503}
STATUS = {(kind.name, word): status for kind in TYPES for word, status in FAULTS.items()}
STATUS["bedrock", "fail-401"] = 403
# The types whose upstream error code reaches the caller as `code` (AWS's exception names, Google's statuses).
CODED = {"vertex", "bedrock"}


@BY_TYPE
@pytest.mark.parametrize("word", list(FAULTS))
def test_upstream_errors_keep_openai_shape(proxy: Proxy, fake: FakeUpstream, kind: Type, word: str) -> None:
    response = post_json(proxy, "/v1/chat/completions",
                         {"model": kind.fault.format(word), "messages": [{"role": "user", "content": "x"}]})
    assert response.status == STATUS[kind.name, word], response.body
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["code"] or kind.name not in CODED
    assert fake.last(kind.name).model is not None  # it did reach the upstream
    if word == "fail-429":
        assert response.headers["retry-after"] == "7"


@BY_TYPE
@pytest.mark.parametrize("word", ["error-mid-stream", "cut-mid-stream"])
def test_a_stream_broken_after_content_ends_with_an_in_band_error(proxy: Proxy, kind: Type, word: str) -> None:
    """Past the commit point the status is sent: the caller gets what came, then one error event, no [DONE]."""
    response = post_json(proxy, "/v1/chat/completions", {
        "model": kind.fault.format(word), "messages": [{"role": "user", "content": "a b c"}], "stream": True})
    assert response.status == 200
    assert "[DONE]" not in response.text
    assert response.text.rstrip().split("\n\n")[-1].startswith('data: {"error"')
    events = [e.removeprefix("data: ") for e in response.text.split("\n\n") if e.strip()]
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text and f"[{kind.name}] a b c".startswith(text)
    error = json.loads(events[-1])["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
