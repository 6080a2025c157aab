"""The HTTP surface: every bad input gets a clear OpenAI-shaped error with the right status."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.conftest import GATEWAY_KEY, PROVIDER_KEY, USER, Proxy, post_json, raw_request
from tests.fakes import FakeUpstream


def _assert_openai_error(body: bytes, code: str | None = None, param: str | None = None) -> dict[str, object]:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error  # type: ignore[no-any-return]


def test_form_encoded_curl_body_is_read_as_json(proxy: Proxy) -> None:
    """`curl -d '{...}'` sends application/x-www-form-urlencoded; the body is JSON all the same."""
    response = raw_request(proxy.url + "/v1/chat/completions",
                           json.dumps({"model": "gpt-4o", "messages": USER}),
                           {"Content-Type": "application/x-www-form-urlencoded", "X-API-Key": GATEWAY_KEY,
                            "Authorization": f"Bearer {PROVIDER_KEY}"})
    assert response.status == 200
    assert response.json()["choices"][0]["message"]["content"] == "[openai] hello"


@pytest.mark.parametrize(("body", "param"), [
    ("{not json", None),
    ("[1, 2]", None),
    ("", None),
    ('{"messages": [{"role": "user", "content": "x"}]}', "model"),
    ('{"model": "", "messages": [{"role": "user", "content": "x"}]}', "model"),
    ('{"model": 42, "messages": [{"role": "user", "content": "x"}]}', "model"),
    ('{"model": "gpt-4o"}', "messages"),
    ('{"model": "gpt-4o", "messages": []}', "messages"),
    ('{"model": "gpt-4o", "messages": "hi"}', "messages"),
    ('{"model": "gpt-4o", "messages": ["hi"]}', "messages[0]"),
    ('{"model": "gpt-4o", "messages": [{"role": "robot", "content": "x"}]}', "messages[0].role"),
    ('{"model": "gpt-4o", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
    ('{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
    ('{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "n": 0}', "n"),
    ('{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "n": true}', "n"),
    ('{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}', "max_tokens"),
    ('{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', "temperature"),
    ('{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream_options": {}}', "stream_options"),
    ('{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "tools": {}}', "tools"),
    ('{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "n": 99999999999999999999999}', None),
    ('{"model": "gpt-4o", "messages": ' + "[" * 5000 + "]" * 5000 + "}", None),
])
def test_bad_chat_bodies_get_400(proxy: Proxy, fake: FakeUpstream, body: str, param: str | None) -> None:
    response = raw_request(proxy.url + "/v1/chat/completions", body,
                           {"X-API-Key": GATEWAY_KEY, "Authorization": f"Bearer {PROVIDER_KEY}"})
    assert response.status == 400, response.body
    _assert_openai_error(response.body, param=param)
    assert response.headers["x-should-retry"] == "false"
    assert fake.requests == []


def test_invalid_utf8_gets_400(proxy: Proxy) -> None:
    body = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "\xff\xfe"}]}'
    response = raw_request(proxy.url + "/v1/chat/completions", body, {"X-API-Key": GATEWAY_KEY})
    assert response.status == 400
    _assert_openai_error(response.body, code="invalid_json")


def test_body_over_the_limit_gets_413(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    proxy = make_proxy("server: {max_body_bytes: 2048}\n")
    big = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 5000}]}
    response = post_json(proxy, "/v1/chat/completions", big)
    assert response.status == 413
    _assert_openai_error(response.body, code="request_too_large")
    assert fake.requests == []


def test_unknown_model_gets_404_model_not_found(proxy: Proxy) -> None:
    response = post_json(proxy, "/v1/chat/completions", {"model": "no-such-model", "messages": USER})
    assert response.status == 404
    _assert_openai_error(response.body, code="model_not_found", param="model")
    assert "x-tensorwall-provider" not in response.headers


@pytest.mark.parametrize("gateway_key", [None, "", "wrong-key",
                                         "sha256:" + "0" * 64])
def test_gateway_key_missing_or_wrong_gets_401(proxy: Proxy, fake: FakeUpstream, gateway_key: str | None) -> None:
    response = post_json(proxy, "/v1/chat/completions", {"model": "gpt-4o", "messages": USER},
                         gateway_key=gateway_key)
    assert response.status == 401
    _assert_openai_error(response.body, code="invalid_gateway_key")
    assert fake.requests == []


def test_a_digest_sent_as_the_key_is_refused(make_proxy: Callable[..., Proxy]) -> None:
    from tensorwall_proxy.config import key_digest

    digest = key_digest("the-real-key")
    proxy = make_proxy(text=f"gateway_keys: ['{digest}']\n")
    ok = raw_request(proxy.url + "/v1/models", None, {"X-API-Key": "the-real-key"}, method="GET")
    assert ok.status == 200
    refused = raw_request(proxy.url + "/v1/models", None, {"X-API-Key": digest}, method="GET")
    assert refused.status == 401


def test_auth_off_accepts_any_caller(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    text = f'gateway_keys: []\nproviders:\n  openai: {{base_url: "{fake.base_url}/openai/v1"}}\n'
    proxy = make_proxy(text=text)
    response = post_json(proxy, "/v1/chat/completions", {"model": "gpt-4o", "messages": USER}, gateway_key=None)
    assert response.status == 200


def test_missing_provider_key_gets_401_and_sends_nothing(proxy: Proxy, fake: FakeUpstream) -> None:
    response = post_json(proxy, "/v1/chat/completions", {"model": "gpt-4o", "messages": USER}, key=None)
    assert response.status == 401
    _assert_openai_error(response.body, code="missing_provider_key")
    assert fake.requests == []


def test_unconfigured_provider_gets_503_naming_the_provider_and_logs_the_setting(
        make_proxy: Callable[..., Proxy], caplog: pytest.LogCaptureFixture) -> None:
    proxy = make_proxy(text=f"gateway_keys: [{GATEWAY_KEY}]\n")  # azure without AZURE_OPENAI_ENDPOINT
    response = post_json(proxy, "/v1/chat/completions", {"model": "azure/gpt-4o", "messages": USER})
    assert response.status == 503
    error = _assert_openai_error(response.body, code="provider_not_configured")
    # The caller learns which provider; the setting and its environment variable go to the log.
    assert "'azure'" in str(error["message"])
    assert "AZURE_OPENAI_ENDPOINT" not in str(error["message"]) and "endpoint" not in str(error["message"])
    assert any("AZURE_OPENAI_ENDPOINT" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert response.headers["x-should-retry"] == "false"


def test_provider_4xx_keeps_its_status_and_message(proxy: Proxy) -> None:
    response = post_json(proxy, "/v1/chat/completions", {"model": "groq/llama3-70b-8192", "messages": USER, "n": 2})
    assert response.status == 400
    error = _assert_openai_error(response.body, param="n")
    assert "'n'" in str(error["message"])


def test_mistral_flat_errors_are_rewrapped(proxy: Proxy) -> None:
    response = post_json(proxy, "/v1/chat/completions", {"model": "mistral/fail-400", "messages": USER})
    assert response.status == 400
    _assert_openai_error(response.body)
    assert response.headers["x-tensorwall-provider"] == "mistral"


def test_request_id_is_echoed_or_made(proxy: Proxy) -> None:
    mine = post_json(proxy, "/v1/chat/completions", {"model": "gpt-4o", "messages": USER}, **{"x-request-id": "abc-123"})
    assert mine.headers["x-request-id"] == "abc-123"
    made = post_json(proxy, "/v1/chat/completions", {"model": "gpt-4o", "messages": USER})
    assert made.headers["x-request-id"].startswith("req_")


def test_health_and_readiness_need_no_key(proxy: Proxy) -> None:
    assert raw_request(proxy.url + "/healthz", method="GET").status == 200
    ready = raw_request(proxy.url + "/readyz", method="GET")
    assert ready.status == 200 and ready.json() == {"status": "ready"}


def test_unknown_path_and_method_are_openai_errors(proxy: Proxy) -> None:
    missing = raw_request(proxy.url + "/v1/engines/davinci/completions", "{}", {"X-API-Key": GATEWAY_KEY})
    assert missing.status == 404
    _assert_openai_error(missing.body, code="not_found")
    wrong = raw_request(proxy.url + "/v1/chat/completions", None, {"X-API-Key": GATEWAY_KEY}, method="GET")
    assert wrong.status == 405
    assert wrong.headers["allow"] == "POST"
    _assert_openai_error(wrong.body)
    assert wrong.json()["error"]["type"] == "invalid_request_error"
    # Without a key, an unknown path is still 404 (a wrong base URL is the caller's real mistake),
    # and it serves nothing; a known path, whatever the method, asks for the key first.
    keyless = raw_request(proxy.url + "/v1/engines/davinci/completions", "{}", {})
    assert keyless.status == 404
    _assert_openai_error(keyless.body, code="not_found")
    assert raw_request(proxy.url + "/v1/chat/completions", None, {}, method="GET").status == 401
    assert raw_request(proxy.url + "/healthz", "{}", {}).status == 401


@pytest.mark.parametrize("body", [
    {"model": "text-embedding-3-small"},
    {"model": "text-embedding-3-small", "input": ""},
    {"model": "text-embedding-3-small", "input": 5},
    {"model": "text-embedding-3-small", "input": "x", "encoding_format": "hex"},
])
def test_bad_embeddings_bodies_get_400(proxy: Proxy, body: dict[str, object]) -> None:
    response = post_json(proxy, "/v1/embeddings", body)
    assert response.status == 400
    _assert_openai_error(response.body)


def test_embeddings_without_encoding_format_are_floats(proxy: Proxy) -> None:
    response = post_json(proxy, "/v1/embeddings", {"model": "ollama/nomic-embed-text", "input": "x"})
    assert response.status == 200
    assert isinstance(response.json()["data"][0]["embedding"], list)

