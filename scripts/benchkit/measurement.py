"""One measurement: a target, a scenario, every process's CPU over the same window.

Both load generators (load.py, wrk.py) report a `LoadOutcome`: what the load side saw (requests
completed, chunks, errors, latency percentiles, and its own CPU). The driver that ran it also
opened a `servers.CpuWindow` on the upstream and the hop (proxy or relay) for the same window, and
sampled the hop's RSS halfway through; `build_measurement` turns the three into a `Measurement`,
the row every report and the JSON read. CPU shares are of one core (1.0 = one core fully busy).
`other_cpu` is the machine's busy time that none of the benchmark's processes account for: when it
is large, something else ran on the machine during the window and the run's numbers are disturbed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .common import percentile
from .servers import Pinning, WindowCpu
from .targets import Scenario, Target


@dataclass(frozen=True)
class RunSettings:
    """How every run goes: its measured and warm-up seconds, the generator, where files go."""

    seconds: float
    warmup: float
    workers: int  # aiohttp generator processes
    generator: str  # "wrk" or "aiohttp"
    pinning: Pinning
    tmp: Path  # wrk's Lua scripts and outputs


@dataclass
class LoadOutcome:
    """What a load generator saw over its measured window."""

    generator: str  # "wrk" or "aiohttp"
    requests: int  # completed with 200 and (aiohttp) a whole body
    chunks: int
    errors: int
    error_samples: list[str]
    duration: float  # the seconds the counts are over
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    generator_cpu: float  # CPU seconds of the whole load generator over the window
    generator_busiest: float  # the busiest worker process (wrk: thread) as a share of one core
    ttfc_ms: list[float] = field(default_factory=list)  # the paced test's times to first chunk, ascending


@dataclass
class Measurement:
    path: str
    target: str
    scenario: str
    stream: bool
    concurrency: int
    generator: str
    seconds: float
    requests: int
    errors: int
    error_samples: list[str]
    rps: float
    chunks_per_s: float
    p50_ms: float  # latency: a whole request, or a whole stream read to its end
    p90_ms: float
    p99_ms: float
    max_ms: float
    ttfc_p50_ms: float | None  # paced test only: time to the first content-bearing event
    ttfc_p99_ms: float | None
    # Shares of one core (1.0 = one core fully busy) over the measured window.
    generator_cpu: float
    generator_worker_max_cpu: float
    upstream_cpu: float
    hop_cpu: float | None  # the proxy's (or relay's); None for direct runs
    hop_cpu_ms_per_req: float | None
    upstream_cpu_ms_per_req: float
    hop_rss_mib: float | None  # sampled halfway through the window, under load
    other_cpu: float  # what processes not of this benchmark used (all CPUs, in shares of one core)
    steal_cpu: float  # what the hypervisor took from this VM's CPUs (all CPUs, shares of one core)


def build_measurement(target: Target, scenario: Scenario, outcome: LoadOutcome, window: WindowCpu,
                      hop_rss: float | None) -> Measurement:
    """A run's row: the generator's counts and latencies, and the CPU of every process over the
    window (`window.used`: the upstream's, then the hop's when there is one)."""
    wall = window.wall
    upstream_cpu = window.used[0]
    hop_cpu = window.used[1] if target.hop is not None else None
    duration = outcome.duration or wall
    rps = outcome.requests / duration
    # CPU per request as (share of a core) / (requests per second): the window the CPU is sampled
    # over may be a little shorter than the one requests are counted over (the paced test's ramp).
    upstream_share = upstream_cpu / wall
    hop_share = hop_cpu / wall if hop_cpu is not None else None
    ms_per_req = 1000 / rps if rps else float("nan")
    return Measurement(
        path=target.bench_path, target=target.name, scenario=scenario.name, stream=scenario.stream,
        concurrency=scenario.concurrency, generator=outcome.generator, seconds=round(duration, 3),
        requests=outcome.requests, errors=outcome.errors, error_samples=outcome.error_samples[:5],
        rps=rps, chunks_per_s=outcome.chunks / duration,
        p50_ms=outcome.p50_ms, p90_ms=outcome.p90_ms, p99_ms=outcome.p99_ms, max_ms=outcome.max_ms,
        ttfc_p50_ms=percentile(outcome.ttfc_ms, 50) if outcome.ttfc_ms else None,
        ttfc_p99_ms=percentile(outcome.ttfc_ms, 99) if outcome.ttfc_ms else None,
        generator_cpu=outcome.generator_cpu / wall,
        generator_worker_max_cpu=outcome.generator_busiest,
        upstream_cpu=upstream_share,
        hop_cpu=hop_share,
        hop_cpu_ms_per_req=hop_share * ms_per_req if hop_share is not None else None,
        upstream_cpu_ms_per_req=upstream_share * ms_per_req,
        hop_rss_mib=hop_rss,
        # The parent's own share (it sleeps through the window) is too small to count.
        other_cpu=max(0.0, (window.machine_busy - outcome.generator_cpu - upstream_cpu - (hop_cpu or 0.0)) / wall),
        steal_cpu=window.steal / wall,
    )
