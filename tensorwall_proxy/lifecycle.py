"""Runs the gateway: the event loop, the listener, SIGHUP reload, the SIGTERM drain, and the workers.

One process (``serve``, the default) binds the address, tells systemd ``READY=1``, pings its
watchdog from the event loop, reloads the YAML on SIGHUP and drains on SIGTERM or SIGINT (DESIGN §8):

    SIGTERM ─► /readyz 503, STOPPING=1 ─► shutdown_delay_seconds ─► listener closed, idle keep-alive
    connections closed ─► requests in flight finish, up to drain_seconds ─► committed streams end with
    one in-band error event (relay.end_streams) ─► a short grace to write it ─► exit 0

With ``serve --workers N`` (N > 1) a parent (:class:`Supervisor`) binds nothing itself: it starts N
worker processes that each bind the same address with SO_REUSEPORT and run the above, and it is
the process systemd sees. It must not serve requests, and a worker must not talk to systemd.
The notify protocol itself is systemd.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web

from . import api, relay
from .app import apply_config, build_app, build_metrics_app
from .auth import ambient_warnings
from .config import Config, is_loopback, load_config
from .errors import ConfigError
from .listener import make_runner
from .systemd import Notifier

log = logging.getLogger("tensorwall_proxy")

# After relay.end_streams: the time committed streams get to write their error event and end.
# Writing one small event takes microseconds; a second covers a client that reads slowly.
GRACE_SECONDS: Final = 1.0
# What still runs after the drain and the grace (a request before its commit point) is cancelled;
# this bounds how long its cancellation may take.
CANCEL_SECONDS: Final = 0.25
# Allocations between young collections, then young collections per middle one and middle per old.
GC_THRESHOLDS: Final = (10_000, 50, 100)
GC_THRESHOLD_ENV: Final = "TENSORWALL_GC_THRESHOLD"
# A worker that dies is restarted after BACKOFF_SECONDS, doubling while it keeps dying, up to
# BACKOFF_MAX_SECONDS; a worker that served for HEALTHY_SECONDS starts again from the bottom.
BACKOFF_SECONDS: Final = 0.2
BACKOFF_MAX_SECONDS: Final = 10.0
HEALTHY_SECONDS: Final = 10.0
# On TERM the parent waits for the workers' own drains, plus this, before it kills what is left.
KILL_SLACK_SECONDS: Final = 5.0
_STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
# Descriptors besides the connections' own: the listener, logs, the state files, DNS, a worker's channel.
DESCRIPTOR_SLACK: Final = 256

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class UnsafeBind(Exception):
    """Gateway auth is off and the address is not loopback."""


def check_bind(config: Config, host: str, allow_no_key: bool, *, warn: bool = True) -> None:
    """Refuse to serve without gateway keys on anything but loopback, unless told explicitly."""
    if config.gateway_keys:
        return
    if is_loopback(host):
        if warn:
            log.warning("gateway auth is off (gateway_keys: []); listening on loopback %s only", host)
        return
    if not allow_no_key:
        raise UnsafeBind(
            f"gateway auth is off (gateway_keys: []) and {host} is not a loopback address: set gateway_keys, "
            "or pass --no-gateway-key to serve without them"
        )
    if warn:
        log.warning("gateway auth is off (gateway_keys: []) on %s: anyone who reaches it can use it", host)


def install_uvloop() -> None:
    """Use uvloop's event loop when it is installed: it halves the per-request cost of the loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def raise_descriptor_limit(max_connections: int) -> None:
    """Raise the soft limit on open files towards the hard one, as far as ``max_connections`` needs.

    Every connection is a descriptor, and so is its upstream connection: with the usual soft limit
    of 1,024, accept() would fail for everyone long before ``server.max_connections`` refuses
    anyone. Past the hard limit only the operator can go (``LimitNOFILE=``, ``ulimit -n``): a warning.
    """
    needed = 2 * max_connections + DESCRIPTOR_SLACK
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("open files are limited to %d, fewer than server.max_connections (%d) needs (about %d): "
                    "raise LimitNOFILE= or ulimit -n, or lower max_connections", soft, max_connections, needed)


def gc_thresholds(text: str | None) -> tuple[int, ...] | None:
    """The collector's thresholds from ``TENSORWALL_GC_THRESHOLD``: one to three non-negative
    integers, comma-separated, as ``gc.set_threshold`` takes them; None when unset or not that."""
    if not text:
        return None
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        return None
    return values if 1 <= len(values) <= 3 and min(values) >= 0 else None


def tune_gc() -> None:
    """Leave start-up's objects out of garbage collection, and collect young objects less often.

    Measured under load with the default settings, the collector took 20 to 50 µs per request:
    a collection every 700 net allocations, each walking the tens of thousands of objects that
    50 requests in flight hold, and now and then every object the imports made. Almost all
    garbage here is freed by reference counting the moment it is dropped; the collector is for
    the rare cycle (an exception and its traceback), and 10,000 allocations between looks still
    bounds those to a few megabytes. ``gc.freeze()`` is what the gc module offers for exactly this:
    objects alive now (modules, the configuration, the app) are never examined again.

    ``TENSORWALL_GC_THRESHOLD`` (e.g. ``700,10,10``, Python's own) replaces ``GC_THRESHOLDS``, to
    measure the choice again (``scripts/gc_compare.py``) or to undo it; ``gc.freeze()`` stays.
    """
    gc.freeze()
    text = os.environ.get(GC_THRESHOLD_ENV)
    thresholds = gc_thresholds(text)
    if text and thresholds is None:
        log.warning("%s=%r is not one to three non-negative integers separated by commas: ignored",
                    GC_THRESHOLD_ENV, text)
    elif thresholds is not None:
        log.info("garbage collector thresholds %s (from %s)", ",".join(map(str, thresholds)), GC_THRESHOLD_ENV)
    gc.set_threshold(*(thresholds or GC_THRESHOLDS))


def load_for_reload(path: str, host: str, allow_no_key: bool, *, warn: bool = True) -> Config | None:
    """The configuration a SIGHUP asks for, validated; None (every error logged) when it may not replace the running one."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        for error in exc.errors:  # each one is led by its YAML path
            log.error("reload: %s", error)
        log.error("reload of %s failed (%d error(s)): still serving the previous configuration",
                  path, len(exc.errors))
        return None
    try:
        check_bind(config, host, allow_no_key, warn=False)
    except UnsafeBind as exc:
        log.error("reload of %s refused: %s; still serving the previous configuration", path, exc)
        return None
    if warn:
        for warning in ambient_warnings(config.providers.values()):
            log.warning("%s", warning)
    return config


def serve(config: Config, host: str, port: int, *, allow_no_key: bool = False,
          channel_fd: int | None = None) -> int:
    """Serve until SIGTERM or SIGINT, drain, and return the exit code (0 after a drain, 1 if binding failed).

    ``channel_fd`` makes this process a worker of ``serve --workers N``: it binds with SO_REUSEPORT,
    reports to its parent over that descriptor instead of to systemd, and drains when the parent dies.
    """
    install_uvloop()
    raise_descriptor_limit(config.server.max_connections)
    notifier = Notifier.from_environ() if channel_fd is None else Notifier.to_parent(channel_fd)
    instance = Instance(config, host, port, allow_no_key, notifier, reuse_port=channel_fd is not None)
    try:
        return asyncio.run(instance.run())
    finally:
        notifier.close()


def _describe(addresses: list[tuple[str, int]]) -> str:
    return ", ".join(f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
                     for host, port in addresses)


def close_idle(gateway: relay.Gateway, http: web.Server) -> None:
    """Start draining: close every connection that has no request in flight; the busy ones close
    as soon as their request is done (``Gateway.release``)."""
    gateway.draining = True
    if not gateway.busy:
        gateway.idle.set()
    for connection in http.connections:
        if connection not in gateway.busy:
            # force_close, not close: close() on a connection waiting for its next request only
            # cancels the wait and leaves the socket open until aiohttp's shutdown.
            connection.force_close()


@dataclass
class Instance:
    """One serving process: its app and listener, and what SIGHUP and SIGTERM do to them."""

    config: Config
    host: str
    port: int
    allow_no_key: bool
    notifier: Notifier
    reuse_port: bool = False
    draining: bool = False
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    app: web.Application | None = None
    metrics_runner: web.AppRunner | None = None

    async def run(self) -> int:
        app = self.app = build_app(self.config, self.host)
        runner = make_runner(app, self.config.server, shutdown_timeout=CANCEL_SECONDS)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, reuse_port=self.reuse_port or None)
            await site.start()
        except OSError as exc:
            log.error("cannot listen on %s port %d: %s", self.host, self.port, exc.strerror or exc)
            await runner.cleanup()
            return 1
        if not await self.open_metrics(app):
            await runner.cleanup()
            return 1
        tune_gc()  # after the imports and the app: what they made is here to stay
        where = _describe([address[:2] for address in runner.addresses])
        log.info("tensorwall-proxy listening on %s (config %s, pid %d)", where, self.config.source, os.getpid())
        loop = asyncio.get_running_loop()
        # Handlers first, READY after: a parent forwards HUP and TERM only to workers that said READY.
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        for signum in _STOP_SIGNALS:
            loop.add_signal_handler(signum, self.begin_drain, signal.Signals(signum).name)
        self.notifier.watch_parent(lambda: self.begin_drain("the parent process is gone"))
        self.notifier.ready(f"serving on {where}")
        watchdog = asyncio.create_task(self.notifier.watchdog())
        try:
            await self.stop.wait()
            await self.drain(runner)
        finally:
            watchdog.cancel()
            for signum in (signal.SIGHUP, *_STOP_SIGNALS):
                loop.remove_signal_handler(signum)
        return 0

    async def open_metrics(self, app: web.Application) -> bool:
        """``server.metrics_port``: /metrics on a listener of its own, same host; False if it cannot bind.

        Under ``--workers N`` every worker binds it with SO_REUSEPORT like the API port: whichever
        one the kernel picks reads every worker's numbers from the shared metrics directory.
        """
        port = self.config.server.metrics_port
        if port is None:
            return True
        # The API port's connection bounds apply here too: a scraper's port is a port like any other.
        runner = self.metrics_runner = make_runner(build_metrics_app(app), self.config.server,
                                                   shutdown_timeout=CANCEL_SECONDS)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, port, reuse_port=self.reuse_port or None).start()
        except OSError as exc:
            log.error("cannot listen for metrics on %s port %d: %s", self.host, port, exc.strerror or exc)
            await runner.cleanup()
            return False
        log.info("metrics on %s/metrics", _describe([address[:2] for address in runner.addresses]))
        return True

    def reload(self) -> None:
        """SIGHUP: load and validate the YAML, then swap the table; on any error keep the running one."""
        if self.draining or self.app is None:
            log.info("SIGHUP while draining: ignored")
            return
        self.notifier.reloading()
        path = self.config.source
        # A worker's parent has validated the file and warned already; only errors are worth repeating.
        config = load_for_reload(path, self.host, self.allow_no_key, warn=not self.notifier.to_parent_channel)
        if config is None:
            self.notifier.ready("reload failed: serving the previous configuration")
            return
        apply_config(self.app, config)
        if config.server != self.config.server:
            log.warning("reload: server.* changed; the address and the body and connection bounds take a "
                        "restart, the drain times and allowed_hosts/allowed_origins apply from now")
        if config.state != self.config.state:
            # The open store (its files or pool, its timeout, its secret) stays: swapping it under
            # requests in flight would split what they store between two places.
            log.warning("reload: state.* changed; the state store keeps its settings until a restart")
        self.config = config
        log.info("reloaded %s: %d routes, %d providers, gateway auth %s", path, len(config.routes),
                 len(config.providers), "on" if config.gateway_keys else "off")
        self.notifier.ready("serving; configuration reloaded")

    def begin_drain(self, reason: str) -> None:
        """SIGTERM, SIGINT or the parent gone: not ready from this moment on, then drain (once)."""
        if self.draining or self.app is None:
            return
        self.draining = True
        self.app[api.GATEWAY].ready = False  # /readyz answers 503 from now on
        self.notifier.stopping("draining")
        server = self.config.server
        log.info("%s: draining (listener closes in %gs, requests in flight get %gs)", reason,
                 server.shutdown_delay_seconds, server.drain_seconds)
        self.stop.set()

    async def drain(self, runner: web.AppRunner) -> None:
        """Close the listener after the delay, let requests finish, end the streams left, shut down."""
        assert self.app is not None and runner.server is not None
        server = self.config.server
        if server.shutdown_delay_seconds > 0:
            # A load balancer polling /readyz needs this long to stop sending new connections here.
            await asyncio.sleep(server.shutdown_delay_seconds)
        for site in list(runner.sites):
            await site.stop()
        # One turn of the loop lets a request that reached an accepted connection start being served.
        await asyncio.sleep(0)
        gateway = self.app[api.GATEWAY]
        close_idle(gateway, runner.server)
        if gateway.busy:
            log.info("listener closed; waiting up to %gs for %d request(s) in flight", server.drain_seconds,
                     len(gateway.busy))
            try:
                await asyncio.wait_for(gateway.idle.wait(), server.drain_seconds)
            except TimeoutError:
                await self.end_streams()
        await runner.cleanup()
        if self.metrics_runner is not None:  # last, so the drain itself can be watched
            await self.metrics_runner.cleanup()
        log.info("drained; exiting")

    async def end_streams(self) -> None:
        """The drain ran out of time: end the committed streams in-band and give them a moment to write."""
        assert self.app is not None
        gateway = self.app[api.GATEWAY]
        streams = list(gateway.streams)
        ended = relay.end_streams(gateway)
        log.warning("drain time (%gs) is up: %d stream(s) ended with an in-band error, %d request(s) before "
                    "their commit point are cancelled", self.config.server.drain_seconds, ended,
                    max(len(gateway.busy) - ended, 0))
        if streams:
            # The streams' tasks are their request handlers: done once the error event is written.
            await asyncio.wait(streams, timeout=GRACE_SECONDS)


# ---------------------------------------------------------------------------------------------------
# serve --workers N: the parent


@dataclass
class Worker:
    """One slot of the parent: the process in it now, and what it last reported."""

    slot: int
    process: asyncio.subprocess.Process | None = None
    ready: bool = False
    ready_at: float = 0.0
    heartbeat: float = 0.0
    reloads: int = 0  # the parent's reload count when this process last (re)read the YAML
    failures: int = 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)


def _clear_metrics_directory() -> None:
    """A new parent starts the workers' shared metrics afresh (prometheus-client's multiprocess rule)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and os.path.isdir(directory):
        for name in os.listdir(directory):
            if name.endswith(".db"):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(directory, name))


def _forget_worker_metrics(pid: int) -> None:
    """A dead worker's live gauges (requests in flight, endpoint health) stop counting."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def supervise(config: Config, host: str, port: int, workers: int, *, allow_no_key: bool = False) -> int:
    """``serve --workers N``: run N workers on one port until SIGTERM or SIGINT; the exit code."""
    if config.server.metrics_port == 0:
        log.error("server.metrics_port: --workers needs a fixed port (port 0 would give each worker its own)")
        return 1
    install_uvloop()
    notifier = Notifier.from_environ()
    try:
        return asyncio.run(Supervisor(config, host, port, workers, allow_no_key, notifier).run())
    finally:
        notifier.close()


class Supervisor:
    """The parent of ``serve --workers N``: starts, watches, signals and restarts the workers.

    How a worker reports: a socketpair per worker, whose other end the worker inherits by descriptor
    (``serve --channel-fd``). The worker writes the same ``READY=1`` / ``WATCHDOG=1`` / ``STOPPING=1``
    lines it would send systemd. Why this rather than polling each worker's /readyz: with
    SO_REUSEPORT every worker listens on the same port, so the kernel, not the parent, picks which
    one answers a probe; and the channel needs no timing guesses: READY comes once the socket is
    bound, WATCHDOG from the worker's own event loop (a hung loop goes quiet), and end of file the
    moment a worker dies. The parent's end closing tells a worker that the parent died.
    """

    def __init__(self, config: Config, host: str, port: int, count: int, allow_no_key: bool,
                 notifier: Notifier) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.allow_no_key = allow_no_key
        self.notifier = notifier
        self.workers = [Worker(slot) for slot in range(1, count + 1)]
        self.serving = False  # every worker said READY once: systemd has heard READY=1
        self.stopping = False
        self.code = 0
        self.reloads = 0
        self.reload_pending: set[int] = set()  # slots that have not confirmed the last reload
        self.stopped = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        for signum in _STOP_SIGNALS:
            loop.add_signal_handler(signum, self.stop, signal.Signals(signum).name)
        log.info("starting %d workers on %s port %d (config %s, pid %d)", len(self.workers), self.host,
                 self.port, self.config.source, os.getpid())
        _clear_metrics_directory()
        watchdog = asyncio.create_task(self.notifier.watchdog(self.all_live))
        slots = [asyncio.create_task(self.keep(worker)) for worker in self.workers]
        try:
            await asyncio.gather(*slots)
        finally:
            watchdog.cancel()
            for signum in (signal.SIGHUP, *_STOP_SIGNALS):
                loop.remove_signal_handler(signum)
        log.info("all workers stopped; exiting")
        return self.code

    def all_live(self) -> bool:
        """Every worker runs, has said READY, and (with the watchdog on) pinged within the period."""
        loop = asyncio.get_running_loop()
        period = 2 * self.notifier.interval if self.notifier.interval else None
        return all(w.alive and w.ready and (period is None or loop.time() - w.heartbeat <= period)
                   for w in self.workers)

    def command(self, fd: int) -> list[str]:
        command = [sys.executable, "-m", "tensorwall_proxy", "serve", "--config", self.config.source,
                   "--host", self.host, "--port", str(self.port), "--channel-fd", str(fd)]
        return [*command, "--no-gateway-key"] if self.allow_no_key else command

    def environment(self) -> dict[str, str]:
        """The parent's environment without systemd's notify variables: only the parent talks to systemd."""
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        if self.notifier.interval is not None:
            # The workers ping the parent at the pace systemd asked of it (see all_live).
            env["WATCHDOG_USEC"] = str(round(self.notifier.interval * 2_000_000))
        return env

    async def keep(self, worker: Worker) -> None:
        """Keep one slot filled until the parent stops; restart its worker when it dies."""
        loop = asyncio.get_running_loop()
        while not self.stopping:
            code = await self.run_worker(worker)
            if self.stopping:
                break
            died = (f"killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals()
                    else f"exit code {code}")
            if not self.serving:
                log.error("worker %d exited before serving (%s): stopping", worker.slot, died)
                self.code = 1
                self.stop("a worker failed to start")
                break
            healthy = worker.ready and loop.time() - worker.ready_at >= HEALTHY_SECONDS
            worker.failures = 1 if healthy else worker.failures + 1
            delay = min(BACKOFF_SECONDS * 2 ** (worker.failures - 1), BACKOFF_MAX_SECONDS)
            log.error("worker %d (pid %s) died (%s): restarting in %gs", worker.slot,
                      worker.process.pid if worker.process else "?", died, delay)
            worker.ready = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopped.wait(), delay)

    async def run_worker(self, worker: Worker) -> int:
        """Start one worker, read what it reports until it exits, and return its exit code."""
        parent_end, child_end = socket.socketpair()
        try:
            worker.reloads = self.reloads
            worker.process = await asyncio.create_subprocess_exec(
                *self.command(child_end.fileno()), pass_fds=(child_end.fileno(),), env=self.environment(),
                stdin=asyncio.subprocess.DEVNULL)
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()  # the worker holds it now; keeping it would hide the worker's end of file
        process = worker.process
        log.info("worker %d started (pid %d)", worker.slot, process.pid)
        if self.stopping:
            worker.signal(signal.SIGTERM)
        reader, writer = await asyncio.open_connection(sock=parent_end)
        try:
            while line := await reader.readline():
                self.on_report(worker, line.decode(errors="replace").strip())
        finally:
            writer.close()
        code = await process.wait()
        worker.ready = False
        self.reload_done(worker.slot)
        _forget_worker_metrics(process.pid)
        return code

    def on_report(self, worker: Worker, line: str) -> None:
        loop = asyncio.get_running_loop()
        if line == "WATCHDOG=1":
            worker.heartbeat = loop.time()
        elif line == "READY=1":
            first = not worker.ready
            worker.ready = True
            worker.heartbeat = loop.time()
            if first:
                worker.ready_at = loop.time()
                assert worker.process is not None
                log.info("worker %d (pid %d) serving", worker.slot, worker.process.pid)
                if worker.reloads < self.reloads:
                    # Started before a reload it never saw: it read the YAML before the new one came.
                    worker.reloads = self.reloads
                    worker.signal(signal.SIGHUP)
            self.reload_done(worker.slot)
            if not self.serving and not self.stopping and all(w.ready for w in self.workers):
                self.serving = True
                self.notifier.ready(f"serving on {self.host} port {self.port} with {len(self.workers)} workers")
                log.info("all %d workers serving", len(self.workers))
        elif line == "STOPPING=1":
            worker.ready = False

    def reload(self) -> None:
        """SIGHUP: validate once here (the errors are logged once), then have every serving worker reload."""
        if self.stopping:
            log.info("SIGHUP while stopping: ignored")
            return
        self.notifier.reloading()
        config = load_for_reload(self.config.source, self.host, self.allow_no_key)
        if config is None:
            self.notifier.ready("reload failed: serving the previous configuration")
            return
        self.config = config
        self.reloads += 1
        # Workers that have not said READY yet have no handler for HUP (it would kill them): they
        # get it when they say READY (on_report).
        self.reload_pending = {w.slot for w in self.workers if w.alive and w.ready}
        log.info("reload: %s is valid; reloading %d worker(s)", config.source, len(self.reload_pending))
        for worker in self.workers:
            if worker.slot in self.reload_pending:
                worker.reloads = self.reloads
                worker.signal(signal.SIGHUP)
        if not self.reload_pending:
            self.notifier.ready()

    def reload_done(self, slot: int) -> None:
        if slot in self.reload_pending:
            self.reload_pending.discard(slot)
            if not self.reload_pending:
                self.notifier.ready("serving; configuration reloaded")

    def stop(self, reason: str) -> None:
        """SIGTERM or SIGINT: STOPPING=1, TERM to every worker, and wait for their drains (once)."""
        if self.stopping:
            return
        self.stopping = True
        self.notifier.stopping("draining")
        log.info("%s: stopping %d workers", reason, sum(w.alive for w in self.workers))
        for worker in self.workers:
            worker.signal(signal.SIGTERM)
        self.stopped.set()
        server = self.config.server
        limit = server.shutdown_delay_seconds + server.drain_seconds + GRACE_SECONDS + KILL_SLACK_SECONDS
        asyncio.get_running_loop().call_later(limit, self.kill_stragglers)

    def kill_stragglers(self) -> None:
        for worker in self.workers:
            if worker.alive:
                assert worker.process is not None
                log.error("worker %d (pid %d) still running after its drain: killing it", worker.slot,
                          worker.process.pid)
                worker.signal(signal.SIGKILL)
                self.code = 1
