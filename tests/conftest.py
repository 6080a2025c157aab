"""Real servers on 127.0.0.1 for the tests: the fake upstream and the proxy, on a loop in a thread.

They run on their own event loop in a background thread so that the official openai SDK can be
used exactly as users run it — the synchronous client as well as the asynchronous one — against
real sockets. Nothing here replaces a transport.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import secrets
import signal
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import redis
from aiohttp import web
from openai import AsyncOpenAI, OpenAI

from tensorwall_proxy.app import build_app
from tensorwall_proxy.config import Config, ServerConfig, parse_config
from tensorwall_proxy.listener import make_runner
from tests.fakes import FakeUpstream, Scripted
from tests.processes import Proc
from tests.rawtcp import RawServer, Script

T = TypeVar("T")

# Redis, shared with whatever else uses it: each test writes under a key prefix of its own and deletes
# only its own keys; nothing here stops or flushes it. Without a Redis that answers, the tests that
# need one are skipped, unless TENSORWALL_REQUIRE_REDIS=1 (CI), when they fail.
REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"

GATEWAY_KEY = "test-gateway-key"
PROVIDER_KEY = "sk-caller-provider-key-0123456789"
USER = [{"role": "user", "content": "hello"}]
# The one tool the end-to-end tests offer; the fake calls it with {"location": "Paris"}.
TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}]
# A one-pixel PNG as a data: URL.
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="

# Every provider points at the fake; `{fake}` is replaced by its base URL. Tests add routes.
BASE_CONFIG = """\
gateway_keys: [{gateway_key}]
providers:
  openai:   {{base_url: "{fake}/openai/v1", models: [gpt-4o]}}
  groq:     {{base_url: "{fake}/groq/openai/v1"}}
  mistral:  {{base_url: "{fake}/mistral/v1"}}
  lmstudio: {{base_url: "{fake}/lmstudio/v1"}}
  ollama:   {{base_url: "{fake}/ollama"}}
  azure:    {{endpoint: "{fake}/azure"}}
  anthropic: {{base_url: "{fake}/anthropic/v1"}}
  vertex:   {{project: test-proj, base_url: "{fake}/vertex"}}
  bedrock:  {{region: us-east-1, base_url: "{fake}/bedrock"}}
  azure-eu:
    type: azure
    endpoint: "{fake}/azure"
    api_key: server-side-azure-key
    models: [gpt-4o-eu]
timeouts: {{connect: 2, first_byte: 5, idle: 5, total: 10}}
"""


class ServerThread:
    """An event loop in a daemon thread; coroutines are run on it from the test's thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="servers", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@dataclass
class Proxy:
    """A running proxy: its URL, its app (for its state) and the config it runs."""

    url: str
    app: web.Application
    config: Config
    # The synchronous clients made by `client`, closed when the proxy stops: a client left to the
    # garbage collector leaves its socket to it too, and that ResourceWarning lands in whichever
    # test the collection happens to run in.
    clients: list[OpenAI] = field(default_factory=list)

    def client(self, api_key: str | None = PROVIDER_KEY, **kwargs: Any) -> OpenAI:
        """The official synchronous SDK pointed at the proxy, retries off so tests see each answer."""
        client = OpenAI(base_url=self.url + "/v1", api_key=api_key or "", max_retries=0,
                        default_headers={"X-API-Key": GATEWAY_KEY}, **kwargs)
        self.clients.append(client)
        return client

    def async_client(self, api_key: str | None = PROVIDER_KEY, **kwargs: Any) -> AsyncOpenAI:
        """The official asynchronous SDK pointed at the proxy."""
        return AsyncOpenAI(base_url=self.url + "/v1", api_key=api_key or "", max_retries=0,
                           default_headers={"X-API-Key": GATEWAY_KEY}, **kwargs)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lowercased names
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(url: str, body: bytes | str | None = None, headers: dict[str, str] | None = None,
                method: str = "POST") -> RawResponse:
    """One HTTP request over a real socket with the standard library, for what the SDK hides."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request(method, parts.path + (f"?{parts.query}" if parts.query else ""),
                           body=body.encode() if isinstance(body, str) else body, headers=headers or {})
        response = connection.getresponse()
        return RawResponse(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def post_json(proxy: Proxy, path: str, body: Any, key: str | None = PROVIDER_KEY,
              gateway_key: str | None = GATEWAY_KEY, **headers: str) -> RawResponse:
    """POST a JSON body to the proxy with the usual keys (None leaves a header out)."""
    sent = {"Content-Type": "application/json", **headers}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    if gateway_key is not None:
        sent["X-API-Key"] = gateway_key
    return raw_request(proxy.url + path, json.dumps(body), sent)


def open_request(proxy: Proxy, body: Any) -> socket.socket:
    """A chat request sent over a raw socket and left open, so a test can leave mid-answer by closing it."""
    host, port = proxy.url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"X-API-Key: {GATEWAY_KEY}\r\nAuthorization: Bearer {PROVIDER_KEY}\r\n".encode()
                 + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


def wait_for(condition: Callable[[], object], seconds: float = 3.0) -> bool:
    """Poll ``condition`` until it holds or ``seconds`` pass; whether it held (checked once more at the end)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())


async def _start_app(app: web.Application, config: Config | None = None) -> tuple[web.AppRunner, str]:
    # The runner `serve` uses, so the tests meet the connection bounds the gateway really has
    # (an upstream of a test's own gets the default bounds).
    runner = make_runner(app, config.server if config is not None else ServerConfig(), shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@pytest.fixture(scope="session")
def servers() -> Iterator[ServerThread]:
    thread = ServerThread()
    yield thread
    thread.close()


@pytest.fixture(scope="session")
def fake(servers: ServerThread) -> Iterator[FakeUpstream]:
    upstream = FakeUpstream(delay=1.0)
    servers.run(upstream.start())
    yield upstream
    servers.run(upstream.stop())


def config_text(fake: FakeUpstream, extra: str = "", providers: str = "") -> str:
    """The test config with every provider on the fake, ``providers`` (YAML lines, indented two
    spaces) added to its providers, and ``extra`` YAML appended."""
    base = BASE_CONFIG.format(fake=fake.base_url, gateway_key=GATEWAY_KEY)
    if providers:
        base = base.replace("providers:\n", "providers:\n" + providers, 1)
    return base + textwrap.dedent(extra)


@pytest.fixture
def make_proxy(servers: ServerThread, fake: FakeUpstream, tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
    """Start a proxy on a config made from the base config plus extra YAML; stopped after the test.
    A state store it opens (SQLite, unless the YAML says otherwise) lives in the test's directory."""
    runners: list[web.AppRunner] = []
    proxies: list[Proxy] = []
    env = {**os.environ, "STATE_DIRECTORY": str(tmp_path / "state")}

    def start(extra: str = "", text: str | None = None) -> Proxy:
        config = parse_config(text if text is not None else config_text(fake, extra), env=env)
        app = build_app(config)
        runner, url = servers.run(_start_app(app, config))
        runners.append(runner)
        fake.clear()
        proxies.append(Proxy(url, app, config))
        return proxies[-1]

    yield start
    for proxy in proxies:
        for client in proxy.clients:
            client.close()
    for runner in runners:
        servers.run(runner.cleanup())


@pytest.fixture
def proxy(make_proxy: Callable[..., Proxy]) -> Proxy:
    """A proxy on the base config (no routes: prefixes and patterns only)."""
    return make_proxy()


@pytest.fixture
def scripted(fake: FakeUpstream) -> Iterator[Callable[[str, Scripted], str]]:
    """Give the fake a canned answer under a fresh model name; the entry is removed after the test
    (the fake is shared by the whole session and ``clear()`` keeps scripts)."""
    names: list[str] = []

    def add(prefix: str, entry: Scripted) -> str:
        name = f"{prefix}-{secrets.token_hex(4)}"
        fake.script[name] = entry
        names.append(name)
        return name

    yield add
    for name in names:
        fake.script.pop(name, None)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start subprocesses for one test; whatever still runs at the end is killed."""
    started: list[Proc] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(list(args), tmp_path / f"proc{len(started)}.log", env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


@pytest.fixture(scope="module")
def fake_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The fake upstream in its own process; `gpt-slow-stream` pauses 1.5 s after its first content chunk."""
    proc = Proc([sys.executable, "scripts/fake_upstream.py", "--port", "0", "--delay", "1.5"],
                tmp_path_factory.mktemp("fake") / "fake.log")
    try:
        yield proc.wait_log(r"fake upstream on (http://\S+)")[0].group(1)
    finally:
        proc.signal(signal.SIGTERM)
        proc.wait(5)
        proc.close()



@pytest.fixture
def raw_server(servers: ServerThread) -> Iterator[Callable[[Script | Callable[[int], Script]], RawServer]]:
    """Start raw TCP servers on the servers thread; stopped after the test."""
    started: list[RawServer] = []

    def start(script: Script | Callable[[int], Script]) -> RawServer:
        server = RawServer(script)
        servers.run(server.start())
        started.append(server)
        return server

    yield start
    for server in started:
        servers.run(server.stop())


@pytest.fixture(scope="session")
def redis_url() -> str:
    """REDIS_URL when a Redis answers there; else the test is skipped (failed under TENSORWALL_REQUIRE_REDIS=1)."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        message = f"no Redis answers at REDIS_URL ({type(exc).__name__}: {exc})"
        if os.environ.get("TENSORWALL_REQUIRE_REDIS") == "1":
            pytest.fail(message + " and TENSORWALL_REQUIRE_REDIS=1")
        pytest.skip(message)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def key_prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """A Redis key prefix of this test's own; its keys (and only they) are deleted after it."""
    prefix = f"twtest:{secrets.token_hex(6)}:"
    yield prefix
    if "redis_url" not in request.fixturenames:
        return  # a SQLite test: it never reached Redis
    keys = redis_keys(prefix)
    if keys:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
        try:
            client.delete(*keys)
        finally:
            client.close()


def redis_keys(prefix: str) -> list[bytes]:
    """The keys in the shared Redis under ``prefix`` (a test's own)."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        return sorted(client.scan_iter(match=prefix + "*", count=1000))
    finally:
        client.close()
