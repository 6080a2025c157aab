"""The serving process as an operator runs it: real processes, real sockets, real signals.

`python -m tensorwall_proxy serve` runs in a subprocess (its own session, so a failed test can kill
it and its workers by process group); the fake upstream runs in another (scripts/fake_upstream.py).
Times are fractions of a second so the whole file stays fast.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.processes import SERVE, Proc, free_port, request, start_proxy, write_config

CALLER_KEY = "sk-lifecycle-test-key"


def model_ids(port: int, headers: dict[str, str] | None = None) -> list[str]:
    status, body = request(port, "/v1/models", headers=headers)
    assert status == 200, body
    return [item["id"] for item in json.loads(body)["data"]]


# --------------------------------------------------------------------------------------------------
# SIGHUP


def test_hup_with_a_good_file_makes_a_new_route_routable(tmp_path: Path, spawn: Callable[..., Proc]) -> None:
    config = write_config(tmp_path, "gateway_keys: []\n")
    proc, port = start_proxy(spawn, config)
    assert "added-route" not in model_ids(port)

    config.write_text("""gateway_keys: []
routes:
  added-route:
    endpoints: [{provider: openai, model: gpt-4o}]
""")
    proc.signal(signal.SIGHUP)
    proc.wait_log(r"reloaded .*tensorwall\.yaml: 1 routes")
    assert "added-route" in model_ids(port)
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


def test_hup_with_a_bad_file_keeps_the_running_table(tmp_path: Path, spawn: Callable[..., Proc]) -> None:
    key = "lifecycle-gateway-key"
    good = f"""gateway_keys: [{key}]
routes:
  kept-route:
    endpoints: [{{provider: openai, model: gpt-4o}}]
"""
    config = write_config(tmp_path, good)
    # On every address, so that a reload turning gateway auth off must be refused too.
    proc, port = start_proxy(spawn, config, "--host", "0.0.0.0")
    headers = {"X-API-Key": key}
    assert "kept-route" in model_ids(port, headers)

    config.write_text(good + "  broken-route:\n    endpoints: [{provider: azur}]\n")
    proc.signal(signal.SIGHUP)
    proc.wait_log(r"reload of \S+ failed")
    assert "routes.broken-route.endpoints[0].provider: unknown provider 'azur'" in proc.log()
    assert model_ids(port, headers) == ["kept-route"]

    config.write_text(good.replace(f"[{key}]", "[]"))
    proc.signal(signal.SIGHUP)
    proc.wait_log(r"reload of \S+ refused: gateway auth is off")
    assert request(port, "/v1/models")[0] == 401  # still asks for the key
    assert model_ids(port, headers) == ["kept-route"]
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


# --------------------------------------------------------------------------------------------------
# SIGTERM: the drain


def stream_config(tmp_path: Path, fake_url: str, drain: float, delay: float) -> Path:
    return write_config(tmp_path, f"""server: {{drain_seconds: {drain}, shutdown_delay_seconds: {delay}}}
gateway_keys: []
providers:
  openai: {{base_url: "{fake_url}/openai/v1"}}
timeouts: {{connect: 2, first_byte: 5, idle: 5, total: 10}}
""")


def open_stream(port: int) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """Start a `gpt-slow-stream` stream and read up to its first content chunk (the fake then pauses)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", "/v1/chat/completions", body=json.dumps({
            "model": "gpt-slow-stream", "stream": True, "messages": [{"role": "user", "content": "one two three"}],
        }), headers={"Content-Type": "application/json", "Authorization": f"Bearer {CALLER_KEY}"})
        response = connection.getresponse()
        assert response.status == 200, response.read()
        while True:
            line = response.readline()
            assert line, "the stream ended before any content"
            if line.startswith(b"data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                return connection, response
    except BaseException:
        connection.close()
        raise


def events(rest: bytes) -> list[str]:
    return [line[6:] for line in rest.decode().splitlines() if line.startswith("data: ")]


@pytest.mark.slow
def test_term_ends_an_open_stream_in_band_and_exits_0(tmp_path: Path, spawn: Callable[..., Proc],
                                                       fake_url: str) -> None:
    config = stream_config(tmp_path, fake_url, drain=0.3, delay=0.3)
    proc, port = start_proxy(spawn, config)
    assert request(port, "/readyz")[0] == 200
    connection, response = open_stream(port)
    with contextlib.closing(connection):
        check_cut_stream(proc, port, response)


def check_cut_stream(proc: Proc, port: int, response: http.client.HTTPResponse) -> None:
    proc.signal(signal.SIGTERM)
    # Not ready at once, while the listener is still open (shutdown_delay_seconds); the loop only
    # covers the time the signal takes to arrive: the listener cannot close before /readyz says 503...
    deadline = time.monotonic() + 2
    while (status := request(port, "/readyz")[0]) == 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert status == 503
    # ...then the listener closes.
    deadline = time.monotonic() + 2
    while True:
        try:
            request(port, "/healthz")
        except ConnectionRefusedError:
            break
        except ConnectionResetError:
            pass  # accepted just before the listener closed, and closed unanswered as idle
        assert time.monotonic() < deadline, "the listener never closed"
        time.sleep(0.02)

    # The fake pauses 1.5 s; the drain (0.3 s after the 0.3 s delay) runs out first.
    data = events(response.read())
    assert "[DONE]" not in data
    error = json.loads(data[-1])["error"]
    assert error["code"] == "shutting_down"
    assert proc.wait(5) == 0
    assert "1 stream(s) ended with an in-band error" in proc.log()


@pytest.mark.slow
def test_term_lets_a_stream_that_finishes_within_the_drain_end_normally(
        tmp_path: Path, spawn: Callable[..., Proc], fake_url: str) -> None:
    config = stream_config(tmp_path, fake_url, drain=5, delay=0)
    proc, port = start_proxy(spawn, config)
    connection, response = open_stream(port)
    with contextlib.closing(connection):
        proc.signal(signal.SIGTERM)
        data = events(response.read())
    assert data[-1] == "[DONE]"
    assert not any('"error"' in event for event in data)
    assert proc.wait(5) == 0
    assert "in-band" not in proc.log()


def test_idle_keep_alive_connections_do_not_hold_the_drain_open(tmp_path: Path,
                                                                 spawn: Callable[..., Proc]) -> None:
    config = write_config(tmp_path, "server: {drain_seconds: 30}\ngateway_keys: []\n")
    proc, port = start_proxy(spawn, config)
    with contextlib.closing(http.client.HTTPConnection("127.0.0.1", port, timeout=10)) as kept:
        kept.request("GET", "/healthz")  # HTTP/1.1: the connection stays open afterwards
        assert kept.getresponse().read() == b'{"status":"ok"}'

        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        assert time.monotonic() - started < 2, "an idle connection held the 30 s drain open"


# --------------------------------------------------------------------------------------------------
# serve --workers N


def worker_pids(proc: Proc, slot: int) -> list[int]:
    return [int(m.group(1)) for m in re.finditer(rf"worker {slot} started \(pid (\d+)\)", proc.log())]


@pytest.mark.slow
def test_workers_share_one_port_and_a_killed_worker_is_restarted(tmp_path: Path,
                                                                 spawn: Callable[..., Proc]) -> None:
    config = write_config(tmp_path, "server: {drain_seconds: 0.3}\ngateway_keys: []\n")
    proc, port = start_proxy(spawn, config, "--workers", "2")
    first, second = worker_pids(proc, 1), worker_pids(proc, 2)
    assert len(first) == len(second) == 1 and proc.pid not in first + second
    for _ in range(10):
        assert request(port, "/healthz") == (200, b'{"status":"ok"}')
    assert request(port, "/readyz")[0] == 200

    os.kill(first[0], signal.SIGKILL)
    proc.wait_log(r"worker 1 \(pid \d+\) died \(killed by SIGKILL\): restarting")
    proc.wait_log(r"worker 1 \(pid \d+\) serving", count=2)
    restarted = worker_pids(proc, 1)
    assert len(restarted) == 2 and restarted[1] != first[0]
    for _ in range(10):
        assert request(port, "/healthz")[0] == 200
    assert model_ids(port) == []

    proc.signal(signal.SIGTERM)
    assert proc.wait(5) == 0
    for pid in (restarted[1], second[0]):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def gone(pid: int) -> bool:
    """Whether a process has exited (a zombie nobody reaps yet counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.slow
def test_workers_drain_and_exit_when_the_parent_dies(tmp_path: Path, spawn: Callable[..., Proc]) -> None:
    config = write_config(tmp_path, "server: {drain_seconds: 0.3}\ngateway_keys: []\n")
    proc, port = start_proxy(spawn, config, "--workers", "2")
    workers = worker_pids(proc, 1) + worker_pids(proc, 2)

    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(5)
    deadline = time.monotonic() + 5
    while not all(gone(pid) for pid in workers):
        assert time.monotonic() < deadline, f"workers outlived their parent:\n{proc.log()}"
        time.sleep(0.02)
    assert len(re.findall(r"the parent process is gone: draining", proc.log())) == 2
    with pytest.raises(ConnectionRefusedError):
        request(port, "/healthz")


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_exits_1(tmp_path: Path, spawn: Callable[..., Proc], workers: str) -> None:
    config = write_config(tmp_path, "gateway_keys: []\n")
    with socket.socket() as taken:  # no SO_REUSEPORT: nobody may share it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        proc = spawn(*SERVE, "--config", str(config), "--port", port, "--workers", workers)
        assert proc.wait(10) == 1
    assert f"cannot listen on 127.0.0.1 port {port}" in proc.log()
    if workers == "2":
        assert "exited before serving (exit code 1): stopping" in proc.log()


def test_serving_freezes_start_up_objects_and_collects_young_ones_less_often(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import gc

    from tensorwall_proxy.lifecycle import GC_THRESHOLD_ENV, GC_THRESHOLDS, tune_gc

    before = gc.get_threshold()
    monkeypatch.delenv(GC_THRESHOLD_ENV, raising=False)
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
        # TENSORWALL_GC_THRESHOLD measures the choice again (scripts/gc_compare.py) or undoes it.
        monkeypatch.setenv(GC_THRESHOLD_ENV, "700,10,10")
        with caplog.at_level(logging.INFO, logger="tensorwall_proxy"):
            tune_gc()
        assert gc.get_threshold() == (700, 10, 10)
        assert "garbage collector thresholds 700,10,10 (from TENSORWALL_GC_THRESHOLD)" in caplog.text
        for wrong in ("fast", "1,2,3,4", "-1", "700,,10"):
            monkeypatch.setenv(GC_THRESHOLD_ENV, wrong)
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="tensorwall_proxy"):
                tune_gc()
            assert gc.get_threshold() == GC_THRESHOLDS, wrong
            assert [r.levelname for r in caplog.records] == ["WARNING"] and repr(wrong) in caplog.text
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def open_files_limits(pid: int) -> tuple[int, int]:
    """The soft and hard limits on open files of a process ("unlimited" as a large number)."""
    line = next(line for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
                if line.startswith("Max open files"))
    soft, hard = (int(value) if value.isdigit() else 1 << 62 for value in line.split()[3:5])
    return soft, hard


def test_serve_raises_the_open_files_limit_for_max_connections(tmp_path: Path, spawn: Callable[..., Proc]) -> None:
    # Started under a soft limit of 512 (the hard one as it is): the 4,096 default connections
    # need about 8,448 descriptors, so serve raises its soft limit as far as the hard one allows.
    config = write_config(tmp_path, "gateway_keys: []\n")
    lowered = ("import resource, runpy, sys; hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
               "resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard)); sys.argv[0] = 'tensorwall-proxy'; "
               "runpy.run_module('tensorwall_proxy', run_name='__main__')")
    port = free_port()
    proc = spawn(sys.executable, "-c", lowered, "serve", "--config", str(config), "--port", str(port))
    proc.wait_log(r"listening on http")
    soft, hard = open_files_limits(proc.pid)
    assert soft == min(2 * 4096 + 256, hard)
    if hard < 2 * 4096 + 256:
        assert "raise LimitNOFILE= or ulimit -n" in proc.log()
