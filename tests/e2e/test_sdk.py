"""End to end with the official openai SDK, for every provider type of the core: the user's view."""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable

import openai
import pytest

from tests.conftest import GATEWAY_KEY, PROVIDER_KEY, TOOLS, Proxy
from tests.fakes import FakeUpstream

# (model the caller sends, provider flavor expected at the fake, upstream model id expected)
BY_PREFIX = [
    ("openai/gpt-4o", "openai", "gpt-4o"),
    ("groq/llama3-70b-8192", "groq", "llama3-70b-8192"),
    ("mistral/mistral-small-latest", "mistral", "mistral-small-latest"),
    ("lmstudio/qwen2.5-7b-instruct", "lmstudio", "qwen2.5-7b-instruct"),
    ("ollama/llama3.2", "ollama", "llama3.2"),
    ("azure/gpt-4o", "azure", "gpt-4o"),
]
BY_PATTERN = [
    ("gpt-4o-mini", "openai", "gpt-4o-mini"),
    ("llama3-8b-8192", "groq", "llama3-8b-8192"),
    ("mixtral-8x7b-32768", "groq", "mixtral-8x7b-32768"),
    ("mistral-large-latest", "mistral", "mistral-large-latest"),
    ("codestral-latest", "mistral", "codestral-latest"),
    ("azure-gpt-4o", "azure", "gpt-4o"),
]
# lmstudio and ollama have no built-in pattern: a `rules:` table reaches them by pattern.
RULES = """
rules:
  - {match: "local-*", provider: ollama, strip: "local-"}
  - {match: "studio-*", provider: lmstudio, strip: "studio-"}
  - {match: "gpt-*", provider: openai}
"""
BY_RULE = [
    ("local-llama3.2", "ollama", "llama3.2"),
    ("studio-qwen2.5", "lmstudio", "qwen2.5"),
]


def _upstream_model(fake: FakeUpstream, flavor: str) -> str | None:
    record = fake.last(flavor)
    return record.deployment if flavor == "azure" else record.model


@pytest.mark.parametrize(("model", "flavor", "upstream"), BY_PATTERN)
def test_chat_non_streamed(proxy: Proxy, fake: FakeUpstream, model: str, flavor: str, upstream: str) -> None:
    client = proxy.client()
    response = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hello there"}])
    completion = response.parse()
    assert completion.choices[0].message.content == f"[{flavor}] hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert response.headers["x-tensorwall-provider"] == flavor
    assert response.headers["x-request-id"]
    assert _upstream_model(fake, flavor) == upstream


@pytest.mark.parametrize(("model", "flavor", "upstream"), BY_PATTERN)
def test_chat_streamed(proxy: Proxy, fake: FakeUpstream, model: str, flavor: str, upstream: str) -> None:
    client = proxy.client()
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "stream these words please"}], stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"[{flavor}] stream these words please"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    # The caller did not ask for usage: the usage chunk the proxy asked for is not shown.
    assert all(c.choices for c in chunks if c.usage is not None) or flavor == "mistral"
    assert not [c for c in chunks if not c.choices and c.usage is not None]
    assert _upstream_model(fake, flavor) == upstream


@pytest.mark.parametrize(("model", "flavor", "upstream"), BY_PATTERN)
def test_stream_include_usage_gives_exactly_one_usage_chunk(proxy: Proxy, model: str, flavor: str,
                                                             upstream: str) -> None:
    chunks = list(proxy.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": "count me"}], stream=True,
        stream_options={"include_usage": True}))
    usage_chunks = [c for c in chunks if not c.choices]
    usage_chunks = [c for c in usage_chunks if c.usage is not None]
    assert len(usage_chunks) == 1, flavor
    assert chunks[-1] is usage_chunks[0]
    assert usage_chunks[0].usage is not None and usage_chunks[0].usage.total_tokens > 0


@pytest.mark.parametrize(("model", "flavor", "upstream"), BY_RULE)
def test_rules_reach_local_providers(make_proxy: Callable[..., Proxy], fake: FakeUpstream, model: str,
                                     flavor: str, upstream: str) -> None:
    proxy = make_proxy(RULES)
    completion = proxy.client().chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == f"[{flavor}] hi"
    assert fake.last(flavor).model == upstream
    # rules: replaces the built-in table: claude-* no longer resolves.
    with pytest.raises(openai.NotFoundError):
        proxy.client().chat.completions.create(model="claude-3-5-sonnet", messages=[{"role": "user", "content": "x"}])


@pytest.mark.parametrize(("model", "flavor", "upstream"), BY_PREFIX)
async def test_async_client_streams(proxy: Proxy, model: str, flavor: str, upstream: str) -> None:
    client = proxy.async_client()
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "async words"}], stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == f"[{flavor}] async words"
    completion = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "one"}])
    assert completion.choices[0].message.content == f"[{flavor}] one"
    await client.close()


def test_foreign_tool_ids_reach_mistral_as_nine_alphanumerics(proxy: Proxy, fake: FakeUpstream) -> None:
    """An OpenAI-style id from an earlier turn is rewritten, the same way on the call and the result."""
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abcdefghijklmnopqrstuvwx", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_abcdefghijklmnopqrstuvwx", "content": "rainy"},
    ]
    completion = proxy.client().chat.completions.create(model="mistral/mistral-large-latest", messages=messages,  # type: ignore[arg-type]
                                                        tools=TOOLS)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == "[mistral] tool said: rainy"
    sent = fake.last("mistral").json["messages"]
    new_id = sent[1]["tool_calls"][0]["id"]
    assert len(new_id) == 9 and new_id.isalnum()
    assert sent[2]["tool_call_id"] == new_id


def test_long_tool_ids_are_shortened_for_openai(proxy: Proxy, fake: FakeUpstream) -> None:
    long_id = "toolu_" + "x" * 60
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": long_id, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": long_id, "content": "windy"},
    ]
    completion = proxy.client().chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == "[openai] tool said: windy"
    sent = fake.last("openai").json["messages"]
    assert len(sent[1]["tool_calls"][0]["id"]) <= 40
    assert sent[2]["tool_call_id"] == sent[1]["tool_calls"][0]["id"]


EMBEDDING_MODELS = [
    ("text-embedding-3-small", "openai"),
    ("openai/text-embedding-3-large", "openai"),
    ("azure/text-embedding-3-small", "azure"),
    ("mistral/mistral-embed", "mistral"),
    ("ollama/nomic-embed-text", "ollama"),
    ("lmstudio/nomic-embed-text-v1.5", "lmstudio"),
]


@pytest.mark.parametrize(("model", "flavor"), EMBEDDING_MODELS)
def test_embeddings_default_base64(proxy: Proxy, fake: FakeUpstream, model: str, flavor: str) -> None:
    """The SDK asks for base64 by default; floats-only upstreams get it packed by the proxy."""
    result = proxy.client().embeddings.create(model=model, input=["first", "second"])
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) == 8 and all(-1 <= v <= 1 for v in d.embedding) for d in result.data)
    assert result.data[0].embedding != result.data[1].embedding
    assert result.usage.prompt_tokens > 0
    assert fake.last(flavor).json["input"] == ["first", "second"]


@pytest.mark.parametrize(("model", "flavor"), EMBEDDING_MODELS)
def test_embeddings_same_vectors_in_both_encodings(proxy: Proxy, model: str, flavor: str) -> None:
    client = proxy.client()
    as_base64 = client.embeddings.with_raw_response.create(model=model, input="same text", encoding_format="base64")
    raw = as_base64.http_response.json()["data"][0]["embedding"]
    assert isinstance(raw, str)
    packed = base64.b64decode(raw)
    decoded = list(struct.unpack(f"<{len(packed) // 4}f", packed))
    floats = client.embeddings.create(model=model, input="same text", encoding_format="float").data[0].embedding
    assert decoded == pytest.approx(floats, rel=1e-6)


def test_embeddings_on_groq_is_a_clear_400(proxy: Proxy) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        proxy.client().embeddings.create(model="groq/llama3-70b-8192", input="x")
    assert "no embeddings" in str(caught.value)


def test_models_lists_routes_and_provider_models(make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy("""
routes:
  gpt-4:
    endpoints:
      - {provider: openai, model: gpt-4o, weight: 70}
      - {provider: azure-eu, model: gpt-4o, weight: 30}
""")
    models = proxy.client().models.list()
    ids = [m.id for m in models.data]
    assert ids[0] == "gpt-4" and models.data[0].owned_by == "openai"
    assert "openai/gpt-4o" in ids and "azure-eu/gpt-4o-eu" in ids


def test_sdk_sees_gateway_key_errors(proxy: Proxy) -> None:
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=PROVIDER_KEY, max_retries=0,
                           default_headers={"X-API-Key": "wrong"})
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "invalid_gateway_key"
    assert GATEWAY_KEY not in str(caught.value)
