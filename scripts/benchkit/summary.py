"""The one summary table: a row per measurement, columns direct, relay, proxy, proxy/relay, target, met.

Targets are ratios against the bare relay and differences from direct in the same run, so they hold
on any machine; rows without one are there to read the others by; `met` is None when what a target
compares with was not measured. The notes name the judged runs the load side capped (proxy/relay is
then not the hops' ratio) and the runs other work disturbed. Markdown, for the README.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Final

from .paths import BASELINE, PATHS, Json
from .servers import Pinning
from .targets import PACED, Measurement

THROUGHPUT_RATIO: Final = 0.9  # proxy >= this x relay at c=N
ADDED_P50_MS: Final = 0.1  # proxy's added p50 at c=1 <= relay's + this
TTFC_MS: Final = 5.0  # paced TTFC p50: proxy <= direct + this
PACED_CPU: Final = 0.5  # paced: proxy's CPU < this share of one core
IDLE_RSS_MIB: Final = 50.0
SATURATED: Final = 0.85  # a process (or CPU) busier than this share of one core is the limit
# Busy time of processes not of this benchmark (or stolen by the hypervisor) above this share of one
# core during a run: the machine was not quiet, and that run's numbers are disturbed.
OTHER_LOAD: Final = 0.15

Results = dict[tuple[str, str], Measurement]  # one path's runs, by (target, scenario)
PathResults = dict[str, Results]  # by path name, the baseline first
Rss = dict[str, dict[str, float]]  # by hop name: idle, loaded (the largest mid-run sample)
Metric = Callable[[Measurement], float | None]


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def over(top: float | None, bottom: float | None) -> float | None:
    return None if top is None or not bottom else top / bottom


def minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def every_run(by_path: PathResults) -> list[Measurement]:
    return [m for results in by_path.values() for m in results.values()]


def judge(value: float | None, test: Callable[[float], bool]) -> bool | None:
    """Whether a target was met; None when the value (or what it compares with) was not measured."""
    return None if value is None else test(value)


@dataclass
class SummaryRow:
    key: str  # stable id for the JSON
    measurement: str
    direct: float | None
    relay: float | None
    proxy: float | None
    digits: int
    target: str = ""  # empty: for reading the others by
    met: bool | None = None
    judged: bool = True  # False: the target column holds a reading, not a target (SigV4)

    def met_text(self) -> str:
        if not self.target or not self.judged:
            return ""
        return "n/a" if self.met is None else ("met" if self.met else "NOT MET")

    def cells(self) -> list[str]:
        return [self.measurement, fmt(self.direct, self.digits), fmt(self.relay, self.digits),
                fmt(self.proxy, self.digits), fmt(over(self.proxy, self.relay), 2), self.target, self.met_text()]

    def as_json(self) -> Json:
        return {**asdict(self), "proxy_over_relay": over(self.proxy, self.relay), "met_text": self.met_text()}


def summary_rows(by_path: PathResults, rss: Rss, sigv4_us: float | None, concurrency: int) -> list[SummaryRow]:
    """Every summary row this run can fill (a path not run, or no paced test, leaves its rows out); the
    paced test's runs are the baseline's."""
    base_name, base = BASELINE, by_path[BASELINE]
    unary_n, stream_n = f"unary c={concurrency}", f"stream c={concurrency}"

    def three(results: Results, metric: Metric, scenario: str = PACED.name) -> list[float | None]:
        found = [results.get((t, scenario)) for t in ("direct", "relay", "proxy")]
        return [None if m is None else metric(m) for m in found]

    def row(key: str, label: str, values: list[float | None], digits: int, target: str = "",
            met: bool | None = None) -> None:
        rows.append(SummaryRow(key, label, values[0], values[1], values[2], digits, target, met))

    rows: list[SummaryRow] = []
    for scenario, what in ((unary_n, "requests/s"), (stream_n, "streams/s")):
        d, r, p = three(base, lambda m: m.rps, scenario)
        row(f"{base_name}.{scenario}.rps", f"{what}, {scenario} ({base_name})", [d, r, p], 0,
            f"proxy >= {THROUGHPUT_RATIO:g}x relay", judge(over(p, r), lambda v: v >= THROUGHPUT_RATIO))
    row(f"{base_name}.{stream_n}.chunks", f"chunks/s, {stream_n} ({base_name})",
        three(base, lambda m: m.chunks_per_s, stream_n), 0)
    row(f"{base_name}.unary c=1.rps", f"requests/s, unary c=1 ({base_name})", three(base, lambda m: m.rps, "unary c=1"), 0)
    for q, metric in (("p50", lambda m: m.p50_ms), ("p99", lambda m: m.p99_ms)):
        row(f"{base_name}.unary c=1.{q}", f"latency {q} ms, unary c=1 ({base_name})", three(base, metric, "unary c=1"), 3)
    d, r, p = three(base, lambda m: m.p50_ms, "unary c=1")
    relay_added, proxy_added = minus(r, d), minus(p, d)
    row(f"{base_name}.unary c=1.added_p50", f"added latency p50 ms, unary c=1 ({base_name}, vs direct)", [None, relay_added,
        proxy_added], 3, f"proxy <= relay + {ADDED_P50_MS:g} ms", judge(minus(proxy_added, relay_added), lambda v: v <= ADDED_P50_MS))

    if ("proxy", PACED.name) in base:
        d, r, p = three(base, lambda m: m.ttfc_p50_ms)
        row("paced.ttfc_p50", "paced 100 streams: TTFC p50 ms", [d, r, p], 3, f"proxy <= direct + {TTFC_MS:g} ms",
            judge(minus(p, d), lambda v: v <= TTFC_MS))
        for key, label, metric, digits in (("paced.ttfc_p99", "TTFC p99 ms", lambda m: m.ttfc_p99_ms, 3),
                                           ("paced.stream_p50", "stream time p50 ms", lambda m: m.p50_ms, 1),
                                           ("paced.stream_p99", "stream time p99 ms", lambda m: m.p99_ms, 1)):
            row(key, f"paced 100 streams: {label}", three(base, metric), digits)
        d, r, p = three(base, lambda m: m.hop_cpu)
        row("paced.hop_cpu", "paced 100 streams: hop CPU, share of one core", [d, r, p], 2,
            f"proxy < {PACED_CPU:g} core", judge(p, lambda v: v < PACED_CPU))

    idle, loaded = ([None, rss.get("relay", {}).get(k), rss.get("proxy", {}).get(k)] for k in ("idle", "loaded"))
    row("rss.idle", "RSS MiB, idle", idle, 1, f"proxy <= {IDLE_RSS_MIB:g} MiB", judge(idle[2], lambda v: v <= IDLE_RSS_MIB))
    row("rss.loaded", "RSS MiB, loaded (max mid-run sample)", loaded, 1)

    for scenario, unit in ((unary_n, "req"), (stream_n, "stream")):
        reference = three(base, lambda m: m.hop_cpu_ms_per_req, scenario)[2]
        for path in (p for p in by_path if p != base_name):
            _, relay, proxy = three(by_path[path], lambda m: m.hop_cpu_ms_per_req, scenario)
            times, ratio = over(proxy, reference), PATHS[path].cpu_ratio
            is_text = f"{base_name}'s {fmt(reference, 3)} (is {fmt(times, 2)}x)"
            row(f"{path}.{scenario}.cpu_ms", f"{path}: hop CPU ms/{unit}, {scenario}", [None, relay, proxy], 3,
                f"<= {ratio:g}x {is_text}" if ratio else f"reported, vs {is_text}",
                judge(minus(times, ratio), lambda v: v <= 0))
            rows[-1].judged = ratio is not None
    for path, other in ((p, str(PATHS[p].reference)) for p in by_path if PATHS[p].reference in by_path):
        ratio, added = PATHS[path].rps_ratio, PATHS[path].added_p50_ms
        if ratio is not None:
            rps, base_rps = (three(by_path[p], lambda m: m.rps, unary_n)[2] for p in (path, other))
            row(f"{path}.{unary_n}.rps", f"{path}: requests/s, {unary_n}", [None, None, rps], 0,
                f"proxy >= {ratio:g}x {other}'s {fmt(base_rps)}", judge(minus(ratio, over(rps, base_rps)), lambda v: v <= 0))
        for scenario in ("unary c=1", "stream c=1"):  # the relay's difference (the same call) is the noise
            mine, theirs = (three(by_path[p], lambda m: m.p50_ms, scenario) for p in (path, other))
            relay, proxy = minus(mine[1], theirs[1]), minus(mine[2], theirs[2])
            row(f"{path}.{scenario}.added_p50", f"{path}: p50 ms added to {other}'s, {scenario}", [None, None, proxy],
                3, f"proxy <= {added:g} ms (relay: {fmt(relay, 3)})", judge(minus(proxy, added), lambda v: v <= 0))
    if sigv4_us is not None:
        bedrock = by_path.get("bedrock", {}).get(("proxy", unary_n))
        cpu = bedrock.hop_cpu_ms_per_req if bedrock else None
        share = f", {sigv4_us / 1000 / cpu:.0%} of bedrock's proxy CPU/req" if cpu else ""
        rows.append(SummaryRow("sigv4.microbench_us", "SigV4: sign_sigv4 us per signature (micro-benchmark)",
                               None, None, sigv4_us, 1, f"reported{share}", judged=False))

    errors = [sum(m.errors for m in every_run(by_path) if m.target == t) for t in ("direct", "relay", "proxy")]
    row("errors", "failed requests, all runs", [float(e) for e in errors], 0, "0 in every column", sum(errors) == 0)
    return rows


def markdown_table(rows: Sequence[SummaryRow]) -> list[str]:
    """The rows as a Markdown table, padded so it also reads as plain text."""
    header = ["measurement", "direct", "relay", "proxy", "proxy/relay", "target", "met"]
    cells = [row.cells() for row in rows]
    widths = [max(len(r[i]) for r in [*cells, header]) for i in range(len(header))]
    right = {1, 2, 3, 4}

    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.rjust(w) if i in right else v.ljust(w)
                                 for i, (v, w) in enumerate(zip(values, widths, strict=True))) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return [line(header), rule, *(line(c) for c in cells)]


def load_side_limit(m: Measurement, pinning: Pinning) -> list[str]:
    """What on the load side (the generator, the CPU it shares with the upstream) was full in a run."""
    found: list[str] = []
    gen = m.generator.split()[0]
    if m.generator_busiest >= SATURATED:  # one event loop is one thread: it cannot go faster
        found.append(f"the load generator ({gen} at {m.generator_busiest:.0%} of a core in one thread)")
    if pinning.generator is not None and pinning.generator == pinning.upstream and m.generator_cpu + m.upstream_cpu >= SATURATED:
        found.append(f"the CPU the load generator shares with the upstream ({gen} {m.generator_cpu:.0%} "
                     f"+ upstream {m.upstream_cpu:.0%})")
    return found


def limit_notes(by_path: PathResults, pinning: Pinning, concurrency: int) -> list[str]:
    """The runs behind the judged rows that the load side capped, or that other work disturbed."""
    base = by_path[BASELINE]
    capped = [base.get((t, s)) for s in (f"unary c={concurrency}", f"stream c={concurrency}", PACED.name)
              for t in ("relay", "proxy")]
    notes = [f"- {m.path} {m.target} {m.scenario}: the load side was the limit: {'; '.join(found)}"
             for m in capped if m is not None and (found := load_side_limit(m, pinning))]
    runs = every_run(by_path)
    disturbed = [m.other_cpu + m.steal_cpu for m in runs if m.other_cpu >= OTHER_LOAD or m.steal_cpu >= OTHER_LOAD]
    if disturbed:
        notes.append(f"- {len(disturbed)} of {len(runs)} runs disturbed by other work on the machine (up to "
                     f"{max(disturbed):.0%} of a core, hypervisor steal included)")
    return notes


def summary_lines(rows: list[SummaryRow], notes: list[str], generator: str, detours: Sequence[str] = ()) -> list[str]:
    judged = [r for r in rows if r.target and r.judged]
    met, missed = sum(r.met is True for r in judged), sum(r.met is False for r in judged)
    unknown = len(judged) - met - missed
    lines = ["", f"=== summary (load generator: {generator}; Markdown) ===", "", *markdown_table(rows), "",
             f"targets met: {met} of {len(judged)}" + (f" ({unknown} n/a: not measured in this run)" if unknown else "")]
    if notes:
        lines += ["", "Runs behind the summary that the load side capped (their proxy/relay ratio is not the hops') "
                  "or that other work on the machine disturbed (rerun on a quiet machine):", *notes]
    if detours:
        lines += ["", "Requests the proxy sent elsewhere than the direct call (translated, not passed through):",
                  *(f"- {d}" for d in detours)]
    return lines
