"""Targets and scenarios: where a run's requests go, and what kind of load it is.

A target is direct (the upstream's own URL, the request its provider API wants), relay (the same
request to the bare relay, which forwards it unchanged) or proxy (`/v1/chat/completions` with the
gateway key and the caller's Bearer key, OpenAI's shape on every path; only the model differs).
Before anything is measured, `sanity_check` sends one unary and one streamed request to every
target and checks the answers whole: wrk reads answers without looking at them, so this is where
a broken body would show, and where each target's chunks per stream are counted for chunks/s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from yarl import URL

from .common import CALLER_KEY, GATEWAY_KEY, HOST
from .paths import BenchPath
from .servers import Server, http_request
from .wire import Check, check_openai, openai_body


@dataclass(frozen=True)
class Target:
    """Where a run's requests go: direct to the upstream, through the bare relay, or through the proxy."""

    name: str
    bench_path: str  # the BenchPath's name: which way through the proxy
    port: int
    path: Callable[[bool], str]  # stream? -> the URL path (and query), percent-encoded
    headers: dict[str, str]
    body: Callable[[bool], bytes]
    check: Check
    hop: Server | None  # the process between client and upstream, whose CPU is the hop's cost

    def url(self, stream: bool) -> URL:
        # Paths are written encoded: yarl would otherwise decode `%3A` to `:` on the wire.
        return URL(f"http://{HOST}:{self.port}{self.path(stream)}", encoded=True)


@dataclass(frozen=True)
class Scenario:
    name: str
    stream: bool
    concurrency: int
    paced: bool = False  # the paced test (paced.py): time to first chunk, aiohttp generator only


def load_scenarios(concurrency: int) -> list[Scenario]:
    """The four load scenarios every path and target runs."""
    n = concurrency
    return [Scenario("unary c=1", False, 1), Scenario(f"unary c={n}", False, n),
            Scenario("stream c=1", True, 1), Scenario(f"stream c={n}", True, n)]


def make_targets(path: BenchPath, upstream: Server, relay: Server | None, proxy: Server) -> list[Target]:
    """direct, relay (when started) and proxy: the same request, each the way its receiver wants it."""
    targets = [Target("direct", path.name, upstream.port, path.direct_target, path.direct_headers,
                      path.direct_body, path.direct_check, None)]
    if relay is not None:
        # The relay forwards bytes unchanged, so it gets exactly the direct request.
        targets.append(Target("relay", path.name, relay.port, path.direct_target, path.direct_headers,
                              path.direct_body, path.direct_check, relay))
    # Through the proxy the caller speaks OpenAI on every path; only the model differs.
    proxy_headers = {"X-API-Key": GATEWAY_KEY, "Authorization": f"Bearer {CALLER_KEY}",
                     "Content-Type": "application/json"}
    targets.append(Target("proxy", path.name, proxy.port, lambda _stream: "/v1/chat/completions",
                          proxy_headers, lambda stream: openai_body(stream, path.model), check_openai, proxy))
    return targets


StreamChunks = dict[tuple[str, str], int]  # chunks in one stream, by (path, target)


def sanity_check(targets: list[Target]) -> tuple[list[str], StreamChunks]:
    """One unary and one streamed request per target: the problems found (empty: all good), and
    the chunks each target's stream holds."""
    problems: list[str] = []
    chunks: StreamChunks = {}
    for target in targets:
        for stream in (False, True):
            status, data = http_request(target.port, "POST", target.path(stream), target.body(stream),
                                        target.headers)
            kind = f"{target.bench_path} {target.name} {'stream' if stream else 'unary'}"
            if status != 200:
                problems.append(f"{kind}: HTTP {status}: {data[:300]!r}")
                continue
            count, problem = target.check(data, stream)
            if problem is not None:
                problems.append(f"{kind}: {problem}")
            elif stream:
                chunks[target.bench_path, target.name] = count
    return problems, chunks
