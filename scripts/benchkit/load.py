"""The aiohttp load generator (`--workers` forked processes, each one event loop and keep-alive
session), and the paced test it alone can run, since it sees when a stream's first word arrives.

Each connection sends request after request, every answer read whole and checked; after the warm-up
all workers start their window at one barrier, and only requests completed inside it count. The paced
test: 100 connections read streams of 20 chunks 10 ms apart (`gpt-4o-paced`), timing the first word.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import multiprocessing as mp
import re
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier
from typing import Final

import aiohttp
from yarl import URL

from .lean_upstream import PACE_SECONDS
from .paths import STREAM_CHUNKS, Call
from .servers import Server, uvloop, watch
from .targets import REQUEST_TIMEOUT, Measurement, RunSettings, Scenario, Target, percentile

# The paced test's first chunk in an OpenAI stream: the first word (the role chunk's "" is none).
FIRST_WORD: Final = re.compile(rb'"content":"[^"]')


@dataclass(frozen=True)
class LoadSpec:
    """What one worker does: `delays` connections (each waits its delay first) sending `call` to one URL,
    as `scenario` says (paced: streams read as they arrive, timing the first content chunk)."""

    url: URL
    call: Call
    scenario: Scenario
    delays: tuple[float, ...]
    warmup: float
    seconds: float


@dataclass
class WorkerResult:
    requests: int = 0
    chunks: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds, completed requests only
    ttfc: list[float] = field(default_factory=list)
    cpu: float = 0.0  # the worker's own CPU seconds over the measured window
    wall: float = 0.0
    failure: str | None = None  # the worker itself broke (not a request)


async def one_request(session: aiohttp.ClientSession, spec: LoadSpec,
                      start: float) -> tuple[int, str | None, float | None]:
    """One request read to the end: (chunks, problem or None, seconds to the first content chunk)."""
    first: float | None = None
    try:
        async with session.post(spec.url, data=spec.call.body(spec.scenario.stream), headers=spec.call.headers) as response:
            if spec.scenario.paced:
                parts: list[bytes] = []
                async for piece in response.content.iter_any():
                    parts.append(piece)
                    if first is None and FIRST_WORD.search(b"".join(parts)):
                        first = time.perf_counter() - start
                data = b"".join(parts)
            else:
                data = await response.read()
            if response.status != 200:
                return 0, f"HTTP {response.status}: {data[:300]!r}", None
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, f"{type(exc).__name__}: {exc}", None
    chunks, problem = spec.call.check(data, spec.scenario.stream)
    if problem is None and spec.scenario.paced and first is None:
        problem = "a stream without a content-bearing event"
    return chunks, problem, first


async def request_loop(session: aiohttp.ClientSession, spec: LoadSpec, deadline: float,
                       result: WorkerResult | None, delay: float) -> None:
    """Request after request on one connection until `deadline`; record only completed ones."""
    await asyncio.sleep(delay)
    while (start := time.perf_counter()) < deadline:
        chunks, error, first = await one_request(session, spec, start)
        end = time.perf_counter()
        if result is None or end > deadline:
            continue  # warm-up, or finished after the window closed: not counted
        if error is not None:
            result.errors += 1
            if len(result.error_samples) < 5:
                result.error_samples.append(error)
            continue
        result.requests += 1
        result.chunks += chunks
        result.latencies.append(end - start)
        if first is not None:
            result.ttfc.append(first)


async def run_worker(spec: LoadSpec, barrier: Barrier) -> WorkerResult:
    connector = aiohttp.TCPConnector(limit=len(spec.delays))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as s:
        deadline = time.perf_counter() + spec.warmup  # opens the keep-alive connections
        await asyncio.gather(*(request_loop(s, spec, deadline, None, d) for d in spec.delays))
        barrier.wait(timeout=REQUEST_TIMEOUT + spec.warmup + 30)  # nothing in flight: blocking is free
        result = WorkerResult()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(request_loop(s, spec, wall0 + spec.seconds, result, d) for d in spec.delays))
        result.cpu, result.wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return result


def worker_main(spec: LoadSpec, barrier: Barrier, results: mp.Queue[WorkerResult]) -> None:
    """Entry point of a load worker process (forked: on the load generator's CPUs, like its parent)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C, and terminates us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # What was forked from the parent out of the collector's sight: its full collections otherwise
    # walk it all, and their pauses showed up as the paced test's TTFC p99 (15 ms -> 150 ms).
    gc.freeze()
    try:
        run = uvloop.run if uvloop is not None else asyncio.run
        result = run(run_worker(spec, barrier))
    except Exception as exc:  # reported by the parent, which has the terminal
        barrier.abort()
        result = WorkerResult(failure=f"{type(exc).__name__}: {exc}")
    results.put(result)


def spread(total: int, workers: int, stagger: float) -> list[tuple[float, ...]]:
    """`total` connections over at most `workers` processes, as evenly as possible and none empty, as each
    one's connection delays: interleaved across workers and covering `stagger` evenly, so that 100 paced
    streams that start together stay in step (a burst every 200 ms, not 100 concurrent streams)."""
    parts = max(1, min(workers, total))
    return [tuple((w + j * parts) / total * stagger for j in range(total // parts + (w < total % parts)))
            for w in range(parts)]


STREAM_SECONDS: Final = (STREAM_CHUNKS - 1) * PACE_SECONDS  # the upstream's own pacing, per stream


def load_specs(target: Target, scenario: Scenario, workers: int, warmup: float, seconds: float) -> list[LoadSpec]:
    """What each worker sends: the target's call. A paced stream's start is spread over a stream's time."""
    return [LoadSpec(target.url(scenario.stream), target.call, scenario, delays, warmup, seconds)
            for delays in spread(scenario.concurrency, workers, STREAM_SECONDS if scenario.paced else 0.0)]


def run_aiohttp(target: Target, scenario: Scenario, upstream: Server, settings: RunSettings) -> Measurement:
    """One scenario against one target. The paced one runs at least 1 s (enough streams for a p99), and
    its CPU window opens once all its streams have started."""
    if scenario.paced:
        settings = dataclasses.replace(settings, seconds=max(settings.seconds, 1.0))
    specs = load_specs(target, scenario, settings.workers, settings.warmup, settings.seconds)
    ctx = mp.get_context("fork")  # the parent runs no event loop, so forking it is safe
    barrier = ctx.Barrier(len(specs) + 1)
    queue: mp.Queue[WorkerResult] = ctx.Queue()
    processes = [ctx.Process(target=worker_main, args=(spec, barrier, queue), daemon=True) for spec in specs]
    for process in processes:
        process.start()
    try:
        barrier.wait(timeout=REQUEST_TIMEOUT + settings.warmup + 30)
        ramp = min(max(d for spec in specs for d in spec.delays), settings.seconds / 2)  # the last one's start
        time.sleep(ramp)
        cpu, hop_rss = watch(upstream, target.hop, settings.seconds - ramp)
        results = [queue.get(timeout=REQUEST_TIMEOUT + 30) for _ in specs]  # before joining: pipes must drain
    finally:  # an error, a Ctrl-C: no worker is left behind
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join(timeout=5)
    failures = [r.failure for r in results if r.failure]
    if failures:
        raise RuntimeError(f"load worker failed ({target.bench_path} {target.name} {scenario.name}): {failures[0]}")
    latencies, ttfc = (sorted(x for r in results for x in getattr(r, name)) for name in ("latencies", "ttfc"))
    ttfc_p50, ttfc_p99 = (percentile(ttfc, q) * 1000 if ttfc else None for q in (50, 99))
    shares = [r.cpu / r.wall for r in results if r.wall]  # each worker's window is the whole measured one
    m = Measurement(target.bench_path, target.name, scenario.name, "aiohttp", sum(r.requests for r in results),
                    sum(r.chunks for r in results), sum(r.errors for r in results),
                    [s for r in results for s in r.error_samples][:5], settings.seconds,
                    percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000, sum(shares),
                    max(shares, default=0.0), ttfc_p50, ttfc_p99)
    return m.with_window(cpu, hop_rss)
