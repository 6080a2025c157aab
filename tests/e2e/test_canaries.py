"""Security canaries: unique random strings sent where secrets travel, which must then be found
nowhere they do not belong — in no upstream request (headers, path, query, body) and in no log
line, on the happy path and on every failure path (5xx, timeouts, broken streams, bad JSON).

The helpers are meant for reuse (the observability work checks its log lines with them)::

    from tests.e2e.test_canaries import Canaries, assert_nowhere, canaries, debug_logs  # noqa: F401

    def test_x(canaries: Canaries, debug_logs: pytest.LogCaptureFixture, fake: FakeUpstream) -> None:
        secret = canaries("key")
        ...  # send it
        assert_nowhere(secret, fake, debug_logs)

`canaries` makes unguessable strings of letters and digits only, so no URL, JSON or header encoding
can disguise one; `debug_logs` is caplog at DEBUG for the gateway's, aiohttp's and asyncio's
loggers (logging is process-global, so the proxy's thread is captured too); `assert_nowhere`
says exactly where a canary turned up.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from tests.conftest import (
    GATEWAY_KEY,
    PROVIDER_KEY,
    USER,
    Proxy,
    RawResponse,
    config_text,
    post_json,
    raw_request,
)
from tests.fakes import FakeUpstream, Recorded, Scripted

# Where an allowed appearance may be: "header <Name>", "path", "query", "body".
Allow = Callable[[Recorded, str], bool]


# --------------------------------------------------------------------------------------------------
# The reusable part: canaries, logs at DEBUG, and where a canary may not be


class Canaries:
    """Makes canaries: ``canaries("label")`` → ``"canarylabel<24 hex digits>"``, never the same twice."""

    def __init__(self) -> None:
        self.issued: list[str] = []

    def __call__(self, label: str = "") -> str:
        value = "canary" + "".join(c for c in label if c.isalnum()) + secrets.token_hex(12)
        self.issued.append(value)
        return value


@pytest.fixture
def canaries() -> Canaries:
    """A fresh canary factory per test."""
    return Canaries()


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog at DEBUG for everything: the root logger and the loggers a gateway writes through."""
    caplog.set_level(logging.DEBUG)
    for name in ("tensorwall_proxy", "aiohttp", "asyncio"):
        caplog.set_level(logging.DEBUG, logger=name)
    yield caplog


def log_text(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """(logger name, everything a record could print) for every captured record: the message,
    the formatted exception and stack, and the record's attributes (args and extras included)."""
    formatter = logging.Formatter()
    out: list[tuple[str, str]] = []
    for record in caplog.records:
        parts = [record.getMessage(), repr(vars(record))]
        if record.exc_info:
            parts.append(formatter.formatException(record.exc_info))
        if record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(record.stack_info)
        out.append((record.name, "\n".join(parts)))
    return out


def _places(rec: Recorded) -> Iterator[tuple[str, str]]:
    yield "path", rec.raw_path
    yield "query", repr(rec.query)
    for name, value in rec.headers.items():
        yield f"header {name}", f"{name}: {value}"
    yield "body", rec.body.decode("utf-8", "replace")


def assert_nowhere(canary: str, fake: FakeUpstream | None = None, caplog: pytest.LogCaptureFixture | None = None,
                   *, responses: Iterable[RawResponse] = (), allow: Allow | None = None) -> None:
    """The canary is in no upstream request the fake recorded (OAuth token requests included),
    no captured log record, and none of ``responses`` (what the caller got back).

    ``allow(record, place)`` may permit the places where the canary is expected, e.g. the caller's
    own key in the ``Authorization`` header of the provider it is meant for.
    """
    found: list[str] = []
    if fake is not None:
        for index, rec in enumerate([*fake.requests, *fake.token_requests]):
            for place, text in _places(rec):
                if canary in text and not (allow is not None and allow(rec, place)):
                    found.append(f"upstream request #{index} ({rec.flavor} {rec.method} {rec.path}), {place}")
    if caplog is not None:
        for name, text in log_text(caplog):
            if canary in text:
                found.append(f"log record of {name!r}: {text[:300]!r}")
    for index, response in enumerate(responses):
        if canary in response.body.decode("utf-8", "replace"):
            found.append(f"response #{index} body (status {response.status})")
        for name, value in response.headers.items():
            if canary in value:
                found.append(f"response #{index} header {name}")
    assert not found, f"canary {canary[:14]}… found in:\n  " + "\n  ".join(found)


def only_authorization_of(*flavors: str) -> Allow:
    """Allow the canary only as the Authorization header of these flavors (the caller's key where it belongs)."""
    return lambda rec, place: rec.flavor in flavors and place.lower() == "header authorization"


# --------------------------------------------------------------------------------------------------
# The configuration: the base config plus an Anthropic account with its own server-side key


ANTHROPIC_SRV = "server-side-anthropic-key"


def canary_config(fake: FakeUpstream, gateway_key: str = GATEWAY_KEY, routes: str = "") -> str:
    text = config_text(fake, providers=(f'  anthropic-srv: {{type: anthropic, base_url: "{fake.base_url}/anthropic/v1",'
                                        f' api_key: {ANTHROPIC_SRV}, models: ["claude-*"]}}\n'))
    # A server-side key serves through its prefix only what `models:` matches: open azure-eu wide.
    text = text.replace("models: [gpt-4o-eu]", 'models: [gpt-4o-eu, "*"]')
    return text.replace(f"gateway_keys: [{GATEWAY_KEY}]", f"gateway_keys: [{gateway_key}]") + routes


FAILING_ROUTES = """
routes:
  noisy:
    strategy: priority
    timeouts: {first_byte: 0.2, total: 0.2, idle: 0.2}
    endpoints:
      - {provider: openai, model: fail-500, priority: 0}
      - {provider: azure-eu, model: hang, priority: 1}
  stalls:
    timeouts: {first_byte: 2, total: 2, idle: 0.2}
    endpoints:
      - {provider: openai, model: slow-stream}
"""

# Every provider the base config points at the fake, by a model that reaches it.
EVERY_PROVIDER = ["gpt-4o", "groq/llama3-70b-8192", "mistral-large-latest", "lmstudio/qwen", "ollama/llama3.2",
                  "azure/gpt-4o", "azure-eu/gpt-4o", "anthropic-srv/claude-3-5-sonnet-20241022"]


def exercise(proxy: Proxy, scripted: Callable[[str, Scripted], str], send: Callable[..., RawResponse]
             ) -> list[RawResponse]:
    """Every kind of request, good and bad, through `send(path, body)`; returns what the caller got."""
    bad_json = scripted("gpt-bad-json", (200, {"Content-Type": "application/json"}, "{not json"))
    bad_events = scripted("gpt-bad-events", (200, {"Content-Type": "text/event-stream"}, "data: {not json\n\n"))
    chat = "/v1/chat/completions"
    bodies: list[tuple[str, Any]] = []
    for model in EVERY_PROVIDER:
        bodies.append((chat, {"model": model, "messages": USER}))
        bodies.append((chat, {"model": model, "messages": USER, "stream": True,
                              "stream_options": {"include_usage": True}}))
    bodies += [
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a", "b"]}),
        ("/v1/embeddings", {"model": "azure-eu/text-embedding-3-small", "input": "a"}),
        # Failure paths: 5xx then a timeout, an idle timeout in-band, broken streams, upstream auth
        # and bad requests, bad JSON both ways, our own 4xx.
        (chat, {"model": "noisy", "messages": USER}),
        (chat, {"model": "noisy", "messages": USER, "stream": True}),
        (chat, {"model": "stalls", "messages": USER, "stream": True}),
        (chat, {"model": "gpt-cut-mid-stream", "messages": USER, "stream": True}),
        (chat, {"model": "gpt-cut-mid-stream", "messages": USER}),
        (chat, {"model": "gpt-error-mid-stream", "messages": USER, "stream": True}),
        (chat, {"model": "mistral/fail-401", "messages": USER}),
        (chat, {"model": "azure-eu/fail-400", "messages": USER}),
        (chat, {"model": "anthropic-srv/claude-fail-529", "messages": USER, "stream": True}),
        (chat, {"model": "gpt-fail-429", "messages": USER}),
        (chat, {"model": bad_json, "messages": USER}),
        (chat, {"model": bad_events, "messages": USER, "stream": True}),
        (chat, b"{this is not json"),
        (chat, {"model": "gpt-4o", "messages": "not a list"}),
        (chat, {"model": "no-such-model", "messages": USER}),
        ("/v1/embeddings", {"model": "groq/llama3-70b-8192", "input": "a"}),
    ]
    return [send(path, body) for path, body in bodies]


def _post_raw(proxy: Proxy, path: str, body: Any, headers: dict[str, str]) -> RawResponse:
    """post_json, but a bytes body goes as it is (bad JSON)."""
    if isinstance(body, bytes):
        return raw_request(proxy.url + path, body, {"Content-Type": "application/json", **headers})
    key = headers.get("Authorization", "").removeprefix("Bearer ") or None
    gateway_key = headers.get("X-API-Key")
    rest = {k: v for k, v in headers.items() if k not in ("Authorization", "X-API-Key")}
    return post_json(proxy, path, body, key=key, gateway_key=gateway_key, **rest)


def _assert_exercised(responses: list[RawResponse], fake: FakeUpstream) -> None:
    """The battery really ran: answers and failures both, and most providers were reached."""
    statuses = [r.status for r in responses]
    assert statuses.count(200) >= len(EVERY_PROVIDER) * 2, statuses
    assert {400, 401, 404, 429, 502, 504} <= set(statuses), statuses
    assert {r.flavor for r in fake.requests} >= {"openai", "groq", "mistral", "lmstudio", "ollama", "azure",
                                                 "anthropic"}


# --------------------------------------------------------------------------------------------------
# The gateway key (X-API-Key) never leaves the gateway


def test_gateway_key_reaches_no_upstream_and_no_log(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                                    canaries: Canaries, debug_logs: pytest.LogCaptureFixture,
                                                    scripted: Callable[[str, Scripted], str]) -> None:
    gateway_key = canaries("gateway")
    proxy = make_proxy(text=canary_config(fake, gateway_key, FAILING_ROUTES))
    headers = {"X-API-Key": gateway_key, "Authorization": f"Bearer {PROVIDER_KEY}"}
    responses = exercise(proxy, scripted, lambda path, body: _post_raw(proxy, path, body, headers))
    _assert_exercised(responses, fake)
    assert_nowhere(gateway_key, fake, debug_logs, responses=responses)


def test_a_wrong_gateway_key_is_neither_logged_nor_echoed(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                                          canaries: Canaries,
                                                          debug_logs: pytest.LogCaptureFixture) -> None:
    proxy = make_proxy(text=canary_config(fake))
    wrong = canaries("wrong")
    responses = [post_json(proxy, "/v1/chat/completions", {"model": "gpt-4o", "messages": USER}, gateway_key=wrong),
                 post_json(proxy, "/v1/embeddings", {"model": "text-embedding-3-small", "input": "a"},
                           gateway_key=wrong),
                 raw_request(proxy.url + "/v1/models", method="GET", headers={"X-API-Key": wrong})]
    assert [r.status for r in responses] == [401, 401, 401]
    assert all(r.json()["error"]["code"] == "invalid_gateway_key" for r in responses)
    assert fake.requests == []
    assert_nowhere(wrong, fake, debug_logs, responses=responses)


# --------------------------------------------------------------------------------------------------
# The caller's provider key: to the one key scope that uses it, and nowhere else (a route that
# would carry it to two is refused at load: tests/unit/test_config.py, tests/e2e/test_relay.py)


@pytest.mark.slow
@pytest.mark.parametrize("first", ["fail-500", "fail-503", "fail-429", "hang", "cut-mid-stream"])
@pytest.mark.parametrize("second", ["azure-eu", "anthropic-srv"])
@pytest.mark.parametrize("stream", [False, True])
def test_callers_key_never_reaches_a_fallback_of_another_type(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, canaries: Canaries,
        debug_logs: pytest.LogCaptureFixture, first: str, second: str, stream: bool) -> None:
    key = canaries("callerkey")
    model = "gpt-4o" if second == "azure-eu" else "claude-3-5-sonnet-20241022"
    proxy = make_proxy(text=canary_config(fake, routes=f"""
routes:
  mixed:
    strategy: priority
    timeouts: {{first_byte: 0.2, total: 0.2, idle: 0.2}}
    endpoints:
      - {{provider: openai, model: {first}, priority: 0}}
      - {{provider: {second}, model: {model}, priority: 2}}
"""))
    response = post_json(proxy, "/v1/chat/completions", {"model": "mixed", "messages": USER, "stream": stream},
                         key=key)
    assert response.status == 200, response.body
    # The key did travel, to the endpoint it is meant for: its absence elsewhere means something.
    assert fake.for_flavor("openai")[0].header("Authorization") == f"Bearer {key}"
    if first == "cut-mid-stream" and stream:
        # Cut after content was relayed: past the commit point, an in-band error and no fallback.
        assert response.headers["x-tensorwall-provider"] == "openai"
        assert '"error"' in response.text.rstrip().split("\n\n")[-1]
        assert [r.flavor for r in fake.requests] == ["openai"]
    else:
        assert response.headers["x-tensorwall-provider"] == second
        assert [r.flavor for r in fake.requests] == ["openai", "azure" if second == "azure-eu" else "anthropic"]
    assert_nowhere(key, fake, debug_logs, responses=[response], allow=only_authorization_of("openai"))


def test_callers_key_reaches_only_the_authorization_header(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                                           canaries: Canaries,
                                                           debug_logs: pytest.LogCaptureFixture,
                                                           scripted: Callable[[str, Scripted], str]) -> None:
    """Through the whole battery: the key is the Bearer of forward-auth providers (Azure's api-key
    for the azure provider, which forwards it), and is in no body, path, other header or log."""
    key = canaries("callerkey")
    proxy = make_proxy(text=canary_config(fake, routes=FAILING_ROUTES))
    headers = {"X-API-Key": GATEWAY_KEY, "Authorization": f"Bearer {key}"}
    responses = exercise(proxy, scripted, lambda path, body: _post_raw(proxy, path, body, headers))
    _assert_exercised(responses, fake)
    forwarded = {"openai", "groq", "mistral", "lmstudio"}

    def allowed(rec: Recorded, place: str) -> bool:
        if rec.flavor in forwarded:
            return place.lower() == "header authorization"
        # The `azure` provider forwards the caller's key as api-key; azure-eu has its own.
        return rec.flavor == "azure" and place.lower() == "header api-key" and rec.header("api-key") == key

    assert_nowhere(key, fake, debug_logs, allow=allowed)
    for rec in fake.requests:
        if rec.flavor in ("ollama", "anthropic") or rec.header("api-key") == "server-side-azure-key":
            assert key not in str(dict(rec.headers)), rec.flavor


# --------------------------------------------------------------------------------------------------
# Cookies, proxy credentials, custom headers, the query string: nothing of the caller's crosses


def test_caller_headers_reach_no_upstream_and_no_log(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                                     canaries: Canaries, debug_logs: pytest.LogCaptureFixture,
                                                     scripted: Callable[[str, Scripted], str]) -> None:
    cookie, proxy_auth, custom, api_key, goog = (canaries("cookie"), canaries("proxyauth"), canaries("custom"),
                                                 canaries("apikey"), canaries("goog"))
    proxy = make_proxy(text=canary_config(fake, routes=FAILING_ROUTES))
    headers = {"X-API-Key": GATEWAY_KEY, "Authorization": f"Bearer {PROVIDER_KEY}",
               "Cookie": f"session={cookie}", "Proxy-Authorization": f"Bearer {proxy_auth}",
               "X-Custom-Secret": custom, "Connection": "keep-alive, X-Custom-Secret",
               "api-key": api_key, "x-goog-api-key": goog}
    responses = exercise(proxy, scripted, lambda path, body: _post_raw(proxy, path, body, headers))
    _assert_exercised(responses, fake)
    for canary in (cookie, proxy_auth, custom, api_key, goog):
        assert_nowhere(canary, fake, debug_logs, responses=responses)


def test_query_string_of_the_caller_is_not_forwarded(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                                     canaries: Canaries,
                                                     debug_logs: pytest.LogCaptureFixture) -> None:
    proxy = make_proxy(text=canary_config(fake))
    secret = canaries("query")
    headers = {"Content-Type": "application/json", "X-API-Key": GATEWAY_KEY,
               "Authorization": f"Bearer {PROVIDER_KEY}"}
    responses = [raw_request(f"{proxy.url}/v1/chat/completions?api-key={secret}&key={secret}",
                             f'{{"model": "{model}", "messages": [{{"role": "user", "content": "hi"}}]}}', headers)
                 for model in EVERY_PROVIDER]
    assert [r.status for r in responses] == [200] * len(EVERY_PROVIDER)
    assert_nowhere(secret, fake, debug_logs, responses=responses)


@pytest.mark.parametrize("model", ["ollama/llama3.2", "ollama/fail-500", "ollama/hang"])
@pytest.mark.parametrize("stream", [False, True])
def test_ollama_never_receives_the_callers_authorization(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                                         canaries: Canaries, debug_logs: pytest.LogCaptureFixture,
                                                         model: str, stream: bool) -> None:
    key = canaries("ollamakey")
    proxy = make_proxy(text=canary_config(fake).replace("timeouts: {connect: 2, first_byte: 5, idle: 5, total: 10}",
                                                        "timeouts: {connect: 2, first_byte: 0.2, idle: 0.2, total: 0.2}"))
    response = post_json(proxy, "/v1/chat/completions", {"model": model, "messages": USER, "stream": stream},
                         key=key)
    assert response.status == {"ollama/llama3.2": 200, "ollama/fail-500": 502, "ollama/hang": 504}[model]
    assert [r.flavor for r in fake.requests] == ["ollama"]
    assert fake.last("ollama").header("Authorization") is None
    assert_nowhere(key, fake, debug_logs, responses=[response])
