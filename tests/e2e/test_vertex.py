"""Vertex AI (Gemini) behind the proxy, as an OpenAI SDK user sees it, against the fake's Gemini API."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import PNG, PROVIDER_KEY, Proxy, config_text, post_json
from tests.fakes import FakeUpstream, embedding_vector

MODEL = "gemini-2.5-flash"
TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "additionalProperties": False,
                   "properties": {"location": {"type": "string"}}, "required": ["location"]}}}]


@pytest.fixture
def gemini(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> Proxy:
    return make_proxy()


@pytest.mark.parametrize("model", [MODEL, "vertex/gemini-2.0-flash"])
def test_chat_by_pattern_and_prefix(gemini: Proxy, fake: FakeUpstream, model: str) -> None:
    response = gemini.client().chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}])
    completion = response.parse()
    assert completion.choices[0].message.content == "[vertex] hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert response.headers["x-tensorwall-provider"] == "vertex"
    record = fake.last("vertex")
    upstream_model = model.removeprefix("vertex/")
    assert record.path == (f"/vertex/v1/projects/test-proj/locations/us-central1/publishers/google/models/"
                           f"{upstream_model}:generateContent")
    assert record.header("Authorization") == f"Bearer {PROVIDER_KEY}"  # the caller's token, forwarded
    assert record.json["systemInstruction"] == {"parts": [{"text": "Be brief."}]}


def test_system_instruction_reaches_gemini(gemini: Proxy) -> None:
    completion = gemini.client().chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "shout"}, {"role": "user", "content": "quiet"}])
    assert completion.choices[0].message.content == "[VERTEX] QUIET"


def test_n_2_gives_two_choices(gemini: Proxy) -> None:
    completion = gemini.client().chat.completions.create(model=MODEL, n=2,
                                                         messages=[{"role": "user", "content": "pick"}])
    assert [c.index for c in completion.choices] == [0, 1]
    assert completion.choices[0].message.content != completion.choices[1].message.content


def test_json_schema_output(gemini: Proxy, fake: FakeUpstream) -> None:
    completion = gemini.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "name it"}],
        response_format={"type": "json_schema", "json_schema": {"name": "a", "strict": True, "schema": {
            "type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
            "additionalProperties": False}}})
    assert json.loads(completion.choices[0].message.content or "") == {"answer": "[vertex] name it"}
    config = fake.last("vertex").json["generationConfig"]
    assert config["responseMimeType"] == "application/json" and "additionalProperties" not in config["responseSchema"]


def test_image_input(gemini: Proxy, fake: FakeUpstream) -> None:
    completion = gemini.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is"}, {"type": "image_url", "image_url": {"url": PNG}},
        {"type": "image_url", "image_url": {"url": "gs://bucket/cat.png"}}]}])
    assert completion.choices[0].message.content == "[vertex] what is <image> <file>"
    parts = fake.last("vertex").json["contents"][0]["parts"]
    assert parts[1]["inlineData"]["mimeType"] == "image/png"
    assert parts[2]["fileData"] == {"mimeType": "image/png", "fileUri": "gs://bucket/cat.png"}


@pytest.mark.parametrize("stream", [False, True])
def test_tool_round_trip_with_a_thought_signature(gemini: Proxy, fake: FakeUpstream, stream: bool) -> None:
    """Gemini 3 refuses the second turn unless the signature comes back on the functionCall part."""
    client = gemini.client()
    model = "gemini-3-pro-preview"
    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    if stream:
        with client.chat.completions.stream(model=model, messages=messages, tools=TOOLS) as events:
            for _ in events:
                pass
            first = events.get_final_completion()
    else:
        first = client.chat.completions.create(model=model, messages=messages, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"location": "Paris"}
    assert "~tw1~" in call.id  # the signature travels inside the id
    messages.append({"role": "assistant", "content": None, "tool_calls": [call.model_dump()]})
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny"})
    second = client.chat.completions.create(model=model, messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == "[vertex] tool said: sunny"
    parts = fake.last("vertex").json["contents"][1]["parts"]
    assert parts[0]["thoughtSignature"] and parts[0]["functionCall"]["name"] == "get_weather"
    declared = fake.last("vertex").json["tools"][0]["functionDeclarations"][0]["parameters"]
    assert "additionalProperties" not in declared  # reduced to what Gemini accepts


def test_a_lost_signature_is_gemini_3s_400(gemini: Proxy) -> None:
    messages: list[Any] = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_from_elsewhere", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_from_elsewhere", "content": "sunny"}]
    with pytest.raises(openai.BadRequestError) as caught:
        gemini.client().chat.completions.create(model="gemini-3-pro-preview", messages=messages, tools=TOOLS)
    assert "thought_signature" in str(caught.value)


def test_embeddings_batch_over_250_inputs_in_order(gemini: Proxy, fake: FakeUpstream) -> None:
    texts = [f"passage number {i}" for i in range(600)]
    result = gemini.client().embeddings.create(model="vertex/text-embedding-005", input=texts)
    assert [d.index for d in result.data] == list(range(600))
    for i in (0, 249, 250, 599):
        assert result.data[i].embedding == pytest.approx(embedding_vector(texts[i]), rel=1e-6)
    calls = fake.for_flavor("vertex")
    assert [len(r.json["instances"]) for r in calls] == [250, 250, 100] or sorted(
        len(r.json["instances"]) for r in calls) == [100, 250, 250]
    assert all(r.path.endswith(":predict") for r in calls)
    assert result.usage.prompt_tokens > 0


def test_gemini_embeddings_fan_out_one_input_per_call(gemini: Proxy, fake: FakeUpstream) -> None:
    result = gemini.client().embeddings.create(model="vertex/gemini-embedding-001", input=["a", "b", "c"],
                                               encoding_format="float")
    assert [d.embedding for d in result.data] == [pytest.approx(embedding_vector(t), rel=1e-6) for t in "abc"]
    assert len(fake.for_flavor("vertex")) == 3


def test_google_permission_denied_403_keeps_openai_shape(gemini: Proxy) -> None:
    """Google's own status; the faults every type shares: tests/e2e/test_conformance.py."""
    response = post_json(gemini, "/v1/chat/completions",
                         {"model": "gemini-fail-403", "messages": [{"role": "user", "content": "x"}]})
    assert response.status == 403
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]


def test_a_blocked_prompt_is_content_filter(gemini: Proxy) -> None:
    completion = gemini.client().chat.completions.create(model="gemini-blocked",
                                                         messages=[{"role": "user", "content": "x"}])
    assert completion.choices[0].finish_reason == "content_filter"


def test_unavailable_falls_back(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    proxy = make_proxy("""
routes:
  gemini-ha:
    strategy: priority
    endpoints:
      - {provider: vertex, model: gemini-fail-503, priority: 0}
      - {provider: vertex, model: gemini-2.5-flash, priority: 1}
""")
    chunks = list(proxy.client().chat.completions.create(
        model="gemini-ha", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "[vertex] hi"


# --- ambient credentials: a service account against the fake's OAuth endpoint ------------------


@pytest.fixture
def service_account(fake: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = fake.write_service_account(tmp_path / "sa.json")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # never probe a metadata server from a test
    lifetime = fake.token_lifetime
    yield path
    fake.token_lifetime = lifetime


@pytest.fixture
def ambient(make_proxy: Callable[..., Proxy], fake: FakeUpstream, service_account: Path) -> Proxy:
    # No project in the YAML: it comes from the service account's project_id.
    return make_proxy(text=config_text(
        fake, providers=f'  vertex-sa: {{type: vertex, auth: ambient, base_url: "{fake.base_url}/vertex",'
                        f' models: ["gemini-*"]}}\n'))


def test_ambient_mints_forwards_and_caches_a_token(ambient: Proxy, fake: FakeUpstream) -> None:
    client = ambient.client(api_key="sk-openai-sdk-placeholder")
    for _ in range(3):
        completion = client.chat.completions.create(model="vertex-sa/gemini-2.5-flash",
                                                    messages=[{"role": "user", "content": "hi"}])
        assert completion.choices[0].message.content == "[vertex] hi"
    assert len(fake.token_requests) == 1  # minted once, then cached
    records = fake.for_flavor("vertex")
    assert {r.header("Authorization") for r in records} == {f"Bearer {fake.issued_tokens[-1]}"}
    assert all("/projects/fake-project/" in r.path for r in records)  # the project from the credentials
    assert "sk-openai-sdk-placeholder" not in json.dumps([dict(r.headers) for r in records])


@pytest.mark.slow
def test_an_expired_token_is_refreshed_once_under_concurrency(ambient: Proxy, fake: FakeUpstream) -> None:
    fake.token_lifetime = 1
    client = ambient.client()
    client.chat.completions.create(model="vertex-sa/gemini-2.5-flash", messages=[{"role": "user", "content": "a"}])
    assert len(fake.token_requests) == 1
    time.sleep(1.1)  # the one-second token is now expired
    fake.token_lifetime = 3600

    def ask(i: int) -> str | None:
        return client.chat.completions.create(model="vertex-sa/gemini-2.5-flash",
                                              messages=[{"role": "user", "content": f"q{i}"}]).choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert answers == [f"[vertex] q{i}" for i in range(8)]
    assert len(fake.token_requests) == 2  # exactly one refresh for all eight


def test_ambient_without_credentials_is_a_clear_503(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    proxy = make_proxy(text=config_text(
        fake, providers=f'  vertex-sa: {{type: vertex, project: p, auth: ambient, base_url: "{fake.base_url}/vertex",'
                        f' models: ["*"]}}\n'))
    response = post_json(proxy, "/v1/chat/completions",
                         {"model": "vertex-sa/gemini-2.5-flash", "messages": [{"role": "user", "content": "x"}]})
    assert response.status == 503
    assert response.json()["error"]["code"] == "provider_not_configured"
    # The provider's name for the caller; the environment variable for the log only.
    assert "'vertex-sa'" in response.json()["error"]["message"]
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in response.json()["error"]["message"]
    assert any("GOOGLE_APPLICATION_CREDENTIALS" in r.getMessage() for r in caplog.records)


def test_forward_without_a_caller_key_never_uses_the_ambient_credentials(make_proxy: Callable[..., Proxy],
                                                                           fake: FakeUpstream,
                                                                           service_account: Path) -> None:
    """DESIGN §14: with google-auth credentials on the host, a keyless caller on the default
    `auth: forward` gets 401 naming `providers.vertex.auth: ambient`, and no token is minted.
    (It used to be served with the host's service account.)"""
    proxy = make_proxy()
    response = post_json(proxy, "/v1/chat/completions",
                         {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}, key=None)
    assert response.status == 401, response.body
    error = response.json()["error"]
    assert error["code"] == "missing_provider_key"
    assert "providers.vertex.auth: ambient" in error["message"]
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in error["message"]
    assert fake.requests == [] and fake.token_requests == []


def test_ambient_serves_only_the_models_it_lists(ambient: Proxy, fake: FakeUpstream) -> None:
    """A provider with the host's identity serves through its prefix only what `models:` matches."""
    response = post_json(ambient, "/v1/chat/completions",
                         {"model": "vertex-sa/text-embedding-005", "messages": [{"role": "user", "content": "x"}]})
    assert response.status == 404 and response.json()["error"]["code"] == "model_not_found"
    assert fake.requests == [] and fake.token_requests == []


@pytest.mark.parametrize("stream", [False, True])
def test_a_function_name_with_a_leading_digit_round_trips(gemini: Proxy, fake: FakeUpstream, stream: bool) -> None:
    """Gemini wants a letter or '_' first: the name goes under a prefix and comes back as the caller's."""
    tools: list[Any] = [{"type": "function", "function": {
        "name": "2fa_lookup", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]
    client = gemini.client()
    messages: list[Any] = [{"role": "user", "content": "code for Paris?"}]
    if stream:
        with client.chat.completions.stream(model=MODEL, messages=messages, tools=tools) as events:
            for _ in events:
                pass
            first = events.get_final_completion()
    else:
        first = client.chat.completions.create(model=MODEL, messages=messages, tools=tools)
    (call,) = first.choices[0].message.tool_calls or []
    assert call.function.name == "2fa_lookup"
    messages.append({"role": "assistant", "content": None, "tool_calls": [call.model_dump()]})
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "123456"})
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=tools,
                                            tool_choice={"type": "function", "function": {"name": "2fa_lookup"}})
    assert second.choices[0].message.content == "[vertex] tool said: 123456"
    sent = fake.last("vertex").json
    assert sent["tools"][0]["functionDeclarations"][0]["name"] == "tw.2fa_lookup"
    assert sent["contents"][2]["parts"][0]["functionResponse"]["name"] == "tw.2fa_lookup"
