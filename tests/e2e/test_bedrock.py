"""AWS Bedrock behind the proxy, as an OpenAI SDK user sees it, against the fake's Bedrock Runtime."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.conftest import PNG, PROVIDER_KEY, TOOLS, Proxy, config_text, post_json
from tests.fakes import BEDROCK_ACCESS_KEY, BEDROCK_SECRET_KEY, FakeUpstream, embedding_vector

CLAUDE = "anthropic.claude-3-5-sonnet-20240620-v1:0"
MODEL = f"bedrock/{CLAUDE}"


@pytest.fixture
def bedrock(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> Proxy:
    return make_proxy()


@pytest.fixture
def signed(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> Proxy:
    return make_proxy(text=config_text(fake, providers=f"""  bedrock-signed:
    type: bedrock
    region: us-east-1
    base_url: "{fake.base_url}/bedrock"
    aws_access_key_id: {BEDROCK_ACCESS_KEY}
    aws_secret_access_key: {BEDROCK_SECRET_KEY}
    models: ["*"]
"""))


def test_api_key_path(bedrock: Proxy, fake: FakeUpstream) -> None:
    response = bedrock.client().chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}])
    completion = response.parse()
    assert completion.choices[0].message.content == "[bedrock] hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert response.headers["x-tensorwall-provider"] == "bedrock"
    record = fake.last("bedrock")
    assert record.raw_path == "/bedrock/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    assert record.auth_scheme == "bearer" and record.header("Authorization") == f"Bearer {PROVIDER_KEY}"


def test_signed_requests_pass_the_fakes_sigv4_check(signed: Proxy, fake: FakeUpstream) -> None:
    client = signed.client(api_key="sk-openai-sdk-placeholder")
    completion = client.chat.completions.create(model=f"bedrock-signed/{CLAUDE}",
                                                messages=[{"role": "user", "content": "signed hello"}])
    assert completion.choices[0].message.content == "[bedrock] signed hello"
    chunks = list(client.chat.completions.create(model=f"bedrock-signed/{CLAUDE}", stream=True,
                                                 messages=[{"role": "user", "content": "signed stream"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "[bedrock] signed stream"
    records = fake.for_flavor("bedrock")
    assert [r.auth_scheme for r in records] == ["sigv4", "sigv4"]
    assert all(BEDROCK_ACCESS_KEY in (r.aws_credential or "") for r in records)
    assert "sk-openai-sdk-placeholder" not in json.dumps([dict(r.headers) for r in records])


@pytest.mark.parametrize("model_id", [
    "us.anthropic.claude-3-5-sonnet-20241022-v2:0",
    "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20241022-v2:0",
])
def test_profiles_and_arns_are_signed_on_their_encoded_path(signed: Proxy, fake: FakeUpstream, model_id: str) -> None:
    completion = signed.client().chat.completions.create(model=f"bedrock-signed/{model_id}",
                                                         messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == "[bedrock] hi"
    assert fake.last("bedrock").path_model == model_id


def _aws_chain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's AWS identity, as an instance role or exported keys give it: in the environment."""
    for name, value in {"AWS_ACCESS_KEY_ID": BEDROCK_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": BEDROCK_SECRET_KEY,
                        "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
                        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def test_forward_without_a_key_never_uses_the_hosts_aws_identity(make_proxy: Callable[..., Proxy],
                                                                 fake: FakeUpstream,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """DESIGN §14: a keyless caller on the default `auth: forward` gets 401, not the operator's role;
    the 401 names the setting that would use it. (It used to be signed with the host's credentials.)"""
    _aws_chain_env(monkeypatch)
    proxy = make_proxy()
    response = post_json(proxy, "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
                         key=None)
    assert response.status == 401, response.body
    error = response.json()["error"]
    assert error["code"] == "missing_provider_key"
    assert "providers.bedrock.auth: ambient" in error["message"]
    assert BEDROCK_ACCESS_KEY not in response.text and "AWS_" not in response.text
    assert fake.requests == []


def test_ambient_signs_with_the_aws_chain_for_its_models(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _aws_chain_env(monkeypatch)
    proxy = make_proxy(text=config_text(fake).replace(
        f'bedrock:  {{region: us-east-1, base_url: "{fake.base_url}/bedrock"}}',
        f'bedrock:  {{region: us-east-1, base_url: "{fake.base_url}/bedrock", auth: ambient,'
        f' models: ["anthropic.*"]}}'))
    response = post_json(proxy, "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
                         key=None)
    assert response.status == 200, response.body
    assert fake.last("bedrock").auth_scheme == "sigv4"
    # The operator's identity serves only the models `models:` lists: any other name is 404, nothing sent.
    fake.clear()
    response = post_json(proxy, "/v1/chat/completions",
                         {"model": "bedrock/meta.llama3-70b-instruct-v1:0", "messages": [{"role": "user", "content": "x"}]})
    assert response.status == 404 and response.json()["error"]["code"] == "model_not_found"
    assert fake.requests == []


def test_frames_split_across_reads(bedrock: Proxy) -> None:
    chunks = list(bedrock.client().chat.completions.create(
        model="bedrock/anthropic.claude-split-frames-v1:0", messages=[{"role": "user", "content": "tiny pieces"}],
        stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "[bedrock] tiny pieces"


def test_a_corrupt_crc_is_a_clean_in_band_error(bedrock: Proxy) -> None:
    response = post_json(bedrock, "/v1/chat/completions", {
        "model": "bedrock/anthropic.claude-corrupt-crc-v1:0", "messages": [{"role": "user", "content": "a b c"}],
        "stream": True})
    assert response.status == 200
    last = response.text.rstrip().split("\n\n")[-1]
    assert last.startswith('data: {"error"') and "broken event stream" in last
    assert "[DONE]" not in response.text


def test_an_exception_before_content_falls_back(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    proxy = make_proxy(f"""
routes:
  claude-ha:
    strategy: priority
    endpoints:
      - {{provider: bedrock, model: "anthropic.claude-stream-throttled-v1:0", priority: 0}}
      - {{provider: bedrock, model: "{CLAUDE}", priority: 1}}
""")
    chunks = list(proxy.client().chat.completions.create(
        model="claude-ha", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "[bedrock] hi"
    assert len(fake.for_flavor("bedrock")) == 2


def test_three_turn_tool_conversation_with_reasoning(bedrock: Proxy, fake: FakeUpstream) -> None:
    client = bedrock.client()
    model = "bedrock/anthropic.claude-3-7-sonnet-20250219-v1:0"
    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    first = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, reasoning_effort="low")
    message = first.choices[0].message
    assert getattr(message, "reasoning_content", "").startswith("Thinking about")
    (call,) = message.tool_calls or []
    messages.append(message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny"})
    second = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, reasoning_effort="low")
    assert second.choices[0].message.content == "[bedrock] tool said: sunny"
    sent = fake.last("bedrock").json
    assert "reasoningContent" in sent["messages"][1]["content"][0]
    assert sent["additionalModelRequestFields"]["thinking"]["type"] == "enabled"


def test_image_input(bedrock: Proxy, fake: FakeUpstream) -> None:
    completion = bedrock.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is"}, {"type": "image_url", "image_url": {"url": PNG}}]}])
    assert completion.choices[0].message.content == "[bedrock] what is <image>"
    assert fake.last("bedrock").json["messages"][0]["content"][1]["image"]["format"] == "png"


def test_https_image_is_a_clear_400(bedrock: Proxy, fake: FakeUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        bedrock.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    assert "bytes" in str(caught.value)
    assert fake.for_flavor("bedrock") == []


@pytest.mark.parametrize(("model", "count"), [("bedrock/amazon.titan-embed-text-v2:0", 3),
                                              ("bedrock/cohere.embed-english-v3", 1)])
def test_embeddings(bedrock: Proxy, fake: FakeUpstream, model: str, count: int) -> None:
    result = bedrock.client().embeddings.create(model=model, input=["a", "b", "c"])
    assert [d.embedding for d in result.data] == [pytest.approx(embedding_vector(t), rel=1e-6) for t in "abc"]
    assert len(fake.for_flavor("bedrock")) == count
    assert all(r.path.endswith("/invoke") for r in fake.for_flavor("bedrock"))


# AWS's own faults; those every type shares (429, 400, 401, 500, 503): tests/e2e/test_conformance.py.
@pytest.mark.parametrize(("word", "status"), [("not-ready", 429), ("fail-408", 504), ("fail-403", 403),
                                              ("fail-404", 404), ("fail-424", 424)])
def test_aws_errors_keep_their_statuses_in_openai_shape(bedrock: Proxy, word: str, status: int) -> None:
    response = post_json(bedrock, "/v1/chat/completions",
                         {"model": f"bedrock/anthropic.claude-{word}-v1:0", "messages": [{"role": "user", "content": "x"}]})
    assert response.status == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["code"]
