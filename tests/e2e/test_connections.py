"""Attacks on the listener and the HTTP layer, by a raw TCP client on 127.0.0.1.

Each attack is small and bounded in time: the bounds under test are set to fractions of a second
(`server.header_timeout_seconds: 0.5` and the like), and every socket read has a deadline, so a
gateway without the bound fails the test instead of hanging it.
"""

from __future__ import annotations

import gzip
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest

from tensorwall_proxy.api import BUDGET
from tensorwall_proxy.observability import LogThrottle
from tests.conftest import GATEWAY_KEY, PROVIDER_KEY, Proxy, RawResponse, config_text, post_json, raw_request
from tests.fakes import FakeUpstream

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}

# aiohttp's keep-alive timer also runs from accept: kept longer here, so the head's own bound shows.
FAST_BOUNDS = """
server:
  header_timeout_seconds: 0.5
  body_timeout_seconds: 0.5
  keepalive_seconds: 5
"""


def address(proxy: Proxy) -> tuple[str, int]:
    parts = urlsplit(proxy.url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


@pytest.fixture
def sockets() -> Iterator[Callable[[Proxy], socket.socket]]:
    """Raw client sockets to a proxy, every one closed after the test."""
    opened: list[socket.socket] = []

    def connect(proxy: Proxy) -> socket.socket:
        sock = socket.create_connection(address(proxy), timeout=5)
        opened.append(sock)
        return sock

    yield connect
    for sock in opened:
        sock.close()


def receive(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """What arrives within ``seconds``, and whether the proxy closed the connection by then."""
    deadline = time.monotonic() + seconds
    data = b""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            piece = sock.recv(65536)
        except TimeoutError:
            return data, False
        except ConnectionResetError:
            return data, True
        if not piece:
            return data, True
        data += piece
    return data, False


def parse(data: bytes) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1."), data[:200]
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return RawResponse(int(lines[0].split()[1]), headers, body)


def chat_head(length: int | None, extra: str = "") -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {GATEWAY_KEY}\r\n"
            f"Authorization: Bearer {PROVIDER_KEY}\r\nContent-Type: application/json\r\n{size}{extra}\r\n").encode()


def assert_openai_error(response: RawResponse, status: int, code: str) -> None:
    assert response.status == status, response.body[:300]
    error = json.loads(response.body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code


def closed_reasons(proxy: Proxy, reason: str) -> float:
    response = raw_request(proxy.url + "/metrics", method="GET")
    for line in response.text.splitlines():
        if line.startswith(f'tensorwall_connections_closed_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


# --------------------------------------------------------------------------------------------------
# 1. Connection timeouts and max_connections


def test_a_head_trickled_byte_by_byte_gets_408_after_the_header_timeout(
        make_proxy: Callable[..., Proxy], sockets: Callable[[Proxy], socket.socket]) -> None:
    proxy = make_proxy(FAST_BOUNDS)
    sock = sockets(proxy)
    started = time.monotonic()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    data = b""
    closed = False
    for _ in range(30):  # a header byte every 0.1 s: aiohttp's keep-alive timer never sees an idle gap
        try:
            sock.sendall(b"X")
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        more, closed = receive(sock, 0.1)
        data += more  # the answer and the close may come in different rounds
        if closed:
            break
    if not closed:
        more, closed = receive(sock, 0.5)
        data += more
    assert closed, "a trickled head still held its connection 3 s later"
    assert time.monotonic() - started < 2.5
    assert_openai_error(parse(data), 408, "request_timeout")
    assert closed_reasons(proxy, "header_timeout") >= 1


def test_the_next_head_on_a_keep_alive_connection_has_the_header_timeout_too(
        make_proxy: Callable[..., Proxy], sockets: Callable[[Proxy], socket.socket]) -> None:
    proxy = make_proxy(FAST_BOUNDS)
    sock = sockets(proxy)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data, closed = receive(sock, 0.3)
    assert parse(data).status == 200 and not closed
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")
    for _ in range(20):  # well within keepalive_seconds (5), far past header_timeout_seconds (0.5)
        time.sleep(0.1)
        try:
            sock.sendall(b"X")
        except (BrokenPipeError, ConnectionResetError):
            break
        data, closed = receive(sock, 0.01)
        if closed or data:
            break
    if not closed:
        more, closed = receive(sock, 0.5)
        data += more
    assert closed
    assert_openai_error(parse(data), 408, "request_timeout")


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
        make_proxy: Callable[..., Proxy], sockets: Callable[[Proxy], socket.socket]) -> None:
    proxy = make_proxy(FAST_BOUNDS)
    sock = sockets(proxy)
    data, closed = receive(sock, 3)
    assert closed and data == b""


def test_an_idle_keep_alive_connection_is_closed_after_keepalive_seconds(
        make_proxy: Callable[..., Proxy], sockets: Callable[[Proxy], socket.socket]) -> None:
    proxy = make_proxy("server: {keepalive_seconds: 0.5}\n")
    sock = sockets(proxy)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data, closed = receive(sock, 0.3)
    assert parse(data).status == 200 and not closed
    data, closed = receive(sock, 3)
    assert closed and data == b""


def test_past_max_connections_a_new_connection_is_closed_at_once_and_counted(
        make_proxy: Callable[..., Proxy], sockets: Callable[[Proxy], socket.socket]) -> None:
    proxy = make_proxy("server: {max_connections: 20}\n")
    held = [sockets(proxy) for _ in range(20)]
    time.sleep(0.2)  # every one accepted
    extra = sockets(proxy)
    data, closed = receive(extra, 2)
    assert closed and data == b"", "the connection past max_connections was kept open"
    for sock in held:
        sock.close()
    time.sleep(0.2)
    assert closed_reasons(proxy, "max_connections") >= 1  # and the gateway serves again
    assert post_json(proxy, "/v1/chat/completions", CHAT).status == 200


# --------------------------------------------------------------------------------------------------
# 2. Request heads: the whole head within max_header_bytes, at most 64 header lines


def test_a_head_larger_than_max_header_bytes_in_pieces_gets_431(
        make_proxy: Callable[..., Proxy], sockets: Callable[[Proxy], socket.socket]) -> None:
    proxy = make_proxy()
    sock = sockets(proxy)
    sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    for i in range(12):  # 12 x 4 KiB lines, each well within aiohttp's own 8,190-byte line limit
        try:
            sock.sendall(f"X-Filler-{i}: {'a' * 4000}\r\n".encode())
        except (BrokenPipeError, ConnectionResetError):
            break  # refused before the head ended
        time.sleep(0.02)
    data, closed = receive(sock, 2)
    assert closed
    assert_openai_error(parse(data), 431, "request_header_fields_too_large")


def test_a_head_larger_than_max_header_bytes_in_one_write_gets_431(
        make_proxy: Callable[..., Proxy], sockets: Callable[[Proxy], socket.socket]) -> None:
    proxy = make_proxy()
    sock = sockets(proxy)
    filler = "".join(f"X-Filler-{i}: {'a' * 4000}\r\n" for i in range(12))
    sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {GATEWAY_KEY}\r\n{filler}\r\n".encode())
    data, closed = receive(sock, 2)
    assert closed
    assert_openai_error(parse(data), 431, "request_header_fields_too_large")


def test_more_than_64_header_lines_get_431(make_proxy: Callable[..., Proxy],
                                           sockets: Callable[[Proxy], socket.socket]) -> None:
    proxy = make_proxy()
    sock = sockets(proxy)
    lines = "".join(f"X-Line-{i}: {i}\r\n" for i in range(70))
    sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {GATEWAY_KEY}\r\n{lines}\r\n".encode())
    data, _ = receive(sock, 2)
    assert_openai_error(parse(data), 431, "request_header_fields_too_large")


def test_a_head_of_64_lines_within_the_bound_is_served(proxy: Proxy, sockets: Callable[[Proxy], socket.socket]
                                                      ) -> None:
    sock = sockets(proxy)
    lines = "".join(f"X-Line-{i}: {'v' * 200}\r\n" for i in range(60))
    sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {GATEWAY_KEY}\r\n{lines}"
                 "Connection: close\r\n\r\n".encode())
    data, _ = receive(sock, 2)
    assert parse(data).status == 200


# --------------------------------------------------------------------------------------------------
# 8 (first half). A trickled body holds its connection, not a slot of max_in_flight


@pytest.mark.slow
def test_trickled_bodies_do_not_take_in_flight_slots_and_get_408(
        make_proxy: Callable[..., Proxy], sockets: Callable[[Proxy], socket.socket]) -> None:
    proxy = make_proxy(FAST_BOUNDS.replace("body_timeout_seconds: 0.5", "body_timeout_seconds: 1")
                       + "  max_in_flight: 2\n")
    body = json.dumps(CHAT).encode()
    stalled = [sockets(proxy) for _ in range(4)]
    for sock in stalled:
        sock.sendall(chat_head(len(body)) + body[:10])
    time.sleep(0.3)
    # Four bodies half-sent, two slots: every other caller is still served.
    assert post_json(proxy, "/v1/chat/completions", CHAT).status == 200
    for sock in stalled:
        data, closed = receive(sock, 3)
        assert closed
        response = parse(data)
        assert_openai_error(response, 408, "request_timeout")
        assert response.headers.get("connection", "").lower() == "close"


@pytest.mark.slow
def test_a_body_that_keeps_trickling_is_served_while_each_gap_is_short(
        make_proxy: Callable[..., Proxy], sockets: Callable[[Proxy], socket.socket]) -> None:
    proxy = make_proxy(FAST_BOUNDS)
    body = json.dumps(CHAT).encode()
    sock = sockets(proxy)
    sock.sendall(chat_head(len(body)))
    for i in range(0, len(body), 8):  # the whole body takes longer than the timeout; no gap does
        sock.sendall(body[i:i + 8])
        time.sleep(0.05)
    data, _ = receive(sock, 3)
    assert parse(data).status == 200


def test_a_large_body_in_many_writes_is_served(proxy: Proxy, sockets: Callable[[Proxy], socket.socket]) -> None:
    # The read that ends a body must count as the body's, not as the start of the next head.
    body = json.dumps({**CHAT, "messages": [{"role": "system", "content": "z" * 500_000},
                                            {"role": "user", "content": "hi"}]}).encode()
    sock = sockets(proxy)
    sock.sendall(chat_head(len(body), "Connection: close\r\n"))
    tail = len(body) - 200_000  # the read that ends the body is far larger than a head may be
    for i in range(0, tail, 50_000):
        sock.sendall(body[i:min(i + 50_000, tail)])
        time.sleep(0.005)
    sock.sendall(body[tail:])
    data, _ = receive(sock, 5)
    assert parse(data).status == 200


# --------------------------------------------------------------------------------------------------
# 10. A budget for the body bytes held across requests


@pytest.mark.slow
def test_past_the_buffered_body_budget_a_request_gets_503_with_retry_after(
        make_proxy: Callable[..., Proxy], sockets: Callable[[Proxy], socket.socket]) -> None:
    proxy = make_proxy("server: {max_buffered_body_bytes: 1048576, body_timeout_seconds: 5}\n")
    first = sockets(proxy)
    first.sendall(chat_head(700_000) + b"{")  # reserved by its Content-Length, then held
    time.sleep(0.2)
    second = sockets(proxy)
    second.sendall(chat_head(700_000) + b"{")
    data, _ = receive(second, 2)
    response = parse(data)
    assert_openai_error(response, 503, "overloaded")
    assert response.headers["retry-after"] == "1"
    first.close()
    time.sleep(0.2)  # the first request is gone: its reservation is given back
    assert post_json(proxy, "/v1/chat/completions", CHAT).status == 200
    assert proxy.app[BUDGET].held == 0


def test_a_chunked_body_is_read_and_counted_as_it_arrives(proxy: Proxy,
                                                          sockets: Callable[[Proxy], socket.socket]) -> None:
    body = json.dumps(CHAT).encode()
    sock = sockets(proxy)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]) for i in range(0, len(body), 7))
    sock.sendall(chat_head(None, "Connection: close\r\n") + chunks + b"0\r\n\r\n")
    data, _ = receive(sock, 3)
    assert parse(data).status == 200
    assert proxy.app[BUDGET].held == 0


@pytest.mark.slow
def test_a_body_over_max_body_bytes_by_its_content_length_gets_413_unread(
        make_proxy: Callable[..., Proxy], sockets: Callable[[Proxy], socket.socket]) -> None:
    proxy = make_proxy("server: {max_body_bytes: 2000}\n")
    sock = sockets(proxy)
    sock.sendall(chat_head(5000) + b"{")
    data, _ = receive(sock, 2)
    assert_openai_error(parse(data), 413, "request_too_large")


# --------------------------------------------------------------------------------------------------
# 11. DNS rebinding and cross-site requests while gateway auth is off

NO_KEYS = """
server:
  allowed_hosts: [gateway.internal]
  allowed_origins: ["https://app.example.com"]
"""


@pytest.fixture
def open_proxy(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> Proxy:
    """A proxy with gateway auth off (the shipped default), bound to 127.0.0.1."""
    return make_proxy(text=config_text(fake, NO_KEYS).replace(f"gateway_keys: [{GATEWAY_KEY}]", "gateway_keys: []"))


def browser_post(proxy: Proxy, path: str = "/v1/chat/completions", **headers: str) -> RawResponse:
    """A browser's "simple" request: text/plain, no preflight."""
    return raw_request(proxy.url + path, json.dumps(CHAT),
                       {"Content-Type": "text/plain", "Authorization": f"Bearer {PROVIDER_KEY}", **headers})


def test_with_auth_off_a_foreign_host_is_refused(open_proxy: Proxy) -> None:
    assert_openai_error(browser_post(open_proxy, Host="attacker.example:8000"), 403, "forbidden_host")
    assert_openai_error(browser_post(open_proxy, Host="rebind.attacker.example"), 403, "forbidden_host")
    assert_openai_error(raw_request(open_proxy.url + "/v1/models", method="GET", headers={"Host": "evil.test"}),
                        403, "forbidden_host")
    assert_openai_error(raw_request(open_proxy.url + "/metrics", method="GET", headers={"Host": "evil.test"}),
                        403, "forbidden_host")


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:8000", "127.0.0.1", "127.0.0.1:1234", "[::1]:80",
                                  "127.9.9.9", "Gateway.Internal:443", "localhost."])
def test_with_auth_off_loopback_and_allowed_hosts_are_served(open_proxy: Proxy, host: str) -> None:
    assert browser_post(open_proxy, Host=host).status == 200


def test_with_auth_off_a_foreign_origin_is_refused(open_proxy: Proxy) -> None:
    for origin in ("https://attacker.example", "null", "http://localhost.attacker.example",
                   "file://", "https://app.example.com.attacker.example"):
        assert_openai_error(browser_post(open_proxy, Origin=origin), 403, "forbidden_origin")


@pytest.mark.parametrize("origin", ["http://localhost:3000", "http://127.0.0.1:8080", "http://[::1]",
                                    "https://app.example.com", "HTTPS://APP.EXAMPLE.COM/"])
def test_with_auth_off_loopback_and_allowed_origins_are_served(open_proxy: Proxy, origin: str) -> None:
    assert browser_post(open_proxy, Origin=origin).status == 200


def test_health_probes_answer_whatever_the_host(open_proxy: Proxy) -> None:
    for path in ("/healthz", "/readyz"):
        response = raw_request(open_proxy.url + path, method="GET",
                               headers={"Host": "lb.example", "Origin": "https://attacker.example"})
        assert response.status == 200


def test_with_gateway_keys_on_the_host_rule_does_not_apply(proxy: Proxy) -> None:
    assert post_json(proxy, "/v1/chat/completions", CHAT, Host="anything.example",
                     Origin="https://elsewhere.example").status == 200


# --------------------------------------------------------------------------------------------------
# 12 (part). Caller input that used to be a 500 with an ERROR traceback


def nested(depth: int) -> bytes:
    return ('{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "metadata": '
            + "[" * depth + "]" * depth + "}").encode()


@pytest.mark.parametrize("depth", [260, 600, 1020])
def test_json_nested_deeper_than_orjson_writes_is_a_400(proxy: Proxy, caplog: pytest.LogCaptureFixture,
                                                       depth: int) -> None:
    with caplog.at_level(logging.ERROR):
        response = raw_request(proxy.url + "/v1/chat/completions", nested(depth),
                               {"X-API-Key": GATEWAY_KEY, "Authorization": f"Bearer {PROVIDER_KEY}"})
    assert_openai_error(response, 400, "invalid_json")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_json_nested_within_the_bound_is_served(proxy: Proxy) -> None:
    response = raw_request(proxy.url + "/v1/chat/completions", nested(250),
                           {"X-API-Key": GATEWAY_KEY, "Authorization": f"Bearer {PROVIDER_KEY}"})
    assert response.status == 200


def test_a_wide_body_with_many_brackets_is_served(proxy: Proxy) -> None:
    # Hundreds of brackets, nested two deep: the depth walk runs and finds nothing to refuse.
    messages = [{"role": "user", "content": [{"type": "text", "text": f"part {i}"}]} for i in range(300)]
    assert post_json(proxy, "/v1/chat/completions", {"model": "gpt-4o", "messages": messages}).status == 200


def test_an_invalid_gzip_body_is_a_400_without_an_error_line(proxy: Proxy, caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    headers = {"X-API-Key": GATEWAY_KEY, "Authorization": f"Bearer {PROVIDER_KEY}", "Content-Encoding": "gzip"}
    with caplog.at_level(logging.ERROR):
        broken = raw_request(proxy.url + "/v1/chat/completions", b"\x1f\x8bnot really gzip at all" * 10, headers)
        truncated = raw_request(proxy.url + "/v1/chat/completions", gzip.compress(json.dumps(CHAT).encode())[:20],
                                headers)
    assert_openai_error(broken, 400, "invalid_body")
    assert truncated.status == 400
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # And a valid one is served.
    assert raw_request(proxy.url + "/v1/chat/completions", gzip.compress(json.dumps(CHAT).encode()),
                       headers).status == 200


def test_unhandled_errors_log_one_traceback_a_minute_per_kind(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    throttle = LogThrottle(lambda: now[0])
    log = logging.getLogger("tensorwall_proxy")

    def fail(kind: type[Exception]) -> Exception:
        try:
            raise kind("boom")
        except Exception as exc:
            return exc

    with caplog.at_level(logging.ERROR, logger="tensorwall_proxy"):
        for _ in range(5):
            throttle.error(log, fail(ValueError), "unhandled error serving %s", "req_1")
        throttle.error(log, fail(KeyError), "unhandled error serving %s", "req_2")
    lines = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 2  # one ValueError, one KeyError: another kind is logged at once
    assert all(r.exc_info for r in lines)
    now[0] += LogThrottle.PERIOD  # a minute later
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="tensorwall_proxy"):
        throttle.error(log, fail(ValueError), "unhandled error serving %s", "req_3")
    assert caplog.records[0].getMessage() == ("unhandled error serving req_3; 4 more like it since the last one "
                                              "were not logged")


def test_an_upstream_outage_logs_one_warning_a_minute_per_provider(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, caplog: pytest.LogCaptureFixture) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: every attempt is refused
    proxy = make_proxy(text=config_text(fake, providers=(
        f'  down: {{type: openai, base_url: "http://127.0.0.1:{port}/v1", api_key: k, models: ["*"]}}\n')))
    with caplog.at_level(logging.WARNING, logger="tensorwall_proxy"):
        for _ in range(5):
            response = post_json(proxy, "/v1/chat/completions", {**CHAT, "model": "down/m"})
            assert response.status == 502
    refused = [r for r in caplog.records if "could not connect" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in refused]  # ten refusals (one retry each), one line
