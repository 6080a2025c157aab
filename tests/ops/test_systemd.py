"""systemd's side of the gateway: the notify protocol as systemd receives it, and the unit file.

The tests play systemd: they bind the datagram socket that `NOTIFY_SOCKET` names, with
SO_PASSCRED so each message carries its sender's pid (what `NotifyAccess=main` checks), and
start `python -m tensorwall_proxy serve` in a subprocess against it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tensorwall_proxy.config import ServerConfig, parse_config
from tensorwall_proxy.systemd import Notifier, watchdog_interval
from tests.processes import CLEAN_ENV, ROOT, Proc, request, start_proxy, write_config

UNIT = ROOT / "scripts" / "tensorwall-proxy.service"
_CREDENTIALS = struct.Struct("iII")  # struct ucred: pid, uid, gid


class Systemd:
    """The receiving end of NOTIFY_SOCKET: messages as (sender pid, fields)."""

    def __init__(self, address: str) -> None:
        self.address = address  # what NOTIFY_SOCKET says: a path, or @name for the abstract namespace
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.received: list[tuple[int, list[str]]] = []

    def receive(self, timeout: float) -> tuple[int, list[str]] | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(_CREDENTIALS.size))
        except TimeoutError:
            return None
        pid = next(_CREDENTIALS.unpack(payload)[0] for level, kind, payload in ancillary
                   if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
        message = (pid, data.decode().split("\n"))
        self.received.append(message)
        return message

    def wait_for(self, field: str, timeout: float = 10.0) -> list[str]:
        """The fields of the next message that holds ``field`` (others are kept in ``received``)."""
        deadline = time.monotonic() + timeout
        while (message := self.receive(deadline - time.monotonic())) is not None:
            if field in message[1]:
                return message[1]
        pytest.fail(f"no {field} within {timeout}s; received {self.received}")

    def count(self, field: str) -> int:
        return sum(field in fields for _, fields in self.received)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def systemd() -> Iterator[Systemd]:
    # A short directory of its own: a socket path must fit in 108 bytes, which pytest's tmp_path may not.
    with tempfile.TemporaryDirectory(prefix="tw-notify-") as directory:
        receiver = Systemd(str(Path(directory) / "notify.sock"))
        yield receiver
        receiver.close()


@pytest.fixture
def abstract_systemd() -> Iterator[Systemd]:
    receiver = Systemd(f"@tensorwall-test-{secrets.token_hex(6)}")
    yield receiver
    receiver.close()


def notify_env(systemd: Systemd, watchdog_usec: int = 200_000) -> dict[str, str]:
    return {**CLEAN_ENV, "NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": str(watchdog_usec)}


def check_reload_and_stop(systemd: Systemd, proc: Proc, before_ready: Callable[[], None]) -> None:
    """Watchdog pings come; HUP gives RELOADING=1 + MONOTONIC_USEC then READY=1; TERM gives STOPPING=1."""
    systemd.wait_for("WATCHDOG=1", 2)
    systemd.wait_for("WATCHDOG=1", 2)

    proc.signal(signal.SIGHUP)
    reloading = systemd.wait_for("RELOADING=1", 5)
    usec = next(int(f.split("=", 1)[1]) for f in reloading if f.startswith("MONOTONIC_USEC="))
    assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 5_000_000  # the same clock
    systemd.wait_for("READY=1", 5)
    before_ready()

    proc.signal(signal.SIGTERM)
    systemd.wait_for("STOPPING=1", 5)
    assert proc.wait(5) == 0
    senders = {pid for pid, _ in systemd.received}
    assert senders == {proc.pid}, f"messages must come from the main process only: {systemd.received}"


def test_notify_single_process(tmp_path: Path, spawn: Callable[..., Proc], systemd: Systemd) -> None:
    config = write_config(tmp_path, "server: {drain_seconds: 0.2}\ngateway_keys: []\n")
    proc, port = start_proxy(spawn, config, env=notify_env(systemd))
    ready = systemd.wait_for("READY=1", 5)
    assert any(f.startswith("STATUS=serving on http://127.0.0.1:") for f in ready)
    assert systemd.count("STOPPING=1") == systemd.count("RELOADING=1") == 0
    assert request(port, "/healthz")[0] == 200  # READY=1 came after the socket was bound

    check_reload_and_stop(systemd, proc, lambda: None)
    assert systemd.count("READY=1") == 2


@pytest.mark.slow
def test_notify_with_workers_comes_from_the_parent_once_all_serve(
        tmp_path: Path, spawn: Callable[..., Proc], abstract_systemd: Systemd) -> None:
    systemd = abstract_systemd  # NOTIFY_SOCKET=@name: the abstract namespace
    config = write_config(tmp_path, "server: {drain_seconds: 0.2}\ngateway_keys: []\n")
    proc, port = start_proxy(spawn, config, "--workers", "2", env=notify_env(systemd))
    systemd.wait_for("READY=1", 5)
    # By the time the parent said READY=1, both workers had bound the port.
    listening = {m.group(1) for m in re.finditer(r"\[(\d+)\]: tensorwall-proxy listening on http", proc.log())}
    assert len(listening) == 2 and str(proc.pid) not in listening
    assert request(port, "/healthz")[0] == 200

    def both_reloaded() -> None:
        assert len(re.findall(r"\]: reloaded ", proc.log())) == 2

    check_reload_and_stop(systemd, proc, both_reloaded)
    assert systemd.count("READY=1") == 2


# --------------------------------------------------------------------------------------------------
# systemd.py without a process


def test_watchdog_interval_is_half_of_watchdog_usec_and_only_for_its_pid() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "42"}, pid=42) == 0.1
    assert watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "41"}, pid=42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({}) is None


async def test_nothing_happens_without_notify_socket() -> None:
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "200000"})
    assert not notifier.enabled and notifier.interval is None
    notifier.ready("x")
    notifier.reloading()
    await notifier.watchdog()  # returns at once: no pings to send
    notifier.close()


def test_a_notify_socket_nobody_listens_on_is_not_an_error(tmp_path: Path) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "absent.sock")})
    assert notifier.enabled
    notifier.ready()
    notifier.stopping()
    notifier.close()


def test_abstract_namespace_address(abstract_systemd: Systemd) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": abstract_systemd.address})
    notifier.ready("serving")
    notifier.close()
    assert abstract_systemd.receive(2) == (os.getpid(), ["READY=1", "STATUS=serving"])


# --------------------------------------------------------------------------------------------------
# The unit file


def unit_value(key: str) -> str:
    match = re.search(rf"^{key}=(.*)$", UNIT.read_text(), re.MULTILINE)
    assert match, f"{key}= missing from {UNIT.name}"
    return match.group(1).strip()


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian/Ubuntu: apt-get install systemd); "
                    "the unit file was not verified")
    # verify also checks that ExecStart's program exists: point it at this checkout's console script.
    installed = shutil.which("tensorwall-proxy") or str(Path(CLEAN_ENV.get("VIRTUAL_ENV", ROOT / ".venv"))
                                                        / "bin" / "tensorwall-proxy")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/tensorwall-proxy", installed))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=30)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if UNIT.name in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_unit_gives_the_drain_time_to_finish() -> None:
    """TimeoutStopSec must outlast the shipped config's shutdown delay and drain, or systemd kills the drain."""
    config = (ROOT / "config" / "tensorwall.yaml").read_text()

    def seconds(key: str) -> float:
        match = re.search(rf"^\s*{key}:\s*([\d.]+)", config, re.MULTILINE)
        assert match, key
        return float(match.group(1))

    assert float(unit_value("TimeoutStopSec")) >= seconds("drain_seconds") + seconds("shutdown_delay_seconds") + 5
    assert unit_value("Type") == "notify" and unit_value("NotifyAccess") == "main"
    assert unit_value("ExecReload") == "/bin/kill -HUP $MAINPID"


def test_unit_raises_the_descriptor_limit_above_max_connections() -> None:
    """Each connection is a descriptor: the 1,024 default would run out before server.max_connections."""
    config = (ROOT / "config" / "tensorwall.yaml").read_text()
    match = re.search(r"^\s*max_connections:\s*(\d+)", config, re.MULTILINE)
    max_connections = int(match.group(1)) if match else ServerConfig().max_connections
    assert int(unit_value("LimitNOFILE")) >= 2 * max_connections  # upstream connections need theirs too


def test_unit_gives_the_state_store_the_one_directory_it_writes_in() -> None:
    """ProtectSystem=strict makes the file system read-only: the SQLite store's default path is the
    directory StateDirectory= makes writable, which systemd passes as $STATE_DIRECTORY."""
    assert unit_value("ProtectSystem") == "strict"
    directory = f"/var/lib/{unit_value('StateDirectory')}"
    assert parse_config("gateway_keys: []\n", env={"STATE_DIRECTORY": directory}).state.path == directory
    assert unit_value("StateDirectoryMode") == "0700"  # stored conversations are the callers' data


@pytest.mark.slow
def test_the_parent_stops_pinging_the_watchdog_while_a_worker_hangs(
        tmp_path: Path, spawn: Callable[..., Proc], systemd: Systemd) -> None:
    config = write_config(tmp_path, "server: {drain_seconds: 0.2}\ngateway_keys: []\n")
    proc, _ = start_proxy(spawn, config, "--workers", "2", env=notify_env(systemd, 200_000))
    systemd.wait_for("READY=1", 5)
    systemd.wait_for("WATCHDOG=1", 2)
    worker = int(re.findall(r"worker 1 started \(pid (\d+)\)", proc.log())[0])

    os.kill(worker, signal.SIGSTOP)  # alive, but its event loop no longer runs
    try:
        time.sleep(0.35)  # its last ping grows older than WATCHDOG_USEC (0.2 s)
        while systemd.receive(0) is not None:
            pass
        pings = systemd.count("WATCHDOG=1")
        time.sleep(0.4)
        while systemd.receive(0) is not None:
            pass
        assert systemd.count("WATCHDOG=1") == pings, "the parent pinged for a hung worker"
    finally:
        os.kill(worker, signal.SIGCONT)
    systemd.wait_for("WATCHDOG=1", 2)  # the worker pings again, and so does the parent

    proc.signal(signal.SIGTERM)
    assert proc.wait(5) == 0
