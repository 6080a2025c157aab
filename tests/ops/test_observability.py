"""Metrics, the access log and token accounting, after known traffic through the real proxy."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tensorwall_proxy.config import key_digest
from tests.conftest import (
    GATEWAY_KEY,
    PROVIDER_KEY,
    Proxy,
    ServerThread,
    _start_app,
    config_text,
    post_json,
    raw_request,
)
from tests.fakes import FakeUpstream
from tests.processes import CLEAN_ENV, free_port

ROOT = Path(__file__).resolve().parents[2]
USER = [{"role": "user", "content": "count my tokens please"}]
RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text exposition (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _scrape(proxy: Proxy) -> str:
    response = raw_request(proxy.url + "/metrics", method="GET")
    assert response.status == 200 and response.headers["content-type"].startswith("text/plain")
    return response.text


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "tensorwall_proxy.access"]


def _access_line(caplog: pytest.LogCaptureFixture, request_id: str) -> dict[str, Any]:
    """The one line for a request; it is written just after the response leaves, so allow a moment."""
    deadline = time.monotonic() + 2
    while True:
        lines = [e for e in _access_lines(caplog) if e["id"] == request_id]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    (line,) = lines
    return line


def test_metrics_after_known_traffic(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    proxy = make_proxy("""
routes:
  resilient:
    strategy: priority
    endpoints:
      - {provider: openai, model: fail-500, priority: 0}
      - {provider: azure-eu, model: gpt-4o-eu, priority: 1}
""")
    client = proxy.client()
    for _ in range(2):
        client.chat.completions.create(model="gpt-4o", messages=USER)
    list(client.chat.completions.create(model="gpt-4o", messages=USER, stream=True))
    client.chat.completions.create(model="resilient", messages=USER)
    assert post_json(proxy, "/v1/chat/completions", {"model": "nope", "messages": USER}).status == 404
    text = _scrape(proxy)
    assert _metric(text, "tensorwall_requests_total", route="gpt-*", provider="openai", status_class="2xx",
                   stream="false") == 2
    assert _metric(text, "tensorwall_requests_total", route="gpt-*", provider="openai", status_class="2xx",
                   stream="true") == 1
    assert _metric(text, "tensorwall_requests_total", route="resilient", provider="azure-eu", status_class="2xx",
                   stream="false") == 1
    assert _metric(text, "tensorwall_fallbacks_total", route="resilient") == 1
    assert _metric(text, "tensorwall_upstream_attempts_total", provider="openai", outcome="5xx") == 1
    assert _metric(text, "tensorwall_upstream_attempts_total", provider="azure-eu", outcome="ok") == 1
    assert _metric(text, "tensorwall_errors_total", blame="caller") == 1
    assert _metric(text, "tensorwall_request_duration_seconds_count", route="gpt-*", provider="openai",
                   stream="false") == 2
    assert _metric(text, "tensorwall_time_to_first_byte_seconds_count", route="gpt-*", provider="openai",
                   stream="true") == 1
    # Tokens: the model is a label only when listed under the provider's models: (gpt-4o is).
    usage = client.chat.completions.create(model="gpt-4o", messages=USER).usage
    assert usage is not None
    text = _scrape(proxy)
    assert _metric(text, "tensorwall_tokens_total", provider="openai", model="gpt-4o", direction="in") == \
        4 * usage.prompt_tokens
    assert _metric(text, "tensorwall_tokens_total", provider="azure-eu", model="gpt-4o-eu", direction="out") > 0
    assert "tensorwall_requests_in_flight" in text
    assert 'route="nope"' not in text  # caller-sent names never become labels


def test_endpoint_health_gauge(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    # A route: azure-eu's server-side key serves only its `models:` through the prefix.
    proxy = make_proxy("routes:\n  cooled:\n    endpoints:\n      - {provider: azure-eu, model: fail-429}\n")
    post_json(proxy, "/v1/chat/completions", {"model": "cooled", "messages": USER})
    text = _scrape(proxy)
    assert _metric(text, "tensorwall_endpoint_health", provider="azure-eu", model="other", state="cooling") == 1


def test_access_log_fields_and_redaction(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tensorwall_proxy.access")
    proxy = make_proxy("routes:\n  pair:\n    strategy: priority\n    endpoints:\n"
                       "      - {provider: openai, model: fail-503, priority: 0}\n"
                       "      - {provider: azure-eu, model: gpt-4o-eu, priority: 1}\n")
    secret_text = "canary-message-text-7f3a9"
    response = post_json(proxy, "/v1/chat/completions",
                         {"model": "pair", "messages": [{"role": "user", "content": secret_text}]},
                         **{"x-request-id": "trace-1"})
    assert response.status == 200
    line = _access_line(caplog, "trace-1")
    assert line["route"] == "pair" and line["provider"] == "azure-eu" and line["model"] == "gpt-4o-eu"
    assert line["status"] == 200 and line["stream"] is False and line["attempts"] == 2
    assert [(a["provider"], a["outcome"], a["status"]) for a in line["attempt_log"]] == [
        ("openai", "5xx", 503), ("azure-eu", "ok", 200)]
    assert line["latency_ms"] > 0 and line["ttfb_ms"] is not None and line["tokens_in"] > 0
    # The principal: the gateway key's digest (never the key), until principals have names.
    assert line["blame"] is None and line["principal"] == key_digest(GATEWAY_KEY)
    assert next(iter(line)) == "ts" and RFC3339_MS.fullmatch(line["ts"]), line["ts"]
    raw = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (secret_text, PROVIDER_KEY, GATEWAY_KEY, "server-side-azure-key"):
        assert secret not in raw


MODELS = [
    ("gpt-4o", "openai"), ("azure/gpt-4o", "azure"), ("groq/llama3-70b-8192", "groq"),
    ("mistral/mistral-large-latest", "mistral"), ("lmstudio/qwen", "lmstudio"), ("ollama/llama3.2", "ollama"),
    ("claude-3-5-sonnet-20241022", "anthropic"), ("gemini-2.5-flash", "vertex"),
    ("bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0", "bedrock"),
]


@pytest.mark.parametrize(("model", "provider"), MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_tokens_are_counted_for_every_provider_type(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                                    caplog: pytest.LogCaptureFixture, model: str, provider: str,
                                                    stream: bool) -> None:
    caplog.set_level(logging.INFO, logger="tensorwall_proxy.access")
    proxy = make_proxy()
    response = post_json(proxy, "/v1/chat/completions", {"model": model, "messages": USER, "stream": stream},
                         **{"x-request-id": f"tokens-{provider}-{stream}"})
    assert response.status == 200, response.body
    if stream:
        # The caller did not ask for usage: it is counted anyway, and not shown to the caller.
        assert '"choices":[],"usage"' not in response.text
    line = _access_line(caplog, f"tokens-{provider}-{stream}")
    assert line["provider"] == provider
    assert line["tokens_in"] > 0 and line["tokens_out"] > 0, line


@pytest.mark.slow
def test_metrics_of_several_workers_are_reported_together(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "proxy.yaml"
    config.write_text("gateway_keys: [k]\n")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    (tmp_path / "metrics").mkdir()
    process = subprocess.Popen([sys.executable, "-m", "tensorwall_proxy", "serve", "--config", str(config),
                                "--port", str(port), "--workers", "2"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if raw_request(f"http://127.0.0.1:{port}/readyz", method="GET").status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.1)
        # New connections each time, so the kernel spreads them over the workers; keep going until
        # both have served some (the second may bind a moment after the first answers).
        requests = 0
        deadline = time.monotonic() + 20
        # Counters all carry labels, so counter_<pid>.db appears only once that worker counted a request.
        while requests < 40 or len(list((tmp_path / "metrics").glob("counter_*.db"))) < 2:
            assert time.monotonic() < deadline, "the requests never reached both workers"
            assert raw_request(f"http://127.0.0.1:{port}/v1/models", headers={"X-API-Key": "k", "Connection": "close"},
                               method="GET").status == 200
            requests += 1
        time.sleep(0.1)  # each worker counts a request just after its response leaves
        text = raw_request(f"http://127.0.0.1:{port}/metrics", method="GET").text
        assert _metric(text, "tensorwall_requests_total", route="none", provider="none", status_class="2xx",
                       stream="false") == requests
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)


def test_the_ledger_accounts_a_batch_after_its_delay(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    from tensorwall_proxy.observability import Ledger, Metrics, RequestRecord

    caplog.set_level(logging.INFO, logger="tensorwall_proxy.access")
    ok = {"route": "gpt-*", "provider": "openai", "status_class": "2xx", "stream": "false"}

    async def run() -> tuple[float, int, str]:
        metrics = Metrics()
        ledger = Ledger(metrics, in_flight=lambda: 3, delay=0.05)
        for i in range(40):
            record = RequestRecord(f"ledger-{i}", "POST", "/v1/chat/completions")
            record.route, record.provider = "gpt-*", "openai"
            ledger.add(record, 200 if i else 502)
        counted_at_once = _metric(metrics.render()[0].decode(), "tensorwall_requests_total", **ok)
        logged_at_once = len([line for line in _access_lines(caplog) if line["id"].startswith("ledger-")])
        ledger.flush()  # a flush between a response and its accounting must not strand the counts
        await asyncio.sleep(0.2)
        return counted_at_once, logged_at_once, metrics.render()[0].decode()

    counted_at_once, logged_at_once, text = asyncio.run(run())
    assert counted_at_once == 0 and logged_at_once == 0  # the responses leave first
    assert _metric(text, "tensorwall_requests_total", **ok) == 39
    assert _metric(text, "tensorwall_requests_total", **{**ok, "status_class": "5xx"}) == 1
    assert _metric(text, "tensorwall_errors_total", blame="upstream") == 1
    assert _metric(text, "tensorwall_requests_in_flight") == 3
    lines = [line for line in _access_lines(caplog) if line["id"].startswith("ledger-")]
    assert [line["id"] for line in lines] == [f"ledger-{i}" for i in range(40)]
    assert [line["status"] for line in lines] == [502] + [200] * 39


def test_access_lines_are_written_when_flushed_and_warnings_at_once(tmp_path: Path) -> None:
    from tensorwall_proxy.observability import BufferedStreamHandler, JsonLineFormatter

    path = tmp_path / "log"
    with path.open("w") as sink:
        handler = BufferedStreamHandler(sink.fileno())
        handler.setFormatter(JsonLineFormatter())
        logger = logging.getLogger("tensorwall_proxy.test_buffered")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        try:
            logger.warning('{"id":"w"}')
            assert path.read_text() == '{"id":"w"}\n'
            logger.info('{"id":"a"}')
            try:
                raise ValueError("boom")
            except ValueError:
                logger.info('{"id":"b"}', exc_info=True)  # the line alone: no traceback among JSON lines
            assert path.read_text() == '{"id":"w"}\n'
            handler.flush()
            lines = path.read_text().splitlines()
        finally:
            logger.removeHandler(handler)
    assert lines == ['{"id":"w"}', '{"id":"a"}', '{"id":"b"}']


def test_a_batch_is_one_write_of_whole_lines(tmp_path: Path) -> None:
    """Workers share one stdout: a batch is written in one piece, never cut inside a line. A
    SOCK_SEQPACKET socket keeps each write(2) a message of its own, so the reader sees the writes."""
    from tensorwall_proxy.observability import BufferedStreamHandler, JsonLineFormatter

    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    handler = BufferedStreamHandler(writer.fileno())
    handler.setFormatter(JsonLineFormatter())
    logger = logging.getLogger("tensorwall_proxy.test_batch")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        sent = [json.dumps({"id": f"batch-{i}", "pad": "x" * 150}) for i in range(600)]  # about 100 KB
        for line in sent:
            logger.info(line)
        reader.setblocking(False)
        with pytest.raises(BlockingIOError):
            reader.recv(1)  # nothing before the flush
        handler.flush()
        handler.flush()  # nothing more to write: no empty message
        message = reader.recv(1 << 21)
        with pytest.raises(BlockingIOError):
            reader.recv(1)  # the whole batch came as that one message
    finally:
        logger.removeHandler(handler)
        reader.close()
        writer.close()
    assert message.decode().split("\n") == [*sent, ""]


def test_timestamps_are_rfc3339_utc_with_milliseconds() -> None:
    from datetime import UTC, datetime

    from tensorwall_proxy.observability import UtcStamp

    stamp = UtcStamp()
    assert stamp(0) == "1970-01-01T00:00:00.000Z"
    assert stamp(1796419527_653_999_999) == "2026-12-04T21:25:27.653Z"
    # Several in one second (the cached date and time), across a second, a day and a year.
    for now_us in (1796419527_653100, 1796419527_000000, 1796419527_999900, 1796419528_000400,
                   1798761599_999000, 1798761600_001000, 1798761600_500000, 1796419527_250000):
        expected = datetime.fromtimestamp(now_us // 10**6, UTC).replace(microsecond=now_us % 10**6)
        assert stamp(now_us * 1000) == expected.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", now_us


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_the_access_log_is_json_lines_on_stdout_and_the_rest_on_stderr(tmp_path: Path, workers: int) -> None:
    """What a log shipper reads: stdout holds JSON objects and nothing else, ``ts`` first; the
    gateway's own lines (start, a warning, the drain) are on stderr, and no access line is. With
    ``--workers`` the workers write to the stdout and stderr they inherit from the parent."""
    port = free_port()
    config = tmp_path / "proxy.yaml"
    # An endpoint on a closed port: its failure is a WARNING on stderr and a 502 access line.
    config.write_text("gateway_keys: [k]\nproviders:\n  dead: {type: openai, api_key: x, models: [m], "
                      f'base_url: "http://127.0.0.1:{free_port()}/v1"}}\n')
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "tensorwall_proxy", "serve", "--config", str(config),
                                    "--port", str(port), "--workers", str(workers)], cwd=ROOT, env=CLEAN_ENV,
                                   stdout=stdout, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process)
        for i in range(3):
            assert raw_request(url + "/v1/models", headers={"X-API-Key": "k", "x-request-id": f"line-{i}"},
                               method="GET").status == 200
        failed = raw_request(url + "/v1/chat/completions", body=json.dumps({"model": "dead/m", "messages": USER}),
                             headers={"X-API-Key": "k", "x-request-id": "line-dead",
                                      "Content-Type": "application/json"})
        assert failed.status == 502
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    assert process.returncode == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]  # each one whole JSON, or this fails
    served = {line["id"]: line for line in lines if line["path"] != "/readyz"}
    assert sorted(served) == ["line-0", "line-1", "line-2", "line-dead"]
    for line in lines:
        assert list(line)[:2] == ["ts", "id"] and RFC3339_MS.fullmatch(line["ts"])
        assert line["principal"] == (None if line["path"] == "/readyz" else key_digest("k"))
    assert served["line-dead"]["status"] == 502 and served["line-dead"]["blame"] == "upstream"
    text = err.read_text()
    assert "listening on http" in text and "could not connect" in text and "drained; exiting" in text
    assert "line-" not in text and not [line for line in text.splitlines() if line.startswith("{")]


def _wait_ready(url: str, process: subprocess.Popen[Any]) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            if raw_request(url + "/readyz", method="GET").status == 200:
                return
        except OSError:
            pass
        assert process.poll() is None, "the gateway exited"
        assert time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_port_serves_metrics_and_the_api_port_does_not(tmp_path: Path, workers: int) -> None:
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "proxy.yaml"
    config.write_text(f"gateway_keys: [k]\nserver: {{metrics_port: {metrics_port}}}\n")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    (tmp_path / "metrics").mkdir()
    process = subprocess.Popen([sys.executable, "-m", "tensorwall_proxy", "serve", "--config", str(config),
                                "--port", str(port), "--workers", str(workers)], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api, metrics = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}"
    try:
        _wait_ready(api, process)
        on_api = raw_request(api + "/metrics", method="GET")
        assert on_api.status == 404
        assert on_api.json()["error"]["code"] == "not_found" and "tensorwall_" not in on_api.text
        # New connections each time, so the kernel spreads them over the workers.
        requests = 0
        deadline = time.monotonic() + 20
        while requests < 20 or len(list((tmp_path / "metrics").glob("counter_*.db"))) < workers:
            assert time.monotonic() < deadline, "the requests never reached every worker"
            assert raw_request(api + "/v1/models", headers={"X-API-Key": "k", "Connection": "close"},
                               method="GET").status == 200
            requests += 1
        time.sleep(0.1)  # each worker counts a request just after its response leaves
        scraped = raw_request(metrics + "/metrics", method="GET")
        assert scraped.status == 200 and scraped.headers["content-type"].startswith("text/plain")
        # Every worker's requests, whichever worker answered the scrape.
        assert _metric(scraped.text, "tensorwall_requests_total", route="none", provider="none",
                       status_class="2xx", stream="false") == requests
        # The metrics listener serves /metrics alone, and asks for no key.
        other = raw_request(metrics + "/v1/models", headers={"X-API-Key": "k"}, method="GET")
        assert other.status == 404 and other.json()["error"]["code"] == "not_found"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    assert process.returncode == 0


def test_a_negative_token_count_from_upstream_does_not_break_metrics(
        make_proxy: Callable[..., Proxy], servers: ServerThread, fake: FakeUpstream) -> None:

    async def completion(request: web.Request) -> web.Response:
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "odd",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": -7, "completion_tokens": 3, "total_tokens": -4}})

    upstream = web.Application()
    upstream.router.add_post("/v1/chat/completions", completion)
    runner, url = servers.run(_start_app(upstream))
    try:
        proxy = make_proxy(text=config_text(
            fake, providers=f'  odd: {{type: openai, base_url: "{url}/v1", api_key: k, models: [odd]}}\n'))
        assert post_json(proxy, "/v1/chat/completions", {"model": "odd/odd", "messages": USER}).status == 200
        time.sleep(0.1)
        text = _scrape(proxy)
        assert _metric(text, "tensorwall_tokens_total", provider="odd", model="odd", direction="out") == 3
        assert _metric(text, "tensorwall_tokens_total", provider="odd", model="odd", direction="in") == 0
    finally:
        servers.run(runner.cleanup())


def test_a_metrics_render_failure_is_a_500_in_openai_shape_logged_once(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "proxy.yaml"
    config.write_text("gateway_keys: [k]\n")
    directory = tmp_path / "metrics"
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    process = subprocess.Popen([sys.executable, "-m", "tensorwall_proxy", "serve", "--config", str(config),
                                "--port", str(port)], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process)
        assert raw_request(url + "/metrics", method="GET").status == 200
        directory.rename(tmp_path / "gone")  # the shared metrics directory vanished under the gateway
        for _ in range(3):
            response = raw_request(url + "/metrics", method="GET")
            assert response.status == 500
            assert response.headers["content-type"] == "application/json"
            assert response.json()["error"]["code"] == "internal_error"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    assert stderr.count("Traceback") == 1, stderr


def test_a_scrape_with_nothing_new_reuses_the_last_text() -> None:
    """What makes a repeated /metrics cheap: no new request, no new health state, no rendering."""
    from tensorwall_proxy.observability import Metrics, RequestRecord

    metrics = Metrics()
    first = metrics.render()[0]
    assert metrics.render()[0] is first
    metrics.report_health([("openai", "gpt-4o", "ejected")])
    second = metrics.render()[0]
    assert second is not first and b'state="ejected"} 1.0' in second
    metrics.observe(RequestRecord("r", "GET", "/v1/models", status=200))
    metrics.apply(0)
    third = metrics.render()[0]
    assert third is not second and b"tensorwall_requests_total" in third
    metrics.report_health([])
    assert b'state="ejected"} 0.0' in metrics.render()[0]  # a state that is over reads 0
