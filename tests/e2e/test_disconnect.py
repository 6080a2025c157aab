"""A client that goes away cancels its upstream request at once, in every phase."""

from __future__ import annotations

import time

import pytest

from tests.conftest import Proxy, open_request, wait_for
from tests.fakes import FakeUpstream


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_while_waiting_for_the_first_byte(proxy: Proxy, fake: FakeUpstream, stream: bool) -> None:
    sock = open_request(proxy, {"model": "gpt-hang", "messages": [{"role": "user", "content": "x"}],
                                 "stream": stream})
    assert wait_for(lambda: bool(fake.for_model("gpt-hang")))
    left = time.monotonic()
    sock.close()
    assert wait_for(lambda: fake.for_model("gpt-hang")[0].disconnected_at is not None)
    disconnected_at = fake.for_model("gpt-hang")[0].disconnected_at
    assert disconnected_at is not None and disconnected_at - left < 1.0


def test_disconnect_mid_stream(proxy: Proxy, fake: FakeUpstream) -> None:
    sock = open_request(proxy, {"model": "gpt-slow-stream", "messages": [{"role": "user", "content": "a b c"}],
                                 "stream": True})
    received = b""
    while b"[openai]" not in received:
        received += sock.recv(65536)
    assert received.startswith(b"HTTP/1.1 200")
    sock.close()  # the fake is now sleeping between two chunks
    assert wait_for(lambda: fake.for_model("gpt-slow-stream")[0].disconnected_at is not None)
    assert fake.for_model("gpt-slow-stream")[0].finished_at is None
