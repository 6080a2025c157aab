"""The aiohttp load generator: worker processes, each one event loop and one keep-alive session.

The fallback when wrk is not installed (`--generator aiohttp` forces it), and always the paced
test's generator, since it alone sees when the first content chunk of a stream arrives.

`--workers` processes (forked), each with its own event loop (uvloop when installed) and one
keep-alive ClientSession; a scenario's N connections are split between them, each connection a
loop of request after request, every answer read to its end and checked whole. Each run warms up
(connections opened), then every worker starts its measured window at the same instant (a
barrier), and the parent samples the CPU time of the upstream and of the hop (proxy or relay)
from /proc over that window; each worker measures its own CPU (process_time) over its window.
Only requests that complete inside the window count.

In the paced test (`ttfc`), a worker reads each stream as it arrives and notes when the first
content-bearing event came (`wire.has_content_event`), and the connections' first requests are
spread over one stream's length (`delays`) instead of all leaving at the barrier: 100 streams that
start together stay in step (the upstream paces them alike), which would measure a burst of 100
arrivals every 200 ms instead of 100 concurrent streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier

import aiohttp
from yarl import URL

from .common import REQUEST_TIMEOUT, percentile, uvloop
from .measurement import LoadOutcome, Measurement, RunSettings, build_measurement
from .servers import CpuWindow, Server, rss_mib
from .targets import Scenario, Target
from .wire import Check, has_content_event


@dataclass(frozen=True)
class LoadSpec:
    """What one worker does: `connections` loops of request-after-request against one URL."""

    url: URL
    headers: dict[str, str]
    body: bytes
    stream: bool
    check: Check
    connections: int
    warmup: float
    seconds: float
    cpus: frozenset[int] | None
    ttfc: bool = False  # read streams as they arrive and time the first content chunk
    delays: tuple[float, ...] = ()  # per connection: seconds before its first request (paced)


@dataclass
class WorkerResult:
    requests: int = 0
    chunks: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds, completed requests only
    ttfc: list[float] = field(default_factory=list)  # seconds, completed streams only (ttfc)
    cpu: float = 0.0  # the worker's own CPU seconds over the measured window
    wall: float = 0.0
    failure: str | None = None  # the worker itself broke (not a request)

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(text)


async def read_timed(response: aiohttp.ClientResponse, start: float) -> tuple[bytes, float | None]:
    """The whole body, and the seconds from `start` until its first content-bearing event (or None)."""
    parts: list[bytes] = []
    seen = b""
    first: float | None = None
    async for piece in response.content.iter_any():
        parts.append(piece)
        if first is None:
            seen += piece
            if has_content_event(seen):
                first = time.perf_counter() - start
    return b"".join(parts), first


async def one_request(session: aiohttp.ClientSession, spec: LoadSpec,
                      start: float) -> tuple[int, str | None, float | None]:
    """Send one request and read the answer to the end: (chunks, problem or None, time to first chunk)."""
    first: float | None = None
    try:
        async with session.post(spec.url, data=spec.body, headers=spec.headers) as response:
            if spec.ttfc:
                data, first = await read_timed(response, start)
            else:
                data = await response.read()
            if response.status != 200:
                return 0, f"HTTP {response.status}: {data[:300]!r}", None
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, f"{type(exc).__name__}: {exc}", None
    chunks, problem = spec.check(data, spec.stream)
    if problem is None and spec.ttfc and first is None:
        problem = "a stream without a content-bearing event"
    return chunks, problem, first


async def request_loop(session: aiohttp.ClientSession, spec: LoadSpec, deadline: float,
                       result: WorkerResult | None, delay: float) -> None:
    """Request after request on one connection until `deadline`; record only completed ones."""
    if delay:
        await asyncio.sleep(delay)
    while (start := time.perf_counter()) < deadline:
        chunks, error, first = await one_request(session, spec, start)
        end = time.perf_counter()
        if result is None or end > deadline:
            continue  # warm-up, or finished after the window closed: not counted
        if error is not None:
            result.error(error)
            continue
        result.requests += 1
        result.chunks += chunks
        result.latencies.append(end - start)
        if first is not None:
            result.ttfc.append(first)


async def run_worker(spec: LoadSpec, barrier: Barrier) -> WorkerResult:
    connector = aiohttp.TCPConnector(limit=spec.connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    delays = spec.delays or (0.0,) * spec.connections
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Warm-up: open the keep-alive connections and let every process reach a steady state.
        deadline = time.perf_counter() + spec.warmup
        await asyncio.gather(*(request_loop(session, spec, deadline, None, d) for d in delays))
        # Nothing is in flight here, so blocking the loop on the barrier costs nothing.
        barrier.wait(timeout=REQUEST_TIMEOUT + spec.warmup + 30)
        result = WorkerResult()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        deadline = wall0 + spec.seconds
        await asyncio.gather(*(request_loop(session, spec, deadline, result, d) for d in delays))
        result.cpu, result.wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return result


def worker_main(spec: LoadSpec, barrier: Barrier, results: mp.Queue[WorkerResult]) -> None:
    """Entry point of a load worker process."""
    # The parent handles Ctrl-C, and terminates us: die quietly, without the parent's SIGTERM handler.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Everything forked from the parent (botocore and the proxy's modules, loaded by the SigV4
    # micro-benchmark, and the earlier runs' leftovers) out of the collector's sight: otherwise each
    # full collection walks it all, and pauses of tens of milliseconds show up as the paced test's
    # TTFC p99 (measured: 15 ms -> 150 ms).
    gc.freeze()
    if spec.cpus is not None:
        os.sched_setaffinity(0, spec.cpus)
    try:
        if uvloop is not None:
            result = uvloop.run(run_worker(spec, barrier))
        else:
            result = asyncio.run(run_worker(spec, barrier))
    except Exception as exc:  # reported by the parent, which has the terminal
        barrier.abort()
        result = WorkerResult(failure=f"{type(exc).__name__}: {exc}")
    results.put(result)


def split(total: int, parts: int) -> list[int]:
    """`total` connections over at most `parts` workers, as evenly as possible, none empty."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def spread(counts: list[int], stagger: float) -> list[tuple[float, ...]]:
    """Each worker's connection delays: connection j of worker w is the (w + j * workers)-th of all,
    so starts interleave across the workers and cover `stagger` seconds evenly."""
    total = sum(counts)
    if not stagger:
        return [() for _ in counts]
    return [tuple((w + j * len(counts)) / total * stagger for j in range(n)) for w, n in enumerate(counts)]


@contextlib.contextmanager
def workers(specs: list[LoadSpec], barrier: Barrier,
            results: mp.Queue[WorkerResult]) -> Iterator[Sequence[mp.process.BaseProcess]]:
    """Start the load workers, and terminate any still alive on the way out (error, Ctrl-C)."""
    ctx = mp.get_context("fork")  # the parent runs no event loop, so forking it is safe
    processes = [ctx.Process(target=worker_main, args=(spec, barrier, results), daemon=True) for spec in specs]
    for process in processes:
        process.start()
    try:
        yield processes
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join(timeout=5)


def run_aiohttp(target: Target, scenario: Scenario, upstream: Server, settings: RunSettings,
                stagger: float = 0.0) -> Measurement:
    """Run one scenario against one target with the aiohttp workers; measure every process over
    the same window. With `stagger`, the CPU window opens once every connection has started."""
    body = target.body(scenario.stream)
    counts = split(scenario.concurrency, settings.workers)
    specs = [LoadSpec(target.url(scenario.stream), target.headers, body, scenario.stream, target.check, n,
                      settings.warmup, settings.seconds, settings.pinning.generator, ttfc=scenario.paced,
                      delays=delays)
             for n, delays in zip(counts, spread(counts, stagger), strict=True)]
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(len(specs) + 1)
    queue: mp.Queue[WorkerResult] = ctx.Queue()
    watched = [upstream.pid] + ([target.hop.pid] if target.hop else [])
    with workers(specs, barrier, queue):
        barrier.wait(timeout=REQUEST_TIMEOUT + settings.warmup + 30)
        ramp = min(stagger, settings.seconds / 2)
        time.sleep(ramp)
        window = CpuWindow(watched)
        time.sleep((settings.seconds - ramp) / 2)
        hop_rss = rss_mib(target.hop.pid) if target.hop else None
        time.sleep((settings.seconds - ramp) / 2)
        cpu = window.close()
        # Read before joining: a worker cannot exit while its result is still in the pipe.
        results = [queue.get(timeout=REQUEST_TIMEOUT + 30) for _ in specs]
    failures = [r.failure for r in results if r.failure]
    if failures:
        raise RuntimeError(f"load worker failed ({target.bench_path} {target.name} {scenario.name}): {failures[0]}")
    latencies = sorted(x for r in results for x in r.latencies)
    outcome = LoadOutcome(
        generator="aiohttp",
        requests=sum(r.requests for r in results), chunks=sum(r.chunks for r in results),
        errors=sum(r.errors for r in results), error_samples=[s for r in results for s in r.error_samples],
        duration=settings.seconds,
        p50_ms=percentile(latencies, 50) * 1000, p90_ms=percentile(latencies, 90) * 1000,
        p99_ms=percentile(latencies, 99) * 1000, max_ms=(latencies[-1] * 1000 if latencies else 0.0),
        # The workers' own windows are the whole measured window; scaled to the parent's, which
        # may be shorter (the paced test's ramp).
        generator_cpu=sum(r.cpu / r.wall for r in results if r.wall) * cpu.wall,
        generator_busiest=max((r.cpu / r.wall for r in results if r.wall), default=0.0),
        ttfc_ms=sorted(x * 1000 for r in results for x in r.ttfc),
    )
    return build_measurement(target, scenario, outcome, cpu, hop_rss)
