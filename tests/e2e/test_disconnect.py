"""A client that goes away cancels its upstream request at once, in every phase."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.conftest import GATEWAY_KEY, PROVIDER_KEY, Proxy, wait_for
from tests.fakes import FakeUpstream


def _open_request(proxy: Proxy, body: dict[str, object]) -> socket.socket:
    host, port = proxy.url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"X-API-Key: {GATEWAY_KEY}\r\nAuthorization: Bearer {PROVIDER_KEY}\r\n".encode()
                 + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_while_waiting_for_the_first_byte(proxy: Proxy, fake: FakeUpstream, stream: bool) -> None:
    sock = _open_request(proxy, {"model": "gpt-hang", "messages": [{"role": "user", "content": "x"}],
                                 "stream": stream})
    assert wait_for(lambda: bool(fake.for_model("gpt-hang")))
    left = time.monotonic()
    sock.close()
    assert wait_for(lambda: fake.for_model("gpt-hang")[0].disconnected_at is not None)
    disconnected_at = fake.for_model("gpt-hang")[0].disconnected_at
    assert disconnected_at is not None and disconnected_at - left < 1.0


def test_disconnect_mid_stream(proxy: Proxy, fake: FakeUpstream) -> None:
    sock = _open_request(proxy, {"model": "gpt-slow-stream", "messages": [{"role": "user", "content": "a b c"}],
                                 "stream": True})
    received = b""
    while b"[openai]" not in received:
        received += sock.recv(65536)
    assert received.startswith(b"HTTP/1.1 200")
    sock.close()  # the fake is now sleeping between two chunks
    assert wait_for(lambda: fake.for_model("gpt-slow-stream")[0].disconnected_at is not None)
    assert fake.for_model("gpt-slow-stream")[0].finished_at is None
