"""wrk as the load generator, whenever it is on PATH: C, far less CPU per request than an aiohttp client.

It reads answers without looking at them (the sanity check does, and counts each stream's chunks
for chunks/s). The request is a Lua script whose `done` hook prints wrk's exact numbers as a JSON
line. wrk takes whole seconds only, so it runs with a long `-d` and is stopped by SIGINT after
`--warmup` (unmeasured) and after `--seconds`, its CPU read over exactly the measured window.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import orjson

from .servers import HOST, Pinning, Server, cpu_seconds, stop_process, watch
from .targets import REQUEST_TIMEOUT, Measurement, RunSettings, Scenario, Target

_MARK: Final = "WRKJSON "
_DONE_HOOK: Final = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"status":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"timeout":%d,"p50_us":%d,"p99_us":%d}\n', summary.requests, summary.duration, e.status, e.connect,
    e.read, e.write, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def lua_string(data: bytes) -> str:
    """A Lua string literal of any bytes: printable ASCII as is, the rest as 3-digit decimal escapes."""
    out = [("\\" + chr(b)) if b in (0x22, 0x5C) else chr(b) if 0x20 <= b < 0x7F else f"\\{b:03d}" for b in data]
    return '"' + "".join(out) + '"'


def lua_script(target: Target, stream: bool) -> str:
    """The static request (built once by wrk, reused for every request) and the done hook."""
    call = target.call
    lines = ['wrk.method = "POST"', f"wrk.path = {lua_string(call.url_path(stream).encode())}",
             f"wrk.body = {lua_string(call.body(stream))}"]
    lines += [f"wrk.headers[{lua_string(k.encode())}] = {lua_string(v.encode())}" for k, v in call.headers.items()]
    return "\n".join(lines) + "\n" + _DONE_HOOK


def wrk_threads(concurrency: int, pinning: Pinning) -> int:
    """1 thread at c=1; otherwise 2, unless the generator has one CPU (threads would only take turns)."""
    cpus = len(pinning.generator) if pinning.generator is not None else 2
    return 1 if concurrency == 1 else max(1, min(2, cpus, concurrency))


def parse_done(output: str) -> dict[str, int]:
    """The done hook's numbers; a RuntimeError with wrk's output when it printed none."""
    line = next((line for line in output.splitlines() if line.startswith(_MARK)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no results:\n{output[-1500:]}")
    numbers: dict[str, int] = orjson.loads(line[len(_MARK):])
    return numbers


@contextlib.contextmanager
def wrk_process(argv: list[str], output: Path) -> Iterator[subprocess.Popen[bytes]]:
    """wrk started (on the load generator's CPUs, like this process); on the way out stopped by SIGINT,
    on which it prints its numbers, or killed when it has not stopped 5 s later (it then printed none)."""
    with output.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        stop_process(process, signal.SIGINT)


def run_wrk(target: Target, scenario: Scenario, upstream: Server, settings: RunSettings,
            chunks_per_stream: int) -> Measurement:
    """Warm up, then one measured run; failed requests (status > 399, socket errors) are errors."""
    wrk = shutil.which("wrk") or "wrk"  # bench.py chose wrk only where it is on PATH
    stem = f"wrk-{target.bench_path}-{target.name}-{scenario.name.replace(' ', '-')}"
    script = settings.tmp / f"{stem}.lua"
    script.write_text(lua_script(target, scenario.stream))
    threads = wrk_threads(scenario.concurrency, settings.pinning)
    backstop = math.ceil(max(settings.seconds, settings.warmup)) + 30  # -d only backs SIGINT up
    argv = [wrk, "-t", str(threads), "-c", str(scenario.concurrency), "-d", f"{backstop}s",
            "--timeout", f"{math.ceil(REQUEST_TIMEOUT)}s", "-s", str(script), f"http://{HOST}:{target.port}/"]
    if settings.warmup > 0:
        with wrk_process(argv, settings.tmp / f"{stem}-warmup.out"):
            time.sleep(settings.warmup)
    output = settings.tmp / f"{stem}.out"
    with wrk_process(argv, output) as process:
        generator0 = cpu_seconds(process.pid)
        cpu, hop_rss = watch(upstream, target.hop, settings.seconds)
        generator = cpu_seconds(process.pid) - generator0
    text = output.read_text(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"wrk exited with {process.returncode} ({stem}):\n{text[-1500:]}")
    n = parse_done(text)
    sockets = {k: n[k] for k in ("connect", "read", "write", "timeout") if n[k]}
    samples = [f"wrk: {n['status']} responses with an HTTP status > 399"] if n["status"] else []
    samples += [f"wrk socket errors: {sockets}"] if sockets else []
    ok = n["requests"] - n["status"]
    m = Measurement(target.bench_path, target.name, scenario.name, f"wrk -t{threads}", ok,
                    ok * chunks_per_stream if scenario.stream else 0, n["status"] + sum(sockets.values()), samples,
                    n["duration_us"] / 1e6, n["p50_us"] / 1000, n["p99_us"] / 1000, generator / cpu.wall,
                    generator / cpu.wall / threads)  # wrk splits the connections evenly between its threads
    return m.with_window(cpu, hop_rss)
