"""What crosses to each upstream: the right path and auth scheme, and nothing else of the caller's."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import GATEWAY_KEY, PROVIDER_KEY, USER, Proxy, post_json
from tests.fakes import FakeUpstream

# (model, flavor, path the upstream must see, header carrying the key, expected value or None)
RECEIVED = [
    ("gpt-4o", "openai", "/openai/v1/chat/completions", "Authorization", f"Bearer {PROVIDER_KEY}"),
    ("groq/llama3-70b-8192", "groq", "/groq/openai/v1/chat/completions", "Authorization", f"Bearer {PROVIDER_KEY}"),
    ("mistral-large-latest", "mistral", "/mistral/v1/chat/completions", "Authorization", f"Bearer {PROVIDER_KEY}"),
    ("lmstudio/qwen", "lmstudio", "/lmstudio/v1/chat/completions", "Authorization", f"Bearer {PROVIDER_KEY}"),
    ("ollama/llama3.2", "ollama", "/ollama/v1/chat/completions", "Authorization", None),
    ("azure/gpt-4o", "azure", "/azure/openai/deployments/gpt-4o/chat/completions", "api-key", PROVIDER_KEY),
]


@pytest.mark.parametrize(("model", "flavor", "path", "header", "value"), RECEIVED)
def test_each_provider_receives_its_own_scheme_and_nothing_else(
        proxy: Proxy, fake: FakeUpstream, model: str, flavor: str, path: str, header: str, value: str | None) -> None:
    response = post_json(proxy, "/v1/chat/completions", {"model": model, "messages": USER},
                         **{"Cookie": "session=secret-cookie", "Connection": "keep-alive, X-Secret",
                            "X-Secret": "hop", "Proxy-Authorization": "Basic c2VjcmV0",
                            "OpenAI-Organization": "org-caller"})
    assert response.status == 200, response.body
    record = fake.last(flavor)
    assert record.path == path
    assert record.header(header) == value
    if flavor == "azure":
        assert record.query["api-version"] == "2024-10-21"
        assert record.header("Authorization") is None
        assert record.json["model"] == model  # Azure keeps the caller's model field (it routes by deployment)
    sent = {k.lower(): v for k, v in record.headers.items()}
    assert "x-api-key" not in sent and GATEWAY_KEY not in str(sent)
    for name in ("cookie", "x-secret", "proxy-authorization"):
        assert name not in sent
    # The organisation header scopes the caller's own OpenAI key: it goes to OpenAI only.
    assert ("openai-organization" in sent) == (flavor == "openai")


def test_ollama_never_receives_the_callers_key_but_its_own(make_proxy: Callable[..., Proxy],
                                                           fake: FakeUpstream) -> None:
    proxy = make_proxy("""
routes:
  local:
    endpoints:
      - {provider: ollama, model: llama3.2, api_key: ollama-proxy-token}
""")
    assert post_json(proxy, "/v1/chat/completions", {"model": "local", "messages": USER}).status == 200
    assert fake.last("ollama").header("Authorization") == "Bearer ollama-proxy-token"


def test_server_side_key_replaces_the_callers(proxy: Proxy, fake: FakeUpstream) -> None:
    assert post_json(proxy, "/v1/chat/completions", {"model": "azure-eu/gpt-4o-eu", "messages": USER}).status == 200
    record = fake.last("azure")
    assert record.header("api-key") == "server-side-azure-key"
    assert PROVIDER_KEY not in str(dict(record.headers))


@pytest.mark.parametrize("model", [
    "azure/..", "azure/.", "azure/a/../../admin", "azure/x?api-version=1999-01-01", "azure/x#frag",
    "azure/gpt 4", "azure/%2e%2e", "azure/ünï",
])
def test_hostile_deployment_names_are_encoded_into_one_segment(proxy: Proxy, fake: FakeUpstream,
                                                               model: str) -> None:
    response = post_json(proxy, "/v1/chat/completions", {"model": model, "messages": USER})
    deployment = model.removeprefix("azure/")
    if deployment in (".", ".."):
        assert response.status == 400
        assert fake.requests == []
        return
    assert response.status == 200, response.body
    record = fake.last("azure")
    assert record.deployment == deployment  # decoded back to exactly what was sent, as one segment
    assert record.raw_path.startswith("/azure/openai/deployments/")
    assert record.raw_path.split("?")[0].count("/") == 6  # nothing escaped the deployment segment
    assert record.query["api-version"] == "2024-10-21"


@pytest.mark.parametrize("model", ["gpt-4o\r\nX-Injected: 1", "gpt-4o\n", "gpt\x00", "gpt-4o\x7f"])
def test_control_characters_in_model_names_are_refused(proxy: Proxy, fake: FakeUpstream, model: str) -> None:
    response = post_json(proxy, "/v1/chat/completions", {"model": model, "messages": USER})
    assert response.status == 400
    assert fake.requests == []


def test_model_names_in_bodies_travel_as_data(proxy: Proxy, fake: FakeUpstream) -> None:
    """For body-routed types a strange name is just a string in JSON; it never touches the URL."""
    response = post_json(proxy, "/v1/chat/completions", {"model": "openai/../../x?y#z", "messages": USER})
    assert response.status == 200
    record = fake.last("openai")
    assert record.path == "/openai/v1/chat/completions"
    assert record.model == "../../x?y#z"


def test_azure_with_an_old_api_version_gets_no_stream_options(make_proxy: Callable[..., Proxy],
                                                             fake: FakeUpstream) -> None:
    """The fake, like Azure, refuses stream_options before 2024-10-21: the stream must still work."""
    proxy = make_proxy(text=f"""
gateway_keys: [{GATEWAY_KEY}]
providers:
  azure: {{endpoint: "{fake.base_url}/azure", api_version: 2024-02-01}}
""")
    chunks = list(proxy.client().chat.completions.create(
        model="azure/gpt-4o", messages=USER, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "[azure] hello"
    record = fake.last("azure")
    assert record.query["api-version"] == "2024-02-01"
    assert "stream_options" not in record.json


def test_no_key_reaches_any_log_line(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                     caplog: pytest.LogCaptureFixture) -> None:
    """Failures of every kind, logged at DEBUG: neither the caller's key nor the gateway key shows."""
    import logging

    caplog.set_level(logging.DEBUG)
    proxy = make_proxy("""
routes:
  noisy:
    strategy: priority
    timeouts: {first_byte: 0.2, total: 0.2}
    endpoints:
      - {provider: openai, model: fail-500, priority: 0}
      - {provider: azure-eu, model: hang, priority: 1}
""")
    for body in ({"model": "noisy", "messages": USER}, {"model": "noisy", "messages": USER, "stream": True},
                 {"model": "gpt-cut-mid-stream", "messages": USER, "stream": True},
                 {"model": "mistral/fail-401", "messages": USER}, {"model": "nope", "messages": USER},
                 {"model": "gpt-4o", "messages": "not a list"}):
        post_json(proxy, "/v1/chat/completions", body)
    post_json(proxy, "/v1/chat/completions", {"model": "gpt-4o", "messages": USER}, gateway_key="wrong-" + GATEWAY_KEY)
    text = "\n".join(record.getMessage() + (record.exc_text or "") for record in caplog.records)
    assert PROVIDER_KEY not in text
    assert GATEWAY_KEY not in text
    assert "server-side-azure-key" not in text
