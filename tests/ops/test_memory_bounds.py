"""What an attack may cost in memory (DESIGN §4), measured on a real `tensorwall-proxy serve`.

The proxy runs in a subprocess of its own, so its peak resident set is its own: the kernel's
high-water mark (VmHWM in /proc/<pid>/status) is reset just before the attack (clear_refs 5) and
read after it, and the growth over the resident set before the attack is what the bound limits.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.processes import Proc, memory, reset_peak, start_proxy, write_config

MiB = 1024 * 1024



def proxy_on(tmp_path: Path, spawn: Callable[..., Proc], fake_url: str, server: str = "") -> tuple[Proc, int]:
    config = write_config(tmp_path, f"""gateway_keys: []
server: {{{server}}}
providers:
  openai: {{base_url: "{fake_url}/openai/v1"}}
""")
    proc, port = start_proxy(spawn, config)
    # Warm: the first request imports and allocates what every later one reuses.
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("POST", "/v1/chat/completions", body=json.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "warm"}]}),
        headers={"Authorization": "Bearer sk-memory-test"})
    assert connection.getresponse().read()
    connection.close()
    return proc, port


@pytest.mark.slow
def test_200_connections_with_unfinished_heads_cost_at_most_64_mib(
        tmp_path: Path, spawn: Callable[..., Proc], fake_url: str) -> None:
    proc, port = proxy_on(tmp_path, spawn, fake_url)
    before = reset_peak(proc.pid)
    line = b"X-Filler: " + b"a" * 8000 + b"\r\n"  # within aiohttp's own line limit
    sockets: list[socket.socket] = []
    try:
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
            sockets.append(sock)
            try:
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                for _ in range(100):  # up to 800 KB of head that never ends
                    sock.sendall(line)
            except OSError:
                pass  # refused once past max_header_bytes
        time.sleep(0.5)  # every byte sent has been read by the proxy
        growth = memory(proc.pid)["VmHWM"] - before
    finally:
        for sock in sockets:
            sock.close()
    assert growth <= 64 * MiB, f"peak RSS grew by {growth / MiB:.0f} MiB"


@pytest.mark.slow
def test_eight_30_mb_bodies_under_a_64_mib_budget_cost_at_most_500_mib(
        tmp_path: Path, spawn: Callable[..., Proc], fake_url: str) -> None:
    proc, port = proxy_on(tmp_path, spawn, fake_url, "max_buffered_body_bytes: 67108864")
    body = json.dumps({"model": "gpt-4o", "messages": [
        {"role": "system", "content": "z" * 30_000_000}, {"role": "user", "content": "hi"}]}).encode()
    statuses: list[int] = []

    def send() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.request("POST", "/v1/chat/completions", body=body,
                               headers={"Authorization": "Bearer sk-memory-test", "Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
        except OSError:
            statuses.append(0)  # the proxy closed a refused upload before it was all sent
        finally:
            connection.close()

    before = reset_peak(proc.pid)
    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(40)
    growth = memory(proc.pid)["VmHWM"] - before
    assert growth <= 500 * MiB, f"peak RSS grew by {growth / MiB:.0f} MiB ({statuses})"
    assert len(statuses) == 8 and 200 in statuses, (statuses, proc.log()[-3000:])
    assert set(statuses) <= {200, 503, 0}, statuses
