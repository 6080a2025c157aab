"""One benchmark session: start the servers, check them, measure everything, summarise, write the JSON.

Each scenario runs against every path's targets back to back, so a drift of the host between paths
does not pass for translation cost. This process runs on the load generator's CPUs throughout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import aiohttp

from .load import STREAM_SECONDS, run_aiohttp
from .microbench import sigv4_microbench
from .paths import PACED_MODEL, PATHS, REDIS_URL, Json, openai_path
from .servers import Server, pin_self, plan_pinning, redis_state, rss_mib, running_servers, uvloop
from .summary import PathResults, Rss, every_run, limit_notes, summary_lines, summary_rows
from .targets import PACED, RunSettings, StreamChunks, Target, load_scenarios, make_targets, sanity_check
from .wrk import run_wrk


def machine_line() -> str:
    return (f"machine: {len(os.sched_getaffinity(0))} CPUs ({platform.machine()}), Python {platform.python_version()}, "
            f"aiohttp {aiohttp.__version__}, uvloop {'on' if uvloop is not None else 'off'}")


def run(options: argparse.Namespace) -> int:
    """Start the upstream, the relay and the proxies; measure; stop them whatever happens (and delete
    limits-redis's keys). `options` is bench.py's command line, `generator` resolved to wrk or aiohttp."""
    started, pinning = time.monotonic(), plan_pinning(not options.no_pin)
    url = (os.environ.get("REDIS_URL") or REDIS_URL) if "limits-redis" in options.path else None
    with redis_state(url) as redis, tempfile.TemporaryDirectory(prefix="tw-bench-") as tmp:
        if url and redis is None:
            options.path.remove("limits-redis")
            print(f"limits-redis skipped: no Redis answers at {url} (REDIS_URL)")
        runs = len(options.path) * 4 * 3 + (3 if not options.no_paced else 0)
        print(f"{machine_line()}\npinning: {pinning.description}\npaths: {', '.join(options.path)}; load generator: "
              f"{options.generator}; {options.seconds:g} s per run after {options.warmup:g} s warm-up, concurrency "
              f"{options.concurrency}; {runs} runs, about {(runs * (options.warmup + options.seconds) + 15) / 60:.1f} min",
              *(f"  {p}: the caller sends {d['caller_path']} ({d['model']}) through {d['proxy']}, a direct call "
                f"{d['direct_path']}" for p, d in ((p, describe(p)) for p in options.path)), sep="\n", flush=True)
        settings = RunSettings(options.seconds, options.warmup, options.workers, options.generator, pinning, Path(tmp))
        with running_servers(pinning, Path(tmp), redis) as servers, pin_self(pinning.generator):
            return measure_all(options, settings, servers, started)


def describe(name: str) -> Json:
    """What a path's caller sends and what its direct call is: the start's lines and the JSON's."""
    path = PATHS[name]
    return {"model": path.model, "caller_path": path.caller.path, "direct_path": path.direct.path, "proxy": path.proxy}


def log_tails(servers: dict[str, Server]) -> str:
    return "\n".join(f"{s.name} log tail:\n{s.log_tail()}" for s in servers.values() if s.name != "upstream")


def measure_all(options: argparse.Namespace, settings: RunSettings, servers: dict[str, Server], started: float) -> int:
    """Check, measure and summarise every path and the paced test."""
    upstream, relay, proxy = servers["upstream"], servers["relay"], servers["proxy"]
    targets = {p: make_targets(PATHS[p], servers) for p in options.path}
    rss: Rss = {hop.name: {"idle": rss_mib(hop.process.pid)} for hop in (relay, proxy)}
    problems, chunks, detours = sanity_check([t for path_targets in targets.values() for t in path_targets], upstream.port)
    paced = make_targets(openai_path(PACED_MODEL), servers) if not options.no_paced else []
    problems += sanity_check(paced, upstream.port, (True,), 0.9 * STREAM_SECONDS)[0]
    if problems:
        print("sanity check failed, nothing measured:\n  " + "\n  ".join(problems), log_tails(servers), sep="\n")
        return 1
    sigv4, sigv4_median = sigv4_microbench(settings.pinning.proxy)
    print(f"SigV4: sign_sigv4 {sigv4:.1f} us per signature (median of five batches {sigv4_median:.1f})", flush=True)
    by_path = run_scenarios(options, settings, targets, paced, upstream, chunks)
    everything = every_run(by_path)
    for hop in (relay, proxy):
        rss[hop.name]["loaded"] = max((m.hop_rss_mib or 0.0 for m in everything if m.target == hop.name), default=0.0)
    failed = [m for m in everything if m.errors]
    for m in failed:
        print(f"ERRORS: {m.path} {m.target} {m.scenario}: {m.errors} failed, e.g. {m.error_samples[:2]}")
    if failed:
        print(log_tails(servers))
    rows = summary_rows(by_path, rss, sigv4, options.concurrency)
    notes = limit_notes(by_path, settings.pinning, options.concurrency)
    print("\n".join(summary_lines(rows, notes, options.generator, detours)))
    total = time.monotonic() - started
    document: Json = {
        "summary": {"rows": [row.as_json() for row in rows], "notes": notes, "detours": detours},
        "machine": machine_line(), "pinning": settings.pinning.description, "generator": options.generator,
        "paths": {p: describe(p) for p in options.path},
        "seconds": options.seconds, "warmup": options.warmup, "workers": options.workers,
        "concurrency": options.concurrency, "total_seconds": round(total, 1), "rss_mib": rss,
        "runs": [m.as_json() for m in everything], "sigv4_us": {"best": sigv4, "median": sigv4_median},
    }
    Path(options.json).write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nresults written to {options.json}; total time {total // 60:.0f} min {total % 60:.0f} s")
    return 1 if failed else 0


def run_scenarios(options: argparse.Namespace, settings: RunSettings, targets: dict[str, list[Target]],
                  paced: list[Target], upstream: Server, chunks: StreamChunks) -> PathResults:
    """Every scenario against every path's targets, back to back; then the paced test (aiohttp only), whose
    runs are the baseline's."""
    by_path: PathResults = {path: {} for path in targets}
    width = max(map(len, targets))
    runs = [(s, t) for s in load_scenarios(options.concurrency) for path_targets in targets.values() for t in path_targets]
    for scenario, target in runs + [(PACED, t) for t in paced]:
        if settings.generator == "wrk" and not scenario.paced:
            m = run_wrk(target, scenario, upstream, settings, chunks.get((target.bench_path, target.name), 0))
        else:
            m = run_aiohttp(target, scenario, upstream, settings)
        by_path[target.bench_path][target.name, scenario.name] = m
        cpu = f"  hop CPU {m.hop_cpu_ms_per_req:.3f} ms/req" if m.hop_cpu_ms_per_req is not None else ""
        ttfc = f"  TTFC p50 {m.ttfc_p50_ms:7.3f} ms  p99 {m.ttfc_p99_ms or 0:7.3f} ms" if m.ttfc_p50_ms else ""
        print(f"  {target.bench_path:<{width}} {target.name:<6} {scenario.name:<12} {m.rps:>9,.0f}/s  p50 "
              f"{m.p50_ms:7.3f} ms  p99 {m.p99_ms:7.3f} ms{ttfc}{cpu}  errors {m.errors}", flush=True)
    return by_path

