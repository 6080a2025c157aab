"""The wake-up probe: how long waking an idle CPU takes here (a VM's vCPUs can take milliseconds).

A one-byte ping-pong between a process on the load generator's CPU and one on the proxy's, with a
short pause after each reply so the partner's CPU goes idle, as the proxy's does between the
requests of a c=1 run. Its p99 is what a hop between CPUs can pay per crossing; the verdicts set
tail latencies against it. It runs before the load runs and again after them, and the verdicts
take the worse of the two (conditions on a shared host drift).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import time
from dataclasses import dataclass

from .common import percentile


@dataclass
class WakeProbe:
    between: str
    round_trips: int
    p50_us: float
    p99_us: float
    max_us: float

    def line(self) -> str:
        return (f"wake-up probe ({self.between}, {self.round_trips:,} one-byte round trips): "
                f"p50 {self.p50_us:,.0f} us, p99 {self.p99_us:,.0f} us, max {self.max_us:,.0f} us")


def _echo(sock: socket.socket, cpus: frozenset[int] | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends us with b"q"
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    while (data := sock.recv(1)) and data != b"q":
        sock.send(data)


def wake_probe(here: frozenset[int] | None, there: frozenset[int] | None, seconds: float = 1.0) -> WakeProbe:
    """Ping-pong one byte between two processes on the two CPUs, with a pause after each reply.

    The pause (0.1 ms of work) lets the partner's CPU go idle, as the proxy's does between the
    requests of a c=1 run; each round trip then includes one wake-up of that CPU.
    """
    mine, theirs = socket.socketpair()
    child = mp.get_context("fork").Process(target=_echo, args=(theirs, there), daemon=True)
    child.start()
    before = os.sched_getaffinity(0)
    samples: list[float] = []
    try:
        if here is not None:
            os.sched_setaffinity(0, here)
        deadline = time.perf_counter() + seconds
        while (start := time.perf_counter()) < deadline:
            mine.send(b"x")
            mine.recv(1)
            end = time.perf_counter()
            samples.append(end - start)
            while time.perf_counter() - end < 0.0001:
                pass
    finally:
        mine.send(b"q")
        child.join(timeout=5)
        os.sched_setaffinity(0, before)
        mine.close()
        theirs.close()
    samples.sort()
    between = "unpinned" if here is None or there is None else f"CPU {min(here)} <-> CPU {min(there)}"
    return WakeProbe(between, len(samples), percentile(samples, 50) * 1e6, percentile(samples, 99) * 1e6,
                     samples[-1] * 1e6)
