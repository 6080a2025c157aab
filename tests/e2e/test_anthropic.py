"""Anthropic behind the proxy, as an OpenAI SDK user sees it, against the fake's Messages API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.conftest import GATEWAY_KEY, PNG, PROVIDER_KEY, TOOLS, Proxy, post_json
from tests.fakes import FakeUpstream

MODEL = "claude-3-5-sonnet-20241022"


@pytest.fixture
def claude(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> Proxy:
    return make_proxy()


@pytest.mark.parametrize("model", [MODEL, "anthropic/claude-3-haiku-20240307"])
def test_chat_by_pattern_and_prefix(claude: Proxy, fake: FakeUpstream, model: str) -> None:
    response = claude.client().chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}])
    completion = response.parse()
    assert completion.choices[0].message.content == "[anthropic] hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert response.headers["x-tensorwall-provider"] == "anthropic"
    record = fake.last("anthropic")
    assert record.path == "/anthropic/v1/messages"
    assert record.header("x-api-key") == PROVIDER_KEY
    assert record.header("anthropic-version") == "2023-06-01"
    assert record.header("Authorization") is None and record.header("X-API-Key") != GATEWAY_KEY
    assert record.json["system"] == [{"type": "text", "text": "Be brief."}]
    assert record.json["max_tokens"] == 4096


def test_system_prompt_reaches_anthropic(claude: Proxy) -> None:
    completion = claude.client().chat.completions.create(
        model=MODEL, messages=[{"role": "developer", "content": "shout"}, {"role": "user", "content": "quiet words"}])
    assert completion.choices[0].message.content == "[ANTHROPIC] QUIET WORDS"


def test_image_message(claude: Proxy, fake: FakeUpstream) -> None:
    completion = claude.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is"}, {"type": "image_url", "image_url": {"url": PNG}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    assert completion.choices[0].message.content == "[anthropic] what is <image> <image>"
    blocks = fake.last("anthropic").json["messages"][0]["content"]
    assert blocks[1]["source"]["type"] == "base64" and blocks[1]["source"]["media_type"] == "image/png"
    assert blocks[2]["source"] == {"type": "url", "url": "https://example.com/cat.png"}


def test_two_turn_tool_conversation(claude: Proxy, fake: FakeUpstream) -> None:
    client = claude.client()
    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.function.arguments == '{"location":"Paris"}'
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"})
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == "[anthropic] tool said: sunny, 21 C"
    sent = fake.last("anthropic").json["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[2]["content"][0] == {"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"}


@pytest.mark.parametrize("stream", [False, True])
def test_three_turn_tool_conversation_with_reasoning(claude: Proxy, fake: FakeUpstream, stream: bool) -> None:
    """Thinking rides in the tool call id: the fake refuses the second turn unless the signed block is back."""
    client = claude.client()
    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]

    def ask() -> tuple[str | None, list[Any], str | None]:
        if not stream:
            result = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS,
                                                    reasoning_effort="low")
            message = result.choices[0].message
            reasoning = getattr(message, "reasoning_content", None)
            return message.content, [c.model_dump() for c in message.tool_calls or []], reasoning
        with client.chat.completions.stream(model=MODEL, messages=messages, tools=TOOLS,
                                            reasoning_effort="low") as events:
            reasoning_parts = [getattr(e.chunk.choices[0].delta, "reasoning_content", None) or ""
                               for e in events if e.type == "chunk" and e.chunk.choices]
            final = events.get_final_completion().choices[0].message
        return final.content, [c.model_dump() for c in final.tool_calls or []], "".join(reasoning_parts)

    content, calls, reasoning = ask()
    assert calls and reasoning and reasoning.startswith("Thinking about")
    assert fake.last("anthropic").json["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    messages.append({"role": "assistant", "content": content, "tool_calls": [
        {"id": c["id"], "type": "function", "function": {"name": c["function"]["name"],
                                                         "arguments": c["function"]["arguments"]}} for c in calls]})
    messages.append({"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"})
    content, calls, _ = ask()
    assert content is not None and content.endswith("tool said: sunny")
    sent = fake.last("anthropic").json
    assert sent["thinking"]["type"] == "enabled"
    assert sent["messages"][1]["content"][0]["type"] == "thinking"
    assert sent["messages"][1]["content"][-1]["id"].startswith("toolu_")
    messages.append({"role": "assistant", "content": content})
    messages.append({"role": "user", "content": "and tomorrow?"})
    third = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice="none",
                                           reasoning_effort="low")
    assert third.choices[0].message.content == "[anthropic] and tomorrow?"
    assert fake.last("anthropic").json["thinking"]["type"] == "enabled"  # the last turn has no tool use


def test_error_before_content_falls_back(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    proxy = make_proxy("""
routes:
  claude-ha:
    strategy: priority
    endpoints:
      - {provider: anthropic, model: claude-error-before-content, priority: 0}
      - {provider: anthropic, model: claude-3-haiku, priority: 1}
""")
    chunks = list(proxy.client().chat.completions.create(
        model="claude-ha", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "[anthropic] hi"
    assert [r.model for r in fake.for_flavor("anthropic")] == ["claude-error-before-content", "claude-3-haiku"]


def test_error_mid_stream_is_in_band(claude: Proxy) -> None:
    response = post_json(claude, "/v1/chat/completions",
                         {"model": "claude-error-mid-stream", "messages": [{"role": "user", "content": "a b c"}],
                          "stream": True})
    assert response.status == 200
    last = response.text.rstrip().split("\n\n")[-1]
    assert last.startswith('data: {"error"') and "Overloaded" in last
    assert "[DONE]" not in response.text


def test_anthropic_overload_529_is_a_503_in_openai_shape(claude: Proxy) -> None:
    """Anthropic's own status; the faults every type shares: tests/e2e/test_conformance.py."""
    response = post_json(claude, "/v1/chat/completions",
                         {"model": "claude-fail-529", "messages": [{"role": "user", "content": "x"}]})
    assert response.status == 503
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]


def test_anthropic_beta_header_is_passed_on(claude: Proxy, fake: FakeUpstream) -> None:
    response = post_json(claude, "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
                         **{"anthropic-beta": "output-128k-2025-02-19"})
    assert response.status == 200
    assert fake.last("anthropic").header("anthropic-beta") == "output-128k-2025-02-19"


def test_embeddings_on_anthropic_are_a_clear_400(claude: Proxy) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        claude.client().embeddings.create(model=MODEL, input="x")
    assert "no embeddings" in str(caught.value)


def test_json_schema_output(claude: Proxy, fake: FakeUpstream) -> None:
    completion = claude.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "name it"}],
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {
            "type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
            "additionalProperties": False}}})
    assert completion.choices[0].message.content == '{"answer":"[anthropic] name it"}' \
        or completion.choices[0].message.content == '{"answer": "[anthropic] name it"}'
    assert fake.last("anthropic").json["output_config"]["format"]["type"] == "json_schema"
