"""Measure lifecycle.tune_gc's choice again: ``gc.freeze()`` alone against freeze plus the raised
collector thresholds, in one run, on loopback, each variant loaded in turn.

    python scripts/gc_compare.py [--seconds 20] [--pairs 3] [--connections 50]

It starts the project's fake upstream (tests/fakes, in a subprocess of this script) and two
proxies: "freeze" with ``TENSORWALL_GC_THRESHOLD=700,10,10`` (Python's own thresholds) and
"raised" with the shipped ones. After a short warm-up of each, it loads them in turn (pairs in
alternating order: AB, BA, AB, ...) with wrk, unary chat completions at ``--connections``, and
reads each proxy's user + system CPU time from /proc/PID/stat around its load. It prints every
run, then per variant the median and range of CPU per request and of requests/s, and the load
average at each run (other work on the machine shows there). With two or more CPUs, the proxies
run on the last one and the upstream and wrk on the others. It takes about 2 x pairs x seconds, plus a few seconds of warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.fakes and the package, from the checkout this script is in

HOST = "127.0.0.1"
GATEWAY_KEY = "tw_gc-compare-key"
VARIANTS = {"freeze": "700,10,10", "raised": None}  # None: the shipped GC_THRESHOLDS
CLK_TCK = os.sysconf("SC_CLK_TCK")
WARM_UP_SECONDS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process from /proc/PID/stat (fields 14 and 15 of proc(5))."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def serve_upstream(port: int) -> None:
    """The fake upstream, forgetting what it received every second (it records every request)."""
    import uvloop

    from tests.fakes import FakeUpstream

    async def run() -> None:
        fake = FakeUpstream()
        await fake.start(HOST, port)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        while not stop.is_set():
            fake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        await fake.stop()

    uvloop.install()
    asyncio.run(run())


def pinned(argv: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if cpus else argv


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None:
            sys.exit(f"gc_compare: {process.args!r} exited ({process.returncode})")
        if time.monotonic() > deadline:
            sys.exit(f"gc_compare: {url} not ready after {timeout:g}s")
        time.sleep(0.1)


@dataclass
class Run:
    variant: str
    requests: int
    errors: int
    seconds: float
    cpu: float
    load: float  # 1-minute load average just before the run

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu / self.requests

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def wrk(port: int, seconds: float, connections: int, script: Path, cpus: str | None) -> tuple[int, int, float]:
    """Requests completed, errors (non-2xx, socket errors) and seconds of one wrk run."""
    argv = pinned(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script),
                   f"http://{HOST}:{port}/"], cpus)
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    found = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if found is None:
        sys.exit(f"gc_compare: cannot read wrk's output:\n{out}")
    elapsed = float(found.group(2)) / (1000 if found.group(3) == "ms" else 1)
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return int(found.group(1)), errors, elapsed


def summary(runs: list[Run], variant: str) -> str:
    mine = [r for r in runs if r.variant == variant]
    cpu = [r.cpu_ms_per_request for r in mine]
    rps = [r.rps for r in mine]
    return (f"{variant:<7} CPU ms/request median {statistics.median(cpu):.4f} (range {min(cpu):.4f}-{max(cpu):.4f}); "
            f"requests/s median {statistics.median(rps):,.0f} (range {min(rps):,.0f}-{max(rps):,.0f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="load per run (default 20)")
    parser.add_argument("--pairs", type=int, default=3, help="runs of each variant (default 3)")
    parser.add_argument("--connections", type=int, default=50, help="wrk's connections (default 50)")
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)  # the upstream subprocess
    args = parser.parse_args(argv)
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return 0
    if shutil.which("wrk") is None:
        sys.exit("gc_compare: needs wrk (Debian's wrk package)")
    from tensorwall_proxy.config import key_digest

    cpus = sorted(os.sched_getaffinity(0))
    proxy_cpus = str(cpus[-1]) if len(cpus) > 1 and shutil.which("taskset") else None
    load_cpus = ",".join(map(str, cpus[:-1])) if proxy_cpus else None
    work = Path(tempfile.mkdtemp(prefix="gc-compare-"))
    children: list[subprocess.Popen[bytes]] = []
    try:
        upstream_port = free_port()
        upstream = subprocess.Popen(pinned([sys.executable, __file__, "--serve-upstream", str(upstream_port)],
                                           load_cpus), cwd=REPO, stdout=subprocess.DEVNULL)
        children.append(upstream)
        config = work / "proxy.yaml"
        config.write_text(json.dumps({
            "gateway_keys": [key_digest(GATEWAY_KEY)],
            "providers": {"openai": {"base_url": f"http://{HOST}:{upstream_port}/openai/v1"}},
            "server": {"drain_seconds": 1},
        }))
        proxies: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        for variant, thresholds in VARIANTS.items():
            port = free_port()
            env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "TENSORWALL_GC_THRESHOLD")}
            if thresholds:
                env["TENSORWALL_GC_THRESHOLD"] = thresholds
            with (work / f"{variant}.out").open("wb") as out, (work / f"{variant}.err").open("wb") as err:
                process = subprocess.Popen(pinned([sys.executable, "-m", "tensorwall_proxy", "serve", "--config",
                                                   str(config), "--host", HOST, "--port", str(port)], proxy_cpus),
                                           cwd=REPO, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
            children.append(process)
            proxies[variant] = (process, port)
        for process, port in proxies.values():
            wait_ready(f"http://{HOST}:{port}/readyz", process)
        if f"thresholds {VARIANTS['freeze']} (from TENSORWALL_GC_THRESHOLD)" not in (work / "freeze.err").read_text():
            sys.exit("gc_compare: the freeze proxy did not report its thresholds")
        script = work / "chat.lua"
        body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hi."}]})
        script.write_text('wrk.method = "POST"\nwrk.path = "/v1/chat/completions"\n'
                          f"wrk.body = {json.dumps(body)}\n"
                          'wrk.headers["Content-Type"] = "application/json"\n'
                          f'wrk.headers["X-API-Key"] = "{GATEWAY_KEY}"\n'
                          'wrk.headers["Authorization"] = "Bearer sk-gc-compare"\n')
        print(f"gc_compare: {args.pairs} pairs of {args.seconds:g} s at c={args.connections}; proxies on CPU "
              f"{proxy_cpus or 'any'}, upstream and wrk on {load_cpus or 'any'}; freeze = "
              f"TENSORWALL_GC_THRESHOLD={VARIANTS['freeze']}, raised = the shipped thresholds", flush=True)
        for _, port in proxies.values():  # connections, caches and the first collections
            wrk(port, WARM_UP_SECONDS, args.connections, script, load_cpus)
        order = [name for i in range(args.pairs) for name in (("freeze", "raised") if i % 2 == 0
                                                                else ("raised", "freeze"))]
        runs: list[Run] = []
        for variant in order:
            process, port = proxies[variant]
            load = os.getloadavg()[0]
            before = cpu_seconds(process.pid)
            requests, errors, seconds = wrk(port, args.seconds, args.connections, script, load_cpus)
            run = Run(variant, requests, errors, seconds, cpu_seconds(process.pid) - before, load)
            runs.append(run)
            print(f"  {variant:<7} {run.requests:>8} requests {run.rps:>8,.0f}/s  CPU {run.cpu:6.2f} s  "
                  f"{run.cpu_ms_per_request:.4f} ms/request  errors {run.errors}  load {run.load:.2f}", flush=True)
        print(summary(runs, "freeze"))
        print(summary(runs, "raised"))
        freeze = statistics.median(r.cpu_ms_per_request for r in runs if r.variant == "freeze")
        raised = statistics.median(r.cpu_ms_per_request for r in runs if r.variant == "raised")
        loads = [r.load for r in runs]
        print(f"raised/freeze CPU per request (medians): {raised / freeze:.3f}; load average (1 min) at the runs "
              f"{min(loads):.2f}-{max(loads):.2f}")
        return 1 if any(r.errors for r in runs) else 0
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
