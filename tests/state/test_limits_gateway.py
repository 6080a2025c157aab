"""Limits shared through the state store, end to end: N concurrent callers of one principal never get
more than its limit across ``--workers 2`` on one SQLite file, nor across two gateway instances on one
Redis; and a Redis outage (a relay of the test's own, closed) under each ``fail_mode``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from yarl import URL

from tensorwall_proxy import api
from tests.conftest import (
    GATEWAY_KEY,
    PROVIDER_KEY,
    USER,
    Proxy,
    ServerThread,
    config_text,
    post_json,
    raw_request,
)
from tests.fakes import FakeUpstream
from tests.processes import Proc, request, start_proxy, write_config
from tests.state.relay import TcpRelay

CHAT = {"model": "gpt-4o", "messages": USER}
HEADERS = {"X-API-Key": GATEWAY_KEY, "Authorization": f"Bearer {PROVIDER_KEY}"}
# Six a minute: one every ten seconds after the burst, far longer than the test's requests take.
LIMIT = 6
CALLERS = 24


def limited(fake: FakeUpstream, state: str, rpm: int = LIMIT) -> str:
    """The test config with GATEWAY_KEY as a principal limited to ``rpm`` requests a minute."""
    keys = f"gateway_keys:\n  - {{name: team, key: {GATEWAY_KEY}, limits: {{requests_per_minute: {rpm}}}}}\n"
    return config_text(fake, f"state: {state}\n").replace(f"gateway_keys: [{GATEWAY_KEY}]\n", keys)


def _statuses(send: Callable[[int], int], count: int = CALLERS) -> list[int]:
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(send, range(count)))


@pytest.mark.slow
def test_two_workers_on_one_sqlite_file_admit_exactly_the_limit(
        tmp_path: Path, fake: FakeUpstream, spawn: Callable[..., Proc]) -> None:
    config = write_config(tmp_path, limited(fake, f"{{path: {tmp_path / 'state'}, timeout_ms: 2000}}"))
    proc, port = start_proxy(spawn, config, "--workers", "2")
    statuses = _statuses(lambda _: request(port, "/v1/chat/completions", CHAT, HEADERS)[0])
    assert statuses.count(200) == LIMIT, (statuses, proc.log())
    assert statuses.count(429) == CALLERS - LIMIT
    assert (tmp_path / "state" / "limits.db").is_file()


def test_two_instances_on_one_redis_admit_exactly_the_limit(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, redis_url: str, key_prefix: str) -> None:
    state = f"{{backend: redis, url: \"{redis_url}\", key_prefix: \"{key_prefix}\", timeout_ms: 2000}}"
    instances = [make_proxy(text=limited(fake, state)) for _ in range(2)]
    statuses = _statuses(lambda i: post_json(instances[i % 2], "/v1/chat/completions", CHAT).status)
    assert statuses.count(200) == LIMIT, statuses
    assert statuses.count(429) == CALLERS - LIMIT
    for proxy in instances:
        assert proxy.app[api.GATEWAY].limits.local.kept == {}  # no fallback: every check in Redis


@pytest.fixture
def relay(servers: ServerThread, redis_url: str) -> Iterator[TcpRelay]:
    url = URL(redis_url)
    relay = TcpRelay(url.host or "127.0.0.1", url.port or 6379)
    servers.run(relay.start())
    yield relay
    servers.run(relay.close())


def _metric(proxy: Proxy, line_start: str) -> float:
    for line in raw_request(proxy.url + "/metrics", method="GET").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _through(relay: TcpRelay, redis_url: str, key_prefix: str, fail_mode: str) -> str:
    url = URL(redis_url).with_host("127.0.0.1").with_port(relay.port)
    return f"{{backend: redis, url: \"{url}\", key_prefix: \"{key_prefix}\", timeout_ms: 200, fail_mode: {fail_mode}}}"


def test_a_redis_outage_with_fail_mode_open_counts_in_the_process_and_serves(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, servers: ServerThread, relay: TcpRelay,
        redis_url: str, key_prefix: str) -> None:
    proxy = make_proxy(text=limited(fake, _through(relay, redis_url, key_prefix, "open"), rpm=2))
    assert post_json(proxy, "/v1/chat/completions", CHAT).status == 200  # counted in Redis
    servers.run(relay.close())
    statuses = [post_json(proxy, "/v1/chat/completions", CHAT).status for _ in range(3)]
    # This process counts alone now: its own fresh counters admit the burst of two, then refuse.
    assert statuses == [200, 200, 429]
    assert _metric(proxy, 'tensorwall_limit_fallbacks_total{fail_mode="open"}') == 3
    assert _metric(proxy, 'tensorwall_state_errors_total{backend="redis",operation="limit_check"}') >= 1


def test_a_redis_outage_with_fail_mode_closed_is_503(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, servers: ServerThread, relay: TcpRelay,
        redis_url: str, key_prefix: str) -> None:
    proxy = make_proxy(text=limited(fake, _through(relay, redis_url, key_prefix, "closed"), rpm=100))
    assert post_json(proxy, "/v1/chat/completions", CHAT).status == 200
    servers.run(relay.close())
    fake.clear()
    refused = post_json(proxy, "/v1/chat/completions", CHAT)
    assert refused.status == 503 and refused.json()["error"]["code"] == "state_unavailable"
    assert fake.requests == []
    assert _metric(proxy, 'tensorwall_limit_fallbacks_total{fail_mode="closed"}') == 1
    # Redis back: counted there again.
    servers.run(relay.start())
    assert post_json(proxy, "/v1/chat/completions", CHAT).status == 200
