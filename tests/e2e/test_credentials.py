"""Whose credential goes where (DESIGN §6, §14), against the real proxy and the fake upstream.

The caller's key reaches one key scope per request and never another vendor; a server-side key
serves only the models its provider lists, and never comes back in upstream text; Anthropic gets
OAuth tokens as a Bearer and, under the operator's key, only the behavioural betas.
"""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import GATEWAY_KEY, PROVIDER_KEY, USER, Proxy, config_text, post_json, raw_request
from tests.fakes import FakeUpstream, Scripted

CHAT = "/v1/chat/completions"


# --- The caller's key: one key scope per request, never another vendor ------------------------------


@pytest.mark.parametrize(("model", "key"), [
    ("gpt-4o", "sk-ant-api03-callerkey0123456789"),           # an Anthropic key to OpenAI
    ("mistral-large-latest", "sk-ant-api03-callerkey0123456789"),
    ("gpt-4o", "gsk_callerkey0123456789abcdef"),               # a Groq key to OpenAI
    ("azure/gpt-4o", "AIzaSyCallerKey0123456789abcdefghij"),   # a Google API key to Azure
    ("groq/llama3-70b-8192", "AIzaSyCallerKey0123456789abcdefghij"),
])
def test_a_key_of_another_vendor_is_never_sent(proxy: Proxy, fake: FakeUpstream, model: str, key: str) -> None:
    response = post_json(proxy, CHAT, {"model": model, "messages": USER}, key=key)
    assert response.status == 401, response.body
    assert response.json()["error"]["code"] == "missing_provider_key"
    assert key not in response.text
    assert fake.requests == []


@pytest.mark.parametrize(("model", "key", "flavor", "header"), [
    ("claude-3-5-sonnet-20241022", "sk-ant-api03-callerkey0123456789", "anthropic", "x-api-key"),
    ("groq/llama3-70b-8192", "gsk_callerkey0123456789abcdef", "groq", "Authorization"),
])
def test_a_vendor_key_reaches_its_own_vendor(proxy: Proxy, fake: FakeUpstream, model: str, key: str,
                                             flavor: str, header: str) -> None:
    response = post_json(proxy, CHAT, {"model": model, "messages": USER}, key=key)
    assert response.status == 200, response.body
    assert key in (fake.last(flavor).header(header) or "")


# --- A malformed Authorization header ------------------------------------------------------------------


def test_non_utf8_bytes_in_authorization_are_a_400_without_a_traceback(
        proxy: Proxy, fake: FakeUpstream, caplog: pytest.LogCaptureFixture) -> None:
    parts = urlsplit(proxy.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.putrequest("POST", CHAT)
        body = json.dumps({"model": "gpt-4o", "messages": USER}).encode()
        for name, value in (("Content-Type", b"application/json"), ("X-API-Key", GATEWAY_KEY.encode()),
                            ("Authorization", b"Bearer sk-\xff\xfe\x80key"), ("Content-Length", b"%d" % len(body))):
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        status, payload = response.status, json.loads(response.read())
    finally:
        connection.close()
    assert status == 400
    assert payload["error"]["code"] == "invalid_authorization_header"
    assert fake.requests == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert PROVIDER_KEY not in json.dumps(payload)


# --- Server-side keys stay with the operator -------------------------------------------------------


SRV_KEY = "srv-operator-key-canary-5e1f"
SHAPED = "sk-proj-EchoedShapedKey0123456789"


@pytest.fixture
def keyed(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> Proxy:
    """`srv`: an openai-type provider with the operator's key, serving gpt-4o and the gpt-4.1 family."""
    return make_proxy(text=config_text(fake, providers=(
        f'  srv: {{type: openai, base_url: "{fake.base_url}/openai/v1", api_key: {SRV_KEY},'
        f' models: [gpt-4o, "gpt-4.1-*", "echo-*"]}}\n'
        f'  anthropic-srv: {{type: anthropic, base_url: "{fake.base_url}/anthropic/v1", api_key: {SRV_KEY}}}\n')) + """
rules:
  - {match: "x-*", provider: srv, strip: "x-"}
  - {match: "claude-*", provider: anthropic-srv}
routes:
  explicit:
    endpoints: [{provider: srv, model: o3-mini}]
""")


def test_a_server_side_key_serves_only_the_models_its_provider_lists(keyed: Proxy, fake: FakeUpstream) -> None:
    for model in ("srv/gpt-4o", "srv/gpt-4.1-mini", "x-gpt-4o", "explicit"):
        response = post_json(keyed, CHAT, {"model": model, "messages": USER})
        assert response.status == 200, (model, response.body)
    assert [r.json["model"] for r in fake.requests] == ["gpt-4o", "gpt-4.1-mini", "gpt-4o", "o3-mini"]
    fake.clear()
    # Prefix, rules and the pattern table alike: anything else is 404 and nothing is sent.
    for model in ("srv/o3", "srv/gpt-4.1", "x-o3", "claude-3-5-sonnet-20241022", "anthropic-srv/claude-3-opus"):
        response = post_json(keyed, CHAT, {"model": model, "messages": USER})
        assert response.status == 404, (model, response.body)
        assert response.json()["error"]["code"] == "model_not_found"
    assert fake.requests == []
    listed = {m["id"] for m in raw_request(keyed.url + "/v1/models", method="GET",
                                           headers={"X-API-Key": GATEWAY_KEY}).json()["data"]}
    assert "srv/gpt-4o" in listed and not any("*" in m for m in listed)


def _echoing(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}


@pytest.mark.parametrize(("status", "headers", "body"), [
    (400, {}, _echoing(f"Invalid request for key {SRV_KEY} (also {SHAPED}, Bearer {SRV_KEY})")),
    (429, {"retry-after": "1"}, _echoing(f"Rate limit reached for key {SRV_KEY}; AKIAIOSFODNN7EXAMPLE")),
    (500, {"Content-Type": "text/html"}, f"<html>upstream proxy: Authorization: Bearer {SRV_KEY} {SHAPED}</html>"),
])
def test_upstream_error_text_never_carries_a_key(keyed: Proxy, scripted: Callable[[str, Scripted], str],
                                                 caplog: pytest.LogCaptureFixture, status: int,
                                                 headers: dict[str, str], body: Any) -> None:
    caplog.set_level(logging.DEBUG)
    model = scripted("echo", (status, headers, body))
    response = post_json(keyed, CHAT, {"model": f"srv/{model}", "messages": USER})
    assert response.status == (status if status < 500 else 502), response.body
    message = response.json()["error"]["message"]
    assert "[redacted]" in message
    for secret in (SRV_KEY, SHAPED, "AKIAIOSFODNN7EXAMPLE"):
        assert secret not in response.text
        assert all(secret not in record.getMessage() for record in caplog.records)


def _events(*chunks: dict[str, Any]) -> str:
    return "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks)


CONTENT = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
           "choices": [{"index": 0, "delta": {"content": f"content may say {SHAPED}"}, "finish_reason": None}]}


@pytest.mark.parametrize("committed", [False, True])
def test_an_in_band_error_event_never_carries_a_key(keyed: Proxy, scripted: Callable[[str, Scripted], str],
                                                    committed: bool) -> None:
    error = {"error": {"message": f"stream failed for key {SRV_KEY} / {SHAPED}", "type": "server_error"}}
    stream = _events(CONTENT, error) if committed else _events(error)
    model = scripted("echo", (200, {"Content-Type": "text/event-stream"}, stream))
    response = post_json(keyed, CHAT, {"model": f"srv/{model}", "messages": USER, "stream": True})
    assert SRV_KEY not in response.text
    if committed:
        # Content is the model's answer and passes untouched; only the error event is redacted.
        assert response.status == 200
        *content, last = [e for e in response.text.split("\n\n") if e.strip()]
        assert SHAPED in "".join(content)
        assert SHAPED not in last and "[redacted]" in last
    else:
        assert response.status == 502 and SHAPED not in response.text and "[redacted]" in response.text


def test_a_401_to_the_operators_key_reaches_the_caller_as_a_generic_message(
        keyed: Proxy, scripted: Callable[[str, Scripted], str]) -> None:
    model = scripted("echo", (401, {}, _echoing("Incorrect API key provided: srv-op***5e1f. Your org is acme-internal.")))
    response = post_json(keyed, CHAT, {"model": f"srv/{model}", "messages": USER})
    assert response.status == 401
    message = response.json()["error"]["message"]
    assert "acme-internal" not in message and "srv-op" not in message
    assert "configured credential" in message


# --- Anthropic: tokens as a Bearer, betas under the operator's key --------------------------------------


@pytest.mark.parametrize("token", [
    "sk-ant-oat01-callertoken0123456789",
    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjYWxsZXIifQ.c2lnbmF0dXJl",
])
def test_an_anthropic_token_that_is_not_an_api_key_goes_as_a_bearer(proxy: Proxy, fake: FakeUpstream,
                                                                    token: str) -> None:
    response = post_json(proxy, CHAT, {"model": "claude-3-5-sonnet-20241022", "messages": USER}, key=token)
    assert response.status == 200, response.body
    record = fake.last("anthropic")
    assert record.header("Authorization") == f"Bearer {token}"
    assert record.header("x-api-key") is None


@pytest.mark.parametrize(("betas", "expected"), [
    ("", "interleaved-thinking-2025-05-14,claude-code-20250219"),
    ("  betas: [\"*\"]\n", "context-1m-2025-08-07,interleaved-thinking-2025-05-14,claude-code-20250219"),
    ("  betas: [\"context-1m-*\"]\n", "context-1m-2025-08-07"),
])
def test_billed_betas_need_the_operators_consent(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                                 betas: str, expected: str) -> None:
    proxy = make_proxy(text=config_text(fake, providers=(
        f'  anthropic-srv:\n    type: anthropic\n    base_url: "{fake.base_url}/anthropic/v1"\n'
        f'    api_key: {SRV_KEY}\n    models: ["*"]\n' + betas.replace("  betas", "    betas"))))
    sent = "context-1m-2025-08-07, interleaved-thinking-2025-05-14,claude-code-20250219"
    response = post_json(proxy, CHAT, {"model": "anthropic-srv/claude-sonnet-4-5", "messages": USER},
                         **{"anthropic-beta": sent})
    assert response.status == 200, response.body
    assert fake.last("anthropic").header("anthropic-beta") == expected


def test_with_the_callers_own_key_every_beta_passes_capped(proxy: Proxy, fake: FakeUpstream) -> None:
    key = "sk-ant-api03-callerkey0123456789"
    response = post_json(proxy, CHAT, {"model": "claude-sonnet-4-5", "messages": USER}, key=key,
                         **{"anthropic-beta": "context-1m-2025-08-07,web-search-2025-03-05"})
    assert response.status == 200, response.body
    assert fake.last("anthropic").header("anthropic-beta") == "context-1m-2025-08-07,web-search-2025-03-05"
    many = ",".join(f"claude-code-{i:08d}" for i in range(200))  # about 4 KB
    response = post_json(proxy, CHAT, {"model": "claude-sonnet-4-5", "messages": USER}, key=key,
                         **{"anthropic-beta": many})
    assert response.status == 200, response.body
    passed = fake.last("anthropic").header("anthropic-beta") or ""
    assert 0 < len(passed) <= 1024 and many.startswith(passed) and not passed.endswith(",")
