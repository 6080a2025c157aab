"""Soak test: does the proxy's memory or file-descriptor count creep under long mixed load and faults?

    python scripts/soak.py [--minutes 4] [--requests 300000] [--concurrency 32] [--max-minutes 180]

Not part of `make test`. It starts two subprocesses on 127.0.0.1: the test suite's fake upstream
(tests/fakes, in this file's `--serve-upstream`: faults chosen by words in the model name, its record
of requests cleared every second so it does not grow for the whole run) and the proxy (`python -m
tensorwall_proxy serve --config <tmp yaml>`).
Then an aiohttp client with bounded concurrency runs phases of mixed streamed and non-streamed
requests:

    warmup        plain requests, half streamed, until at least 10,000 requests in all
    upstream-500  a route that falls back from a 500 to a healthy endpoint, and one with no fallback
    timeouts      an upstream that never answers (first_byte / total 0.5 s → 504) and one that stalls
                  mid-stream (idle 0.5 s → in-band error)
    disconnects   callers that leave before the headers and mid-stream
    closed-port   a route whose first endpoint is a closed port (fallback), one with no other endpoint,
                  and streams the upstream cuts mid-way
    steady        plain requests again, until the request count reaches --requests

Then the attack phases, each beside the plain load (which must go on being served):

    slowloris     --attack-connections connections trickling a request head, one header line a
                  second, never finishing it (reopened when the proxy closes one)
    fat-heads     as many connections each sending a head just under server.max_header_bytes,
                  never finishing it, and holding on
    id-bombs      chat requests whose assistant tool call id packs a decompression bomb (zlib state,
                  --bomb-mib when inflated) for an Anthropic endpoint
    gzip-bombs    an upstream answer with Content-Encoding: gzip that inflates to --gzip-bomb-mib
                  (the fake's `gzip-bomb` fault)

For each phase it prints the RSS at the start, at the end and the peak (sampled every 0.1 s). The
proxy's bounds should keep the peak down and bring the RSS back near where the attacks started:
the RSS after the last attack is compared with the RSS before the first (`--no-attacks` skips them).

Each phase gets an equal share of --minutes (the first and the last run longer when they must, to
reach 10,000 and --requests). At the start and end of each phase it prints the proxy's RSS (VmRSS
from /proc/PID/status) and open file descriptors (entries of /proc/PID/fd), the outcomes of the
phase's requests, and what the upstream still has in flight (requests the proxy abandoned but did not
cancel would pile up there). It prints the RSS after 10,000 requests and after the last, and
whether the two are within 10 % (both before the attacks); the exit status is 1 when they are not,
when the RSS after the attacks is more than ATTACK_SLACK above the RSS before them, when the descriptors at
the end of the last phase exceed those at the end of the first (the same plain load) by more than a
few, when any request had an outcome its route should never have (`EXPECTED`: a 500 from the
gateway itself, a client timeout, a stream ending neither in [DONE] nor in an in-band error), or
when the upstream is left with requests the proxy abandoned, or when the proxy logs an ERROR (it
should not, for anything a caller or an upstream can do).

`--requests 1000000` is the long run of the reliability issue (the steady phase then runs until the
count is reached: about ten minutes at 2-CPU rates); the default fits in about five minutes.
Everything is bounded: each phase by time, the whole run by --max-minutes, every raw socket
operation by a timeout, the attacks by their connection count and bomb sizes, and the children are
killed on any exit (they also get SIGKILL if this process dies, through PR_SET_PDEATHSIG). All of
it on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import ctypes
import os
import random
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Literal, TypeVar

import aiohttp
import orjson
from aiohttp import web

# `tests.fakes` lives in the repository, not in the installed package (as in scripts/fake_upstream.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tensorwall_proxy.config import ServerConfig
from tensorwall_proxy.providers.ids import STATE_MARKER
from tests.fakes import FakeUpstream

T = TypeVar("T")

HOST: Final = "127.0.0.1"
REPO: Final = Path(__file__).resolve().parent.parent
GATEWAY_KEY: Final = "soak-gateway-key"
PROVIDER_KEY: Final = "sk-soak-provider-key"
RSS_MARK: Final = 10_000
# How long the fake upstream's `slow-stream` waits (its `hang` waits an hour): far longer than any clock of the
# proxy's routes, so only the proxy giving up (or a caller leaving) ends them.
HANG_SECONDS: Final = 30.0
# Descriptors the proxy may hold at the end of the last phase beyond the end of the first (the same
# plain load, so the same pooled keep-alive connections both ways) before we call it a leak.
FD_SLACK: Final = 8
# After the attacks the RSS may stay this much above where they started (a share, or MiB if more):
# the allocator keeps some freed memory, but bounded attacks must not leave hundreds of MiB behind.
ATTACK_SLACK: Final = (0.25, 32.0)
# Every raw socket operation of an attack (connect, write) gives up after this long.
SOCKET_TIMEOUT: Final = 5.0
# How often a slowloris connection sends one more header line.
TRICKLE_SECONDS: Final = 1.0
MiB: Final = 1024 * 1024


# --------------------------------------------------------------------------------------------------
# The upstream: the test suite's fake, its record of requests cleared as it goes


async def serve_upstream(gzip_bomb_mib: int) -> None:
    """Serve the fake upstream (tests/fakes) on a free port and its in-flight count (`GET /stats`) on
    another; print `PORT <fake> <stats>` once listening; stop on SIGTERM/SIGINT.

    The fake records every request; the soak clears that record every second, so the upstream's own
    memory stays flat however long the run. The stats listen apart so the fake's routes stay its own.
    """
    fake = FakeUpstream(delay=HANG_SECONDS)
    fake.gzip_bomb_mib = gzip_bomb_mib
    await fake.start(HOST, 0)

    async def stats(request: web.Request) -> web.StreamResponse:
        return web.Response(body=orjson.dumps({"in_flight": fake.in_flight}), content_type="application/json")

    app = web.Application()
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, HOST, 0).start()
    fake_port = int(fake.base_url.rsplit(":", 1)[1])
    print(f"PORT {fake_port} {runner.addresses[0][1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    while not stop.is_set():
        fake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    await runner.cleanup()
    await fake.stop()


# --------------------------------------------------------------------------------------------------
# Children: started, watched, always stopped


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the soak process dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 20) -> str:
        self.log.flush()
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])


class Children:
    """Every subprocess we start, stopped on exit (normal, exception, SIGTERM, SIGINT)."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self.started: list[Child] = []
        atexit.register(self.stop_all)

    def start(self, name: str, argv: Sequence[str], *, stdout_pipe: bool = False) -> Child:
        log = open(self._log_dir / f"{name}.log", "w+b")  # noqa: SIM115 - closed by stop_all
        process = subprocess.Popen(list(argv), cwd=REPO, stdout=subprocess.PIPE if stdout_pipe else log,
                                   stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                                   preexec_fn=_die_with_parent)
        child = Child(name, process, log)
        self.started.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.started):
            if child.process.poll() is None:
                child.process.terminate()
                try:
                    child.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait()
            if child.process.stdout is not None:
                child.process.stdout.close()
            child.log.close()
        self.started.clear()


class LogWatch:
    """The proxy's ERROR and CRITICAL log records since the last look (its log is a file of ours)."""

    def __init__(self, child: Child) -> None:
        self._path = Path(child.log.name)
        self._offset = 0

    def new_errors(self) -> list[str]:
        with self._path.open("rb") as log:
            log.seek(self._offset)
            text = log.read()
        self._offset += len(text)
        # basicConfig's format: "<date> <time> LEVEL logger: message"
        return [line for line in text.decode(errors="replace").splitlines()
                if line.split(" ", 3)[2:3] in (["ERROR"], ["CRITICAL"])]


def read_ports(child: Child, timeout: float = 20.0) -> tuple[int, int]:
    """The `PORT <fake> <stats>` line the upstream prints once it listens."""
    assert child.process.stdout is not None
    ready, _, _ = select.select([child.process.stdout], [], [], timeout)
    line = child.process.stdout.readline().decode() if ready else ""
    if not line.startswith("PORT "):
        raise RuntimeError(f"{child.name} did not start:\n{child.tail()}")
    return int(line.split()[1]), int(line.split()[2])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def closed_port() -> tuple[socket.socket, int]:
    """A port bound but never listening: connecting is refused, and nobody else can take it meanwhile."""
    sock = socket.socket()
    sock.bind((HOST, 0))
    return sock, sock.getsockname()[1]


async def wait_ready(session: aiohttp.ClientSession, child: Child, url: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.process.returncode}:\n{child.tail()}")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with session.get(url) as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{child.name} not ready within {within:g}s:\n{child.tail()}")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --------------------------------------------------------------------------------------------------
# The proxy's configuration


def proxy_config(proxy_port: int, upstream_port: int, dead_port: int) -> str:
    fake = f"http://{HOST}:{upstream_port}"
    up = f"{fake}/openai/v1"
    return f"""\
server: {{host: {HOST}, port: {proxy_port}, drain_seconds: 2, header_timeout_seconds: 2}}
gateway_keys: [{GATEWAY_KEY}]
providers:
  openai: {{base_url: "{up}"}}
  backup: {{type: openai, base_url: "{up}", key_scope: openai}}
  dead:   {{type: openai, base_url: "http://{HOST}:{dead_port}/v1", key_scope: openai}}
  claude: {{type: anthropic, base_url: "{fake}/anthropic/v1", api_key: soak-anthropic-key}}
timeouts: {{connect: 2, first_byte: 60, idle: 60, total: 60}}
routes:
  ok:       {{endpoints: [{{provider: openai, model: gpt-4o}}]}}
  flaky:
    strategy: priority
    endpoints:
      - {{provider: openai, model: fail-500, priority: 0}}
      - {{provider: backup, model: gpt-4o, priority: 1}}
  broken:   {{endpoints: [{{provider: openai, model: fail-500}}]}}
  slow:     {{timeouts: {{first_byte: 0.5, total: 0.5}}, endpoints: [{{provider: openai, model: hang}}]}}
  stall:    {{timeouts: {{idle: 0.5}}, endpoints: [{{provider: openai, model: slow-stream}}]}}
  held:     {{endpoints: [{{provider: openai, model: slow-stream}}]}}
  parked:   {{endpoints: [{{provider: openai, model: hang}}]}}
  dead-first:
    strategy: priority
    endpoints:
      - {{provider: dead, model: gpt-4o, priority: 0}}
      - {{provider: openai, model: gpt-4o, priority: 1}}
  dead:     {{endpoints: [{{provider: dead, model: gpt-4o}}]}}
  cut:      {{endpoints: [{{provider: openai, model: cut-mid-stream}}]}}
  id-bomb:  {{endpoints: [{{provider: claude, model: claude-sonnet-4-5}}]}}
  gzip-bomb: {{endpoints: [{{provider: openai, model: gpt-4o-gzip-bomb}}]}}
"""


# --------------------------------------------------------------------------------------------------
# Load: kinds of request, phases, the workers


Action = Literal["read", "leave-mid-stream", "leave-before-headers"]


@dataclass(frozen=True)
class Kind:
    """One kind of request in a phase's mix."""

    route: str
    stream: bool
    weight: int = 1
    action: Action = "read"

    @property
    def label(self) -> str:
        mode = "stream" if self.stream else "unary"
        return f"{self.route}/{mode}" + ("" if self.action == "read" else f"/{self.action}")


@dataclass(frozen=True)
class Phase:
    name: str
    kinds: tuple[Kind, ...]
    at_least_requests: int = 0  # keep going past the time share until this many in all
    attack: str | None = None  # raw connections run beside the requests: a key of ATTACKS
    concurrency: int | None = None  # requests in flight at once, if fewer than --concurrency


# What each route may answer; anything else (a 500 from the gateway itself, a client timeout, a
# stream that neither ends with [DONE] nor with an in-band error) fails the soak. `flaky` and
# `dead-first` may answer 502 when the retry budget refuses their fallback.
EXPECTED: Final[dict[str, frozenset[str]]] = {
    "ok": frozenset({"200"}),
    "flaky": frozenset({"200", "502"}),
    "broken": frozenset({"502"}),
    "slow": frozenset({"504"}),
    "stall": frozenset({"200 + in-band error"}),
    "held": frozenset({"left mid-stream"}),
    "parked": frozenset({"left before headers"}),
    "dead-first": frozenset({"200", "502"}),
    "dead": frozenset({"502"}),
    "cut": frozenset({"200 + in-band error"}),
    # Before the bounds: 200 (the bomb inflated and sent on); after: 400 (packed state too large)
    # and 502 (the upstream answer past max_upstream_body_bytes).
    "id-bomb": frozenset({"200", "400"}),
    "gzip-bomb": frozenset({"200", "502"}),
}
# No expected request takes more than about a second; a client timeout means something hung.
CLIENT_TIMEOUT: Final = 15.0


def plain(weight: int = 1) -> tuple[Kind, ...]:
    return Kind("ok", False, weight), Kind("ok", True, weight)


def phases(requests: int) -> list[Phase]:
    return [
        Phase("warmup", plain(), at_least_requests=RSS_MARK),
        Phase("upstream-500", (*plain(), Kind("flaky", False, 2), Kind("flaky", True, 2),
                               Kind("broken", False), Kind("broken", True))),
        Phase("timeouts", (*plain(), Kind("slow", False), Kind("slow", True), Kind("stall", True, 2))),
        Phase("disconnects", (*plain(), Kind("held", True, 2, "leave-mid-stream"),
                              Kind("parked", False, 1, "leave-before-headers"),
                              Kind("parked", True, 1, "leave-before-headers"))),
        Phase("closed-port", (*plain(), Kind("dead-first", False, 2), Kind("dead-first", True, 2),
                              Kind("dead", False), Kind("cut", True, 2))),
        Phase("steady", plain(), at_least_requests=requests),
    ]


def attack_phases() -> list[Phase]:
    # Few bombs in flight at once: each may cost the proxy several times its inflated size.
    return [
        Phase("slowloris", plain(), attack="slowloris"),
        Phase("fat-heads", plain(), attack="fat-heads"),
        Phase("id-bombs", (*plain(), Kind("id-bomb", False, 2)), concurrency=4),
        Phase("gzip-bombs", (*plain(), Kind("gzip-bomb", False, 2)), concurrency=4),
    ]


@dataclass
class Run:
    """Counters shared by the workers."""

    total: int = 0
    bomb: str = ""  # the id bomb, made once
    rss_at_mark: float | None = None
    mark_at: float = 0.0
    unexpected: Counter[str] = field(default_factory=Counter)


def _last_event(body: bytes) -> bytes:
    events = [e for e in body.split(b"\n\n") if e.strip()]
    return events[-1] if events else b""


def id_bomb(inflated_mib: int) -> str:
    """A tool call id packing Anthropic thinking state (ids.py's marker, shapes.pack_state's tag and
    zlib) that inflates to ``inflated_mib`` MiB: a few dozen KiB on the wire."""
    packer = zlib.compressobj(9)
    parts = [packer.compress(b'[{"type":"thinking","signature":"s","thinking":"')]
    block = b"a" * MiB
    parts.extend(packer.compress(block) for _ in range(inflated_mib))
    parts.append(packer.compress(b'"}]'))
    parts.append(packer.flush())
    state = b"A1" + b"".join(parts)
    return "call_soakbomb" + STATE_MARKER + base64.urlsafe_b64encode(state).rstrip(b"=").decode()


def id_bomb_messages(tool_id: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": "soak"},
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": tool_id, "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": tool_id, "content": "done"}]


async def one_request(session: aiohttp.ClientSession, url: str, kind: Kind, bomb: str = "") -> str:
    """Send one request of a kind; its outcome as a short label."""
    messages = id_bomb_messages(bomb) if kind.route == "id-bomb" else [{"role": "user", "content": "soak"}]
    body: dict[str, Any] = {"model": kind.route, "messages": messages, "stream": kind.stream}
    if kind.action == "leave-before-headers":
        try:
            async with asyncio.timeout(0.2):
                async with session.post(url, json=body) as response:
                    await response.read()
                    return f"{response.status} (answered before the caller left)"
        except TimeoutError:
            return "left before headers"
    async with session.post(url, json=body) as response:
        if kind.action == "leave-mid-stream":
            seen = b""
            while b'"content":"[openai] "' not in seen:  # the fake's first content chunk
                piece = await response.content.readany()
                if not piece:
                    return f"{response.status} ended before the caller could leave"
                seen += piece
            response.close()  # the caller goes away mid-stream
            return "left mid-stream"
        data = await response.read()
        if response.status != 200 or not kind.stream:
            return str(response.status)
        last = _last_event(data)
        if last == b"data: [DONE]":
            return "200"
        if last.startswith(b'data: {"error"'):
            return "200 + in-band error"
        return "200 truncated"


async def worker(session: aiohttp.ClientSession, url: str, phase: Phase, run: Run, counts: Counter[str],
                 until: Callable[[], bool], pid: int) -> None:
    weights = [k.weight for k in phase.kinds]
    while not until():
        kind = random.choices(phase.kinds, weights)[0]
        try:
            outcome = await one_request(session, url, kind, run.bomb)
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome = f"client error {type(exc).__name__}"
        counts[f"{kind.label}: {outcome}"] += 1
        if outcome not in EXPECTED[kind.route]:
            run.unexpected[f"{kind.label}: {outcome}"] += 1
        run.total += 1
        if run.total == RSS_MARK:
            run.rss_at_mark = rss_mib(pid)
            run.mark_at = time.monotonic()


async def upstream_stats(session: aiohttp.ClientSession, stats_url: str) -> dict[str, int]:
    async with session.get(stats_url) as response:
        stats: dict[str, int] = await response.json()
        return stats


def snapshot(pid: int) -> tuple[float, int]:
    return rss_mib(pid), open_fds(pid)


async def sample_peak(pid: int, peak: list[float]) -> None:
    """Keep ``peak[0]`` at the highest RSS seen, every 0.1 s, until cancelled."""
    while True:
        with contextlib.suppress(OSError, RuntimeError):  # the proxy may be gone; the phase says so
            peak[0] = max(peak[0], rss_mib(pid))
        await asyncio.sleep(0.1)


# --------------------------------------------------------------------------------------------------
# Attacks on the listener: raw connections that never finish their request head


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(HOST, port), SOCKET_TIMEOUT)


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await asyncio.wait_for(writer.drain(), SOCKET_TIMEOUT)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


def _answer_of(data: bytes) -> str:
    """What the proxy did to a connection whose head was not finished."""
    if data.startswith(b"HTTP/1."):
        return f"answered {data[9:12].decode(errors='replace')}"
    return "closed by the proxy"


Attacker = Callable[[int, Counter[str], Callable[[], bool]], Awaitable[None]]


async def _hold(port: int, stats: Counter[str], until: Callable[[], bool], head: bytes,
                trickle: bool) -> None:
    """One attacking connection, opened again whenever the proxy closes it, until the phase ends:
    send ``head`` (a request head without its final blank line), then either trickle one more
    header line every TRICKLE_SECONDS or just hold on, watching for the proxy's answer or close."""
    while not until():
        try:
            reader, writer = await _open(port)
        except (OSError, TimeoutError) as exc:
            stats[f"connect failed ({type(exc).__name__})"] += 1
            await asyncio.sleep(TRICKLE_SECONDS)
            continue
        stats["connections opened"] += 1
        try:
            await _send(writer, head)
            line = 0
            while not until():
                try:
                    data = await asyncio.wait_for(reader.read(4096), TRICKLE_SECONDS)
                except TimeoutError:  # silence: the proxy still waits for the rest of the head
                    if trickle:
                        await _send(writer, b"X-Trickle-%d: %s\r\n" % (line, b"t" * 32))
                        line += 1
                    continue
                stats[_answer_of(data)] += 1
                break
            else:
                stats["held until the phase ended"] += 1
        except (OSError, TimeoutError) as exc:
            stats[f"closed by the proxy ({type(exc).__name__})"] += 1
        finally:
            await _close(writer)
        await asyncio.sleep(0.2)  # not a tight loop when the proxy closes at once


def fat_head(size: int) -> bytes:
    """A request head of about ``size`` bytes in 1 KB header lines, without its final blank line."""
    lines = [b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"]
    total = len(lines[0])
    while total + 1100 < size:
        lines.append(b"X-Fat-%d: %s\r\n" % (len(lines), b"f" * 1000))
        total += len(lines[-1])
    return b"".join(lines)


SLOW_HEAD: Final = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
# Just under the proxy's default bound on a request head.
FAT_HEAD: Final = fat_head(ServerConfig().max_header_bytes - 1024)

ATTACKS: Final[dict[str, Attacker]] = {
    "slowloris": lambda port, stats, until: _hold(port, stats, until, SLOW_HEAD, trickle=True),
    "fat-heads": lambda port, stats, until: _hold(port, stats, until, FAT_HEAD, trickle=False),
}


async def soak(args: argparse.Namespace, proxy: Child, upstream: Child, proxy_url: str, stats_url: str) -> int:
    plan = phases(args.requests) + ([] if args.no_attacks else attack_phases())
    share = args.minutes * 60 / len(plan)
    hard_stop = time.monotonic() + args.max_minutes * 60
    started = time.monotonic()
    run = Run(bomb=id_bomb(args.bomb_mib))
    headers = {"X-API-Key": GATEWAY_KEY, "Authorization": f"Bearer {PROVIDER_KEY}"}
    connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=0)
    failed_checks: list[str] = []
    proxy_port = int(proxy_url.rsplit(":", 1)[1])

    # SIGTERM or SIGINT while the load runs: cancel it, so the children are stopped on the way out.
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)

    def stamp() -> str:
        return f"[{time.monotonic() - started:7.1f}s]"

    async with aiohttp.ClientSession(connector=connector, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)) as session:
        await wait_ready(session, proxy, proxy_url + "/healthz")
        await wait_ready(session, upstream, stats_url)
        chat_url = proxy_url + "/v1/chat/completions"
        print(f"soak: proxy pid {proxy.pid} at {proxy_url}, fake upstream pid {upstream.pid}")
        print(f"soak: {len(plan)} phases of ~{share:.0f} s, concurrency {args.concurrency}, "
              f"RSS compared after {RSS_MARK:,} and after {args.requests:,} requests")
        if not args.no_attacks:
            print(f"soak: attacks with {args.attack_connections} connections, id bombs of {args.bomb_mib} MiB "
                  f"and gzip bombs of {args.gzip_bomb_mib} MiB inflated")
        warm_fds: int | None = None  # at the end of the first phase
        steady_rss: float | None = None  # at the end of the steady phase, before any attack
        attack_rss: tuple[float, float, float] | None = None  # before the first attack, peak, after the last
        log = LogWatch(proxy)
        for phase in plan:
            rss, fds = snapshot(proxy.pid)
            print(f"{stamp()} {phase.name:<12} start  RSS {rss:7.1f} MiB  fds {fds:4d}  requests {run.total:,}")
            if phase.attack is not None or phase.concurrency is not None:
                attack_rss = attack_rss or (rss, rss, rss)
            deadline = time.monotonic() + share
            counts: Counter[str] = Counter()
            phase_started, total_before = time.monotonic(), run.total

            def until(deadline: float = deadline, phase: Phase = phase) -> bool:
                now = time.monotonic()
                return now >= hard_stop or (now >= deadline and run.total >= phase.at_least_requests)

            peak = [rss]
            sampler = asyncio.create_task(sample_peak(proxy.pid, peak))
            load: list[Awaitable[None]] = [
                worker(session, chat_url, phase, run, counts, until, proxy.pid)
                for _ in range(min(phase.concurrency or args.concurrency, args.concurrency))]
            attack_stats: Counter[str] = Counter()
            if phase.attack is not None:
                attacker = ATTACKS[phase.attack]
                load.extend(attacker(proxy_port, attack_stats, until) for _ in range(args.attack_connections))
            try:
                await asyncio.gather(*load)
            finally:
                sampler.cancel()
            if proxy.process.poll() is not None:
                print(f"soak: the proxy exited with {proxy.process.returncode}:\n{proxy.tail()}")
                return 1
            await asyncio.sleep(1.0)  # let the upstream notice what the proxy abandoned
            stats = await upstream_stats(session, stats_url)
            rss, fds = snapshot(proxy.pid)
            warm_fds = fds if warm_fds is None else warm_fds
            if phase.name == "steady":
                steady_rss = rss
            if attack_rss is not None:
                attack_rss = (attack_rss[0], max(attack_rss[1], peak[0]), rss)
            done = run.total - total_before
            rate = done / max(time.monotonic() - phase_started - 1.0, 1e-9)
            print(f"{stamp()} {phase.name:<12} end    RSS {rss:7.1f} MiB  fds {fds:4d}  requests {run.total:,} "
                  f"(+{done:,}, {rate:,.0f}/s)  peak RSS {peak[0]:.1f} MiB")
            for outcome, count in sorted(counts.items()):
                flag = "   <-- unexpected" if outcome in run.unexpected else ""
                print(f"{'':24}{count:>9,}  {outcome}{flag}")
            for outcome, count in sorted(attack_stats.items()):
                print(f"{'':24}{count:>9,}  {phase.attack} connection: {outcome}")
            print(f"{'':24}upstream: {stats['in_flight']} in flight")
            errors = log.new_errors()
            print(f"{'':24}proxy log: {len(errors):,} ERROR records" + (f", the first: {errors[0][:150]}" if errors else ""))
            if errors:
                failed_checks.append(f"the proxy logged {len(errors):,} errors in {phase.name}")
            if run.rss_at_mark is not None and phase.at_least_requests == RSS_MARK:
                print(f"{'':24}RSS after {RSS_MARK:,} requests: {run.rss_at_mark:.1f} MiB")
            bad = {o: c for o, c in counts.items() if o in run.unexpected}
            if bad:
                failed_checks.append(f"unexpected outcomes in {phase.name}: {bad}")
            if stats["in_flight"] > args.concurrency:
                failed_checks.append(f"after {phase.name} the upstream still has {stats['in_flight']} requests "
                                     "in flight: the proxy did not cancel what it abandoned")
            if time.monotonic() >= hard_stop:
                print(f"soak: --max-minutes {args.max_minutes:g} reached, stopping early")
                break
        end_rss, end_fds = snapshot(proxy.pid)
    print()
    if run.rss_at_mark is None:
        print(f"RSS: fewer than {RSS_MARK:,} requests were made; nothing to compare")
    else:
        steady = end_rss if steady_rss is None else steady_rss
        growth = (steady - run.rss_at_mark) / run.rss_at_mark * 100
        within = abs(growth) <= 10
        print(f"RSS after {RSS_MARK:,} requests: {run.rss_at_mark:.1f} MiB; after the steady phase: {steady:.1f} MiB "
              f"({growth:+.1f} %): {'within' if within else 'NOT within'} 10 %")
        if not within:
            failed_checks.append("RSS grew by more than 10 %")
        if run.total < args.requests:
            failed_checks.append(f"only {run.total:,} of --requests {args.requests:,} were made")
    if attack_rss is not None:
        before, peak_rss, after = attack_rss
        limit = before + max(before * ATTACK_SLACK[0], ATTACK_SLACK[1])
        print(f"RSS before the attacks: {before:.1f} MiB; peak during them: {peak_rss:.1f} MiB; after: {after:.1f} MiB "
              f"(limit {limit:.1f}): {'back near the start' if after <= limit else 'NOT back near the start'}")
        if after > limit:
            failed_checks.append("RSS stayed high after the attacks")
    assert warm_fds is not None
    fd_limit = warm_fds + FD_SLACK
    print(f"fds at the end of the first phase: {warm_fds}; at the end of the last: {end_fds} (limit {fd_limit})")
    if end_fds > fd_limit:
        failed_checks.append("file descriptors leaked")
    for check in failed_checks:
        print(f"FAILED: {check}")
    print("soak: ok" if not failed_checks else "soak: FAILED")
    return 1 if failed_checks else 0


# --------------------------------------------------------------------------------------------------
# Entry point


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Soak the proxy with mixed load and faults; watch RSS and fds.")
    parser.add_argument("--minutes", type=float, default=4.0,
                        help="time shared by the six phases (default 4; the first and last run longer "
                             "if they must, to reach 10,000 and --requests)")
    parser.add_argument("--requests", type=int, default=300_000,
                        help="requests in all before the final RSS (default 300,000: about five minutes "
                             "with the default --minutes on a 2-CPU machine; the issue's long run is 1000000)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight at once (default 32)")
    parser.add_argument("--max-minutes", type=float, default=180.0,
                        help="hard limit on the whole run, whatever --requests says (default 180)")
    parser.add_argument("--no-attacks", action="store_true",
                        help="skip the attack phases (slowloris, fat heads, id bombs, gzip bombs)")
    parser.add_argument("--attack-connections", type=int, default=256,
                        help="connections each of slowloris and fat-heads holds at once (default 256)")
    parser.add_argument("--bomb-mib", type=int, default=32,
                        help="what a tool call id bomb inflates to, in MiB (default 32)")
    parser.add_argument("--gzip-bomb-mib", type=int, default=96,
                        help="what the upstream's gzip bomb inflates to, in MiB (default 96: past the "
                             "default max_upstream_body_bytes)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the children's logs and print where")
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.requests < 1 or args.minutes <= 0 or args.max_minutes <= 0:
        parser.error("--concurrency, --requests, --minutes and --max-minutes must be positive")
    # Bounded on purpose: the attacks share the machine with everything else.
    if not 1 <= args.attack_connections <= 2000:
        parser.error("--attack-connections must be between 1 and 2000")
    if not 1 <= args.bomb_mib <= 512 or not 1 <= args.gzip_bomb_mib <= 512:
        parser.error("--bomb-mib and --gzip-bomb-mib must be between 1 and 512")
    return args


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, on uvloop when it is installed (as the proxy runs)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency of the proxy
        return asyncio.run(main)
    return uvloop.run(main)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the children


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_upstream:
        run_loop(serve_upstream(args.gzip_bomb_mib))
        return 0
    signal.signal(signal.SIGTERM, _exit_on_signal)
    log_dir = Path(tempfile.mkdtemp(prefix="tensorwall-soak-"))
    children = Children(log_dir)
    dead_socket, dead_port = closed_port()
    try:
        upstream = children.start("upstream", [sys.executable, __file__, "--serve-upstream",
                                               "--gzip-bomb-mib", str(args.gzip_bomb_mib)], stdout_pipe=True)
        upstream_port, stats_port = read_ports(upstream)
        proxy_port = free_port()
        config = log_dir / "soak.yaml"
        config.write_text(proxy_config(proxy_port, upstream_port, dead_port))
        proxy = children.start("proxy", [sys.executable, "-m", "tensorwall_proxy", "serve", "--config", str(config)])
        return run_loop(soak(args, proxy, upstream, f"http://{HOST}:{proxy_port}",
                             f"http://{HOST}:{stats_port}/stats"))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("soak: interrupted")
        return 130
    finally:
        children.stop_all()
        dead_socket.close()
        if args.keep_logs:
            print(f"soak: logs and config in {log_dir}")
        else:
            for path in log_dir.iterdir():
                path.unlink()
            log_dir.rmdir()


if __name__ == "__main__":
    sys.exit(main())
