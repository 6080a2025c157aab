"""wrk as the load generator: the default whenever `wrk` is on PATH (`--generator auto`).

wrk is C, one event loop per thread, and spends far less CPU per request than an aiohttp client,
which matters here: on two CPUs the load generator shares one with the upstream, so every cycle it
saves goes to the upstream. It reads every answer to its end (chunked streams included) but does
not look at bodies; `targets.sanity_check` checks each target's unary and streamed answers before
anything is measured, and counts the chunks of each target's stream, so chunks/s here is streams/s
times that count.

How a run goes. The request (POST, path, headers, body) is a Lua script written to the temp dir,
with a `done` hook that prints wrk's exact numbers as one JSON line (`WRKJSON {...}`: microsecond
latency percentiles, completed requests, run duration, and the error counts: status > 399,
connect, read, write, timeout). No `response` hook: wrk would then parse every response's headers
and body in Lua, which costs more than the requests. `parse_wrk` reads wrk's own `--latency`
text (Requests/sec, the 50/75/90/99% lines, "Socket errors", "Non-2xx or 3xx responses") and
takes the done hook's exact values over the text's rounded ones when the line is there.

wrk takes whole seconds only (`-d`), so it is started with a longer `-d` and stopped with SIGINT
after `--warmup` (one unmeasured run, whose connections then close) and `--seconds` (the measured
run): wrk handles SIGINT by stopping its threads at their next 100 ms tick and printing its
results as usual, over the duration it actually ran. It runs pinned to the load generator's CPUs
(it inherits this process's mask, set before it starts its threads), with 1 thread at c=1 and at
most 2 otherwise (no more than the generator has CPUs: two threads on one shared CPU only take
turns). Its CPU comes from /proc/PID/stat over the window, the upstream's and the hop's too; the
window closes when wrk has exited but is not yet reaped (waitid WNOWAIT), so its total is whole.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import orjson

from .common import HOST, REQUEST_TIMEOUT
from .measurement import LoadOutcome, Measurement, RunSettings, build_measurement
from .servers import CpuWindow, Pinning, Server, cpu_seconds, pin_self, rss_mib
from .targets import Scenario, Target

WRK_DONE_MARK: Final = "WRKJSON "
# Prints the run's exact numbers (microseconds) as one JSON line after wrk's own report.
_DONE_HOOK: Final = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"status":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"timeout":%d,"p50_us":%d,"p75_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(75), latency:percentile(90), latency:percentile(99),
    latency.max))
end
"""


def find_wrk() -> str | None:
    return shutil.which("wrk")


def lua_string(data: bytes) -> str:
    """A Lua string literal of any bytes: printable ASCII as is, the rest as 3-digit decimal escapes."""
    out: list[str] = []
    for byte in data:
        if byte in (0x22, 0x5C):  # " and \
            out.append("\\" + chr(byte))
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03d}")  # always 3 digits: a following digit is not read into it
    return '"' + "".join(out) + '"'


def lua_script(target: Target, stream: bool) -> str:
    """The static request of a run (built once by wrk, reused for every request) and the done hook."""
    lines = ['wrk.method = "POST"',
             # The path as written, percent-encoded (`…v1%3A0`): wrk sends it as is.
             f"wrk.path = {lua_string(target.path(stream).encode())}",
             f"wrk.body = {lua_string(target.body(stream))}"]
    lines += [f"wrk.headers[{lua_string(k.encode())}] = {lua_string(v.encode())}" for k, v in target.headers.items()]
    return "\n".join(lines) + "\n" + _DONE_HOOK


def wrk_threads(concurrency: int, pinning: Pinning) -> int:
    """1 thread at c=1; otherwise 2, unless the generator has a single CPU (then the threads would
    only take turns on it), and never more than connections."""
    if concurrency == 1:
        return 1
    cpus = len(pinning.generator) if pinning.generator is not None else 2
    return max(1, min(2, cpus, concurrency))


@dataclass
class WrkReport:
    """One wrk run's numbers, from its text report and, when present, its done hook."""

    requests: int  # completed, whatever their status
    duration: float  # seconds wrk ran
    rps: float  # wrk's Requests/sec (all completed requests)
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    status_errors: int  # responses with a status > 399 ("Non-2xx or 3xx responses")
    socket_errors: dict[str, int] = field(default_factory=dict)  # connect, read, write, timeout
    exact: bool = False  # latencies from the done hook (microseconds), not wrk's rounded text


_TO_MS: Final = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}


def _ms(text: str) -> float:
    """wrk's time with a unit (`63.00us`, `1.02ms`, `2.01s`), in milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"not a wrk time: {text!r}")
    return float(match[1]) * _TO_MS[match[2]]


def parse_wrk(output: str) -> WrkReport:
    """wrk's `--latency` report, refined by the done hook's line when there is one."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    total = re.search(r"^\s*(\d+) requests in (\S+),", output, re.M)
    if rps is None or total is None:
        raise RuntimeError(f"wrk printed no results:\n{output[-1500:]}")
    percentiles = {int(q): _ms(v) for q, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", output, re.M)}
    thread_latency = re.search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", output, re.M)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    report = WrkReport(
        requests=int(total[1]), duration=_ms(total[2]) / 1000, rps=float(rps[1]),
        p50_ms=percentiles.get(50, 0.0), p75_ms=percentiles.get(75, 0.0), p90_ms=percentiles.get(90, 0.0),
        p99_ms=percentiles.get(99, 0.0), max_ms=_ms(thread_latency[1]) if thread_latency else 0.0,
        status_errors=int(non2xx[1]) if non2xx else 0,
        socket_errors=dict(zip(("connect", "read", "write", "timeout"), map(int, sockets.groups()), strict=True))
        if sockets else {},
    )
    done = next((line for line in output.splitlines() if line.startswith(WRK_DONE_MARK)), None)
    if done is not None:
        exact = orjson.loads(done[len(WRK_DONE_MARK):])
        report.requests, report.duration = exact["requests"], exact["duration_us"] / 1e6
        report.p50_ms, report.p75_ms = exact["p50_us"] / 1000, exact["p75_us"] / 1000
        report.p90_ms, report.p99_ms, report.max_ms = exact["p90_us"] / 1000, exact["p99_us"] / 1000, exact["max_us"] / 1000
        report.status_errors = exact["status"]
        report.socket_errors = {k: exact[k] for k in ("connect", "read", "write", "timeout")}
        report.exact = True
    return report


@contextlib.contextmanager
def wrk_process(argv: list[str], output: Path, cpus: frozenset[int] | None) -> Iterator[subprocess.Popen[bytes]]:
    """wrk started on `cpus` (inherited: it creates its threads after exec), killed if still running on the way out."""
    with output.open("wb") as out, pin_self(cpus):
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def stop_wrk(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGINT, then wait until wrk has exited without reaping it: its /proc/PID/stat stays readable."""
    process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
            return
        time.sleep(0.002)
    raise RuntimeError(f"wrk did not stop within {grace:g} s of SIGINT")


def run_wrk(target: Target, scenario: Scenario, upstream: Server, settings: RunSettings,
            chunks_per_stream: int) -> Measurement:
    """Warm up, then run one scenario against one target with wrk, every process measured over the
    same window; failed requests (status > 399, socket errors) are errors, not requests."""
    wrk = find_wrk()
    if wrk is None:
        raise RuntimeError("wrk is not installed: use --generator aiohttp")
    kind = "stream" if scenario.stream else "unary"
    stem = f"wrk-{target.bench_path}-{target.name}-{kind}-c{scenario.concurrency}"
    script = settings.tmp / f"{stem}.lua"
    script.write_text(lua_script(target, scenario.stream))
    threads = wrk_threads(scenario.concurrency, settings.pinning)
    # -d is only a backstop: SIGINT ends each run (wrk takes whole seconds only).
    backstop = math.ceil(max(settings.seconds, settings.warmup)) + 30
    argv = [wrk, "-t", str(threads), "-c", str(scenario.concurrency), "-d", f"{backstop}s",
            "--timeout", f"{math.ceil(REQUEST_TIMEOUT)}s", "--latency", "-s", str(script), f"http://{HOST}:{target.port}/"]
    cpus = settings.pinning.generator
    if settings.warmup > 0:
        with wrk_process(argv, settings.tmp / f"{stem}-warmup.out", cpus) as process:
            time.sleep(settings.warmup)
            stop_wrk(process)
    watched = [upstream.pid] + ([target.hop.pid] if target.hop else [])
    output = settings.tmp / f"{stem}.out"
    with wrk_process(argv, output, cpus) as process:
        window = CpuWindow(watched)
        generator0 = cpu_seconds(process.pid)
        time.sleep(settings.seconds / 2)
        hop_rss = rss_mib(target.hop.pid) if target.hop else None
        time.sleep(settings.seconds / 2)
        stop_wrk(process)
        generator = cpu_seconds(process.pid) - generator0
        cpu = window.close()
    text = output.read_text(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"wrk exited with {process.returncode} ({target.bench_path} {target.name} "
                           f"{scenario.name}):\n{text[-1500:]}")
    report = parse_wrk(text)
    ok = report.requests - report.status_errors
    socket_errors = sum(report.socket_errors.values())
    samples = []
    if report.status_errors:
        samples.append(f"wrk: {report.status_errors} responses with an HTTP status > 399 (wrk keeps no bodies; "
                       "the logs below, or a run with --generator aiohttp, show them)")
    if socket_errors:
        samples.append("wrk socket errors: " + ", ".join(f"{k} {v}" for k, v in report.socket_errors.items()))
    outcome = LoadOutcome(
        generator=f"wrk -t{threads}", requests=ok, chunks=ok * chunks_per_stream if scenario.stream else 0,
        errors=report.status_errors + socket_errors, error_samples=samples, duration=report.duration,
        p50_ms=report.p50_ms, p90_ms=report.p90_ms, p99_ms=report.p99_ms, max_ms=report.max_ms,
        generator_cpu=generator,
        # wrk splits the connections evenly between its threads: each does about its share.
        generator_busiest=generator / cpu.wall / threads,
    )
    return build_measurement(target, scenario, outcome, cpu, hop_rss)
