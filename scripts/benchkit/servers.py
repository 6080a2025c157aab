"""The processes: pinning, starting and stopping the servers, and reading CPU and memory from /proc.

Pinning (`plan_pinning`): the proxy gets a CPU of its own whenever there are two; the bare relay
runs on the same CPU (never at the same time as the proxy is measured); the upstream gets the first
CPU and the load generator the rest, or, with only two CPUs, shares the upstream's. The benchmark's
own process pins itself to the generator's CPUs for the runs (`pin_self`): its wake-ups (sampling,
waiting for wrk) then never land on the proxy's CPU, and wrk, which it starts, inherits the mask
before it creates its threads.

The servers are subprocesses in their own sessions (a Ctrl-C reaches only us, and we stop them):
the lean upstream and the relay are this benchmark's own `bench.py --serve-lean-upstream PORT` and
`--serve-relay PORT`, which end in `run_app`; the proxy is `python -m tensorwall_proxy serve`.

CPU time is user + system of all a process's threads from /proc/PID/stat (in clock ticks, 10 ms
here, so a few seconds' window is precise to about 1%), sampled at the two ends of a window
(`CpuWindow`), with the whole machine's busy and stolen time from /proc/stat over the same window:
what no process of the benchmark used was used by someone else (another benchmark, a build), and
a run disturbed that way is flagged, not silently read. RSS is VmRSS from /proc/PID/status, its
peak VmHWM.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from aiohttp import web

from .common import BENCH_SCRIPT, CLK_TCK, HOST, REPO, uvloop
from .paths import BenchPath, proxy_config

# --------------------------------------------------------------------------------------------------
# Pinning


@dataclass(frozen=True)
class Pinning:
    """Which CPUs each party may run on (None: not pinned), and why, in one line."""

    upstream: frozenset[int] | None
    proxy: frozenset[int] | None  # the proxy, and the bare relay
    generator: frozenset[int] | None
    description: str

    @property
    def shared(self) -> bool:
        """Whether the load generator shares its CPU with the upstream (a 2-CPU machine)."""
        return self.generator is not None and self.generator == self.upstream


def available_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def plan_pinning(enabled: bool) -> Pinning:
    """Give the proxy a CPU of its own whenever there are two; the load shares with the upstream."""
    cpus = available_cpus()
    if not enabled or len(cpus) < 2 or not hasattr(os, "sched_setaffinity"):
        why = "disabled by --no-pin" if not enabled else f"{len(cpus)} CPU(s), or no sched_setaffinity"
        return Pinning(None, None, None, f"no pinning ({why}): all processes share every CPU")
    upstream, proxy, rest = cpus[0], cpus[1], cpus[2:]
    if rest:
        return Pinning(frozenset({upstream}), frozenset({proxy}), frozenset(rest),
                       f"upstream on CPU {upstream}, proxy and relay on CPU {proxy}, load generator on CPUs "
                       f"{','.join(map(str, rest))}")
    # Two CPUs: the proxy is what is measured, so it gets one to itself; the load generator and the
    # upstream share the other (so in direct runs that one CPU does all the work).
    return Pinning(frozenset({upstream}), frozenset({proxy}), frozenset({upstream}),
                   f"upstream on CPU {upstream}, proxy and relay alone on CPU {proxy}, load generator shares "
                   f"CPU {upstream} with the upstream (only 2 CPUs)")


@contextlib.contextmanager
def pin_self(cpus: frozenset[int] | None) -> Iterator[None]:
    """Run this process (and what it starts meanwhile) on `cpus`, then restore its mask."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# --------------------------------------------------------------------------------------------------
# Servers: start, wait until ready, stop


def free_port() -> int:
    """A port nobody listens on now (the OS picks it; the tiny race is harmless on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """A subprocess we started, its log file, and where it answers."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_tail(self, lines: int = 20) -> str:
        self.log.flush()
        text = Path(self.log.name).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def start_server(name: str, argv: Sequence[str], port: int, cpus: frozenset[int] | None, log_dir: Path) -> Server:
    """Start a server subprocess in its own session, so a Ctrl-C reaches only us and we stop it."""
    log = open(log_dir / f"{name}.log", "w+b")  # noqa: SIM115 - closed by stop_server
    process = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                               start_new_session=True)
    if cpus is not None:
        # Right after fork/exec the interpreter has no other thread yet; threads inherit the mask.
        os.sched_setaffinity(process.pid, cpus)
    return Server(name, process, port, log)


def stop_server(server: Server) -> None:
    """SIGTERM, a short grace period, then SIGKILL: never leave a server behind."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    server.log.close()


def wait_until(ready: Callable[[], bool], server: Server, timeout: float = 20.0) -> None:
    """Poll `ready` until it holds; fail at once, with the server's log, if the server died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if ready():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{server.name} did not become ready within {timeout:g}s:\n{server.log_tail()}")


def tcp_accepts(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=1):
        return True


def http_request(port: int, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One plain HTTP/1.1 exchange (http.client never goes through an http_proxy variable)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def start_upstream(kind: str, paths: Sequence[BenchPath], pinning: Pinning, log_dir: Path) -> Server:
    """The lean upstream (this benchmark's own, in a subprocess) or tests/fakes' (`kind` "fake")."""
    port = free_port()
    if kind == "lean":
        argv = [sys.executable, str(BENCH_SCRIPT), "--path", ",".join(p.name for p in paths),
                "--serve-lean-upstream", str(port)]
    else:
        argv = [sys.executable, str(REPO / "scripts" / "fake_upstream.py"), "--host", HOST, "--port", str(port)]
    server = start_server("upstream", argv, port, pinning.upstream, log_dir)
    wait_until(lambda: tcp_accepts(port), server)
    return server


def start_proxy(paths: Sequence[BenchPath], upstream: Server, pinning: Pinning, log_dir: Path) -> Server:
    port = free_port()
    config = log_dir / "bench-config.yaml"
    config.write_text(proxy_config(paths, upstream.base_url))
    argv = [sys.executable, "-m", "tensorwall_proxy", "serve", "--config", str(config), "--host", HOST,
            "--port", str(port)]
    server = start_server("proxy", argv, port, pinning.proxy, log_dir)
    wait_until(lambda: http_request(port, "GET", "/healthz")[0] == 200, server)
    return server


def start_relay(upstream: Server, pinning: Pinning, log_dir: Path) -> Server:
    port = free_port()
    argv = [sys.executable, str(BENCH_SCRIPT), "--serve-relay", str(port), "--relay-to", upstream.base_url]
    server = start_server("relay", argv, port, pinning.proxy, log_dir)
    wait_until(lambda: tcp_accepts(port), server)
    return server


def run_app(app: web.Application, port: int) -> int:
    """Serve an app on 127.0.0.1:port until SIGTERM/SIGINT (uvloop when installed, like the proxy)."""
    if uvloop is not None:
        uvloop.install()
    web.run_app(app, host=HOST, port=port, access_log=None, print=None, handle_signals=True, shutdown_timeout=1)
    return 0


# --------------------------------------------------------------------------------------------------
# /proc: CPU time and memory


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) from /proc/PID/stat.

    It still reads after the process exited, until it is reaped: wrk.py waits for wrk with WNOWAIT
    and reads its total here before reaping it.
    """
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLK_TCK


def _status_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} for pid {pid}")


def rss_mib(pid: int) -> float:
    """Resident set size from /proc/PID/status, in MiB."""
    return _status_mib(pid, "VmRSS:")


def peak_rss_mib(pid: int) -> float:
    """The highest resident set size the process has had (VmHWM), in MiB."""
    return _status_mib(pid, "VmHWM:")


def machine_cpu_seconds() -> tuple[float, float]:
    """(user + nice + system, steal) CPU seconds of all CPUs since boot, from /proc/stat's `cpu` line.

    Busy time of every process, ours or not; irq and softirq time (loopback traffic is mostly
    softirq) is left out, since the kernel charges it to no process.
    """
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    user, nice, system, steal = int(fields[1]), int(fields[2]), int(fields[3]), int(fields[8])
    return (user + nice + system) / CLK_TCK, steal / CLK_TCK


@dataclass(frozen=True)
class WindowCpu:
    """What a `CpuWindow` saw: each watched process's CPU seconds, the wall seconds, and the machine's."""

    used: list[float]
    wall: float
    machine_busy: float  # CPU seconds all CPUs spent running any process (user + nice + system)
    steal: float  # CPU seconds the hypervisor gave to others while this VM's CPUs wanted to run


class CpuWindow:
    """The CPU seconds of some processes, the machine's busy and stolen time, and the wall time,
    between `__init__` and `close`."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.cpu0 = [cpu_seconds(pid) for pid in self.pids]
        self.machine0 = machine_cpu_seconds()
        self.wall0 = time.perf_counter()

    def close(self) -> WindowCpu:
        used = [cpu_seconds(pid) - before for pid, before in zip(self.pids, self.cpu0, strict=True)]
        busy, steal = machine_cpu_seconds()
        return WindowCpu(used, time.perf_counter() - self.wall0, busy - self.machine0[0], steal - self.machine0[1])
