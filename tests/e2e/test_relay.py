"""The relay against the real fake upstream: fallback, the attempt cap, cooldowns, timeouts, the commit point."""

from __future__ import annotations

import time
from collections.abc import Callable

import openai
import pytest

from tensorwall_proxy.api import GATEWAY
from tensorwall_proxy.router import RouteEndpoint
from tests.conftest import PROVIDER_KEY, USER, Proxy, RawResponse, config_text, post_json, wait_for
from tests.fakes import FakeUpstream


def _post(proxy: Proxy, body: dict[str, object]) -> RawResponse:
    return post_json(proxy, "/v1/chat/completions", body)


def test_fallback_from_a_failing_endpoint(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    proxy = make_proxy("""
routes:
  resilient:
    strategy: priority
    endpoints:
      - {provider: openai, model: fail-500, priority: 0}
      - {provider: azure-eu, model: gpt-4o, priority: 1}
""")
    response = proxy.client().chat.completions.with_raw_response.create(model="resilient", messages=USER)
    assert response.parse().choices[0].message.content == "[azure] hello"
    assert response.headers["x-tensorwall-provider"] == "azure-eu"
    assert [r.flavor for r in fake.requests] == ["openai", "azure"]


@pytest.mark.parametrize("fault", ["fail-500", "fail-503", "fail-429"])
def test_streamed_fallback_happens_before_the_commit_point(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                                           fault: str) -> None:
    proxy = make_proxy(f"""
routes:
  resilient:
    strategy: priority
    endpoints:
      - {{provider: openai, model: {fault}, priority: 0}}
      - {{provider: azure-eu, model: gpt-4o, priority: 1}}
""")
    chunks = list(proxy.client().chat.completions.create(model="resilient", messages=USER, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "[azure] hello"


def test_no_fallback_on_a_request_error(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    """A 400 says the request itself is wrong: the next endpoint would refuse it too."""
    proxy = make_proxy("""
routes:
  strict:
    strategy: priority
    endpoints:
      - {provider: openai, model: fail-400, priority: 0}
      - {provider: azure-eu, model: gpt-4o, priority: 1}
""")
    with pytest.raises(openai.BadRequestError) as caught:
        proxy.client().chat.completions.create(model="strict", messages=USER)
    assert caught.value.response.headers["x-tensorwall-provider"] == "openai"
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert len(fake.requests) == 1


def test_attempt_cap_bounds_upstream_calls(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    endpoints = "\n".join(f"      - {{provider: azure-eu, model: fail-500-{i}, priority: {i}}}" for i in range(6))
    proxy = make_proxy(f"""
retries: {{attempts: 3}}
routes:
  many:
    strategy: priority
    endpoints:
{endpoints}
""")
    with pytest.raises(openai.InternalServerError) as caught:
        proxy.client().chat.completions.create(model="many", messages=USER)
    assert caught.value.status_code == 502
    assert [r.deployment for r in fake.requests] == ["fail-500-0", "fail-500-1", "fail-500-2"]
    assert caught.value.response.headers["x-tensorwall-provider"] == "azure-eu"


def test_weighted_route_spreads_traffic(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    proxy = make_proxy("""
routes:
  gpt-4:
    endpoints:
      - {provider: openai, model: gpt-4o, weight: 70, priority: 0}
      - {provider: azure-eu, model: gpt-4o, weight: 30, priority: 1}
""")
    client = proxy.client()
    for _ in range(200):
        client.chat.completions.create(model="gpt-4", messages=USER)
    share = len(fake.for_flavor("openai")) / 200
    # 70 % ± 5 standard deviations of a binomial(200, 0.7): a wrong split cannot pass.
    assert 0.53 < share < 0.87


def test_429_cools_the_endpoint_then_all_cooling_answers_429_at_once(make_proxy: Callable[..., Proxy],
                                                                       fake: FakeUpstream) -> None:
    proxy = make_proxy("""
routes:
  limited:
    endpoints:
      - {provider: azure-eu, model: fail-429}
""")
    client = proxy.client()
    with pytest.raises(openai.RateLimitError) as first:
        client.chat.completions.create(model="limited", messages=USER)
    assert first.value.response.headers["retry-after"] == "7"  # the upstream's own value
    assert len(fake.requests) == 1
    with pytest.raises(openai.RateLimitError) as second:
        client.chat.completions.create(model="limited", messages=USER)
    assert len(fake.requests) == 1  # no upstream call while every endpoint cools
    assert 1 <= int(second.value.response.headers["retry-after"]) <= 7
    assert "x-tensorwall-provider" not in second.value.response.headers


def test_cooling_endpoint_is_skipped_while_another_is_healthy(make_proxy: Callable[..., Proxy],
                                                                fake: FakeUpstream) -> None:
    proxy = make_proxy("""
routes:
  pair:
    strategy: priority
    endpoints:
      - {provider: azure-eu, model: fail-429, priority: 0}
      - {provider: openai, model: gpt-4o, priority: 1}
""")
    client = proxy.client()
    assert client.chat.completions.create(model="pair", messages=USER).choices[0].message.content == "[openai] hello"
    assert [r.flavor for r in fake.requests] == ["azure", "openai"]
    fake.clear()
    client.chat.completions.create(model="pair", messages=USER)
    assert [r.flavor for r in fake.requests] == ["openai"]


def test_one_callers_429_never_cools_the_endpoint_for_another(make_proxy: Callable[..., Proxy],
                                                              fake: FakeUpstream) -> None:
    """Health is kept per (endpoint, caller key digest) when the attempt carried the caller's key."""
    proxy = make_proxy("""
routes:
  shared:
    endpoints:
      - {provider: openai, model: fail-429}
""")
    with pytest.raises(openai.RateLimitError):
        proxy.client(api_key="sk-tenant-a").chat.completions.create(model="shared", messages=USER)
    with pytest.raises(openai.RateLimitError):
        proxy.client(api_key="sk-tenant-a").chat.completions.create(model="shared", messages=USER)
    assert len(fake.requests) == 1  # tenant A is cooling
    with pytest.raises(openai.RateLimitError) as caught:
        proxy.client(api_key="sk-tenant-b").chat.completions.create(model="shared", messages=USER)
    assert len(fake.requests) == 2  # tenant B still reaches the upstream
    assert caught.value.response.headers["x-tensorwall-provider"] == "openai"


def test_server_key_429_cools_the_endpoint_for_everyone(make_proxy: Callable[..., Proxy],
                                                        fake: FakeUpstream) -> None:
    proxy = make_proxy("""
routes:
  shared:
    endpoints:
      - {provider: azure-eu, model: fail-429}
""")
    with pytest.raises(openai.RateLimitError):
        proxy.client(api_key="sk-tenant-a").chat.completions.create(model="shared", messages=USER)
    with pytest.raises(openai.RateLimitError):
        proxy.client(api_key="sk-tenant-b").chat.completions.create(model="shared", messages=USER)
    assert len(fake.requests) == 1


def test_caller_key_reaches_one_key_scope_per_request(make_proxy: Callable[..., Proxy],
                                                      fake: FakeUpstream) -> None:
    """Loading refuses a route that would carry the caller's key to two key scopes; a route made
    through the Python API is held to the same rule at run time: a fallback of another key scope
    that would need the caller's key is skipped, never sent that key. (Another `type: openai` host
    is another scope: the rule used to be one provider type per request, which let the key through.)"""
    proxy = make_proxy(text=config_text(fake, providers=f'  openai-other: {{type: openai, base_url: "{fake.base_url}/openai/v1"}}\n'))
    proxy.app[GATEWAY].table.router.add_route("mixed", [
        RouteEndpoint("openai", "fail-500", priority=0),
        RouteEndpoint("openai-other", "gpt-4o", priority=1),
        RouteEndpoint("groq", "llama3-70b-8192", priority=2),
        RouteEndpoint("azure-eu", "gpt-4o", priority=3),
    ], strategy="priority")
    completion = proxy.client().chat.completions.create(model="mixed", messages=USER)
    assert completion.choices[0].message.content == "[azure] hello"
    assert [r.flavor for r in fake.requests] == ["openai", "azure"]
    assert PROVIDER_KEY not in str(fake.last("azure").headers)


def test_first_byte_timeout_falls_back(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    proxy = make_proxy("""
routes:
  slow:
    strategy: priority
    timeouts: {first_byte: 0.3}
    endpoints:
      - {provider: openai, model: slow-first-byte, priority: 0}
      - {provider: azure-eu, model: gpt-4o, priority: 1}
""")
    started = time.monotonic()
    chunks = list(proxy.client().chat.completions.create(model="slow", messages=USER, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "[azure] hello"
    assert time.monotonic() - started < 0.9  # the fake would have waited 1 s


def test_total_timeout_ends_in_504(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    proxy = make_proxy("""
routes:
  stuck:
    timeouts: {total: 0.3}
    endpoints:
      - {provider: openai, model: hang}
""")
    with pytest.raises(openai.APIStatusError) as caught:
        proxy.client().chat.completions.create(model="stuck", messages=USER)
    assert caught.value.status_code == 504
    assert "did not answer within 0.3s" in caught.value.message
    # the upstream request was abandoned
    assert wait_for(lambda: fake.last("openai").disconnected_at is not None, 2)


def test_idle_timeout_after_the_commit_point_is_an_in_band_error(make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy("""
routes:
  stalls:
    timeouts: {idle: 0.3}
    endpoints:
      - {provider: openai, model: slow-stream}
""")
    stream = proxy.client().chat.completions.create(model="stalls", messages=USER, stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    assert "idle timeout" in str(caught.value.message)
    assert "".join(received)  # something was committed before the error


def test_cut_mid_stream_is_an_in_band_error_without_done(make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy()
    response = _post(proxy, {"model": "gpt-cut-mid-stream", "messages": USER, "stream": True})
    assert response.status == 200
    events = [line for line in response.text.split("\n\n") if line]
    assert events[-1].startswith('data: {"error"')
    assert "data: [DONE]" not in response.text


def test_error_mid_stream_is_relayed_in_band(proxy: Proxy) -> None:
    response = _post(proxy, {"model": "gpt-error-mid-stream", "messages": USER, "stream": True})
    assert response.status == 200
    assert response.text.rstrip().split("\n\n")[-1].startswith('data: {"error"')
    assert "[DONE]" not in response.text


def test_cut_before_anything_visible_falls_back(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    """A non-streamed answer cut halfway is a failure before the commit point: it falls back."""
    proxy = make_proxy("""
routes:
  flaky:
    strategy: priority
    endpoints:
      - {provider: openai, model: cut-mid-stream, priority: 0}
      - {provider: azure-eu, model: gpt-4o, priority: 1}
""")
    completion = proxy.client().chat.completions.create(model="flaky", messages=USER)
    assert completion.choices[0].message.content == "[azure] hello"


def test_connect_error_falls_back(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    # Port 9 (discard) is closed on loopback: the connection is refused.
    text = config_text(fake, providers='  dead: {type: openai, base_url: "http://127.0.0.1:9/v1", key_scope: openai}\n')
    proxy = make_proxy(text=text + """
routes:
  dead-first:
    strategy: priority
    endpoints:
      - {provider: dead, model: gpt-4o, priority: 0}
      - {provider: openai, model: gpt-4o, priority: 1}
""")
    response = proxy.client().chat.completions.with_raw_response.create(model="dead-first", messages=USER)
    assert response.parse().choices[0].message.content == "[openai] hello"
    assert response.headers["x-tensorwall-provider"] == "openai"


def test_every_attempt_failing_returns_the_last_error(make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy("""
routes:
  doomed:
    strategy: priority
    endpoints:
      - {provider: openai, model: fail-500, priority: 0}
      - {provider: azure-eu, model: fail-503, priority: 1}
""")
    with pytest.raises(openai.APIStatusError) as caught:
        proxy.client().chat.completions.create(model="doomed", messages=USER)
    assert caught.value.status_code == 503
    assert caught.value.response.headers["x-tensorwall-provider"] == "azure-eu"


def test_consecutive_failures_eject_an_endpoint(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    from tensorwall_proxy.health import EJECT_AFTER

    proxy = make_proxy("""
routes:
  ejecting:
    strategy: priority
    endpoints:
      - {provider: azure-eu, model: fail-500, priority: 0}
      - {provider: openai, model: gpt-4o, priority: 1}
""")
    client = proxy.client()
    for _ in range(EJECT_AFTER):
        client.chat.completions.create(model="ejecting", messages=USER)
    assert len(fake.for_flavor("azure")) == EJECT_AFTER
    fake.clear()
    client.chat.completions.create(model="ejecting", messages=USER)
    assert [r.flavor for r in fake.requests] == ["openai"]  # the failing endpoint is out of rotation


@pytest.mark.slow
def test_requests_past_the_in_flight_limit_get_a_fast_503(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    import threading

    proxy = make_proxy("server: {max_in_flight: 1}\nroutes:\n  stuck:\n    timeouts: {total: 2}\n"
                       "    endpoints:\n      - {provider: openai, model: hang}\n")
    occupant = threading.Thread(target=lambda: post_json(proxy, "/v1/chat/completions",
                                                         {"model": "stuck", "messages": USER}))
    occupant.start()
    wait_for(lambda: fake.for_model("hang"), 2)
    started = time.monotonic()
    response = post_json(proxy, "/v1/chat/completions", {"model": "gpt-4o", "messages": USER})
    assert response.status == 503 and time.monotonic() - started < 0.5
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "overloaded"
    assert len(fake.for_model("gpt-4o")) == 0
    occupant.join(5)
    assert post_json(proxy, "/v1/chat/completions", {"model": "gpt-4o", "messages": USER}).status == 200


def test_a_refused_connection_tries_the_same_endpoint_once_more(make_proxy: Callable[..., Proxy],
                                                                 fake: FakeUpstream) -> None:
    from tensorwall_proxy.api import GATEWAY

    text = config_text(fake, providers='  dead: {type: openai, base_url: "http://127.0.0.1:9/v1", key_scope: openai}\n')
    proxy = make_proxy(text=text + "routes:\n  lonely:\n    endpoints:\n      - {provider: dead, model: m, api_key: k}\n")
    response = post_json(proxy, "/v1/chat/completions", {"model": "lonely", "messages": USER})
    # The caller is told which provider, never where it lives: the host and port are in the log.
    message = response.json()["error"]["message"]
    assert response.status == 502 and "'dead'" in message and "127.0.0.1" not in message and ":9" not in message
    health = proxy.app[GATEWAY].health
    assert health._states[("dead", "m", None)].failures == 2  # the first try and one retry


def test_the_retry_budget_stops_fallbacks_in_an_outage(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    from tensorwall_proxy.api import GATEWAY
    from tensorwall_proxy.health import RetryBudget

    proxy = make_proxy("""
routes:
  pair:
    strategy: priority
    endpoints:
      - {provider: azure-eu, model: fail-500, priority: 0}
      - {provider: openai, model: gpt-4o, priority: 1}
""")
    budget = RetryBudget(ratio=0.0, min_per_second=0.0)
    proxy.app[GATEWAY].budget = budget
    assert post_json(proxy, "/v1/chat/completions", {"model": "pair", "messages": USER}).status == 200
    while budget.spend():
        pass  # an outage has used the balance up
    fake.clear()
    response = post_json(proxy, "/v1/chat/completions", {"model": "pair", "messages": USER})
    assert response.status == 502  # the first endpoint's failure: no budget left to fall back
    assert [r.flavor for r in fake.requests] == ["azure"]
