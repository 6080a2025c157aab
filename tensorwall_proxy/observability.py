"""What the gateway tells its operator: one access-log line per request, and Prometheus metrics.

Owns the request record the relay fills in as a request travels (route, provider, attempts,
time to first byte, tokens), the JSON access log written through the standard ``logging`` module
(logger ``tensorwall_proxy.access``), and the metrics, through prometheus-client (its
multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` is set, so ``--workers N`` report together).

Never a key, a body or a message text: the record holds names, numbers and statuses only. Label
values come from the configuration alone (route names, the rule that matched, provider names,
models listed under ``models:``), so the metrics' cardinality stays bounded whatever callers send.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

access_log = logging.getLogger("tensorwall_proxy.access")

_STATUS_CLASSES: Final = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
# Buckets that resolve sub-millisecond overhead as well as minute-long streams.
DURATION_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                           10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


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
    attempts: list[tuple[str, str, int, float]] = field(default_factory=list)  # provider, outcome, status, s
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def attempt(self, provider: str, outcome: str, status: int, started: float) -> None:
        """Note one upstream attempt: ok, connect, timeout, 429, 5xx or 4xx."""
        self.attempts.append((provider, outcome, status, time.perf_counter() - started))

    def committed(self) -> None:
        """The first byte went to the client."""
        if self.first_byte is None:
            self.first_byte = time.perf_counter() - self.started

    def count(self, usage: Mapping[str, Any] | None) -> None:
        """Tokens from the provider's own usage (OpenAI's shape, after translation)."""
        if usage:
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)


def new_request_id(given: str | None) -> str:
    """The caller's ``x-request-id`` when it is sane (it reaches the access log), else a new one."""
    if given and len(given) <= 128 and given.isprintable() and given.isascii():
        return given
    return "req_" + secrets.token_hex(12)


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


def log_line(record: RequestRecord, latency: float) -> bytes:
    """The access-log JSON for one request (DESIGN §8 fields, plus each attempt)."""
    return orjson.dumps({
        "id": record.request_id, "method": record.method, "path": record.path, "route": record.route or None,
        "provider": record.provider or None, "model": record.model or None, "status": record.status,
        "stream": record.stream, "attempts": len(record.attempts),
        "attempt_log": [{"provider": p, "outcome": o, "status": s, "ms": round(t * 1000, 3)}
                        for p, o, s, t in record.attempts],
        "latency_ms": round(latency * 1000, 3),
        "ttfb_ms": round(record.first_byte * 1000, 3) if record.first_byte is not None else None,
        "tokens_in": record.prompt_tokens, "tokens_out": record.completion_tokens,
        "blame": blame(record.status, record.provider),
    })


class Metrics:
    """The gateway's Prometheus metrics, in a registry of their own."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("tensorwall_requests", "Requests served, by route, provider, status class and "
                                "whether they streamed.", ["route", "provider", "status_class", "stream"],
                                registry=self.registry)
        self.duration = Histogram("tensorwall_request_duration_seconds", "Time from request to last byte.",
                                  ["route", "provider", "stream"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.first_byte = Histogram("tensorwall_time_to_first_byte_seconds", "Time from request to the commit "
                                    "point.", ["route", "provider", "stream"], buckets=DURATION_BUCKETS,
                                    registry=self.registry)
        self.attempts = Counter("tensorwall_upstream_attempts", "Upstream attempts by provider and outcome.",
                                ["provider", "outcome"], registry=self.registry)
        self.fallbacks = Counter("tensorwall_fallbacks", "Requests that needed more than one attempt.", ["route"],
                                 registry=self.registry)
        self.tokens = Counter("tensorwall_tokens", "Tokens by provider, model and direction (in, out), from "
                              "the providers' own usage.", ["provider", "model", "direction"],
                              registry=self.registry)
        self.errors = Counter("tensorwall_errors", "Error responses by whom they blame.", ["blame"],
                              registry=self.registry)
        self.in_flight = Gauge("tensorwall_requests_in_flight", "Requests being served.",
                               registry=self.registry, multiprocess_mode="livesum")
        self.health = Gauge("tensorwall_endpoint_health", "Endpoints (server-side credentials) by state.",
                            ["provider", "model", "state"], registry=self.registry, multiprocess_mode="livemax")
        # Label values are bounded by the configuration, so this cache is too.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        """A labelled child, looked up in our own dict: prometheus-client's labels() takes a lock
        and validates on every call, which the hot path need not pay twice for the same labels."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, record: RequestRecord, latency: float) -> None:
        """Count one finished request."""
        stream = "true" if record.stream else "false"
        route = record.route or "none"
        provider = record.provider or "none"
        child = self._child
        child(self.requests, route, provider, _STATUS_CLASSES.get(record.status // 100, "other"), stream).inc()
        child(self.duration, route, provider, stream).observe(latency)
        if record.first_byte is not None:
            child(self.first_byte, route, provider, stream).observe(record.first_byte)
        for attempt_provider, outcome, _, _ in record.attempts:
            child(self.attempts, attempt_provider, outcome).inc()
        if len(record.attempts) > 1:
            child(self.fallbacks, route).inc()
        if record.prompt_tokens or record.completion_tokens:
            model = record.model_label or "other"
            child(self.tokens, provider, model, "in").inc(record.prompt_tokens)
            child(self.tokens, provider, model, "out").inc(record.completion_tokens)
        who = blame(record.status, record.provider)
        if who is not None:
            child(self.errors, who).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition and its content type; every worker's together in multiprocess mode."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self.multiprocess_dir:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def metrics_from_environment() -> Metrics:
    """Metrics in multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` names a directory (the unit's
    ``RuntimeDirectory=``), else in this process only."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
    return Metrics(directory)
