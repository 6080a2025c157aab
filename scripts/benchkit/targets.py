"""Targets, scenarios and runs: where a run's requests go, what load it is, what it measured (from the
load generator and `servers.watch`). The sanity check runs before anything is measured: wrk reads
answers without looking at them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from yarl import URL

from .paths import PATHS, BenchPath, Call, Json
from .servers import HOST, Pinning, Server, WindowCpu, http_request

REQUEST_TIMEOUT: Final = 15.0  # per request: a hung proxy fails the run instead of hanging it


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0.0 when empty): the smallest value with at
    least q % of them at or below it."""
    return ordered[max(1, min(len(ordered), math.ceil(q * len(ordered) / 100))) - 1] if ordered else 0.0


@dataclass(frozen=True)
class Target:
    name: str  # direct, relay or proxy
    bench_path: str  # which way through the proxy
    port: int
    call: Call
    hop: Server | None  # the process between client and upstream, whose CPU is the hop's cost

    def url(self, stream: bool) -> URL:
        # Written encoded: yarl would otherwise decode `%3A` to `:` on the wire.
        return URL(f"http://{HOST}:{self.port}{self.call.url_path(stream)}", encoded=True)


@dataclass(frozen=True)
class Scenario:
    name: str
    stream: bool
    concurrency: int
    paced: bool = False  # the paced test: time to first chunk, aiohttp generator only


def load_scenarios(n: int) -> list[Scenario]:
    """The four load scenarios every path and target runs, at c=1 and c=n."""
    return [Scenario("unary c=1", False, 1), Scenario(f"unary c={n}", False, n),
            Scenario("stream c=1", True, 1), Scenario(f"stream c={n}", True, n)]


PACED: Final = Scenario("paced stream c=100", True, 100, paced=True)  # the baseline's, with the paced model


def make_targets(path: BenchPath, servers: dict[str, Server]) -> list[Target]:
    """direct, relay and the path's proxy (`servers` by name): the same request, each as its receiver wants it."""
    relay, proxy = servers["relay"], servers[path.proxy]
    return [Target("direct", path.name, servers["upstream"].port, path.direct, None),
            Target("relay", path.name, relay.port, path.direct, relay),  # the relay forwards bytes unchanged
            Target("proxy", path.name, proxy.port, path.caller, proxy)]


StreamChunks = dict[tuple[str, str], int]  # chunks in one stream, by (path, target)


def sanity_check(targets: list[Target], upstream_port: int, kinds: tuple[bool, ...] = (False, True),
                 slowest: float = 0.0) -> tuple[list[str], StreamChunks, list[str]]:
    """A request per target and kind (stream?): the problems found, each stream's chunks, and where
    the proxy called the upstream elsewhere than its path's direct call (it translated a native path).
    A stream faster than `slowest` seconds is a problem too (the paced test's: the upstream did not pace it)."""
    problems: list[str] = []
    chunks: StreamChunks = {}
    detours: list[str] = []
    for target in targets:
        for stream in kinds:
            start = time.perf_counter()
            status, data = http_request(target.port, "POST", target.call.url_path(stream), target.call.body(stream),
                                        target.call.headers)
            kind = f"{target.bench_path} {target.name} {'stream' if stream else 'unary'}"
            count, problem = target.call.check(data, stream) if status == 200 else (0, f"HTTP {status}: {data[:300]!r}")
            if problem is None and time.perf_counter() - start < slowest:
                problem = f"faster than {slowest:g} s: not paced"
            if problem is not None:
                problems.append(f"{kind}: {problem}")
            elif stream:
                chunks[target.bench_path, target.name] = count
            direct = PATHS[target.bench_path].direct.url_path(stream)
            if target.name == "proxy" and (called := http_request(upstream_port, "GET", "/last")[1].decode()) != direct:
                detours.append(f"{kind}: the proxy called the upstream's {called}, not the direct call's {direct}")
    return problems, chunks, detours


@dataclass(frozen=True)
class RunSettings:
    seconds: float
    warmup: float
    workers: int  # aiohttp generator processes
    generator: str  # "wrk" or "aiohttp"
    pinning: Pinning
    tmp: Path  # wrk's Lua scripts and outputs


@dataclass
class Measurement:
    """One run: what the load generator saw, and every process's CPU (a share of one core) over its window."""

    path: str
    target: str
    scenario: str
    generator: str
    requests: int  # completed with 200 and (aiohttp) a whole body
    chunks: int
    errors: int
    error_samples: list[str]
    seconds: float  # what the counts are over
    p50_ms: float  # a whole request, or a whole stream read to its end
    p99_ms: float
    generator_cpu: float  # all of the load generator
    generator_busiest: float  # its busiest worker process (wrk: thread)
    ttfc_p50_ms: float | None = None  # the paced test's time to the first word
    ttfc_p99_ms: float | None = None
    upstream_cpu: float = 0.0
    hop_cpu: float | None = None  # the proxy's (or relay's); None for direct runs
    hop_rss_mib: float | None = None  # sampled halfway through the window, under load
    other_cpu: float = 0.0  # what processes not of this benchmark used
    steal_cpu: float = 0.0  # what the hypervisor took

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds if self.seconds else 0.0

    @property
    def hop_cpu_ms_per_req(self) -> float | None:
        """(share of a core) / (requests a second): valid when the CPU window is a little shorter."""
        return None if self.hop_cpu is None or not self.rps else self.hop_cpu * 1000 / self.rps

    def with_window(self, window: WindowCpu, hop_rss: float | None) -> Measurement:
        """The upstream's and the hop's CPU (`window.used`, in that order) and the machine's added."""
        self.upstream_cpu = window.used[0] / window.wall
        self.hop_cpu = window.used[1] / window.wall if len(window.used) > 1 else None
        self.hop_rss_mib = hop_rss
        ours = self.generator_cpu + self.upstream_cpu + (self.hop_cpu or 0.0)
        self.other_cpu = max(0.0, window.machine_busy / window.wall - ours)
        self.steal_cpu = window.steal / window.wall
        return self

    def as_json(self) -> Json:
        return {**asdict(self), "rps": self.rps, "chunks_per_s": self.chunks_per_s,
                "hop_cpu_ms_per_req": self.hop_cpu_ms_per_req}
