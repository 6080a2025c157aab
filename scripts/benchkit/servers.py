"""The processes: pinning, the servers (the bare relay's app; Redis for limits-redis), CPU and memory
from /proc. The relay shares the proxy's CPU, never measured at the same time; the servers run in
sessions of their own (a Ctrl-C reaches only us, and we stop them)."""

from __future__ import annotations

import contextlib
import http.client
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import aiohttp
from aiohttp import web
from yarl import URL

from .paths import EVENTSTREAM, Json, proxy_config

try:  # the proxy runs on uvloop when it is installed: so do our servers and the aiohttp load generator
    import uvloop as uvloop  # (the explicit re-export: load and session read it from here)
except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
    uvloop = None  # type: ignore[assignment]

HOST: Final = "127.0.0.1"
REPO: Final = Path(__file__).resolve().parent.parent.parent
BENCH_SCRIPT: Final = REPO / "scripts" / "bench.py"  # also how the lean upstream and the relay start
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Pinning:
    """Which CPUs each party may run on (None: not pinned), and why, in one line."""

    upstream: frozenset[int] | None
    proxy: frozenset[int] | None  # the proxy, and the bare relay
    generator: frozenset[int] | None
    description: str


def plan_pinning(enabled: bool) -> Pinning:
    """Give the proxy a CPU of its own whenever there are two; the upstream the first, the load generator
    the rest or, on two CPUs, the upstream's."""
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled or len(cpus) < 2:
        why = "disabled by --no-pin" if not enabled else f"{len(cpus)} CPU"
        return Pinning(None, None, None, f"no pinning ({why}): all processes share every CPU")
    upstream, proxy, rest = cpus[0], cpus[1], cpus[2:]
    load = f"on CPUs {','.join(map(str, rest))}" if rest else f"shares CPU {upstream} with the upstream (only 2 CPUs)"
    return Pinning(frozenset({upstream}), frozenset({proxy}), frozenset(rest or [upstream]),
                   f"upstream on CPU {upstream}, proxy and relay{'' if rest else ' alone'} on CPU {proxy}, load generator {load}")


@contextlib.contextmanager
def pin_self(cpus: frozenset[int] | None) -> Iterator[None]:
    """Run this process (and what it starts meanwhile) on `cpus` (None: where it runs), then restore its mask."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus or before)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@dataclass
class Server:
    """A subprocess we started, its log file, and where it answers."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: IO[bytes]

    def log_tail(self, lines: int = 20) -> str:
        self.log.flush()
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])


def start_server(name: str, argv: Sequence[str], cpus: frozenset[int] | None, log_dir: Path,
                 ready: Callable[[int], bool]) -> Server:
    """Start a server in its own session on a free port (its argv ends with it); wait until `ready`.
    It runs in `log_dir`, which is also its STATE_DIRECTORY: what the proxy stores is gone after the run."""
    with socket.socket() as sock:  # a free port
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    log = open(log_dir / f"{name}.log", "w+b")  # noqa: SIM115 - closed by stop_server
    env = {**os.environ, "STATE_DIRECTORY": str(log_dir),
           "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}
    with pin_self(cpus):  # inherited by the server and every thread it starts
        process = subprocess.Popen([*argv, str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=log_dir, env=env,
                                   start_new_session=True)
    server = Server(name, process, port, log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if ready(port):
                return server
        time.sleep(0.05)
    stop_server(server)
    raise RuntimeError(f"{name} did not become ready within 20 s:\n{server.log_tail()}")


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """`sig`, a short grace period, then SIGKILL: never leave a process behind."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop_server(server: Server) -> None:
    stop_process(server.process)
    server.log.close()


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


@contextlib.contextmanager
def redis_state(url: str | None) -> Iterator[Json | None]:
    """A `state:` section over the Redis at `url` under a key prefix of this run's own (None: no `url`, or
    no Redis answers there); the prefix's keys are deleted on the way out."""
    import redis  # only a run with limits-redis needs it
    prefix = f"tw-bench:{secrets.token_hex(6)}:"
    with redis.Redis.from_url(url or "redis://", socket_connect_timeout=1, socket_timeout=5) as client:
        try:
            answers = url is not None and client.ping()
        except (redis.RedisError, OSError):
            answers = False
        try:
            yield {"backend": "redis", "url": url, "key_prefix": prefix} if answers else None
        finally:
            if answers and (keys := list(client.scan_iter(match=prefix + "*", count=1000))):
                client.delete(*keys)


@contextlib.contextmanager
def running_servers(pinning: Pinning, log_dir: Path, redis: Json | None = None) -> Iterator[dict[str, Server]]:
    """The lean upstream, the relay, the proxy and, with `redis` (a `state:` section), proxy-redis, by
    name; whatever started is stopped on the way out. The proxies differ only in their state store."""
    bench = [sys.executable, str(BENCH_SCRIPT)]
    servers: dict[str, Server] = {}
    try:
        servers["upstream"] = start_server("upstream", [*bench, "--serve-lean-upstream"], pinning.upstream, log_dir,
                                           tcp_accepts)
        upstream = f"http://{HOST}:{servers['upstream'].port}"
        servers["relay"] = start_server("relay", [*bench, "--relay-to", upstream, "--serve-relay"], pinning.proxy,
                                        log_dir, tcp_accepts)
        for name, state in (("proxy", None), *((("proxy-redis", redis),) if redis else ())):
            config = log_dir / f"{name}.yaml"
            config.write_text(proxy_config(upstream, state))
            servers[name] = start_server(
                name, [sys.executable, "-m", "tensorwall_proxy", "serve", "--config", str(config), "--host", HOST,
                       "--port"], pinning.proxy, log_dir, lambda port: http_request(port, "GET", "/healthz")[0] == 200)
        yield servers
    finally:
        for server in reversed(servers.values()):
            stop_server(server)


# The bare relay, the yardstick of the proxy's targets: any POST on with the same path, headers and bytes
# over a pooled session, the answer back as it arrives. What is left is aiohttp's own work on a hop.
RELAY_SESSION: Final = web.AppKey("relay_session", aiohttp.ClientSession)
# Headers that describe one connection or one body, not the request: aiohttp sets its own.
_HOP_HEADERS: Final = frozenset({"host", "content-length", "connection", "keep-alive", "transfer-encoding"})
_STREAMED: Final = frozenset({"text/event-stream", EVENTSTREAM})


def bare_relay_app(upstream_base: str) -> web.Application:
    """Same path, same bytes, same headers to the upstream; the answer back as it arrives."""

    async def session(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=1024, limit_per_host=0)
        app[RELAY_SESSION] = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))
        yield
        await app[RELAY_SESSION].close()

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        url = URL(upstream_base + request.path_qs, encoded=True)  # still percent-encoded, as received
        async with request.app[RELAY_SESSION].post(url, data=body, headers=headers) as upstream:
            if upstream.content_type not in _STREAMED:
                return web.Response(status=upstream.status, body=await upstream.read(),
                                    content_type=upstream.content_type)
            response = web.StreamResponse(status=upstream.status, headers={"Content-Type": upstream.content_type})
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            return response

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_post("/{tail:.*}", relay)
    return app


def run_app(app: web.Application, port: int) -> int:
    """Serve an app on 127.0.0.1:port until SIGTERM/SIGINT (uvloop when installed, like the proxy)."""
    if uvloop is not None:
        uvloop.install()
    web.run_app(app, host=HOST, port=port, access_log=None, print=None, handle_signals=True, shutdown_timeout=1)
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads); readable until the process is reaped."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14 and 15 of proc(5)


def rss_mib(pid: int) -> float:
    """Resident set size (VmRSS) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def machine_cpu_seconds() -> tuple[float, float]:
    """(user + nice + system, steal) CPU seconds of all CPUs since boot (irq time is charged to no one)."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    return (int(fields[1]) + int(fields[2]) + int(fields[3])) / CLK_TCK, int(fields[8]) / CLK_TCK


@dataclass(frozen=True)
class WindowCpu:
    """What `watch` saw: each watched process's CPU seconds, the wall seconds, and the machine's."""

    used: list[float]
    wall: float
    machine_busy: float
    steal: float


def watch(upstream: Server, hop: Server | None, seconds: float) -> tuple[WindowCpu, float | None]:
    """The upstream's and the hop's CPU (user + system, all threads) over the next `seconds` with the
    machine's busy and stolen time (what no process of ours used, someone else did: the run was
    disturbed), and the hop's RSS (MiB) halfway through."""
    pids = [upstream.process.pid] + ([hop.process.pid] if hop else [])
    cpu0, (busy0, steal0), wall0 = [cpu_seconds(pid) for pid in pids], machine_cpu_seconds(), time.perf_counter()
    time.sleep(seconds / 2)
    rss = rss_mib(hop.process.pid) if hop else None
    time.sleep(seconds / 2)
    used = [cpu_seconds(pid) - before for pid, before in zip(pids, cpu0, strict=True)]
    busy, steal = machine_cpu_seconds()
    return WindowCpu(used, time.perf_counter() - wall0, busy - busy0, steal - steal0), rss
