"""Micro-benchmarks: one thing a path adds, timed alone in this process (timeit), on the proxy's CPU.

The one there is times SigV4: `tensorwall_proxy.upstream.sign_sigv4` for one representative
Converse call, in microseconds per signature. It runs in every benchmark (a few seconds at most,
on the proxy's idle CPU before the load runs), whether or not the bedrock-sigv4 path is measured;
with that path, the SigV4 table sets it beside what signing costs the proxy per request.
"""

from __future__ import annotations

import os
import timeit
from collections.abc import Callable
from dataclasses import dataclass

from yarl import URL

from .wire import BEDROCK_MODEL_SEGMENT, BEDROCK_REGION, bedrock_body


@dataclass
class MicroBench:
    """Microseconds per call of one function: timeit's best batch, and the median of the batches."""

    what: str
    calls_per_batch: int
    batches: int
    best_us: float
    median_us: float
    where: str = ""  # the CPU it ran on

    def line(self) -> str:
        return (f"micro-benchmark: {self.what}: {self.best_us:,.1f} us per call (best of {self.batches} "
                f"batches of {self.calls_per_batch:,}; median {self.median_us:,.1f} us){self.where}")


def time_calls(what: str, call: Callable[[], object], batches: int = 5) -> MicroBench:
    """timeit: a batch size of about 0.2 s (autorange), then `batches` batches."""
    timer = timeit.Timer(call)
    calls, _ = timer.autorange()
    per_call = sorted(t / calls * 1e6 for t in timer.repeat(repeat=batches, number=calls))
    return MicroBench(what, calls, batches, per_call[0], per_call[len(per_call) // 2])


def sigv4_microbench() -> MicroBench:
    """SigV4 alone: `sign_sigv4` as the proxy calls it for every call of a bedrock provider with AWS keys.

    One representative call: the Converse URL on AWS's regional host (model id percent-encoded),
    the headers and the body the proxy sends for the bench's request. botocore hashes the body,
    builds the canonical request and the string to sign, derives the signing key (four HMACs) and
    signs (a fifth).
    """
    from botocore.credentials import Credentials

    from tensorwall_proxy.providers import UpstreamCall
    from tensorwall_proxy.upstream import sign_sigv4

    url = URL(f"https://bedrock-runtime.{BEDROCK_REGION}.amazonaws.com/model/{BEDROCK_MODEL_SEGMENT}/converse",
              encoded=True)
    call = UpstreamCall("POST", url, {"Content-Type": "application/json", "User-Agent": "tensorwall-proxy/0.1"},
                        bedrock_body(False))
    credentials = Credentials("AKID", "secret")
    signed = sign_sigv4(credentials, BEDROCK_REGION, call)
    if not signed.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256 Credential=AKID/"):
        raise RuntimeError(f"sign_sigv4 signed nothing: {dict(signed.headers)}")
    return time_calls("sign_sigv4 (botocore SigV4Auth) of one Converse call",
                      lambda: sign_sigv4(credentials, BEDROCK_REGION, call))


def run_pinned(microbench: Callable[[], MicroBench], cpus: frozenset[int] | None) -> MicroBench:
    """Run a micro-benchmark on `cpus` (the proxy's, idle between runs), then restore this process's CPUs."""
    before = os.sched_getaffinity(0) if cpus is not None else None
    try:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        result = microbench()
    finally:
        if before is not None:
            os.sched_setaffinity(0, before)
    result.where = f", on CPU {min(cpus)} (the proxy's)" if cpus is not None else ", unpinned"
    return result
