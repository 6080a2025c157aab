"""The chat dialect's paths beyond chat, through the proxy and the fake upstream, with the official
openai SDK: legacy ``/v1/completions`` (through the pivot, for a passthrough type and translated
ones), ``/v1/models/{id}``, and unknown paths answered in the dialect's error shape."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest

from tests.conftest import GATEWAY_KEY, PROVIDER_KEY, Proxy, post_json, raw_request
from tests.fakes import FakeUpstream

# (model the caller sends, provider flavor expected at the fake): one passthrough type, two translated.
MODELS = [
    ("openai/gpt-4o", "openai"),
    ("anthropic/claude-3-5-sonnet-20241022", "anthropic"),
    ("vertex/gemini-2.0-flash", "vertex"),
]


@pytest.mark.parametrize(("model", "flavor"), MODELS)
def test_completions_non_streamed(proxy: Proxy, fake: FakeUpstream, model: str, flavor: str) -> None:
    response = proxy.client().completions.with_raw_response.create(model=model, prompt="hello there", max_tokens=50)
    completion = response.parse()
    assert completion.object == "text_completion"
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.text == f"[{flavor}] hello there"
    assert choice.finish_reason == "stop" and choice.index == 0 and choice.logprobs is None
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert response.headers["x-tensorwall-provider"] == flavor
    raw = response.http_response.json()
    assert set(raw["choices"][0]) == {"text", "index", "logprobs", "finish_reason"}
    assert "message" not in raw["choices"][0]
    # The prompt reached the provider as one user message, in its own wire format.
    record = fake.last(flavor)
    if flavor == "openai":
        assert record.path == "/openai/v1/chat/completions"
        assert record.json["messages"] == [{"role": "user", "content": "hello there"}]
        assert record.json["max_tokens"] == 50 and "prompt" not in record.json


@pytest.mark.parametrize(("model", "flavor"), MODELS)
def test_completions_streamed(proxy: Proxy, fake: FakeUpstream, model: str, flavor: str) -> None:
    stream = proxy.client().completions.create(model=model, prompt=["stream these words please"], stream=True,
                                               stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks and all(c.object == "text_completion" for c in chunks)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == f"[{flavor}] stream these words please"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    # Usage carried: exactly one final chunk with no choices and the counts.
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and chunks[-1] is usage_chunks[0] and not chunks[-1].choices
    assert usage_chunks[0].usage is not None and usage_chunks[0].usage.total_tokens > 0


def test_completions_stream_is_text_completion_chunks_ending_in_done(proxy: Proxy) -> None:
    response = post_json(proxy, "/v1/completions", {"model": "openai/gpt-4o", "prompt": "one two", "stream": True})
    assert response.status == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert all('"object":"text_completion"' in e and '"chat.completion' not in e and '"delta"' not in e
               for e in events[:-1])


async def test_completions_with_the_async_client(proxy: Proxy) -> None:
    async with proxy.async_client() as client:
        completion = await client.completions.create(model="anthropic/claude-3-5-sonnet-20241022", prompt="hi")
    assert completion.choices[0].text == "[anthropic] hi"


@pytest.mark.parametrize(("fields", "param"), [
    ({"echo": True}, "echo"),
    ({"best_of": 3}, "best_of"),
    ({"logprobs": 2}, "logprobs"),
    ({"logprobs": 0}, "logprobs"),
    ({"suffix": "tail"}, "suffix"),
    ({"prompt": ["one", "two"]}, "prompt"),
    ({"prompt": [1, 2, 3]}, "prompt"),
    ({"prompt": None}, "prompt"),
])
def test_completions_fields_that_would_change_the_result_get_400(proxy: Proxy, fake: FakeUpstream,
                                                                 fields: dict[str, object], param: str) -> None:
    before = len(fake.requests)
    body: dict[str, object] = {"model": "openai/gpt-4o", "prompt": "hi", **fields}
    response = post_json(proxy, "/v1/completions", body)
    assert response.status == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert response.headers["x-should-retry"] == "false"
    assert len(fake.requests) == before  # refused before any upstream call


def test_completions_fields_at_their_default_are_dropped(proxy: Proxy, fake: FakeUpstream) -> None:
    completion = proxy.client().completions.create(model="openai/gpt-4o", prompt="hi", echo=False, best_of=1,
                                                   suffix="", logprobs=None)
    assert completion.choices[0].text == "[openai] hi"
    sent = fake.last("openai").json
    assert not {"echo", "best_of", "suffix", "logprobs", "prompt"} & set(sent)


def test_completions_sdk_raises_on_a_refused_field(proxy: Proxy) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        proxy.client().completions.create(model="openai/gpt-4o", prompt="hi", echo=True)
    assert caught.value.status_code == 400 and "echo" in caught.value.message


def test_completions_unknown_model_is_404(proxy: Proxy) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        proxy.client().completions.create(model="no-such-model", prompt="hi")
    assert caught.value.code == "model_not_found"


def test_completions_provider_failure_mid_stream_ends_in_band(proxy: Proxy, fake: FakeUpstream) -> None:
    # The fake cuts the stream after its first content: past the commit point, one in-band error.
    response = post_json(proxy, "/v1/completions", {"model": "openai/gpt-4o-cut-mid-stream", "prompt": "a b c d",
                                                    "stream": True})
    assert response.status == 200
    events = [line for line in response.text.split("\n\n") if line]
    assert events[-1].startswith('data: {"error":') and "[DONE]" not in response.text


# --- /v1/models/{id} -----------------------------------------------------------------------------


def test_models_retrieve_a_route_and_a_provider_model(make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy("routes:\n  smart: {endpoints: [{provider: anthropic, model: claude-3-5-sonnet-20241022}]}\n")
    client = proxy.client()
    listed = {m.id: m for m in client.models.list()}
    for model_id in ("smart", "openai/gpt-4o", "azure-eu/gpt-4o-eu"):
        model = client.models.retrieve(model_id)
        assert model.id == model_id and model.object == "model"
        assert model.model_dump() == listed[model_id].model_dump()  # the same data as the list
    assert client.models.retrieve("smart").owned_by == "anthropic"
    # Unescaped, as curl sends it, a slash in the id works too.
    response = raw_request(proxy.url + "/v1/models/openai/gpt-4o", None, {"X-API-Key": GATEWAY_KEY},
                           method="GET")
    assert response.status == 200 and response.json()["id"] == "openai/gpt-4o"


@pytest.mark.parametrize("model_id", ["gpt-5-nonexistent", "openai/gpt-3.5-unlisted", "smart/x"])
def test_models_retrieve_an_unknown_id_is_404_model_not_found(proxy: Proxy, model_id: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        proxy.client().models.retrieve(model_id)
    assert caught.value.code == "model_not_found"
    assert caught.value.body == {"message": f"The model '{model_id}' does not exist on this gateway.",
                                 "type": "invalid_request_error", "param": "model", "code": "model_not_found"}


def test_models_retrieve_needs_the_gateway_key(proxy: Proxy) -> None:
    response = raw_request(proxy.url + "/v1/models/openai/gpt-4o", None, {}, method="GET")
    assert response.status == 401 and response.json()["error"]["code"] == "invalid_gateway_key"
    with openai.OpenAI(base_url=proxy.url + "/v1", api_key=PROVIDER_KEY, max_retries=0,
                       default_headers={"X-API-Key": "not-the-key"}) as wrong, \
            pytest.raises(openai.AuthenticationError):
        wrong.models.retrieve("openai/gpt-4o")


def test_completions_needs_the_gateway_key(proxy: Proxy, fake: FakeUpstream) -> None:
    before = len(fake.requests)
    response = post_json(proxy, "/v1/completions", {"model": "openai/gpt-4o", "prompt": "hi"}, gateway_key=None)
    assert response.status == 401 and response.json()["error"]["code"] == "invalid_gateway_key"
    assert len(fake.requests) == before


# --- unknown paths: 404 in the shape of the dialect whose prefix they share, key or no key -------------


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong-key"}, {"X-API-Key": GATEWAY_KEY}],
                         ids=["no-key", "wrong-key", "key"])
@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/chat/completion"),  # a typo in the path
    ("POST", "/v1/v1/chat/completions"),  # the base URL carries /v1 twice
    ("GET", "/v1/engines"),
    ("POST", "/chat/completions"),  # the base URL lacks /v1
    ("GET", "/"),
])
def test_unknown_paths_are_404_in_openai_shape_with_or_without_a_key(proxy: Proxy, method: str, path: str,
                                                                      headers: dict[str, str]) -> None:
    response = raw_request(proxy.url + path, "{}" if method == "POST" else None, headers, method=method)
    assert response.status == 404, response.text
    assert response.json() == {"error": {"message": f"Unknown path {path!r}.", "type": "invalid_request_error",
                                         "param": None, "code": "not_found"}}
    assert response.headers["x-request-id"]


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", "/v1/chat/completions", "POST"),
    ("GET", "/v1/completions", "POST"),
    ("DELETE", "/v1/models/openai/gpt-4o", "GET, HEAD"),
    ("POST", "/v1/models", "GET, HEAD"),
])
def test_known_paths_ask_for_the_key_before_saying_405(proxy: Proxy, method: str, path: str, allow: str) -> None:
    keyless = raw_request(proxy.url + path, None, {}, method=method)
    assert keyless.status == 401 and keyless.json()["error"]["code"] == "invalid_gateway_key"
    keyed = raw_request(proxy.url + path, None, {"X-API-Key": GATEWAY_KEY}, method=method)
    assert keyed.status == 405 and keyed.headers["allow"] == allow
    assert keyed.json()["error"]["type"] == "invalid_request_error"


def test_the_sdk_with_a_wrong_base_url_learns_404_not_401(proxy: Proxy) -> None:
    # The mistake clients make: a base URL without /v1, and no gateway key set.
    with openai.OpenAI(base_url=proxy.url, api_key=PROVIDER_KEY, max_retries=0) as client, \
            pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "not_found"
