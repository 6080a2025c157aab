"""Whose credential goes where (DESIGN §6, §14), against the real proxy and the fake upstream.

The caller's key reaches one key scope per request and never another vendor; a server-side key
serves only the models its provider lists, and never comes back in upstream text; Anthropic gets
OAuth tokens as a Bearer and, under the operator's key, only the behavioural betas.
"""

from __future__ import annotations

import http.client
import json
import logging
from urllib.parse import urlsplit

import pytest

from tests.conftest import GATEWAY_KEY, PROVIDER_KEY, Proxy, post_json
from tests.fakes import FakeUpstream

USER = [{"role": "user", "content": "hello"}]
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
