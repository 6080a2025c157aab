"""The one summary table, its targets, and the JSON file.

A row per measurement; columns direct, relay, proxy, proxy/relay, target, met. The targets (the
project's issue) are ratios against the bare relay and differences from direct, measured in the
same run, so they hold on any machine:

    throughput, c=N unary and stream (openai)  proxy >= 0.9 x relay
    added latency p50 at c=1 (openai)          proxy's added p50 within 0.1 ms of the relay's
    paced test: TTFC p50                       proxy within 5 ms of direct
    paced test: hop CPU                        proxy < 0.5 of a core
    idle RSS                                   proxy <= 50 MiB
    translation CPU per request and per stream proxy on anthropic, vertex, bedrock <= 1.5 x
      at c=N                                   the proxy on openai (the passthrough)
    failed requests                            0

Rows without a target are there to read the others by (latency at c=1, the paced stream times,
loaded RSS); SigV4 is reported, not judged: bedrock-sigv4's CPU per request beside bedrock's when
that path ran, and the micro-benchmark's microseconds per signature always. `met` is "n/a" when
what a target compares with was not measured (no relay, no paced test). The notes under the table
name every relay or proxy run whose rate the load side capped (there the ratio is not the hops'),
and every run behind a row during which processes not of the benchmark were busy.
The table prints as Markdown (pipes), to be pasted into the README as is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from .common import Json
from .measurement import Measurement
from .microbench import MicroBench
from .paths import BASELINE, PATHS
from .report import PathResults, Rss, disturbance, fmt, load_side_limit, minus, over, ratio
from .servers import Pinning

THROUGHPUT_RATIO: Final = 0.9  # proxy >= this x relay at c=N
ADDED_P50_MS: Final = 0.1  # proxy's added p50 at c=1 <= relay's + this
TTFC_MS: Final = 5.0  # paced TTFC p50: proxy <= direct + this
PACED_CPU: Final = 0.5  # paced: proxy's CPU < this share of one core
IDLE_RSS_MIB: Final = 50.0
TRANSLATION_RATIO: Final = 1.5  # a translating path's proxy CPU per request <= this x openai's

Triple = tuple[float | None, float | None, float | None]  # direct, relay, proxy


@dataclass
class SummaryRow:
    """One line of the summary: the three targets' values, the target and whether it was met."""

    key: str  # stable id for the JSON
    measurement: str
    direct: float | None
    relay: float | None
    proxy: float | None
    digits: int
    target: str = ""  # empty: for reading the others by
    met: bool | None = None  # None: no target, or nothing to compare with
    judged: bool = True  # False: the target column holds a reading, not a target (SigV4)

    @property
    def proxy_over_relay(self) -> float | None:
        return over(self.proxy, self.relay)

    def met_text(self) -> str:
        if not self.target or not self.judged:
            return ""
        return "n/a" if self.met is None else ("met" if self.met else "NOT MET")

    def cells(self) -> list[str]:
        return [self.measurement, fmt(self.direct, self.digits), fmt(self.relay, self.digits),
                fmt(self.proxy, self.digits), ratio(self.proxy, self.relay), self.target, self.met_text()]

    def as_json(self) -> Json:
        return {**asdict(self), "proxy_over_relay": self.proxy_over_relay, "met_text": self.met_text()}


def _check(value: float | None, test: Callable[[float], bool]) -> bool | None:
    return None if value is None else test(value)


def summary_rows(by_path: PathResults, paced: dict[str, Measurement] | None, rss: Rss,
                 micro: dict[str, MicroBench], measurements: Sequence[Measurement], concurrency: int) -> list[SummaryRow]:
    """Every summary row this run can fill (a path not run, or no paced test, leaves its rows out)."""
    rows: list[SummaryRow] = []
    base_name = BASELINE if BASELINE in by_path else next(iter(by_path))
    base = by_path[base_name]

    def get(target: str, scenario: str, metric: Callable[[Measurement], float | None],
            results: dict[tuple[str, str], Measurement] = base) -> float | None:
        m = results.get((target, scenario))
        return None if m is None else metric(m)

    def three(scenario: str, metric: Callable[[Measurement], float | None]) -> Triple:
        return get("direct", scenario, metric), get("relay", scenario, metric), get("proxy", scenario, metric)

    unary_n, stream_n = f"unary c={concurrency}", f"stream c={concurrency}"
    for scenario, what in ((unary_n, "requests/s"), (stream_n, "streams/s")):
        d, r, p = three(scenario, lambda m: m.rps)
        rows.append(SummaryRow(f"{base_name}.{scenario}.rps", f"{what}, {scenario} ({base_name})", d, r, p, 0,
                               f"proxy >= {THROUGHPUT_RATIO:g}x relay",
                               None if r is None or p is None else p >= THROUGHPUT_RATIO * r))
    d, r, p = three(stream_n, lambda m: m.chunks_per_s)
    rows.append(SummaryRow(f"{base_name}.{stream_n}.chunks", f"chunks/s, {stream_n} ({base_name})", d, r, p, 0))
    d, r, p = three("unary c=1", lambda m: m.rps)
    rows.append(SummaryRow(f"{base_name}.unary c=1.rps", f"requests/s, unary c=1 ({base_name})", d, r, p, 0))
    latencies: tuple[tuple[str, Callable[[Measurement], float | None]], ...] = (
        ("p50", lambda m: m.p50_ms), ("p99", lambda m: m.p99_ms))
    for q, metric in latencies:
        d, r, p = three("unary c=1", metric)
        rows.append(SummaryRow(f"{base_name}.unary c=1.{q}", f"latency {q} ms, unary c=1 ({base_name})", d, r, p, 3))
    direct_p50 = get("direct", "unary c=1", lambda m: m.p50_ms)
    relay_added = minus(get("relay", "unary c=1", lambda m: m.p50_ms), direct_p50)
    proxy_added = minus(get("proxy", "unary c=1", lambda m: m.p50_ms), direct_p50)
    rows.append(SummaryRow(f"{base_name}.unary c=1.added_p50", f"added latency p50 ms, unary c=1 ({base_name}, vs direct)",
                           None, relay_added, proxy_added, 3, f"proxy <= relay + {ADDED_P50_MS:g} ms",
                           None if relay_added is None or proxy_added is None
                           else proxy_added <= relay_added + ADDED_P50_MS))

    if paced:
        def each(metric: Callable[[Measurement], float | None]) -> Triple:
            d, r, p = (metric(paced[t]) if t in paced else None for t in ("direct", "relay", "proxy"))
            return d, r, p

        d, r, p = each(lambda m: m.ttfc_p50_ms)
        rows.append(SummaryRow("paced.ttfc_p50", "paced 100 streams: TTFC p50 ms", d, r, p, 3,
                               f"proxy <= direct + {TTFC_MS:g} ms",
                               None if d is None or p is None else p <= d + TTFC_MS))
        for key, label, metric, digits in (
                ("paced.ttfc_p99", "TTFC p99 ms", lambda m: m.ttfc_p99_ms, 3),
                ("paced.stream_p50", "stream time p50 ms", lambda m: m.p50_ms, 1),
                ("paced.stream_p99", "stream time p99 ms", lambda m: m.p99_ms, 1)):
            d, r, p = each(metric)
            rows.append(SummaryRow(key, f"paced 100 streams: {label}", d, r, p, digits))
        d, r, p = each(lambda m: m.hop_cpu)
        rows.append(SummaryRow("paced.hop_cpu", "paced 100 streams: hop CPU, share of one core", d, r, p, 2,
                               f"proxy < {PACED_CPU:g} core", _check(p, lambda v: v < PACED_CPU)))

    relay_idle, proxy_idle = rss.get("relay", {}).get("idle"), rss.get("proxy", {}).get("idle")
    rows.append(SummaryRow("rss.idle", "RSS MiB, idle", None, relay_idle, proxy_idle, 1, f"proxy <= {IDLE_RSS_MIB:g} MiB",
                           _check(proxy_idle, lambda v: v <= IDLE_RSS_MIB)))
    rows.append(SummaryRow("rss.loaded", "RSS MiB, loaded (max mid-run sample)", None,
                           rss.get("relay", {}).get("loaded"), rss.get("proxy", {}).get("loaded"), 1))

    translating = [p for p in by_path if p != base_name and PATHS[p].variant_of is None]
    for scenario, unit in ((unary_n, "req"), (stream_n, "stream")):
        reference = get("proxy", scenario, lambda m: m.hop_cpu_ms_per_req)
        for path in translating:
            results = by_path[path]
            relay = get("relay", scenario, lambda m: m.hop_cpu_ms_per_req, results)
            proxy = get("proxy", scenario, lambda m: m.hop_cpu_ms_per_req, results)
            times = over(proxy, reference)
            target = (f"<= {TRANSLATION_RATIO:g}x {base_name}'s {fmt(reference, 3)} "
                      f"(is {'-' if times is None else f'{times:.2f}x'})")
            rows.append(SummaryRow(f"{path}.{scenario}.cpu_ms", f"{path}: hop CPU ms/{unit}, {scenario}",
                                   None, relay, proxy, 3, target, _check(times, lambda v: v <= TRANSLATION_RATIO)))

    for path in (p for p in by_path if PATHS[p].variant_of in by_path):
        of = PATHS[path].variant_of
        assert of is not None
        for scenario, unit in ((unary_n, "req"), (stream_n, "stream")):
            reference = get("proxy", scenario, lambda m: m.hop_cpu_ms_per_req, by_path[of])
            relay = get("relay", scenario, lambda m: m.hop_cpu_ms_per_req, by_path[path])
            proxy = get("proxy", scenario, lambda m: m.hop_cpu_ms_per_req, by_path[path])
            diff = minus(proxy, reference)
            note = f"reported: {'-' if diff is None else f'{diff:+.3f}'} ms vs {of} ({ratio(proxy, reference)}x)"
            rows.append(SummaryRow(f"{path}.{scenario}.cpu_ms", f"{path}: hop CPU ms/{unit}, {scenario}",
                                   None, relay, proxy, 3, note, judged=False))
    sigv4 = micro.get("bedrock-sigv4")
    if sigv4 is not None:
        bedrock = get("proxy", unary_n, lambda m: m.hop_cpu_ms_per_req, by_path["bedrock"]) if "bedrock" in by_path else None
        share = "" if not bedrock else f", {sigv4.best_us / 1000 / bedrock:.0%} of bedrock's proxy CPU/req"
        rows.append(SummaryRow("sigv4.microbench_us", "SigV4: sign_sigv4 us per signature (micro-benchmark)",
                               None, None, sigv4.best_us, 1, f"reported{share}", judged=False))

    errors = {t: sum(m.errors for m in measurements if m.target == t) for t in ("direct", "relay", "proxy")}
    has_relay = any(m.target == "relay" for m in measurements)
    rows.append(SummaryRow("errors", "failed requests, all runs", errors["direct"],
                           errors["relay"] if has_relay else None, errors["proxy"], 0, "0 in every column",
                           sum(errors.values()) == 0))
    return rows


def markdown_table(rows: list[SummaryRow]) -> list[str]:
    """The rows as a Markdown table, padded so it also reads as plain text."""
    header = ["measurement", "direct", "relay", "proxy", "proxy/relay", "target", "met"]
    cells = [row.cells() for row in rows]
    widths = [max(len(r[i]) for r in [*cells, header]) for i in range(len(header))]
    right = {1, 2, 3, 4}

    def line(values: list[str]) -> str:
        padded = [v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return [line(header), rule, *(line(c) for c in cells)]


def limit_notes(by_path: PathResults, paced: dict[str, Measurement] | None, pinning: Pinning,
                concurrency: int) -> list[str]:
    """The runs behind the summary's judged rows that the load side capped, or other work disturbed."""
    notes: list[str] = []
    base_name = BASELINE if BASELINE in by_path else next(iter(by_path))
    capped = [by_path[base_name].get((t, f"{kind} c={concurrency}")) for kind in ("unary", "stream")
              for t in ("relay", "proxy")]
    capped += [paced[t] for t in ("relay", "proxy") if paced and t in paced]
    for m in capped:
        if m is not None and (found := load_side_limit(m, pinning)):
            notes.append(f"- {m.path} {m.target} {m.scenario}: the load side was the limit, not the {m.target}: "
                         f"{'; '.join(found)}")
    behind = {path: [m for (_, scenario), m in results.items()
                     if scenario in ("unary c=1", f"unary c={concurrency}", f"stream c={concurrency}")]
              for path, results in by_path.items()}
    if paced:
        behind["paced test"] = list(paced.values())
    for path, runs in behind.items():
        disturbed = [f"{m.target} {m.scenario} {m.other_cpu:.0%}" for m in runs if disturbance(m) is not None]
        if disturbed:
            notes.append(f"- {path}: disturbed by other work (its CPU, in shares of a core): {', '.join(disturbed)}")
    return notes


def judged(rows: list[SummaryRow]) -> list[SummaryRow]:
    """The rows with a target."""
    return [r for r in rows if r.target and r.judged]


def summary_lines(rows: list[SummaryRow], notes: list[str], generator: str) -> list[str]:
    targets = judged(rows)
    met, missed = sum(r.met is True for r in targets), sum(r.met is False for r in targets)
    unknown = len(targets) - met - missed
    lines = ["", f"=== summary (load generator: {generator}; Markdown) ===", "", *markdown_table(rows), "",
             f"targets met: {met} of {len(targets)}" + (f" ({unknown} n/a: not measured in this run)" if unknown else "")]
    if notes:
        lines += ["", "Runs behind the summary that the load side capped (their proxy/relay ratio is not the hops') "
                  "or that other work on the machine disturbed (rerun on a quiet machine):", *notes]
    return lines


def write_json(path: str, document: Json) -> None:
    Path(path).write_text(json.dumps(document, indent=2) + "\n")
