"""``/v1/responses`` passed through to providers that speak it (DESIGN §12, §14), and legacy
``/v1/completions`` to those that declare it: the official openai SDK through the proxy to the fake
upstream's own Responses API, the body checked as the fake received it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import GATEWAY_KEY, PROVIDER_KEY, Proxy, config_text, post_json, raw_request
from tests.dialects.test_responses_e2e import WEATHER, _sse
from tests.fakes import RESPONSES_CUSTOM_INPUT, TOOL_ARGUMENTS, FakeUpstream

# A provider of another type that declares Responses (Groq serves them), and one that declares
# legacy completions (LM Studio serves them); neither does by default.
DECLARED = """\
  groq-native:
    type: groq
    base_url: "{fake}/groq/openai/v1"
    dialects: [chat, responses]
  lmstudio-native:
    type: lmstudio
    base_url: "{fake}/lmstudio/v1"
    dialects: [chat, completions]
"""
# (caller's model, flavor the fake records, path it must be called on)
NATIVE = [
    ("openai/gpt-4o", "openai", "/openai/v1/responses"),
    ("azure/gpt-4o", "azure", "/azure/openai/v1/responses"),
    ("groq-native/llama-3.3-70b-versatile", "groq", "/groq/openai/v1/responses"),
]
BY_NATIVE = pytest.mark.parametrize(("model", "flavor", "path"), NATIVE, ids=[n[1] for n in NATIVE])


@pytest.fixture
def native(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> Proxy:
    """A proxy whose config adds the two declaring providers and a route whose endpoint model differs
    from its public name."""
    extra = """\
    routes:
      house-model:
        endpoints:
          - {provider: openai, model: gpt-4o}
    """
    return make_proxy(text=config_text(fake, extra, DECLARED.format(fake=fake.base_url)))


def _metric(text: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@BY_NATIVE
def test_text_is_the_upstreams_own_response(native: Proxy, fake: FakeUpstream, model: str, flavor: str,
                                            path: str) -> None:
    raw = native.client().responses.with_raw_response.create(model=model, input="hello there", max_output_tokens=50)
    response = raw.parse()
    assert response.output_text == f"[{flavor}] hello there" and response.status == "completed"
    record = fake.last(flavor)
    assert record.path == path and record.query == {}  # Azure's v1 API: no api-version
    assert response.id in fake.responses  # the upstream's id: the Response is its own, relayed whole
    assert raw.headers["x-tensorwall-provider"] == model.split("/")[0]
    assert record.json == {"model": model.split("/", 1)[1], "input": "hello there", "max_output_tokens": 50}
    if flavor == "azure":
        assert record.header("api-key") == PROVIDER_KEY and record.header("authorization") is None
    else:
        assert record.header("authorization") == f"Bearer {PROVIDER_KEY}"
    assert raw.http_response.json() == fake.responses[response.id]["response"]


def test_every_field_reaches_the_upstream_unchanged_but_model(native: Proxy, fake: FakeUpstream) -> None:
    """Fields the gateway does not know, hosted tools, state and caching fields: all as the caller sent
    them; only `model` becomes the endpoint's."""
    body: dict[str, Any] = {
        "model": "house-model", "input": [{"type": "message", "role": "user", "content": "hi"}],
        "instructions": "Be brief.", "store": False, "include": ["reasoning.encrypted_content"],
        "tools": [{"type": "web_search"}, *WEATHER], "tool_choice": "none", "prompt_cache_key": "k1",
        "metadata": {"a": "b"}, "text": {"verbosity": "low"}, "reasoning": {"effort": "low", "summary": "auto"},
        "x_future_field": {"nested": [1, "two", None, 2.5]}, "service_tier": "flex",
    }
    response = post_json(native, "/v1/responses", body)
    assert response.status == 200, response.text
    assert fake.last("openai").json == {**body, "model": "gpt-4o"}
    assert response.json()["output"][0]["content"][0]["text"] == "[openai] hi"


def test_gateway_state_is_removed_before_sending(native: Proxy, fake: FakeUpstream) -> None:
    """A conversation from a translated provider: the gateway's packed call id goes back to the id it
    was made from, the gateway's own reasoning item is dropped, the provider's own is kept."""
    packed = "call_abc123~tw1~c3RhdGUgZnJvbSBnZW1pbmk"
    theirs = {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAB-openai-own"}
    # Reasoning state the gateway sealed for a translated provider (a forged one would be a 400).
    sealed = native.client().responses.create(model="anthropic/claude-3-7-sonnet-20250219", input="hi",
                                              reasoning={"effort": "low"}, include=["reasoning.encrypted_content"])
    token = sealed.output[0].encrypted_content
    assert token is not None and token.startswith("twr1.")
    body: dict[str, Any] = {"model": "openai/gpt-4o", "tools": WEATHER, "extra_body": {"x_keep": True}, "input": [
        {"role": "user", "content": "weather in Paris?"},
        {"type": "reasoning", "id": "rs_gw", "summary": [], "encrypted_content": token},
        theirs,
        {"type": "function_call", "call_id": packed, "name": "get_weather", "arguments": TOOL_ARGUMENTS},
        {"type": "function_call_output", "call_id": packed, "output": "sunny"},
    ]}
    response = native.client().responses.create(**body)
    assert response.output_text == "[openai] tool said: sunny"
    sent = fake.last("openai").json
    assert sent["input"] == [
        {"role": "user", "content": "weather in Paris?"}, theirs,
        {"type": "function_call", "call_id": "call_abc123", "name": "get_weather", "arguments": TOOL_ARGUMENTS},
        {"type": "function_call_output", "call_id": "call_abc123", "output": "sunny"},
    ]
    assert sent["x_keep"] is True and sent["tools"] == WEATHER


@BY_NATIVE
def test_tool_round_trip(native: Proxy, fake: FakeUpstream, model: str, flavor: str, path: str) -> None:
    client = native.client()
    first = client.responses.create(model=model, input="weather in Paris?", tools=WEATHER)
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == json.loads(TOOL_ARGUMENTS)
    second = client.responses.create(model=model, tools=WEATHER, input=[
        {"role": "user", "content": "weather in Paris?"}, call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}])
    assert second.output_text == f"[{flavor}] tool said: sunny, 21 C"
    assert fake.last(flavor).json["input"][1]["call_id"] == call.call_id


@BY_NATIVE
def test_streams_are_the_upstreams_events(native: Proxy, fake: FakeUpstream, model: str, flavor: str,
                                          path: str) -> None:
    with native.client().responses.stream(model=model, input="stream these words", tools=WEATHER,
                                          tool_choice="none") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert final.output_text == f"[{flavor}] stream these words"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert final.id == events[0].response.id and final.id in fake.responses
    assert fake.last(flavor).json["stream"] is True and fake.last(flavor).path == path
    raw = post_json(native, "/v1/responses", {"model": model, "input": "raw bytes", "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    # Byte for byte what the fake wrote: each event's `event:` line, its data as the fake encoded it.
    for event in _sse(raw.body):
        assert f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n" in raw.text


async def test_the_async_sdk_streams_tool_calls_natively(native: Proxy, fake: FakeUpstream) -> None:
    async with native.async_client() as client:
        async with client.responses.stream(model="azure/gpt-4o", input="weather?", tools=WEATHER) as stream:
            final = await stream.get_final_response()
        created = await client.responses.create(model="groq-native/llama-3.3-70b-versatile", input="async words")
    assert final.output[0].type == "function_call" and final.output[0].name == "get_weather"
    assert created.output_text == "[groq] async words"
    assert [r.path for r in fake.requests] == ["/azure/openai/v1/responses", "/groq/openai/v1/responses"]


def test_custom_and_namespaced_calls_come_back_as_the_upstream_made_them(native: Proxy) -> None:
    tools = [{"type": "custom", "name": "apply_patch", "description": "Applies a patch"}]
    response = native.client().responses.create(model="openai/gpt-4o", input="patch it", tools=tools)  # type: ignore[arg-type]
    (call,) = response.output
    assert call.type == "custom_tool_call" and call.input == RESPONSES_CUSTOM_INPUT


def test_previous_response_id_is_still_refused(native: Proxy) -> None:
    """Stored conversations are the dialect's business: unchanged by native passthrough."""
    response = post_json(native, "/v1/responses", {"model": "openai/gpt-4o", "input": "again",
                                                   "previous_response_id": "resp_0123"})
    assert response.status == 400 and response.json()["error"]["code"] == "previous_response_not_found"


def test_usage_is_counted(native: Proxy, fake: FakeUpstream) -> None:
    client = native.client()
    unary = client.responses.create(model="openai/gpt-4o", input="count these four")
    with client.responses.stream(model="openai/gpt-4o", input="and these three") as stream:
        streamed = stream.get_final_response()
    assert unary.usage is not None and streamed.usage is not None
    text = raw_request(native.url + "/metrics", method="GET").text
    expected_in = unary.usage.input_tokens + streamed.usage.input_tokens
    expected_out = unary.usage.output_tokens + streamed.usage.output_tokens
    assert _metric(text, "tensorwall_tokens_total", provider="openai", model="gpt-4o", direction="in") == expected_in
    assert _metric(text, "tensorwall_tokens_total", provider="openai", model="gpt-4o", direction="out") == expected_out


FALLBACK_ROUTE = """\
routes:
  {name}:
    strategy: priority
    endpoints:
      - {{provider: openai, model: {first}, priority: 0}}
      - {{provider: {second}, model: {model}, priority: 1}}
"""


@pytest.mark.parametrize("word", ["error-before-content", "failed-before-content", "fail-500"])
def test_a_failure_before_the_commit_point_falls_back(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                                      word: str) -> None:
    """An in-band error or a failed Response before any content is an upstream failure: the next
    endpoint serves, here a translated one (a route may mix native and translated endpoints)."""
    proxy = make_proxy(FALLBACK_ROUTE.format(name="mixed", first=word, second="ollama", model="llama3.2"))
    raw = post_json(proxy, "/v1/responses", {"model": "mixed", "input": "fall back", "stream": True})
    assert raw.status == 200 and raw.headers["x-tensorwall-provider"] == "ollama"
    events = _sse(raw.body)
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "[ollama] fall back"
    assert [r.path for r in fake.requests] == ["/openai/v1/responses", "/ollama/v1/chat/completions"]
    assert "error" not in raw.text.replace('"error":null', "")  # nothing of the failed attempt leaked


def test_a_translated_failure_falls_back_to_a_native_endpoint(make_proxy: Callable[..., Proxy],
                                                              fake: FakeUpstream) -> None:
    proxy = make_proxy("""\
    routes:
      mixed:
        strategy: priority
        endpoints:
          - {provider: ollama, model: fail-500, priority: 0}
          - {provider: openai, model: gpt-4o, priority: 1}
    """)
    response = proxy.client().responses.create(model="mixed", input="to the native one")
    assert response.output_text == "[openai] to the native one" and response.id in fake.responses
    assert [r.path for r in fake.requests] == ["/ollama/v1/chat/completions", "/openai/v1/responses"]


@pytest.mark.parametrize(("word", "status", "code"), [("error-before-content", 502, "server_error"),
                                                      ("failed-before-content", 429, "rate_limit_exceeded")])
def test_an_in_band_failure_with_nowhere_to_fall_back_is_classified(native: Proxy, word: str, status: int,
                                                                    code: str) -> None:
    response = post_json(native, "/v1/responses", {"model": f"openai/{word}", "input": "x", "stream": True})
    assert response.status == status and response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == code
    assert response.headers["x-tensorwall-provider"] == "openai"


@pytest.mark.parametrize("word", ["cut-mid-stream", "error-mid-stream"])
def test_a_stream_broken_after_the_commit_point_ends_with_response_failed(native: Proxy, word: str) -> None:
    response = post_json(native, "/v1/responses", {"model": f"groq-native/{word}", "input": "one two three",
                                                   "stream": True})
    events = _sse(response.body)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))  # the next number, no gap
    assert "response.output_text.delta" in [e["type"] for e in events]
    failed = events[-1]
    assert failed["type"] == "response.failed" and failed["response"]["status"] == "failed"
    assert failed["response"]["id"] == events[0]["response"]["id"]  # the upstream's id, from response.created
    assert failed["response"]["error"]["code"] == "server_error"
    assert failed["response"]["model"] == word  # the rest of the Response as the upstream announced it


def test_dialects_chat_turns_native_responses_off(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    proxy = make_proxy(text=config_text(fake, providers=f'  openai-chat: {{type: openai, base_url: '
                                                        f'"{fake.base_url}/openai/v1", dialects: [chat]}}\n'))
    response = proxy.client().responses.create(model="openai-chat/gpt-4o", input="translated")
    assert response.output_text == "[openai] translated"
    assert fake.last("openai").path == "/openai/v1/chat/completions"
    assert re.fullmatch(r"resp_[0-9a-f]{24}", response.id)  # the gateway's own id


def test_legacy_completions_pass_through_where_declared(native: Proxy, fake: FakeUpstream) -> None:
    client = native.client()
    completion = client.completions.create(model="lmstudio-native/qwen2.5-7b-instruct", prompt="hello there",
                                           max_tokens=40, extra_body={"min_p": 0.1})
    assert completion.object == "text_completion" and completion.choices[0].text == "[lmstudio] hello there"
    record = fake.last("lmstudio")
    assert record.path == "/lmstudio/v1/completions"
    assert record.json == {"model": "qwen2.5-7b-instruct", "prompt": "hello there", "max_tokens": 40, "min_p": 0.1}
    stream = client.completions.create(model="lmstudio-native/qwen2.5-7b-instruct", prompt="stream me", stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "[lmstudio] stream me"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert fake.last("lmstudio").json["stream_options"] == {"include_usage": True}
    # Without the declaration, the same request goes through the pivot (chat completions).
    client.completions.create(model="lmstudio/qwen2.5-7b-instruct", prompt="translated")
    assert fake.last("lmstudio").path == "/lmstudio/v1/chat/completions"


def test_a_native_stream_broken_in_legacy_completions_ends_with_an_error_event(native: Proxy) -> None:
    response = raw_request(native.url + "/v1/completions", json.dumps(
        {"model": "lmstudio-native/cut-mid-stream", "prompt": "one two three four", "stream": True}),
        {"X-API-Key": GATEWAY_KEY, "Content-Type": "application/json"})
    assert response.status == 200
    events = [block.removeprefix("data: ") for block in response.text.split("\n\n") if block]
    assert json.loads(events[0])["choices"][0]["text"]
    assert "error" in json.loads(events[-1]) and "[DONE]" not in events


def test_an_idle_timeout_past_the_commit_point_ends_with_response_failed(make_proxy: Callable[..., Proxy]) -> None:
    """The fake pauses a second after its first delta; the route's idle timeout is shorter."""
    proxy = make_proxy("""\
    routes:
      sleepy:
        timeouts: {idle: 0.3}
        endpoints:
          - {provider: azure, model: slow-stream}
    """)
    events = _sse(post_json(proxy, "/v1/responses", {"model": "sleepy", "input": "a b c", "stream": True}).body)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events][-2:] == ["response.output_text.delta", "response.failed"]
    failed = events[-1]["response"]
    assert failed["id"] == events[0]["response"]["id"] and "idle timeout" in failed["error"]["message"]
