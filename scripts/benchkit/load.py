"""The aiohttp load generator (`--workers` forked processes, each one event loop and keep-alive
session), and the paced test it alone can run, since it sees when a stream's first word arrives.

Each connection sends request after request, every answer read whole and checked; after the warm-up
all workers start their window at one barrier, and only requests completed inside it count.

The paced test: 100 connections read streams of 20 chunks 10 ms apart (model `gpt-4o-paced`) for
`--seconds` (at least 1 s): time to first chunk (the first word), stream time, the hop's CPU share.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier
from typing import Final

import aiohttp
from yarl import URL

from .common import REQUEST_TIMEOUT, STREAM_CHUNKS, percentile, uvloop
from .lean_upstream import PACE_SECONDS, PACED_MODEL
from .paths import FIRST_WORD, Check, openai_body
from .servers import CpuWindow, Server, rss_mib
from .targets import Measurement, RunSettings, Scenario, Target


@dataclass(frozen=True)
class LoadSpec:
    """What one worker does: `delays` connections (each waits its delay first) against one URL."""

    url: URL
    headers: dict[str, str]
    body: bytes
    stream: bool
    check: Check
    delays: tuple[float, ...]
    warmup: float
    seconds: float
    cpus: frozenset[int] | None
    ttfc: bool = False  # read streams as they arrive and time the first content chunk


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
        async with session.post(spec.url, data=spec.body, headers=spec.headers) as response:
            if spec.ttfc:
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
    chunks, problem = spec.check(data, spec.stream)
    if problem is None and spec.ttfc and first is None:
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
    """Entry point of a load worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C, and terminates us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # What was forked from the parent out of the collector's sight: its full collections otherwise
    # walk it all, and their pauses showed up as the paced test's TTFC p99 (15 ms -> 150 ms).
    gc.freeze()
    if spec.cpus is not None:
        os.sched_setaffinity(0, spec.cpus)
    try:
        run = uvloop.run if uvloop is not None else asyncio.run
        result = run(run_worker(spec, barrier))
    except Exception as exc:  # reported by the parent, which has the terminal
        barrier.abort()
        result = WorkerResult(failure=f"{type(exc).__name__}: {exc}")
    results.put(result)


def split(total: int, parts: int) -> list[int]:
    """`total` connections over at most `parts` workers, as evenly as possible, none empty."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def spread(counts: list[int], stagger: float) -> list[tuple[float, ...]]:
    """Each worker's connection delays, interleaved across workers and covering `stagger` evenly: 100
    paced streams that start together stay in step (a burst every 200 ms, not 100 concurrent streams)."""
    total = sum(counts)
    return [tuple((w + j * len(counts)) / total * stagger for j in range(n)) for w, n in enumerate(counts)]


def run_aiohttp(target: Target, scenario: Scenario, upstream: Server, settings: RunSettings,
                stagger: float = 0.0) -> Measurement:
    """One scenario against one target; with `stagger`, the CPU window opens once all connections started."""
    counts = split(scenario.concurrency, settings.workers)
    specs = [LoadSpec(target.url(scenario.stream), target.headers, target.body(scenario.stream), scenario.stream,
                      target.check, delays, settings.warmup, settings.seconds, settings.pinning.generator,
                      ttfc=scenario.paced)
             for delays in spread(counts, stagger)]
    ctx = mp.get_context("fork")  # the parent runs no event loop, so forking it is safe
    barrier = ctx.Barrier(len(specs) + 1)
    queue: mp.Queue[WorkerResult] = ctx.Queue()
    processes = [ctx.Process(target=worker_main, args=(spec, barrier, queue), daemon=True) for spec in specs]
    for process in processes:
        process.start()
    try:
        barrier.wait(timeout=REQUEST_TIMEOUT + settings.warmup + 30)
        ramp = min(stagger, settings.seconds / 2)
        time.sleep(ramp)
        window = CpuWindow([upstream.pid] + ([target.hop.pid] if target.hop else []))
        time.sleep((settings.seconds - ramp) / 2)
        hop_rss = rss_mib(target.hop.pid) if target.hop else None
        time.sleep((settings.seconds - ramp) / 2)
        cpu = window.close()
        results = [queue.get(timeout=REQUEST_TIMEOUT + 30) for _ in specs]  # before joining: pipes must drain
    finally:  # an error, a Ctrl-C: no worker is left behind
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join(timeout=5)
    failures = [r.failure for r in results if r.failure]
    if failures:
        raise RuntimeError(f"load worker failed ({target.bench_path} {target.name} {scenario.name}): {failures[0]}")
    latencies = sorted(x for r in results for x in r.latencies)
    shares = [r.cpu / r.wall for r in results if r.wall]  # each worker's window is the whole measured one
    m = Measurement(target.bench_path, target.name, scenario.name, "aiohttp", sum(r.requests for r in results),
                    sum(r.chunks for r in results), sum(r.errors for r in results),
                    [s for r in results for s in r.error_samples][:5], settings.seconds,
                    percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000, sum(shares),
                    max(shares, default=0.0), sorted(x * 1000 for r in results for x in r.ttfc))
    return m.with_window(cpu, hop_rss)


PACED_STREAMS: Final = 100
PACED: Final = Scenario(f"paced stream c={PACED_STREAMS}", True, PACED_STREAMS, paced=True)
STREAM_SECONDS: Final = (STREAM_CHUNKS - 1) * PACE_SECONDS  # the upstream's own pacing, per stream


def paced_targets(openai_targets: list[Target]) -> list[Target]:
    """The openai path's targets, asking for the paced model."""
    return [dataclasses.replace(t, body=lambda stream: openai_body(stream, PACED_MODEL)) for t in openai_targets]


def run_paced(targets: list[Target], upstream: Server, settings: RunSettings) -> dict[str, Measurement]:
    """The paced scenario against every target, by target name."""
    paced = dataclasses.replace(settings, seconds=max(settings.seconds, 1.0))  # enough streams for a p99
    results: dict[str, Measurement] = {}
    for target in targets:
        m = results[target.name] = run_aiohttp(target, PACED, upstream, paced, stagger=STREAM_SECONDS)
        print(f"  paced  {target.name:<6} TTFC p50 {m.ttfc_p50_ms or 0:7.3f} ms  p99 {m.ttfc_p99_ms or 0:7.3f} ms  "
              f"stream p50 {m.p50_ms:7.1f} ms  hop CPU {m.hop_cpu or 0:.0%}  errors {m.errors}", flush=True)
    return results
