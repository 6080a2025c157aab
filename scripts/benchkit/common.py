"""What every part of the benchmark shares: where things listen, the keys, the prompt, the limits.

Also `percentile` and the optional uvloop import: the proxy runs on uvloop when it is installed, so
the lean upstream, the relay and the aiohttp load generator do too, and no side of a comparison
gets a faster event loop than another.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
    uvloop = None  # type: ignore[assignment]

__all__ = ["uvloop"]  # imported from here by the parts that run an event loop

HOST: Final = "127.0.0.1"
GATEWAY_KEY: Final = "bench-key"
CALLER_KEY: Final = "sk-bench"
REPO: Final = Path(__file__).resolve().parent.parent.parent
BENCH_SCRIPT: Final = REPO / "scripts" / "bench.py"  # also how the lean upstream and the relay start
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
STREAM_CHUNKS: Final = 20  # what the caller gets: role chunk, 18 content chunks, finish chunk
CONTENT_CHUNKS: Final = STREAM_CHUNKS - 2
PROMPT: Final = ("please answer with a short friendly benchmark greeting so that every run sends "
                 "exactly the same text")
REQUEST_TIMEOUT: Final = 15.0  # per request: a hung proxy fails the run instead of hanging it
SATURATED: Final = 0.85  # a process (or CPU) busier than this share of one core is the limit
# Busy time of processes not of this benchmark (or stolen by the hypervisor) above this share of one
# core during a run: the machine was not quiet, and that run's numbers are disturbed.
OTHER_LOAD: Final = 0.15
EVENTSTREAM: Final = "application/vnd.amazon.eventstream"  # Bedrock's stream content type

Json = dict[str, Any]


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0.0 when empty): the smallest value with at
    least q % of them at or below it."""
    if not ordered:
        return 0.0
    return ordered[max(1, min(len(ordered), math.ceil(q * len(ordered) / 100))) - 1]
