"""``/v1/messages`` passed through natively (DESIGN §12, §14): Anthropic's API, Claude on Bedrock
(InvokeModel) and Claude on Vertex (rawPredict), with the official anthropic SDK (sync and async,
create and stream, the beta client, count_tokens) and raw requests; the betas each upstream got
under the caller's key and a server-side key; the commit point and in-band errors; the chat and
responses dialects on Vertex Claude; the recorded Claude Code request replayed natively."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import anthropic
import orjson
import pytest

from tests.conftest import GATEWAY_KEY, PROVIDER_KEY, Proxy, config_text, raw_request
from tests.dialects.test_messages_e2e import (  # _close_clients: the autouse fixture closing `client`'s SDKs
    CLAUDE_CODE,
    WEATHER,
    _close_clients,  # noqa: F401
    claude_code_turns,
    client,
    declared_only,
    sse,
    text_of,
)
from tests.dialects.test_responses_native import _metric
from tests.fakes import FakeUpstream
from tests.fakes.upstream import anthropic_signature

# (model through the gateway, the fake's flavor, the path the upstream got)
NATIVE = [
    ("anthropic/claude-3-7-sonnet-20250219", "anthropic", "/anthropic/v1/messages"),
    ("bedrock/anthropic.claude-3-7-sonnet-20250219-v1:0", "bedrock", "/invoke"),
    ("vertex/claude-sonnet-4-5@20250929", "vertex", ":rawPredict"),
]
BY_NATIVE = pytest.mark.parametrize(("model", "flavor", "path"), NATIVE, ids=[n[1] for n in NATIVE])
FAULT = {"anthropic": "anthropic/claude-{}", "bedrock": "bedrock/anthropic.claude-{}-v1:0",
         "vertex": "vertex/claude-{}"}
BETAS = "claude-code-20250219,context-management-2025-06-27,context-1m-2025-08-07,made-up-2099-01-01"
# The same three types, each with a server-side credential the gateway holds.
SERVER_SIDE = """\
  ops-anthropic:
    type: anthropic
    base_url: "{fake}/anthropic/v1"
    api_key: server-side-anthropic-key
    models: ["*"]
  ops-bedrock:
    type: bedrock
    base_url: "{fake}/bedrock"
    api_key: server-side-bedrock-key
    models: ["*"]
  ops-vertex:
    type: vertex
    project: test-proj
    base_url: "{fake}/vertex"
    api_key: server-side-vertex-token
    models: ["*"]
"""
def post(proxy: Proxy, path: str, body: Any, **headers: str) -> Any:
    sent = {"Content-Type": "application/json", "Authorization": f"Bearer {PROVIDER_KEY}", "X-API-Key": GATEWAY_KEY,
            "anthropic-version": "2023-06-01", **{k.replace("_", "-"): v for k, v in headers.items()}}
    return raw_request(proxy.url + path, json.dumps(body), sent)


def upstream_body(flavor: str, sent: Any) -> dict[str, Any]:
    """The Messages body an upstream received, out of its envelope."""
    return dict(sent.json)


def upstream_betas(flavor: str, sent: Any) -> list[str]:
    """The betas an upstream received: Bedrock's in the body, the others' in the header."""
    if flavor == "bedrock":
        return list(sent.json.get("anthropic_beta") or [])
    return [b for b in (sent.header("anthropic-beta") or "").split(",") if b]


def metric(proxy: Proxy, name: str, **labels: str) -> float:
    return _metric(raw_request(proxy.url + "/metrics", method="GET").text, name, **labels)


# --- the body, the answer, the stream -----------------------------------------------------------------


@BY_NATIVE
def test_text_is_the_providers_own_message(proxy: Proxy, fake: FakeUpstream, model: str, flavor: str,
                                           path: str) -> None:
    raw = client(proxy).messages.with_raw_response.create(
        model=model, max_tokens=100, system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "hello", "cache_control": {"type": "ephemeral"}}]}])
    message = raw.parse()
    assert text_of(message) == f"[{flavor}] hello"
    sent = fake.last(flavor)
    assert sent.path.endswith(path)
    body = upstream_body(flavor, sent)
    # cache_control kept where the caller put it: no marker dropped, none counted.
    assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert body["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert metric(proxy, "tensorwall_cache_markers_dropped_total", provider=flavor) == 0
    if flavor == "anthropic":
        assert body["model"] == "claude-3-7-sonnet-20250219"
        assert raw.http_response.json() == orjson.loads(raw.http_response.content)
        assert message.id.startswith("msg_")
    elif flavor == "bedrock":
        assert body["anthropic_version"] == "bedrock-2023-05-31" and "model" not in body and "stream" not in body
        assert message.id.startswith("msg_bdrk_")
    else:
        assert body["anthropic_version"] == "vertex-2023-10-16" and "model" not in body
        assert sent.path_model == "claude-sonnet-4-5@20250929" and "/publishers/anthropic/" in sent.path
    assert raw.headers["request-id"] == raw.headers["x-request-id"]


def test_every_field_reaches_anthropic_unchanged_but_model(proxy: Proxy, fake: FakeUpstream) -> None:
    body = {"model": "anthropic/claude-3-7-sonnet-20250219", "max_tokens": 50, "metadata": {"user_id": "u-1"},
            "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
            "messages": [{"role": "user", "content": "fields"}]}
    response = post(proxy, "/v1/messages?beta=true", body, anthropic_version="2099-01-01",
                    anthropic_beta="context-management-2025-06-27")
    assert response.status == 200, response.body
    sent = fake.last("anthropic")
    assert sent.json == {**body, "model": "claude-3-7-sonnet-20250219"}
    assert sent.query == {"beta": "true"} and sent.header("anthropic-version") == "2099-01-01"
    assert sent.header("anthropic-beta") == "context-management-2025-06-27"
    assert PROVIDER_KEY in (sent.header("x-api-key") or "") and GATEWAY_KEY not in str(dict(sent.headers))


def test_gateway_state_is_removed_before_sending(proxy: Proxy, fake: FakeUpstream) -> None:
    """A conversation that went through a translated provider before: its packed tool ids go back to
    their own, and the thinking the gateway made (no signature) is dropped, never forwarded."""
    first = client(proxy).messages.create(model="openai/gpt-4o", max_tokens=100, tools=WEATHER,
                                          messages=[{"role": "user", "content": "weather?"}])
    call = first.content[-1]
    assert call.type == "tool_use"
    packed = call.id + "~tw1~" + base64.urlsafe_b64encode(b"state").rstrip(b"=").decode()
    client(proxy).messages.create(model="anthropic/claude-3-7-sonnet-20250219", max_tokens=100, tools=WEATHER,
                                  messages=[{"role": "user", "content": "weather?"},
                                            {"role": "assistant", "content": [
                                                {"type": "thinking", "thinking": "made here", "signature": ""},
                                                {"type": "tool_use", "id": packed, "name": call.name,
                                                 "input": call.input}]},
                                            {"role": "user", "content": [
                                                {"type": "tool_result", "tool_use_id": packed, "content": "sunny"}]}])
    sent = fake.last("anthropic").json["messages"]
    assert [b["type"] for b in sent[1]["content"]] == ["tool_use"]
    assert sent[1]["content"][0]["id"] == call.id and sent[2]["content"][0]["tool_use_id"] == call.id


@BY_NATIVE
def test_tool_round_trip_with_signed_thinking_over_two_turns(proxy: Proxy, fake: FakeUpstream, model: str,
                                                             flavor: str, path: str) -> None:
    sdk = client(proxy)
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    question = {"role": "user", "content": "weather in Paris?"}
    first = sdk.messages.create(model=model, max_tokens=4096, thinking=thinking, tools=WEATHER, messages=[question])
    assert [b.type for b in first.content] == ["thinking", "text", "tool_use"]
    assert first.content[0].signature == anthropic_signature(first.content[0].thinking)
    assert first.stop_reason == "tool_use"
    second = sdk.messages.create(model=model, max_tokens=4096, thinking=thinking, tools=WEATHER, messages=[
        question, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": first.content[-1].id, "content": "sunny"}]}])
    assert text_of(second) == f"[{flavor}] tool said: sunny"
    assert upstream_body(flavor, fake.last(flavor))["messages"][1]["content"][0]["signature"] == \
        first.content[0].signature


@BY_NATIVE
def test_streams_are_the_providers_events(proxy: Proxy, fake: FakeUpstream, model: str, flavor: str,
                                          path: str) -> None:
    with client(proxy).messages.stream(model=model, max_tokens=4096, tools=WEATHER,
                                       thinking={"type": "enabled", "budget_tokens": 1024},
                                       messages=[{"role": "user", "content": "stream it"}]) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
    assert final.content[0].signature and final.content[-1].input == {"location": "Paris"}
    response = post(proxy, "/v1/messages", {"model": model, "max_tokens": 100, "stream": True,
                                            "messages": [{"role": "user", "content": "raw stream"}]})
    assert response.status == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse(response.body)
    text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    assert text == f"[{flavor}] raw stream" and events[-1]["type"] == "message_stop"
    assert fake.last(flavor).path.endswith({"anthropic": "/messages", "bedrock": "/invoke-with-response-stream",
                                            "vertex": ":streamRawPredict"}[flavor])


async def test_the_async_sdk_natively(proxy: Proxy) -> None:
    async with anthropic.AsyncAnthropic(base_url=proxy.url, api_key=PROVIDER_KEY, max_retries=0,
                                        default_headers={"X-API-Key": GATEWAY_KEY}) as sdk:
        for model, flavor, _ in NATIVE:
            created = await sdk.messages.create(model=model, max_tokens=50,
                                                messages=[{"role": "user", "content": "async words"}])
            assert text_of(created) == f"[{flavor}] async words"
            async with sdk.messages.stream(model=model, max_tokens=50, tools=WEATHER,
                                           messages=[{"role": "user", "content": "async tool"}]) as stream:
                final = await stream.get_final_message()
            assert final.content[-1].type == "tool_use"


def test_usage_is_counted_from_the_providers_events(proxy: Proxy) -> None:
    for model, _, _ in NATIVE:
        response = post(proxy, "/v1/messages", {"model": model, "max_tokens": 100, "stream": True,
                                                "messages": [{"role": "user", "content": "count me"}]})
        events = sse(response.body)
        assert events[0]["message"]["usage"]["input_tokens"] > 0
    for flavor in ("anthropic", "bedrock", "vertex"):
        assert metric(proxy, "tensorwall_tokens_total", provider=flavor, direction="out") > 0


# --- betas ----------------------------------------------------------------------------------------------


@pytest.fixture
def server_side(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> Proxy:
    return make_proxy(text=config_text(fake, providers=SERVER_SIDE.format(fake=fake.base_url)))


@BY_NATIVE
def test_betas_under_the_callers_key(proxy: Proxy, fake: FakeUpstream, model: str, flavor: str, path: str) -> None:
    """The caller pays: every beta reaches Anthropic; Bedrock and Vertex get those their table knows."""
    response = post(proxy, "/v1/messages", {"model": model, "max_tokens": 50,
                                            "messages": [{"role": "user", "content": "betas"}]}, anthropic_beta=BETAS)
    assert response.status == 200, response.body
    expected = {"anthropic": BETAS.split(","), "bedrock": ["context-management-2025-06-27", "context-1m-2025-08-07"],
                "vertex": ["context-management-2025-06-27", "context-1m-2025-08-07"]}[flavor]
    assert upstream_betas(flavor, fake.last(flavor)) == expected
    if flavor != "anthropic":
        assert metric(proxy, "tensorwall_betas_stripped_total", provider=flavor, beta="claude-code") == 1
        assert metric(proxy, "tensorwall_betas_stripped_total", provider=flavor, beta="other") == 1


@pytest.mark.parametrize("flavor", ["anthropic", "bedrock", "vertex"])
def test_betas_under_a_server_side_key(server_side: Proxy, fake: FakeUpstream, flavor: str) -> None:
    """The operator pays: only the provider's `betas:` (default: the behavioural ones) pass, never a
    billed one such as context-1m; each stripped one is counted, by family."""
    model = {"anthropic": "claude-3-7-sonnet-20250219", "bedrock": "anthropic.claude-3-7-sonnet-20250219-v1:0",
             "vertex": "claude-sonnet-4-5@20250929"}[flavor]
    response = post(server_side, "/v1/messages", {"model": f"ops-{flavor}/{model}", "max_tokens": 50,
                                                  "messages": [{"role": "user", "content": "betas"}]},
                    anthropic_beta=BETAS)
    assert response.status == 200, response.body
    sent = fake.last(flavor)
    expected = {"anthropic": ["claude-code-20250219", "context-management-2025-06-27"],
                "bedrock": ["context-management-2025-06-27"], "vertex": ["context-management-2025-06-27"]}[flavor]
    assert upstream_betas(flavor, sent) == expected
    assert PROVIDER_KEY not in str(dict(sent.headers))
    provider = f"ops-{flavor}"
    assert metric(server_side, "tensorwall_betas_stripped_total", provider=provider, beta="context-1m") == 1
    assert metric(server_side, "tensorwall_betas_stripped_total", provider=provider, beta="other") == 1


def test_a_stripped_beta_with_its_field_is_refused(server_side: Proxy, fake: FakeUpstream) -> None:
    fake.clear()
    body = {"model": "ops-bedrock/anthropic.claude-3-7-sonnet-20250219-v1:0", "max_tokens": 50,
            "mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "x"}],
            "messages": [{"role": "user", "content": "half paired"}]}
    response = post(server_side, "/v1/messages", body, anthropic_beta="mcp-client-2025-04-04")
    assert response.status == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "mcp_servers" in error["message"] and "mcp-client-2025-04-04" in error["message"]
    assert fake.requests == []


def test_an_unknown_beta_never_reaches_bedrock_or_vertex(proxy: Proxy, fake: FakeUpstream) -> None:
    """Bedrock and Vertex refuse a request with a beta they do not know; the fake does as they do."""
    for model in ("bedrock/anthropic.claude-3-7-sonnet-20250219-v1:0", "vertex/claude-sonnet-4-5@20250929"):
        response = post(proxy, "/v1/messages", {"model": model, "max_tokens": 50,
                                                "messages": [{"role": "user", "content": "x"}]},
                        anthropic_beta="prompt-caching-scope-2026-01-05,interleaved-thinking-2025-05-14")
        assert response.status == 200, response.body


# --- the commit point, in-band errors ----------------------------------------------------------------------


ROUTE = """\
routes:
  claude:
    strategy: priority
    endpoints:
      - {{provider: {flavor}, model: {model}, priority: 0}}
      - {{provider: {flavor}, model: "{good}", priority: 1}}
"""


@pytest.mark.parametrize("flavor", ["anthropic", "bedrock", "vertex"])
def test_an_in_band_error_before_the_commit_point_falls_back(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                                             flavor: str) -> None:
    model = FAULT[flavor].format("error-before-content").split("/", 1)[1]
    good = next(m for m, f, _ in NATIVE if f == flavor).split("/", 1)[1]
    proxy = make_proxy(ROUTE.format(flavor=flavor, model=model, good=good))
    response = post(proxy, "/v1/messages", {"model": "claude", "max_tokens": 50, "stream": True,
                                            "messages": [{"role": "user", "content": "fall back"}]})
    assert response.status == 200
    events = sse(response.body)
    text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    assert text == f"[{flavor}] fall back" and response.headers["x-tensorwall-provider"] == flavor
    assert [e["type"] for e in events].count("message_start") == 1
    assert [r.path_model or r.model for r in fake.for_flavor(flavor)] == [model, good]


@pytest.mark.parametrize("flavor", ["anthropic", "bedrock", "vertex"])
@pytest.mark.parametrize("word", ["error-mid-stream", "cut-mid-stream"])
def test_a_stream_broken_after_the_commit_point_ends_with_one_error_event(proxy: Proxy, flavor: str,
                                                                          word: str) -> None:
    response = post(proxy, "/v1/messages", {"model": FAULT[flavor].format(word), "max_tokens": 100, "stream": True,
                                            "messages": [{"role": "user", "content": "one two three four"}]})
    assert response.status == 200
    events = sse(response.body)
    kinds = [e["type"] for e in events]
    assert kinds.count("error") == 1 and kinds[-1] == "error" and "message_stop" not in kinds
    assert any(e["type"] == "content_block_delta" for e in events)
    with pytest.raises(anthropic.APIStatusError), client(proxy).messages.stream(
            model=FAULT[flavor].format(word), max_tokens=100,
            messages=[{"role": "user", "content": "one two three four"}]) as stream:
        stream.get_final_message()


@pytest.mark.parametrize(("word", "status"), [("fail-429", 429), ("fail-500", 502)])
def test_upstream_errors_in_anthropic_shape(proxy: Proxy, word: str, status: int) -> None:
    for flavor in ("anthropic", "bedrock", "vertex"):
        response = post(proxy, "/v1/messages", {"model": FAULT[flavor].format(word), "max_tokens": 50,
                                                "messages": [{"role": "user", "content": "x"}]})
        assert response.status == status, (flavor, response.body)
        assert response.json()["type"] == "error"


# --- count_tokens --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "flavor", "path"), [
    ("anthropic/claude-3-7-sonnet-20250219", "anthropic", "/anthropic/v1/messages/count_tokens"),
    ("bedrock/us.anthropic.claude-3-7-sonnet-20250219-v1:0", "bedrock", "/count-tokens"),
    ("vertex/claude-sonnet-4-5@20250929", "vertex", "/count-tokens:rawPredict"),
    ("vertex/gemini-2.5-flash", "vertex", "/gemini-2.5-flash:countTokens"),
])
def test_count_tokens_by_the_providers_own_counter(proxy: Proxy, fake: FakeUpstream, model: str, flavor: str,
                                                   path: str) -> None:
    raw = client(proxy).messages.with_raw_response.count_tokens(
        model=model, system="Be brief.", messages=[{"role": "user", "content": "count these five words"}])
    assert raw.parse().input_tokens == 2 + 4
    assert "x-tensorwall-estimate" not in raw.headers
    sent = fake.last(flavor)
    assert sent.path.endswith(path)
    if flavor == "bedrock":
        assert sent.path_model == "us.anthropic.claude-3-7-sonnet-20250219-v1:0"
    counted = client(proxy).beta.messages.count_tokens(model=model, messages=[{"role": "user", "content": "a b"}])
    assert counted.input_tokens == 2


def test_count_tokens_is_estimated_where_the_provider_has_no_counter(proxy: Proxy, fake: FakeUpstream) -> None:
    raw = client(proxy).messages.with_raw_response.count_tokens(
        model="openai/gpt-4o", messages=[{"role": "user", "content": "12345678"}])
    assert raw.parse().input_tokens == 2 and raw.headers["x-tensorwall-estimate"] == "true"
    assert fake.requests == []


# --- chat and responses on Vertex Claude ---------------------------------------------------------------


def test_chat_and_responses_on_vertex_claude(proxy: Proxy, fake: FakeUpstream) -> None:
    """Vertex serves Claude on every door: the Anthropic translator, in Vertex's envelope."""
    openai = proxy.client()
    chat = openai.chat.completions.create(model="vertex/claude-sonnet-4-5@20250929",
                                          messages=[{"role": "user", "content": "chat words"}])
    assert chat.choices[0].message.content == "[vertex] chat words"
    sent = fake.last("vertex")
    assert sent.path.endswith(":rawPredict") and sent.json["anthropic_version"] == "vertex-2023-10-16"
    with openai.chat.completions.create(model="vertex/claude-sonnet-4-5@20250929", stream=True,
                                        messages=[{"role": "user", "content": "streamed chat"}]) as stream:
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "[vertex] streamed chat" and fake.last("vertex").path.endswith(":streamRawPredict")
    tool = openai.chat.completions.create(
        model="vertex/claude-sonnet-4-5@20250929", messages=[{"role": "user", "content": "weather?"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER[0]["input_schema"]}}])
    assert tool.choices[0].finish_reason == "tool_calls"
    response = openai.responses.create(model="vertex/claude-sonnet-4-5@20250929", input="responses words")
    assert response.output_text == "[vertex] responses words"
    # Gemini on the same provider is still Gemini's API.
    gemini = openai.chat.completions.create(model="vertex/gemini-2.5-flash",
                                            messages=[{"role": "user", "content": "gemini words"}])
    assert gemini.choices[0].message.content == "[vertex] gemini words"
    assert fake.last("vertex").path.endswith(":generateContent")


# --- Claude Code, replayed natively ------------------------------------------------------------------


@BY_NATIVE
def test_the_recorded_claude_code_request_natively(proxy: Proxy, fake: FakeUpstream, model: str, flavor: str,
                                                   path: str) -> None:
    for headers, body in claude_code_turns(model, signed=True):
        response = raw_request(proxy.url + CLAUDE_CODE["path"], json.dumps(body), headers)
        assert response.status == 200, response.body[:500]
        events = sse(response.body)
        assert events[-1]["type"] == "message_stop"
    text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    assert text == f"[{flavor}] tool said: a.txt\nb.txt"
    sent = upstream_body(flavor, fake.last(flavor))
    recorded = {k: v for k, v in CLAUDE_CODE["body"].items() if k not in ("model", "stream")}
    # Everything Claude Code sent reached the provider as it was: system blocks, tools, context_management.
    assert {k: sent[k] for k in recorded} == recorded
    declared_only(anthropic.types.Message.model_validate({**events[0]["message"], "content": []}))


@BY_NATIVE
def test_the_beta_client_natively(proxy: Proxy, fake: FakeUpstream, model: str, flavor: str, path: str) -> None:
    sdk = client(proxy)
    message = sdk.beta.messages.create(model=model, max_tokens=50, betas=["context-management-2025-06-27"],
                                       context_management={"edits": [{"type": "clear_thinking_20251015",
                                                                      "keep": "all"}]},
                                       messages=[{"role": "user", "content": "beta words"}])
    assert text_of(message) == f"[{flavor}] beta words"
    sent = fake.last(flavor)
    assert upstream_betas(flavor, sent) == ["context-management-2025-06-27"]
    assert upstream_body(flavor, sent)["context_management"] == {"edits": [{"type": "clear_thinking_20251015",
                                                                            "keep": "all"}]}
    with sdk.beta.messages.stream(model=model, max_tokens=50, betas=["context-management-2025-06-27"],
                                  messages=[{"role": "user", "content": "beta stream"}]) as stream:
        assert text_of(stream.get_final_message()) == f"[{flavor}] beta stream"
