"""The paced test: 100 concurrent streams from an upstream that takes its time, as a model does.

The lean upstream answers the model `gpt-4o-paced` (lean_upstream.PACED_MODEL) with the openai
path's 20 chunks, 10 ms apart (PACE_SECONDS), so a stream lasts about 190 ms. 100 connections
(PACED_STREAMS) each read stream after stream for `--seconds` (at least 1 s), direct, through the
relay and through the proxy (which routes the model to the openai provider by the built-in `gpt-*`
rule and passes the name on). The aiohttp generator runs it, since it alone sees when a stream's
first content arrives, with the connections' first requests spread over one stream's length (see
load.py); the CPU window opens once all have started.

Reported per target: time to first chunk (TTFC: from sending the request to receiving the first
content-bearing SSE event, which is the first word, 10 ms after the role chunk), whole stream
time, p50 and p99 of each, and the hop's CPU as a share of one core over the window. Here the hop
is mostly waiting: what it costs is CPU per chunk relayed and time added before the first one, not
throughput.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Final

from .common import SATURATED, STREAM_CHUNKS
from .lean_upstream import PACE_SECONDS, PACED_MODEL
from .load import run_aiohttp
from .measurement import Measurement, RunSettings
from .report import disturbed_lines, fmt, render_table, saturated
from .servers import Pinning, Server, http_request
from .targets import Scenario, Target
from .wire import openai_body

PACED_STREAMS: Final = 100
STREAM_SECONDS: Final = (STREAM_CHUNKS - 1) * PACE_SECONDS  # the upstream's own pacing, per stream
MIN_SECONDS: Final = 1.0  # a shorter window holds too few streams of 190 ms for a p99


def paced_scenario() -> Scenario:
    return Scenario(f"paced stream c={PACED_STREAMS}", True, PACED_STREAMS, paced=True)


def paced_targets(openai_targets: list[Target]) -> list[Target]:
    """The openai path's targets, asking for the paced model (every target speaks OpenAI on that path)."""
    return [dataclasses.replace(t, body=lambda stream: openai_body(stream, PACED_MODEL)) for t in openai_targets]


def check_paced(targets: list[Target]) -> list[str]:
    """One paced stream per target: whole, and as slow as the pacing (else the upstream did not pace it)."""
    problems: list[str] = []
    for target in targets:
        start = time.perf_counter()
        status, data = http_request(target.port, "POST", target.path(True), target.body(True), target.headers)
        elapsed = time.perf_counter() - start
        kind = f"paced {target.name}"
        if status != 200:
            problems.append(f"{kind}: HTTP {status}: {data[:300]!r}")
            continue
        _, problem = target.check(data, True)
        if problem is not None:
            problems.append(f"{kind}: {problem}")
        elif elapsed < 0.9 * STREAM_SECONDS:
            problems.append(f"{kind}: a stream took {elapsed * 1000:.0f} ms, not the {STREAM_SECONDS * 1000:.0f} ms "
                            "of the pacing: the upstream did not see the paced model")
    return problems


def run_paced(targets: list[Target], upstream: Server, settings: RunSettings) -> dict[str, Measurement]:
    """The paced scenario against every target, by target name."""
    scenario = paced_scenario()
    paced = dataclasses.replace(settings, seconds=max(settings.seconds, MIN_SECONDS))
    results: dict[str, Measurement] = {}
    for target in targets:
        m = run_aiohttp(target, scenario, upstream, paced, stagger=STREAM_SECONDS)
        results[target.name] = m
        hop = f"  {target.name} CPU {m.hop_cpu:.0%} of a core" if m.hop_cpu is not None else ""
        print(f"  paced  {target.name:<6} {scenario.name:<18} TTFC p50 {fmt(m.ttfc_p50_ms, 3)} ms  "
              f"p99 {fmt(m.ttfc_p99_ms, 3)} ms  stream p50 {m.p50_ms:7.1f} ms{hop}  errors {m.errors}", flush=True)
    return results


def paced_lines(results: dict[str, Measurement], pinning: Pinning) -> list[str]:
    """The paced test's table (a row per metric, a column per target) and what limited it."""
    names = list(results)
    d = results.get("direct")
    header = ["metric", *names, "proxy-direct"]
    rows: list[list[str]] = []

    def row(label: str, values: dict[str, float | None], digits: int, suffix: str = "") -> None:
        p, base = values.get("proxy"), values.get("direct")
        diff = f"{p - base:+.{digits}f}{suffix}" if p is not None and base is not None else ""
        rows.append([label, *(fmt(values[n], digits) + (suffix if values[n] is not None else "") for n in names), diff])

    row("TTFC p50 ms", {n: m.ttfc_p50_ms for n, m in results.items()}, 3)
    row("TTFC p99 ms", {n: m.ttfc_p99_ms for n, m in results.items()}, 3)
    row("stream time p50 ms", {n: m.p50_ms for n, m in results.items()}, 1)
    row("stream time p99 ms", {n: m.p99_ms for n, m in results.items()}, 1)
    row("streams/s", {n: m.rps for n, m in results.items()}, 0)
    row("chunks/s", {n: m.chunks_per_s for n, m in results.items()}, 0)
    row("hop CPU, share of a core", {n: m.hop_cpu for n, m in results.items()}, 2)
    row("hop CPU ms/stream", {n: m.hop_cpu_ms_per_req for n, m in results.items()}, 3)
    row("upstream CPU, share", {n: m.upstream_cpu for n, m in results.items()}, 2)
    row("generator CPU, share", {n: m.generator_cpu for n, m in results.items()}, 2)
    row("others' CPU, share", {n: m.other_cpu for n, m in results.items()}, 2)
    title = (f"=== paced test: {PACED_STREAMS} concurrent streams of {STREAM_CHUNKS} chunks, "
             f"{PACE_SECONDS * 1000:.0f} ms apart (model {PACED_MODEL}, aiohttp generator) ===")
    lines = ["", title, *render_table(header, rows)]
    for name, m in results.items():
        found = saturated(m, pinning)
        if found:
            lines.append(f"  {name}: at the limit: {'; '.join(found)}; its times include waiting for that CPU")
    lines += disturbed_lines(list(results.values()))
    if d is not None and d.generator_worker_max_cpu >= SATURATED:
        lines.append("  -> the load generator was saturated in the direct run: its TTFC is not the floor")
    return lines
