"""The detailed report: a table per path, who was busy, what limited each run, the translation overhead.

Every number here comes from the same run's measurements (measurement.py): no verdict is a guess.
A process is "the limit" when it was busier than SATURATED (85%) of one core over the window; the
load side (the generator, or on two CPUs the one CPU it shares with the upstream) is named when it
was, so a rate that the load generator capped is never read as the proxy's capacity. The wake-up
probe's p99 (wakeprobe.py) explains tail latencies when no CPU was full, and a run during which
processes not of the benchmark were busy (OTHER_LOAD, from /proc/stat) is named as disturbed: on a
shared machine that, not the proxy, may be what moved its numbers. The one summary table
(summary.py) condenses this; these tables are what to read when a summary row surprises.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from .common import OTHER_LOAD, SATURATED, SLOW_WAKEUP_MS, Json, uvloop
from .measurement import Measurement
from .microbench import MicroBench
from .servers import Pinning, Server, available_cpus
from .targets import Scenario
from .wakeprobe import WakeProbe

Results = dict[tuple[str, str], Measurement]  # one path's runs, by (target, scenario)
PathResults = dict[str, Results]  # by path name, in the order the paths were given
Rss = dict[str, dict[str, float]]  # by hop name: idle, loaded (max mid-run sample), peak (VmHWM), after


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_line(upstream: str) -> str:
    loop = "on" if uvloop is not None else "off"
    upstream_loop = loop if upstream == "lean" else "off (asyncio.run)"
    return (f"machine: {len(available_cpus())} CPUs ({platform.machine()}, {cpu_model()}), "
            f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}, uvloop: proxy {loop}, "
            f"relay {loop}, aiohttp load generator {loop}, {upstream} upstream {upstream_loop}")


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def over(top: float | None, bottom: float | None) -> float | None:
    return None if top is None or not bottom else top / bottom


def minus(top: float | None, bottom: float | None) -> float | None:
    return None if top is None or bottom is None else top - bottom


def ratio(top: float | None, bottom: float | None) -> str:
    value = over(top, bottom)
    return "-" if value is None else f"{value:.2f}"


def render_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Columns as wide as their widest cell; the first (a label) left-aligned, numbers right-aligned."""
    widths = [max(len(r[i]) for r in [*rows, header]) for i in range(len(header))]

    def render(cells: list[str]) -> str:
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(padded)

    return [render(header), "  ".join("-" * w for w in widths), *(render(r) for r in rows)]


def table(results: Results, scenarios: list[Scenario], names: list[str], rss: Rss) -> list[str]:
    """A path's table: a metric per row; a column per target, then the proxy's ratios and added ms."""
    relay = "relay" in names
    header = ["metric", *names, "proxy/direct", *(["proxy/relay"] if relay else []), "added ms"]
    rows: list[list[str]] = []

    def row(label: str, values: dict[str, float | None], digits: int = 0, added: bool = False) -> None:
        d, p = values.get("direct"), values.get("proxy")
        cells = [label, *(fmt(values.get(n), digits) for n in names), ratio(p, d)]
        if relay:
            cells.append(ratio(p, values.get("relay")))
        cells.append(f"{p - d:+.3f}" if added and p is not None and d is not None else "")
        rows.append(cells)

    def each(scenario: Scenario, metric: Callable[[Measurement], float | None]) -> dict[str, float | None]:
        return {n: metric(results[n, scenario.name]) for n in names}

    for scenario in scenarios:
        kind = "streams/s " if scenario.stream else "requests/s"
        row(f"{kind}       {scenario.name}", each(scenario, lambda m: m.rps))
        if scenario.stream:
            row(f"chunks/s         {scenario.name}", each(scenario, lambda m: m.chunks_per_s))
        row(f"latency p50 ms   {scenario.name}", each(scenario, lambda m: m.p50_ms), 3, added=True)
        row(f"latency p99 ms   {scenario.name}", each(scenario, lambda m: m.p99_ms), 3, added=True)
    for scenario in scenarios:
        unit = "stream" if scenario.stream else "req"
        row(f"hop CPU ms/{unit:<6} {scenario.name}", each(scenario, lambda m: m.hop_cpu_ms_per_req), 3)
    # One process served every path, so these rows are the same in every path's table.
    for key, label in (("idle", "idle"), ("loaded", "loaded (max mid-run)"), ("peak", "peak (VmHWM)"),
                       ("after", "after all runs")):
        row(f"hop RSS MiB      {label}", {n: rss[n].get(key) for n in rss}, 1)
    return render_table(header, rows)


@dataclass(frozen=True)
class OverheadRow:
    """One metric of the proxy in one scenario, for every path: what the overhead table compares."""

    metric: str
    scenario: str
    values: dict[str, float | None]  # by path name

    def as_json(self, baseline: str) -> Json:
        """The values, and for every other path its ratio to and difference from the baseline."""
        row: Json = {"metric": self.metric, "scenario": self.scenario, **self.values}
        base = self.values[baseline]
        for path, value in self.values.items():
            if path != baseline:
                row[f"{path}/{baseline}"] = over(value, base)
                row[f"{path}-{baseline}"] = minus(value, base)
        return row


def translation_overhead(by_path: PathResults, scenarios: list[Scenario]) -> list[OverheadRow]:
    """The proxy's CPU per request/stream in every scenario, and its added latency at c=1, per path.

    The proxy's own CPU time is the direct measure of its work; added latency at c=1 (proxy minus
    the same path's direct call) is what a caller feels, round trips and wake-ups included.
    """
    rows: list[OverheadRow] = []
    latencies: tuple[tuple[str, Callable[[Measurement], float]], ...] = (
        ("p50", lambda m: m.p50_ms), ("p99", lambda m: m.p99_ms))
    for scenario in scenarios:
        unit = "stream" if scenario.stream else "req"
        rows.append(OverheadRow(f"proxy CPU ms/{unit}", scenario.name,
                                {path: r["proxy", scenario.name].hop_cpu_ms_per_req for path, r in by_path.items()}))
    for scenario in (s for s in scenarios if s.concurrency == 1):
        for label, metric in latencies:
            rows.append(OverheadRow(f"added ms {label}", scenario.name, {
                path: metric(r["proxy", scenario.name]) - metric(r["direct", scenario.name])
                for path, r in by_path.items()}))
    return rows


def overhead_table(rows: list[OverheadRow], baseline: str, title: str | None = None) -> list[str]:
    """Every path's value, then each translating path's ratio to and difference from the baseline."""
    paths = list(rows[0].values)
    others = [p for p in paths if p != baseline]
    header = ["metric", *paths, *(f"{p}/{baseline}" for p in others), *(f"{p}-{baseline}" for p in others)]
    cells: list[list[str]] = []
    for row in rows:
        base = row.values[baseline]
        diffs = [minus(row.values[p], base) for p in others]
        cells.append([f"{row.metric:<19} {row.scenario}", *(fmt(row.values[p], 3) for p in paths),
                      *(ratio(row.values[p], base) for p in others),
                      *("-" if d is None else f"{d:+.3f}" for d in diffs)])
    title = title or (f"translation overhead: {', '.join(others)} against the {baseline} passthrough "
                      "(same proxy process, same upstream, same run)")
    return [title, *render_table(header, cells)]


def variant_rows(rows: list[OverheadRow], variant: str, of: str) -> list[OverheadRow]:
    """The overhead rows of a variant and the path it varies only: what its one setting costs."""
    return [OverheadRow(row.metric, row.scenario, {of: row.values[of], variant: row.values[variant]})
            for row in rows]


def variant_lines(rows: list[OverheadRow], variant: str, of: str, micro: MicroBench | None) -> list[str]:
    """A variant against its path: the overhead table of the two, the micro-benchmark, a summary."""
    title = (f"{variant} against {of}: the same calls, one setting apart; {variant}-{of} is what the "
             "setting costs per request (same proxy process, same upstream, same run)")
    lines = overhead_table(rows, of, title)
    diffs = [(row.scenario, minus(row.values[variant], row.values[of])) for row in rows
             if row.metric.startswith("proxy CPU")]
    summary = ", ".join(f"{d:+.3f} ms ({scenario})" for scenario, d in diffs if d is not None)
    lines.append(f"{variant} costs the proxy {summary} of CPU per request/stream more than {of}")
    if micro is not None:
        lines += [micro.line(), f"  -> {micro.best_us / 1000:.3f} ms per call alone"]
    return lines


def generator_name(m: Measurement) -> str:
    return m.generator.split()[0]  # "wrk" (of "wrk -t1") or "aiohttp"


def busy_lines(results: Results, scenarios: list[Scenario], names: list[str]) -> list[str]:
    """Every process's CPU per run, as a share of one core: where the time went."""
    lines = ["who was busy (share of one core over the window; generator = all its processes or threads):"]
    for scenario in scenarios:
        for name in names:
            m = results[name, scenario.name]
            hop = f", {name} {m.hop_cpu:.0%}" if m.hop_cpu is not None else ""
            unit = "thread" if generator_name(m) == "wrk" else "worker"
            others = f", others {m.other_cpu:.0%}" if m.other_cpu >= 0.05 else ""
            steal = f", steal {m.steal_cpu:.0%}" if m.steal_cpu >= 0.02 else ""
            lines.append(f"  {name:<6} {scenario.name:<12} generator ({m.generator}) {m.generator_cpu:.0%} "
                         f"(busiest {unit} {m.generator_worker_max_cpu:.0%}), upstream {m.upstream_cpu:.0%}{hop}"
                         f"{others}{steal}")
    return lines


def disturbance(m: Measurement) -> str | None:
    """What else took CPU during a run (other processes, the hypervisor), when it was enough to matter."""
    if m.other_cpu < OTHER_LOAD and m.steal_cpu < OTHER_LOAD:
        return None
    steal = f", the hypervisor stole {m.steal_cpu:.0%}" if m.steal_cpu >= 0.02 else ""
    return f"processes not of this benchmark used {m.other_cpu:.0%} of a core{steal}"


def disturbed_lines(results: Sequence[Measurement]) -> list[str]:
    """One line naming the runs that shared the machine with other work: their numbers are not the hops' alone."""
    found = [f"{m.target} {m.other_cpu:.0%}" + (f" (steal {m.steal_cpu:.0%})" if m.steal_cpu >= 0.02 else "")
             for m in results if disturbance(m) is not None]
    if not found:
        return []
    return [f"  -> not quiet: processes not of this benchmark used {', '.join(found)} of a core during these runs: "
            "their numbers are disturbed"]


def load_side_limit(m: Measurement, pinning: Pinning) -> list[str]:
    """What on the load side (the generator, the upstream, the CPUs they run on) was full in a run."""
    found: list[str] = []
    gen = generator_name(m)
    if m.generator_worker_max_cpu >= SATURATED:
        # One event loop is one thread: a worker (or wrk thread) at 100% cannot go faster whatever the CPU count.
        unit = "thread" if gen == "wrk" else "worker process"
        found.append(f"the load generator ({gen}: a {unit} at {m.generator_worker_max_cpu:.0%} of a core)")
    if pinning.generator is None:
        total = m.generator_cpu + m.upstream_cpu + (m.hop_cpu or 0.0)
        cpus = len(available_cpus())
        if total >= SATURATED * cpus:
            found.append(f"all {cpus} CPUs ({total:.0%} of one in all; load generator {gen} {m.generator_cpu:.0%})")
    elif pinning.shared:
        shared = m.generator_cpu + m.upstream_cpu
        if shared >= SATURATED:
            found.append(f"the CPU the load generator shares with the upstream ({gen} {m.generator_cpu:.0%} "
                         f"+ upstream {m.upstream_cpu:.0%} = {shared:.0%})")
    else:
        if m.generator_cpu >= SATURATED * len(pinning.generator):
            found.append(f"the load generator's CPUs ({gen} {m.generator_cpu:.0%} of one)")
        if m.upstream_cpu >= SATURATED:
            found.append(f"upstream at {m.upstream_cpu:.0%} of its CPU")
    return found


def saturated(m: Measurement, pinning: Pinning) -> list[str]:
    """The processes (or CPUs) that were busy to the limit during one run."""
    hop = [f"{m.target} at {m.hop_cpu:.0%} of its CPU"] if m.hop_cpu is not None and m.hop_cpu >= SATURATED else []
    return hop + load_side_limit(m, pinning)


def verdicts(results: Results, scenarios: list[Scenario], names: list[str], pinning: Pinning,
             probes: list[WakeProbe]) -> list[str]:
    """What limited each run, from the measured CPU shares and the wake-up probe, not from a guess."""
    worst_ms = max(p.p99_us for p in probes) / 1000
    lines: list[str] = []
    if worst_ms >= SLOW_WAKEUP_MS:
        hint = "; --no-pin lets the scheduler avoid most crossings" if pinning.proxy is not None else ""
        lines.append(f"slow wake-ups: waking an idle CPU took up to {worst_ms:.1f} ms (probe p99), as on a VM "
                     f"whose idle vCPUs the host deschedules; each hop between CPUs can pay it{hint}")
    for scenario in scenarios:
        if scenario.concurrency == 1:
            lines.extend(latency_verdict(results, scenario, names, worst_ms))
        else:
            lines.extend(rate_verdict(results, scenario, names, pinning, worst_ms))
        lines.extend(disturbed_lines([results[n, scenario.name] for n in names]))
    return lines


def latency_verdict(results: Results, scenario: Scenario, names: list[str], worst_ms: float) -> list[str]:
    """At c=1 nothing saturates; a p99 far above p50 is either the host's wake-ups or the proxy."""
    d, p = results["direct", scenario.name], results["proxy", scenario.name]
    added = p.p99_ms - d.p99_ms
    if added < SLOW_WAKEUP_MS or worst_ms < SLOW_WAKEUP_MS:
        return []
    line = f"{scenario.name}: the proxy's p99 is +{added:.1f} ms, the size of the probe's slow wake-ups"
    if "relay" in names:
        relay = results["relay", scenario.name].p99_ms - d.p99_ms
        verdict = "so the host, not proxy code, sets it" if relay >= SLOW_WAKEUP_MS else "but the relay stays fast"
        line += f"; the bare relay's is +{relay:.1f} ms, {verdict}"
    else:
        line += "; the relay (without --no-relay) shows whether a bare hop pays it too"
    return [line]


def rate_verdict(results: Results, scenario: Scenario, names: list[str], pinning: Pinning,
                 worst_ms: float) -> list[str]:
    """Which process or CPU was full in each concurrent run, and what that makes the proxy's rate."""
    d, p = results["direct", scenario.name], results["proxy", scenario.name]
    unit = "streams" if scenario.stream else "requests"
    limits = {n: saturated(results[n, scenario.name], pinning) for n in names}
    lines = [f"{scenario.name}: limited by " + "; ".join(f"{n}: {', '.join(found) or 'nothing saturated'}"
                                                       for n, found in limits.items())]
    load_side = load_side_limit(p, pinning)
    if p.hop_cpu is not None and p.hop_cpu >= SATURATED:
        if load_side:
            lines.append(f"  -> {p.rps:,.0f} {unit}/s is about the proxy's capacity on one CPU here "
                         "(the load side was full too; the CPU ms line below leaves it out)")
        else:
            lines.append(f"  -> {p.rps:,.0f} {unit}/s is the proxy's capacity on one CPU here")
    elif load_side:
        lines.append(f"  -> the load side, not the proxy, was the limit ({'; '.join(load_side)}): "
                     "the proxy's rate is a lower bound")
    elif disturbance(p) is not None:
        lines.append(f"  -> none of the benchmark's processes was full, but other work took {p.other_cpu:.0%} of a core "
                     "meanwhile: the proxy's rate is what it left over")
    else:
        why = "idle-CPU wake-ups (see the probe)" if worst_ms >= SLOW_WAKEUP_MS else "round trips and scheduling"
        lines.append(f"  -> no CPU was full: the proxy run waited on {why}; its rate understates the proxy")
    if "relay" in names:
        r = results["relay", scenario.name]
        relay_load = load_side_limit(r, pinning)
        if relay_load and not (r.hop_cpu is not None and r.hop_cpu >= SATURATED):
            lines.append(f"  -> the relay's rate was capped by the load side too ({'; '.join(relay_load)}): "
                         "proxy/relay compares the proxy with a lower bound of the relay")
    if d.rps and p.rps >= 0.9 * d.rps:
        lines.append("  -> proxy within 10% of direct: the rates cannot show the proxy's cost; read CPU ms")
    if p.hop_cpu_ms_per_req:
        lines.append(f"  -> at {p.hop_cpu_ms_per_req:.3f} ms CPU each, one proxy CPU serves ~"
                     f"{1000 / p.hop_cpu_ms_per_req:,.0f} {unit}/s (the upstream spends "
                     f"{p.upstream_cpu_ms_per_req:.3f} ms on one)")
    return lines


def error_lines(measurements: Sequence[Measurement], hops: list[Server]) -> list[str]:
    failed = [m for m in measurements if m.errors]
    if not failed:
        return ["errors: none (every counted request answered 200; the aiohttp generator also checked every "
                "body whole, wrk left that to the sanity check)"]
    lines = ["ERRORS (failed requests are not counted in the rates above):"]
    for m in failed:
        lines.append(f"  {m.path} {m.target} {m.scenario}: {m.errors} failed, e.g.")
        lines.extend(f"    {sample}" for sample in m.error_samples)
    for hop in hops:
        lines.append(f"{hop.name} log tail:\n{hop.log_tail()}")
    return lines
