"""The SigV4 micro-benchmark: `tensorwall_proxy.upstream.sign_sigv4` timed alone (timeit) on the
proxy's idle CPU, for one representative Converse call, in microseconds per signature."""

from __future__ import annotations

import timeit

from yarl import URL

from .paths import BEDROCK_REGION, PATHS
from .servers import pin_self


def sigv4_microbench(cpus: frozenset[int] | None, batches: int = 5) -> tuple[float, float]:
    """sign_sigv4 as the proxy calls it for a bedrock provider with AWS keys: botocore hashes the body,
    builds the canonical request, derives the signing key (four HMACs) and signs (a fifth). Microseconds
    per signature: timeit's best batch (of about 0.2 s each), and their median."""
    from botocore.credentials import Credentials

    from tensorwall_proxy.providers import UpstreamCall
    from tensorwall_proxy.upstream import sign_sigv4

    direct = PATHS["bedrock"].direct  # the lean upstream's /bedrock prefix stands for Bedrock's host
    url = URL(f"https://bedrock-runtime.{BEDROCK_REGION}.amazonaws.com{direct.path.removeprefix('/bedrock')}", encoded=True)
    call = UpstreamCall("POST", url, {"Content-Type": "application/json"}, direct.body(False))
    credentials = Credentials("AKID", "secret")
    if not sign_sigv4(credentials, BEDROCK_REGION, call).headers.get("Authorization", "").startswith("AWS4-HMAC"):
        raise RuntimeError("sign_sigv4 signed nothing")
    with pin_self(cpus):
        timer = timeit.Timer(lambda: sign_sigv4(credentials, BEDROCK_REGION, call))
        calls, _ = timer.autorange()
        per_call = sorted(t / calls * 1e6 for t in timer.repeat(repeat=batches, number=calls))
    return per_call[0], per_call[len(per_call) // 2]
