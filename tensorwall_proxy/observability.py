"""What the gateway tells its operator: one access-log line per request, and Prometheus metrics.

Owns the request record the relay fills in as a request travels (route, provider, attempts,
time to first byte, tokens), the access log written through the standard ``logging`` module
(logger ``tensorwall_proxy.access``: one JSON object per line, on stdout, for log shippers; the
gateway's other lines stay human-readable on stderr), and the metrics, through prometheus-client
(its multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` is set, so ``--workers N`` report together).

Never a key, a body or a message text: the record holds names, numbers and statuses only. Label
values come from the configuration alone (route names, the rule that matched, provider names,
models listed under ``models:``), so the metrics' cardinality stays bounded whatever callers send.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from .providers.ids import unique_id
from .tokens import count_of

access_log = logging.getLogger("tensorwall_proxy.access")
LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s{tag}: %(message)s"

_STATUS_CLASSES: Final = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
# Buckets that resolve sub-millisecond overhead as well as minute-long streams.
DURATION_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                           10.0, 30.0, 60.0, 120.0, 300.0, 600.0)



class LogThrottle:
    """At most one log line a minute per kind, so neither a caller who found a bug nor an upstream
    in an outage can fill the log: the next line logged for a kind says how many of it were left
    out since the last one. Kinds come from code locations and provider names, so they are few;
    ``KINDS`` only bounds the table."""

    PERIOD: Final = 60.0
    KINDS: Final = 1024

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._kinds: dict[object, tuple[float, int]] = {}

    def admit(self, kind: object) -> int | None:
        """None when ``kind`` was logged within the period (it is counted); else how many of it were
        left out since its last line."""
        now = self._clock()
        last, suppressed = self._kinds.get(kind, (-math.inf, 0))
        if now - last < self.PERIOD:
            self._kinds[kind] = (last, suppressed + 1)
            return None
        if len(self._kinds) >= self.KINDS and kind not in self._kinds:
            self._kinds.clear()
        self._kinds[kind] = (now, 0)
        return suppressed

    def error(self, logger: logging.Logger, exc: BaseException, message: str, *args: object) -> None:
        """``logger.error(message % args)`` with the traceback, at most once a minute per kind of error
        (exception type and the line it was raised at)."""
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        kind = (type(exc).__qualname__, tb.tb_frame.f_code.co_filename if tb else "", tb.tb_lineno if tb else 0)
        del tb
        left = self.admit(kind)
        if left is not None:
            logger.error(message + "%s", *args, _left_out(left), exc_info=exc)

    def warning(self, logger: logging.Logger, kind: object, message: str, *args: object) -> None:
        """``logger.warning(message % args)``, at most once a minute per ``kind``."""
        left = self.admit(kind)
        if left is not None:
            logger.warning(message + "%s", *args, _left_out(left))


def _left_out(count: int) -> str:
    return f"; {count} more like it since the last one were not logged" if count else ""


# The process's throttle: unhandled errors, upstream failures the gateway logs for its operator.
THROTTLE: Final = LogThrottle()

@dataclass(slots=True)
class RequestRecord:
    """One request's journey in names and numbers, filled in by the api and the relay."""

    request_id: str
    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    route: str = ""
    provider: str = ""
    model: str = ""  # the upstream model id, for the log; metrics use model_label
    model_label: str = ""
    stream: bool = False
    status: int = 0
    first_byte: float | None = None
    latency: float = 0.0  # from arrival until the handler returned the response
    attempts: list[tuple[str, str, int, float]] = field(default_factory=list)  # provider, outcome, status, s
    prompt_tokens: int = 0
    completion_tokens: int = 0
    principal: str | None = None  # who called, once principals exist (DESIGN §13); null until then
    cache_markers_dropped: int = 0  # cache_control breakpoints the answering attempt's translator dropped
    betas_stripped: tuple[str, ...] = ()  # the caller's betas the answering attempt's provider did not get (labels)

    def attempt(self, provider: str, outcome: str, status: int, started: float) -> None:
        """Note one upstream attempt: ok, connect, timeout, 429, 5xx or 4xx."""
        self.attempts.append((provider, outcome, status, time.perf_counter() - started))

    def committed(self) -> None:
        """The first byte went to the client."""
        if self.first_byte is None:
            self.first_byte = time.perf_counter() - self.started

    def count(self, usage: Mapping[str, Any] | None) -> None:
        """Tokens from the provider's own usage (OpenAI's shape, after translation); a count that
        is not a non-negative integer counts as 0 (tokens.py), so it can neither fail the answer
        nor reach a counter."""
        if usage:
            self.prompt_tokens = count_of(usage, "prompt_tokens")
            self.completion_tokens = count_of(usage, "completion_tokens")


def new_request_id(given: str | None) -> str:
    """The caller's ``x-request-id`` when it is sane (it reaches the access log), else a new one."""
    if given and len(given) <= 128 and given.isprintable() and given.isascii():
        return given
    return unique_id("req_")


def outcome_of(status: int, kind: str | None) -> str:
    """The attempt outcome label: ok, connect, timeout, 429, 5xx or 4xx."""
    if kind in ("connect", "timeout"):
        return kind
    if status == 429:
        return "429"
    if status >= 500:
        return "5xx"
    if status >= 400:
        return "4xx"
    return "ok"


def blame(status: int, provider: str) -> str | None:
    """Whose error it is: the caller's (a 4xx), the upstream's (a provider failed), or the gateway's."""
    if status < 400:
        return None
    if status in (500, 501) and not provider:
        return "gateway"
    if 400 <= status < 500 and status != 429:
        return "caller"
    return "upstream" if provider else "gateway"


# "000Z" to "999Z", made once: appending one is cheaper than formatting the number each time.
_MILLIS: Final = tuple(f"{ms:03d}Z" for ms in range(1000))


class UtcStamp:
    """RFC 3339 timestamps in UTC with milliseconds (``2026-12-04T21:25:27.653Z``) for thousands of
    lines a second: the date and time are formatted once per second, the milliseconds appended."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self, now_ns: int) -> str:
        """``now_ns`` (nanoseconds since the epoch, as ``time.time_ns()`` gives) as RFC 3339.
        Integers, not float seconds: a float's fraction can fall a hair short of the millisecond."""
        ms = now_ns // 1_000_000
        second = ms // 1000
        if second != self._second:
            self._second = second
            self._text = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        return self._text + _MILLIS[ms % 1000]


def log_line(record: RequestRecord, ts: str) -> str:
    """The access-log line for one request: one JSON object, ``ts`` first (DESIGN §8 fields, plus
    each attempt and the principal), built by one orjson call."""
    return orjson.dumps({
        "ts": ts,
        "id": record.request_id, "method": record.method, "path": record.path, "route": record.route or None,
        "provider": record.provider or None, "model": record.model or None, "status": record.status,
        "stream": record.stream, "attempts": len(record.attempts),
        "attempt_log": [{"provider": p, "outcome": o, "status": s, "ms": round(t * 1000, 3)}
                        for p, o, s, t in record.attempts],
        "latency_ms": round(record.latency * 1000, 3),
        "ttfb_ms": round(record.first_byte * 1000, 3) if record.first_byte is not None else None,
        "tokens_in": record.prompt_tokens, "tokens_out": record.completion_tokens,
        "blame": blame(record.status, record.provider), "principal": record.principal,
    }).decode()


class Ledger:
    """Accounts for each finished request just after its response leaves, and flushes in batches.

    Each request's log line and metric observations are made by a callback queued behind the
    response's write (so the response never waits for them), one request at a time (so no request
    waits behind a long batch). What is cheaper done once for many is done on a timer about every
    ``delay`` seconds: the buffered log lines written with one write(2), the counters incremented
    once with their totals, the in-flight gauge set.
    """

    def __init__(self, metrics: Metrics | None, in_flight: Callable[[], int], delay: float = 0.05) -> None:
        self.metrics = metrics
        self.delay = delay
        self._in_flight = in_flight
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stamp = UtcStamp()

    def touch(self) -> None:
        """A request started: make sure a flush comes soon, so the in-flight gauge follows."""
        if self._timer is None:
            self._timer = self._loop_now().call_later(self.delay, self.flush)

    def add(self, record: RequestRecord, status: int) -> None:
        """A request finished with ``status`` (499 when the client left before any response)."""
        record.status = status
        record.latency = time.perf_counter() - record.started
        self._loop_now().call_soon(self._account, record)

    def flush(self) -> None:
        """Write the buffered lines and apply the counters (on the timer, before a scrape, at shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.metrics is not None:
            self.metrics.apply(self._in_flight())
        for handler in access_log.handlers:
            handler.flush()  # a BufferedStreamHandler writes what it holds now, in one go

    def _account(self, record: RequestRecord) -> None:
        if self.metrics is not None:
            self.metrics.observe(record)
        if access_log.isEnabledFor(logging.INFO):
            # The time the line is made, just after the response left: lines stay in time order,
            # which log stores (Loki among them) want within a stream; a long stream that began
            # earlier has its start in latency_ms.
            access_log.info(log_line(record, self._stamp(time.time_ns())))
        self.touch()  # here, not in add(): a flush that ran in between must not strand this one

    def _loop_now(self) -> asyncio.AbstractEventLoop:
        # Looked up once: on Python 3.11 every get_running_loop() is a getpid() system call.
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop


class Metrics:
    """The gateway's Prometheus metrics, in a registry of their own."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("tensorwall_requests", "Requests served, by route, provider, status class, "
                                "whether they streamed and principal.",
                                ["route", "provider", "status_class", "stream", "principal"], registry=self.registry)
        self.duration = Histogram("tensorwall_request_duration_seconds", "Time from request to last byte.",
                                  ["route", "provider", "stream"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.first_byte = Histogram("tensorwall_time_to_first_byte_seconds", "Time from request to the commit "
                                    "point.", ["route", "provider", "stream"], buckets=DURATION_BUCKETS,
                                    registry=self.registry)
        self.attempts = Counter("tensorwall_upstream_attempts", "Upstream attempts by provider and outcome.",
                                ["provider", "outcome"], registry=self.registry)
        self.fallbacks = Counter("tensorwall_fallbacks", "Requests that needed more than one attempt.", ["route"],
                                 registry=self.registry)
        self.tokens = Counter("tensorwall_tokens", "Tokens by provider, model, direction (in, out) and "
                              "principal, from the providers' own usage.", ["provider", "model", "direction", "principal"],
                              registry=self.registry)
        self.errors = Counter("tensorwall_errors", "Error responses by whom they blame.", ["blame"],
                              registry=self.registry)
        self.cache_markers_dropped = Counter("tensorwall_cache_markers_dropped", "Cache breakpoints "
                                             "(cache_control) a caller marked that the provider's translator "
                                             "could not keep, by provider.", ["provider"], registry=self.registry)
        self.betas_stripped = Counter("tensorwall_betas_stripped", "Anthropic betas a caller sent that the "
                                      "provider's rules kept from it, by provider and beta family ('other' "
                                      "outside the tables).", ["provider", "beta"], registry=self.registry)
        self.in_flight = Gauge("tensorwall_requests_in_flight", "Requests being served.",
                               registry=self.registry, multiprocess_mode="livesum")
        self.connections_closed = Counter("tensorwall_connections_closed", "Connections the listener closed "
                                          "before serving them, by reason: max_connections, header_timeout, "
                                          "header_too_large.", ["reason"], registry=self.registry)
        self.state_errors = Counter("tensorwall_state_errors", "State store calls that failed or ran past "
                                    "state.timeout_ms, by backend and operation.", ["backend", "operation"],
                                    registry=self.registry)
        self.limit_fallbacks = Counter("tensorwall_limit_fallbacks", "Limit checks the state store could not "
                                       "answer, by state.fail_mode: open (counted in the process, served) or "
                                       "closed (503).", ["fail_mode"], registry=self.registry)
        self.health = Gauge("tensorwall_endpoint_health", "Endpoints (server-side credentials) by state.",
                            ["provider", "model", "state"], registry=self.registry, multiprocess_mode="livemax")
        # Label values are bounded by the configuration, so this cache is too.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # The (provider, model, state) health samples set to 1 at the last scrape.
        self._health_now: set[tuple[str, str, str]] = set()
        self.failing = False  # the last render failed (it is logged once per spell)
        # A scrape with nothing new since the last one gets the same text without rendering it again
        # (single-process mode only: other workers' changes are not seen here).
        self._changes = 0
        self._in_flight_now = 0
        self._rendered: tuple[int, bytes] | None = None
        # Counter increments waiting for apply(): one inc per labelled child per flush.
        self._counts: defaultdict[tuple[Any, tuple[str, ...]], float] = defaultdict(float)

    def _child(self, metric: Any, *labels: str) -> Any:
        """A labelled child, looked up in our own dict: prometheus-client's labels() takes a lock
        and validates on every call, which the hot path need not pay twice for the same labels."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, record: RequestRecord) -> None:
        """Count one finished request: histograms at once, counters into totals for ``apply``."""
        self._changes += 1
        counts = self._counts
        stream = "true" if record.stream else "false"
        route = record.route or "none"
        provider = record.provider or "none"
        child = self._child
        # Principals come from the configuration (a name, or a configured key's digest): bounded.
        principal = record.principal or "none"
        counts[self.requests, (route, provider, _STATUS_CLASSES.get(record.status // 100, "other"), stream,
                               principal)] += 1
        child(self.duration, route, provider, stream).observe(record.latency)
        if record.first_byte is not None:
            child(self.first_byte, route, provider, stream).observe(record.first_byte)
        for attempt_provider, outcome, _, _ in record.attempts:
            counts[self.attempts, (attempt_provider, outcome)] += 1
        if len(record.attempts) > 1:
            counts[self.fallbacks, (route,)] += 1
        if record.prompt_tokens > 0 or record.completion_tokens > 0:
            # Upstream numbers: a negative one would make the counter refuse the whole batch.
            model = record.model_label or "other"
            counts[self.tokens, (provider, model, "in", principal)] += max(record.prompt_tokens, 0)
            counts[self.tokens, (provider, model, "out", principal)] += max(record.completion_tokens, 0)
        if record.cache_markers_dropped:
            counts[self.cache_markers_dropped, (provider,)] += record.cache_markers_dropped
        for beta in record.betas_stripped:
            counts[self.betas_stripped, (provider, beta)] += 1
        who = blame(record.status, record.provider)
        if who is not None:
            counts[self.errors, (who,)] += 1

    def apply(self, in_flight: int) -> None:
        """Add the counters' totals since the last time to the metrics, and set the in-flight gauge."""
        counts, self._counts = self._counts, defaultdict(float)
        for (metric, labels), amount in counts.items():
            if 0 < amount < math.inf:  # a counter only goes up, and by a number (not NaN)
                self._child(metric, *labels).inc(amount)
        if in_flight != self._in_flight_now:
            self._in_flight_now = in_flight
            self._changes += 1
        self.in_flight.set(in_flight)

    def report_health(self, samples: Iterable[tuple[str, str, str]]) -> None:
        """Set the endpoint health gauge to these (provider, model, state) samples.

        Samples of the last scrape that are gone are set to 0 rather than removed: in multiprocess
        mode a removed sample keeps its last value in this worker's file, so a state long over
        would be reported forever.
        """
        now = set(samples)
        if now != self._health_now:
            self._changes += 1
        for labels in self._health_now - now:
            self._child(self.health, *labels).set(0)
        for labels in now - self._health_now:
            self._child(self.health, *labels).set(1)
        self._health_now = now

    def connection_closed(self, reason: str) -> None:
        """The listener closed a connection before serving it (too many open, a head too slow or too large)."""
        self._child(self.connections_closed, reason).inc()

    def state_error(self, backend: str, operation: str) -> None:
        """A state store call failed or timed out (``state.StoreError``); the labels are the backend's
        name and the store method, so they stay few."""
        self._changes += 1
        self._child(self.state_errors, backend, operation).inc()

    def limit_fallback(self, fail_mode: str) -> None:
        """A limit check fell back because the store failed (``state.fail_mode`` says how)."""
        self._changes += 1
        self._child(self.limit_fallbacks, fail_mode).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition and its content type; every worker's together in multiprocess mode."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self.multiprocess_dir:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        if self._rendered is None or self._rendered[0] != self._changes:
            self._rendered = (self._changes, generate_latest(self.registry))
        return self._rendered[1], CONTENT_TYPE_LATEST


class JsonLineFormatter(logging.Formatter):
    """The access log's formatter: the record's message, which the ledger made a whole JSON line,
    and nothing else (no prefix, and no traceback even if one were attached: a line a log shipper
    cannot parse is worse than a missing traceback, which the gateway's other loggers carry)."""

    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


class BufferedStreamHandler(logging.Handler):
    """A handler that holds whole lines and writes them at ``flush()``, all in one write(2): the
    ledger flushes once per batch of access-log lines, so a batch costs one system call, not one
    per line. A warning or worse is written at once.

    Never a part of a line: with ``--workers N`` every worker writes to the same stdout (a pipe,
    the journal's socket), and a buffer that spilled mid-line when it filled would let another
    worker's batch land inside the line. One write of whole lines goes in one piece to a file
    opened for appending or to a socket (up to its buffer, some 100 KB), and to a pipe up to
    PIPE_BUF (4 KiB) - above that a pipe shared by several writers may interleave them.
    """

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        self._lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record))
            if record.levelno >= logging.WARNING:
                self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        lines.append("")  # the last line's newline
        data = memoryview("\n".join(lines).encode("utf-8", "backslashreplace"))
        try:
            while data:  # a write cut short by a signal writes the rest
                data = data[os.write(self.fd, data):]
        except OSError:
            pass  # the reader is gone (a closed pipe): there is nowhere left to write these lines


def configure_logging(*, process_tag: bool = False) -> None:
    """The access log's JSON lines to stdout, on a buffered handler of its own (it does not
    propagate), and nothing else there; every other line, human-readable, to stderr (both reach the
    journal under systemd). ``process_tag`` names the process in every stderr line (``--workers``)."""
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(LOG_FORMAT.format(tag=f"[{os.getpid()}]" if process_tag else "")))
    root = logging.getLogger()
    root.handlers = [console]
    root.setLevel(logging.INFO)
    access = BufferedStreamHandler(sys.stdout.fileno())
    access.setFormatter(JsonLineFormatter())
    access_log.handlers = [access]
    access_log.propagate = False
    # Skip what no format here uses (the caller's source line, the thread and process lookups),
    # as the logging docs advise for hot paths; the process id is in the format itself.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def metrics_from_environment() -> Metrics:
    """Metrics in multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` names a directory (the unit's
    ``RuntimeDirectory=``), else in this process only."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
    return Metrics(directory)
