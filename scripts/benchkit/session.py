"""One benchmark session: start the servers, check them, measure everything, report, write the JSON.

The order matters for fairness: every scenario runs against every path's targets back to back
(unary c=1 for every path and target, then unary c=N, ...), so a drift of the host between paths
does not pass for translation cost; the paced test follows; the wake-up probe runs before and
after. The session's own process is pinned to the load generator's CPUs throughout (servers.py).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .common import HOST, Json
from .lean_upstream import PACE_SECONDS, PACED_MODEL
from .load import run_aiohttp
from .measurement import Measurement, RunSettings
from .microbench import MicroBench, run_pinned
from .paced import PACED_STREAMS, check_paced, paced_lines, paced_scenario, paced_targets, run_paced
from .paths import BASELINE, PATHS, BenchPath
from .report import (
    OverheadRow,
    PathResults,
    Rss,
    busy_lines,
    error_lines,
    machine_line,
    overhead_table,
    table,
    translation_overhead,
    variant_lines,
    variant_rows,
    verdicts,
)
from .servers import (
    Pinning,
    Server,
    peak_rss_mib,
    pin_self,
    plan_pinning,
    rss_mib,
    start_proxy,
    start_relay,
    start_upstream,
    stop_server,
)
from .summary import (
    ADDED_P50_MS,
    IDLE_RSS_MIB,
    PACED_CPU,
    THROUGHPUT_RATIO,
    TRANSLATION_RATIO,
    TTFC_MS,
    judged,
    limit_notes,
    summary_lines,
    summary_rows,
    write_json,
)
from .targets import Scenario, StreamChunks, Target, load_scenarios, make_targets, sanity_check
from .wakeprobe import WakeProbe, wake_probe
from .wrk import run_wrk


@dataclass(frozen=True)
class Options:
    """The command line, resolved (bench.py parses it)."""

    paths: list[str]
    seconds: float
    warmup: float
    concurrency: int
    workers: int
    upstream: str  # "lean" or "fake"
    relay: bool
    paced: bool
    generator: str  # "wrk" or "aiohttp", resolved from auto
    json: str
    pin: bool


def run(options: Options) -> int:
    """Start the upstream, the relay and the proxy; measure; stop them whatever happens."""
    started = time.monotonic()
    paths = [PATHS[name] for name in options.paths]
    pinning = plan_pinning(options.pin)
    print(machine_line(options.upstream))
    print(f"pinning: {pinning.description}")
    models = ", ".join(f"{p.name} (model {p.model})" for p in paths)
    targets = 3 if options.relay else 2
    runs = len(paths) * 4 * targets
    paced = targets if options.paced else 0
    estimate = (runs + paced) * (options.warmup + options.seconds) + 15
    print(f"paths: {models}; upstream: {options.upstream}; load generator: {options.generator}; "
          f"{options.seconds:g} s per run after {options.warmup:g} s warm-up, concurrency {options.concurrency}; "
          f"{runs} runs{f' + {paced} paced' if paced else ''}, about {estimate / 60:.1f} min", flush=True)
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="tw-bench-") as tmp:
        try:
            upstream = start_upstream(options.upstream, paths, pinning, Path(tmp))
            servers.append(upstream)
            relay = start_relay(upstream, pinning, Path(tmp)) if options.relay else None
            if relay is not None:
                servers.append(relay)
            proxy = start_proxy(paths, upstream, pinning, Path(tmp))
            servers.append(proxy)
            by_path = {p.name: make_targets(p, upstream, relay, proxy) for p in paths}
            settings = RunSettings(options.seconds, options.warmup, options.workers, options.generator, pinning,
                                   Path(tmp))
            with pin_self(pinning.generator):
                return measure_all(options, settings, by_path, upstream, started)
        finally:
            for server in reversed(servers):
                stop_server(server)


def measure_all(options: Options, settings: RunSettings, targets: dict[str, list[Target]], upstream: Server,
                started: float) -> int:
    """Check, measure and report every path, the paced test and the summary."""
    pinning = settings.pinning
    first = targets[BASELINE]  # every path has the same hops: the one relay, the one proxy
    hops = [t.hop for t in first if t.hop is not None]
    rss: Rss = {hop.name: {"idle": rss_mib(hop.pid)} for hop in hops}
    problems, chunks = sanity_check([t for path_targets in targets.values() for t in path_targets])
    paced = paced_targets(first) if options.paced else []
    problems += check_paced(paced)
    if problems:
        print("sanity check failed, nothing measured:\n  " + "\n  ".join(problems))
        for hop in hops:
            print(f"{hop.name} log:\n{hop.log_tail()}")
        return 1
    probes = [wake_probe(pinning.generator, pinning.proxy)]
    print(probes[0].line(), flush=True)
    # Every path's micro-benchmark (SigV4's), whether or not that path is measured: it is cheap.
    micro = {name: run_pinned(timed, pinning.proxy) for name, path in PATHS.items() if (timed := path.microbench)}
    for name, m in micro.items():
        print(f"{name} {m.line()}", flush=True)
    by_path = run_scenarios(options, settings, targets, upstream, chunks)
    paced_results = run_paced(paced, upstream, settings) if paced else None
    measurements = [m for results in by_path.values() for m in results.values()]
    everything = measurements + list((paced_results or {}).values())
    for hop in hops:
        rss[hop.name]["after"] = rss_mib(hop.pid)
        rss[hop.name]["peak"] = peak_rss_mib(hop.pid)
        rss[hop.name]["loaded"] = max((m.hop_rss_mib for m in everything
                                       if m.target == hop.name and m.hop_rss_mib is not None), default=0.0)
    # Conditions on a shared host drift: probe again, so the verdicts see the worst of both.
    probes.append(wake_probe(pinning.generator, pinning.proxy))
    print(probes[1].line().replace("wake-up probe", "wake-up probe after the runs"))

    names = [t.name for t in first]
    scenarios = load_scenarios(options.concurrency)
    for path, results in by_path.items():
        streams = PATHS[path].direct_stream_path
        direct = PATHS[path].direct_path + (f", streams {streams}" if streams else "")
        print(f"\n=== path {path}: model {PATHS[path].model}, direct {direct} ===")
        for line in [*table(results, scenarios, names, rss), "", *busy_lines(results, scenarios, names), "",
                     *verdicts(results, scenarios, names, pinning, probes)]:
            print(line)
    if paced_results:
        print("\n".join(paced_lines(paced_results, pinning)))
    overhead = translation_overhead(by_path, scenarios) if len(by_path) > 1 else []
    if overhead:
        print()
        print("\n".join(overhead_table(overhead, BASELINE)))
    variants = {path: of for path in by_path if (of := PATHS[path].variant_of) is not None and of in by_path}
    for path, of in variants.items():
        print()
        print("\n".join(variant_lines(variant_rows(overhead, path, of), path, of, micro.get(path))))
    print()
    print("\n".join(error_lines(everything, hops)))

    rows = summary_rows(by_path, paced_results, rss, micro, everything, options.concurrency)
    notes = limit_notes(by_path, paced_results, pinning, options.concurrency)
    print("\n".join(summary_lines(rows, notes, options.generator)))
    total = time.monotonic() - started
    summary = {"rows": [row.as_json() for row in rows], "notes": notes,
               "targets_met": sum(r.met is True for r in judged(rows)), "targets_judged": len(judged(rows))}
    write_json(options.json, {"summary": summary, **json_document(
        options, pinning, [PATHS[p] for p in by_path], by_path, paced_results, rss, probes, micro, overhead,
        variants, total)})
    print(f"\nresults written to {options.json}; total time {total // 60:.0f} min {total % 60:.0f} s")
    return 1 if any(m.errors for m in everything) else 0


def measure(target: Target, scenario: Scenario, upstream: Server, settings: RunSettings,
            chunks: StreamChunks) -> Measurement:
    """One run with the chosen load generator."""
    if settings.generator == "wrk":
        return run_wrk(target, scenario, upstream, settings, chunks.get((target.bench_path, target.name), 0))
    return run_aiohttp(target, scenario, upstream, settings)


def run_scenarios(options: Options, settings: RunSettings, targets: dict[str, list[Target]], upstream: Server,
                  chunks: StreamChunks) -> PathResults:
    """Every scenario against every path's targets, back to back, so paths and targets see the same
    conditions: a drift of the host between paths would otherwise pass for translation cost."""
    by_path: PathResults = {path: {} for path in targets}
    width = max(map(len, targets))
    for scenario in load_scenarios(options.concurrency):
        for path, path_targets in targets.items():
            for target in path_targets:
                m = measure(target, scenario, upstream, settings, chunks)
                by_path[path][target.name, scenario.name] = m
                print(f"  {path:<{width}} {target.name:<6} {scenario.name:<12} {m.rps:>9,.0f}/s  p50 {m.p50_ms:7.3f} ms  "
                      f"p99 {m.p99_ms:7.3f} ms  errors {m.errors}", flush=True)
    return by_path


def json_document(options: Options, pinning: Pinning, paths: Sequence[BenchPath], by_path: PathResults,
                  paced: dict[str, Measurement] | None, rss: Rss, probes: list[WakeProbe],
                  micro: dict[str, MicroBench], overhead: list[OverheadRow], variants: dict[str, str],
                  total: float) -> Json:
    """Everything the run measured, the detailed runs included; the caller puts the summary first."""
    return {
        "machine": machine_line(options.upstream),
        "pinning": pinning.description,
        "host": HOST,
        "generator": options.generator,
        "paths": {p.name: {"model": p.model, "direct_path": p.direct_path,
                           "direct_stream_path": p.direct_target(True)} for p in paths},
        "upstream": options.upstream,
        "seconds": options.seconds,
        "warmup": options.warmup,
        "workers": options.workers,
        "concurrency": options.concurrency,
        "total_seconds": round(total, 1),
        "targets": {"throughput_proxy_over_relay_min": THROUGHPUT_RATIO, "added_p50_ms_over_relay_max": ADDED_P50_MS,
                    "paced_ttfc_p50_ms_over_direct_max": TTFC_MS, "paced_proxy_cpu_cores_max": PACED_CPU,
                    "idle_rss_mib_max": IDLE_RSS_MIB, "translation_cpu_ratio_max": TRANSLATION_RATIO},
        "wake_probes": [asdict(p) for p in probes],
        "rss_mib": rss,
        "runs": [asdict(m) for results in by_path.values() for m in results.values()],
        "paced": None if not paced else {
            "scenario": paced_scenario().name, "streams": PACED_STREAMS, "model": PACED_MODEL,
            "pace_ms": PACE_SECONDS * 1000, "generator": "aiohttp",
            "runs": [asdict(m) for m in paced.values()]},
        # Empty with one path; otherwise one row per metric, with every path's value, ratio and difference.
        "translation_overhead": {"baseline": BASELINE, "rows": [row.as_json(BASELINE) for row in overhead]},
        # A variant (bedrock-sigv4) against the path it varies (bedrock): the cost of its one setting.
        "variants": {path: {"of": of, "rows": [row.as_json(of) for row in variant_rows(overhead, path, of)]}
                     for path, of in variants.items()},
        "micro_benchmarks": {path: asdict(m) for path, m in micro.items()},
    }
