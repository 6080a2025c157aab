"""Principals through the gateway (DESIGN §13, §14), with the official SDKs: model allowlists on every
door, the models list, an expired key, 429 ``gateway_rate_limited`` with its headers on each
dialect, tokens reserved and corrected after a stream and after a disconnect, a lease released when
the caller leaves, and the principal's name in the access log and the metrics."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tensorwall_proxy import api
from tests.conftest import (
    GATEWAY_KEY,
    PROVIDER_KEY,
    USER,
    Proxy,
    ServerThread,
    config_text,
    open_request,
    post_json,
    raw_request,
    wait_for,
)
from tests.fakes import FakeUpstream

TEAM_KEY = "team-a-key-0123"
OTHER_KEY = "other-key-4567"


def principals(fake: FakeUpstream, main: str, extra: str = "") -> str:
    """The test config with ``main`` (YAML of a mapping entry for GATEWAY_KEY, flow style) as its
    first principal, a named team that may use only gpt-4* and claude-*, and an expired key."""
    keys = (f"gateway_keys:\n  - {main}\n"
            f"  - {{name: team-a, key: {TEAM_KEY}, models: [\"gpt-4*\", \"claude-*\"]}}\n"
            f"  - {{name: retired, key: {OTHER_KEY}, expires: 2020-01-31}}\n")
    return config_text(fake, extra).replace(f"gateway_keys: [{GATEWAY_KEY}]\n", keys)


# A route on the provider with a server-side key, for clients that hold only a gateway key.
TEAM_ROUTE = "routes:\n  gpt-4-team:\n    endpoints: [{provider: azure-eu, model: gpt-4o-eu}]\n"


@pytest.fixture
def keyed(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> Proxy:
    return make_proxy(text=principals(
        fake, f"{{name: main, key: {GATEWAY_KEY}, limits: {{requests_per_minute: 3}}}}", TEAM_ROUTE))


def _openai(proxy: Proxy, key: str, bearer_only: bool = False) -> openai.OpenAI:
    """The openai SDK with gateway key ``key`` in X-API-Key and the caller's provider key as the
    Bearer; ``bearer_only``: the gateway key alone, as `OPENAI_API_KEY` (sent as the Bearer)."""
    if bearer_only:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0)
    else:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=PROVIDER_KEY, max_retries=0,
                               default_headers={"X-API-Key": key})
    proxy.clients.append(client)
    return client


def _anthropic(proxy: Proxy, key: str = GATEWAY_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key=key, max_retries=0)


# --- allowlists --------------------------------------------------------------------------------


DOORS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {"model": "mistral-large", "messages": USER}),
    "completions": ("/v1/completions", {"model": "mistral-large", "prompt": "hi"}),
    "embeddings": ("/v1/embeddings", {"model": "mistral-embed", "input": "hi"}),
    "responses": ("/v1/responses", {"model": "mistral-large", "input": "hi", "store": False}),
    "messages": ("/v1/messages", {"model": "mistral-large", "max_tokens": 10, "messages": USER}),
    "count_tokens": ("/v1/messages/count_tokens", {"model": "mistral-large", "messages": USER}),
}


@pytest.mark.parametrize("door", DOORS)
def test_a_model_outside_the_allowlist_is_403_on_every_door(keyed: Proxy, fake: FakeUpstream, door: str) -> None:
    path, body = DOORS[door]
    answer = post_json(keyed, path, body, gateway_key=TEAM_KEY)
    assert answer.status == 403, answer.text
    error = answer.json()
    if door in ("messages", "count_tokens"):
        assert error["type"] == "error"
        assert error["error"]["type"] == "permission_error" and error["error"]["code"] == "model_not_allowed"
    else:
        assert error["error"]["type"] == "permission_error" and error["error"]["code"] == "model_not_allowed"
    assert fake.requests == []  # refused before any upstream call


def test_the_allowlist_through_the_sdks(keyed: Proxy, fake: FakeUpstream) -> None:
    client = _openai(keyed, TEAM_KEY)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(model="llama3-70b", messages=USER)  # type: ignore[arg-type]
    assert refused.value.code == "model_not_allowed"
    assert client.chat.completions.create(model="gpt-4o", messages=USER).choices  # type: ignore[arg-type]
    with pytest.raises(anthropic.PermissionDeniedError):
        _anthropic(keyed, TEAM_KEY).messages.create(model="mistral-large", max_tokens=5, messages=USER)  # type: ignore[arg-type]
    # The gateway key as the Bearer (OPENAI_API_KEY), for a route with a server-side credential.
    bearer = _openai(keyed, TEAM_KEY, bearer_only=True)
    assert bearer.chat.completions.create(model="gpt-4-team", messages=USER).choices  # type: ignore[arg-type]
    with pytest.raises(openai.PermissionDeniedError):
        bearer.chat.completions.create(model="azure-eu/gpt-4o-eu", messages=USER)  # type: ignore[arg-type]


def test_the_models_list_shows_only_what_the_principal_may_use(keyed: Proxy) -> None:
    everything = [m.id for m in keyed.client().models.list()]
    team = _openai(keyed, TEAM_KEY)
    visible = [m.id for m in team.models.list()]
    assert "openai/gpt-4o" in everything and "azure-eu/gpt-4o-eu" in everything
    assert visible == [m for m in everything if m.startswith(("gpt-4", "claude-"))]
    with pytest.raises(openai.NotFoundError) as hidden:
        team.models.retrieve("openai/gpt-4o")
    assert hidden.value.code == "model_not_found"
    assert keyed.client().models.retrieve("openai/gpt-4o").id == "openai/gpt-4o"


def test_an_expired_key_is_refused_like_a_wrong_one(keyed: Proxy, fake: FakeUpstream) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        _openai(keyed, OTHER_KEY).chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
    assert refused.value.code == "invalid_gateway_key"
    assert fake.requests == []


# --- requests per minute -----------------------------------------------------------------------


def test_the_fourth_request_of_three_a_minute_is_429_with_the_headers(keyed: Proxy, fake: FakeUpstream) -> None:
    client = keyed.client()
    remaining = []
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
        remaining.append(raw.headers["x-ratelimit-remaining-requests"])
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
    assert remaining == ["2", "1", "0"]
    assert len(fake.requests) == 3
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
    error = limited.value
    assert error.code == "gateway_rate_limited"
    # The next request is due 20 s after the burst, less the moments the burst took.
    assert error.response.headers["retry-after"] in ("19", "20")
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert error.response.headers["x-ratelimit-reset-requests"] in ("59s", "1m")
    assert "x-should-retry" not in error.response.headers
    assert len(fake.requests) == 3  # the 429 cost no upstream call
    # The messages door: Anthropic's shape and headers, the same counters.
    with pytest.raises(anthropic.RateLimitError) as on_messages:
        _anthropic(keyed).messages.create(model="claude-3-5-sonnet", max_tokens=5, messages=USER)  # type: ignore[arg-type]
    headers = on_messages.value.response.headers
    assert on_messages.value.body["error"]["code"] == "gateway_rate_limited"  # type: ignore[index]
    assert headers["anthropic-ratelimit-requests-limit"] == "3"
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert "x-ratelimit-limit-requests" not in headers


def test_a_principal_without_limits_touches_no_store(keyed: Proxy, tmp_path: Path) -> None:
    client = _openai(keyed, TEAM_KEY)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
    assert "x-ratelimit-limit-requests" not in raw.headers
    assert keyed.app[api.GATEWAY].limits.local.kept == {}
    assert not (tmp_path / "state" / "limits.db").exists()  # never opened
    post_json(keyed, "/v1/chat/completions", {"model": "gpt-4o", "messages": USER})  # a limited principal
    assert (tmp_path / "state" / "limits.db").is_file()


# --- tokens ------------------------------------------------------------------------------------


def _day_proxy(make_proxy: Callable[..., Proxy], fake: FakeUpstream, extra: str = "") -> Proxy:
    return make_proxy(text=principals(
        fake, f"{{name: main, key: {GATEWAY_KEY}, limits: {{tokens_per_day: 100000, concurrent: 1}}}}", extra))


def _remaining(headers: Any) -> int:
    return int(headers["x-ratelimit-remaining-tokens"])


def test_tokens_are_reserved_and_corrected_after_a_stream(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                                          servers: ServerThread) -> None:
    proxy = _day_proxy(make_proxy, fake)
    client = proxy.client()
    messages = [{"role": "user", "content": "one two three four"}]  # 18 characters: 5 tokens estimated
    with client.chat.completions.with_streaming_response.create(
            model="gpt-4o", messages=messages, max_tokens=100, stream=True) as streamed:  # type: ignore[arg-type]
        assert _remaining(streamed.headers) == 100000 - 105
        chunks = list(streamed.parse())
    assert chunks
    # The fake counts words: 4 in, 5 out ("[openai] one two three four"). The correction is made
    # before the stream's end goes out, and its lease released.
    main = proxy.config.gateway_keys[0]
    assert main.limits is not None
    now = servers.run(proxy.app[api.GATEWAY].limits.standing(main, main.limits))
    assert (now.tokens_today, now.leases) == (9, 0)
    # The next request's own reservation (100 + 5) is the only other charge.
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages,  # type: ignore[arg-type]
                                                           max_tokens=100)
    assert _remaining(raw.headers) == 100000 - 9 - 105
    answer = raw.parse()
    assert answer.usage is not None and answer.usage.total_tokens == 9
    # The route's cap, then limits.default_output_reservation, when the request names none.
    after = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
    assert _remaining(after.headers) == 100000 - 9 - 9 - 4096 - 5


def test_a_caller_that_leaves_releases_its_lease_and_keeps_its_reservation(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    proxy = _day_proxy(make_proxy, fake, "routes:\n  slow:\n    max_output_tokens: 50\n"
                                         "    endpoints: [{provider: openai, model: gpt-slow-stream}]\n")
    sock = open_request(proxy, {"model": "slow", "messages": [{"role": "user", "content": "a b c d"}],
                                "stream": True})
    received = b""
    while b"[openai]" not in received:
        received += sock.recv(65536)
    assert b"x-ratelimit-remaining-tokens: " + str(100000 - 52).encode() in received.lower()
    # The lease is held: a second request while the first streams is refused.
    busy = post_json(proxy, "/v1/chat/completions", {"model": "gpt-4o", "messages": USER})
    assert busy.status == 429 and busy.json()["error"]["code"] == "gateway_rate_limited"
    assert busy.headers["retry-after"] == "1"
    sock.close()
    assert wait_for(lambda: fake.for_model("gpt-slow-stream")[0].disconnected_at is not None)

    def admitted() -> bool:
        return post_json(proxy, "/v1/chat/completions", {"model": "gpt-4o", "messages": USER,
                                                         "max_tokens": 10}).status == 200

    assert wait_for(admitted)
    # The stream left before its usage came: its reservation (50 + 2) stands, as the caller may
    # have been billed for it; the answer that followed was corrected to its 3 tokens.
    raw = post_json(proxy, "/v1/chat/completions", {"model": "gpt-4o", "messages": USER, "max_tokens": 10})
    assert _remaining(raw.headers) == 100000 - 52 - 3 - 12


def test_a_failed_request_gives_its_reservation_back(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    proxy = _day_proxy(make_proxy, fake)
    failed = post_json(proxy, "/v1/chat/completions", {"model": "gpt-fail-400", "messages": USER, "max_tokens": 10})
    assert failed.status == 400
    raw = post_json(proxy, "/v1/chat/completions", {"model": "gpt-4o", "messages": USER, "max_tokens": 10})
    assert _remaining(raw.headers) == 100000 - 12


def test_a_spent_day_is_429_until_midnight_and_says_not_to_retry(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    proxy = make_proxy(text=principals(fake, f"{{name: main, key: {GATEWAY_KEY}, limits: {{tokens_per_day: 50}}}}"))
    assert post_json(proxy, "/v1/chat/completions", {"model": "gpt-4o", "messages": USER, "max_tokens": 40}).status \
        == 200
    refused = post_json(proxy, "/v1/chat/completions", {"model": "gpt-4o", "messages": USER, "max_tokens": 48})
    assert refused.status == 429
    assert int(refused.headers["retry-after"]) > 60 and refused.headers["x-should-retry"] == "false"
    assert refused.headers["x-ratelimit-limit-tokens"] == "50"
    assert refused.headers["x-ratelimit-remaining-tokens"] == "47"


# --- who: the access log and the metrics --------------------------------------------------------


def test_the_access_log_and_metrics_name_the_principal_never_the_key(
        keyed: Proxy, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tensorwall_proxy.access")
    _openai(keyed, TEAM_KEY).chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
    plain = post_json(keyed, "/v1/chat/completions", {"model": "gpt-4o", "messages": USER})
    assert plain.status == 200
    gateway = keyed.app[api.GATEWAY]

    def logged() -> list[str]:
        gateway.ledger.flush()  # the ledger accounts for a request a moment after its answer
        return [json.loads(r.getMessage())["principal"] for r in caplog.records if r.name == "tensorwall_proxy.access"]

    assert wait_for(lambda: len(logged()) == 2)
    assert logged() == ["team-a", "main"]
    scrape = raw_request(keyed.url + "/metrics", method="GET").text
    assert 'principal="team-a"' in scrape and 'principal="main"' in scrape
    assert TEAM_KEY not in scrape and GATEWAY_KEY not in scrape and PROVIDER_KEY not in scrape


def test_a_limited_principals_headers_replace_the_upstreams_on_a_success(
        keyed: Proxy, scripted: Callable[[str, Any], str]) -> None:
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    model = scripted("gpt-4o-scripted", (200, {"x-ratelimit-remaining-requests": "99",
                                               "x-ratelimit-limit-requests": "100",
                                               "x-ratelimit-remaining-tokens": "5000"}, answer))
    raw = keyed.client().chat.completions.with_raw_response.create(model=model, messages=USER)  # type: ignore[arg-type]
    assert raw.headers["x-ratelimit-limit-requests"] == "3"
    assert raw.headers["x-ratelimit-remaining-requests"] == "2"
    assert raw.headers["x-ratelimit-remaining-tokens"] == "5000"  # a dimension this principal has no limit on
    # Without limits, the upstream's pass as before.
    team = _openai(keyed, TEAM_KEY).chat.completions.with_raw_response.create(model=model, messages=USER)  # type: ignore[arg-type]
    assert team.headers["x-ratelimit-remaining-requests"] == "99"


def test_a_messages_answer_carries_anthropics_rate_limit_headers(keyed: Proxy) -> None:
    # The caller's own Anthropic key as the SDK's key (sent as the Bearer), the gateway key beside it.
    with anthropic.Anthropic(base_url=keyed.url, api_key=PROVIDER_KEY, max_retries=0,
                             default_headers={"X-API-Key": GATEWAY_KEY}) as sdk:
        raw = sdk.messages.with_raw_response.create(model="claude-3-5-sonnet", max_tokens=5,
                                                    messages=USER)  # type: ignore[arg-type]
    assert raw.headers["anthropic-ratelimit-requests-limit"] == "3"
    assert raw.headers["anthropic-ratelimit-requests-remaining"] == "2"
    assert raw.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert raw.parse().content
