"""The state store as the gateway holds it: nothing opened at start (a chat-only gateway serves
with an unusable state directory), opened through ``Gateway.store()``, closed at shutdown, its
settings checked by ``check``, the per-host warning at start, and a SIGHUP that changes ``state:``."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tensorwall_proxy import api
from tensorwall_proxy.app import build_app
from tensorwall_proxy.config import parse_config
from tensorwall_proxy.state import StoreError
from tests.conftest import GATEWAY_KEY, PROVIDER_KEY, USER, Proxy, ServerThread, _start_app, config_text
from tests.fakes import FakeUpstream
from tests.processes import CLEAN_ENV, ROOT, Proc, request, start_proxy, write_config
from tests.state.conftest import state_errors

PER_HOST = "principals' limits and stored responses are per host"
CHAT = {"model": "gpt-4o", "messages": USER}
HEADERS = {"X-API-Key": GATEWAY_KEY, "Authorization": f"Bearer {PROVIDER_KEY}"}


def unusable(tmp_path: Path) -> Path:
    """A state path that cannot become a directory (a file is in the way), as on a read-only
    filesystem (the tests run as root, for whom permissions do not stop a write)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    return blocker / "state"


def test_a_chat_only_gateway_serves_with_an_unusable_state_directory(
        tmp_path: Path, make_proxy: Callable[..., Proxy], servers: ServerThread) -> None:
    proxy = make_proxy(f"state: {{path: {unusable(tmp_path)}}}\n")
    completion = proxy.client().chat.completions.create(model="gpt-4o", messages=USER)
    assert completion.choices[0].message.content
    gateway = proxy.app[api.GATEWAY]
    assert gateway.state.opened is None
    with pytest.raises(StoreError, match=r"state store \(sqlite\) open"):
        servers.run(gateway.store())
    assert gateway.metrics is not None and state_errors(gateway.metrics, "sqlite", "open") == 1
    # Still serving after the failed opening.
    assert proxy.client().chat.completions.create(model="gpt-4o", messages=USER).choices


def test_the_gateway_opens_its_store_on_demand_and_closes_it_at_shutdown(
        tmp_path: Path, fake: FakeUpstream, servers: ServerThread) -> None:
    config = parse_config(config_text(fake, f"state: {{path: {tmp_path / 'state'}, responses_ttl_seconds: 60}}\n"))
    app = build_app(config)
    runner, _ = servers.run(_start_app(app, config))
    gateway = app[api.GATEWAY]
    try:
        assert not (tmp_path / "state").exists()  # nothing opened at start
        store = servers.run(gateway.store())
        assert servers.run(gateway.store()) is store
        servers.run(store.put("resp:x", b"x", config.state.responses_ttl_seconds))
        assert servers.run(store.get("resp:x")) == b"x"
        assert (tmp_path / "state" / "responses.db").is_file()
    finally:
        servers.run(runner.cleanup())
    assert gateway.state.opened is None
    with pytest.raises(StoreError, match="closed"):
        servers.run(store.get("resp:x"))


@pytest.mark.slow
def test_serve_on_every_address_warns_once_that_sqlite_is_per_host_and_serves_chat(
        tmp_path: Path, fake: FakeUpstream, spawn: Callable[..., Proc]) -> None:
    config = write_config(tmp_path, config_text(fake, f"state: {{path: {unusable(tmp_path)}}}\n"))
    proc, port = start_proxy(spawn, config, "--host", "0.0.0.0")
    status, body = request(port, "/v1/chat/completions", CHAT, HEADERS)
    assert status == 200, body
    warnings = [line for line in proc.log().splitlines() if PER_HOST in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0], proc.log()
    assert "backend: redis" in warnings[0]
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


@pytest.mark.slow
def test_a_hup_that_changes_state_keeps_the_store_and_says_it_takes_a_restart(
        tmp_path: Path, fake: FakeUpstream, spawn: Callable[..., Proc]) -> None:
    text = config_text(fake, f"state: {{path: {tmp_path / 'one'}}}\n")
    config = write_config(tmp_path, text)
    proc, port = start_proxy(spawn, config)  # loopback: no per-host warning
    assert PER_HOST not in proc.log()
    config.write_text(text.replace(str(tmp_path / "one"), str(tmp_path / "two")))
    proc.signal(signal.SIGHUP)
    proc.wait_log(r"reloaded ")
    assert "state.* changed; the state store keeps its settings until a restart" in proc.log()
    assert request(port, "/v1/chat/completions", CHAT, HEADERS)[0] == 200
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


def check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tensorwall_proxy", "check", "--config", str(config)],
                          capture_output=True, text=True, timeout=30, cwd=ROOT, env=CLEAN_ENV)


def test_check_reports_bad_state_settings_with_their_yaml_paths(tmp_path: Path) -> None:
    config = write_config(tmp_path, """\
gateway_keys: []
state:
  backend: redis
  url: http://user:hunter2@redis.example:6379
  timeout_ms: 0
  fail_mode: sometimes
  responses: maybe
  responses_ttl_seconds: -5
  colour: blue
""")
    result = check(config)
    assert result.returncode == 1
    for expected in (
        "state.url: expected a redis:// or rediss:// URL",
        "state.timeout_ms: must be greater than 0",
        "state.fail_mode: expected open or closed, got 'sometimes'",
        "state.responses: expected on or off, got 'maybe'",
        "state.responses_ttl_seconds: must be at least 1, got -5",
        "state.colour: unknown key",
    ):
        assert expected in result.stderr, result.stderr
    assert "hunter2" not in result.stderr


def test_check_warns_that_sqlite_is_per_host_on_a_non_loopback_address(tmp_path: Path) -> None:
    config = write_config(tmp_path, "gateway_keys: [k]\nserver: {host: 0.0.0.0}\n")
    result = check(config)
    assert result.returncode == 0, result.stderr
    assert PER_HOST in result.stdout
    config.write_text("gateway_keys: [k]\nserver: {host: 0.0.0.0}\nstate: {backend: redis, url: 'redis://r:6379/0'}\n")
    result = check(config)
    assert result.returncode == 0, result.stderr
    assert PER_HOST not in result.stdout
