"""Benchmark: what tensorwall-proxy costs compared with calling the upstream directly.

    python scripts/bench.py [--path openai,anthropic,vertex,bedrock] [--seconds 4] [--concurrency 50]
                            [--upstream lean|fake] [--workers 2] [--json bench-results.json]
                            [--relay] [--no-pin]

What it does. It starts an upstream (by default a lean aiohttp server defined in this file, which
answers from pre-built bytes; `--upstream fake` uses tests/fakes instead, which is heavier and
records every request) and the proxy (`python -m tensorwall_proxy serve`) as subprocesses on free
127.0.0.1 ports, pinned to CPUs (printed at the top). Then, in the same run, it sends the same chat
request *direct* (to the upstream's own URL) and *through the proxy* (`/v1/chat/completions` with
`X-API-Key` and the caller's `Authorization: Bearer`), in four scenarios each:

    unary  c=1     one connection, one request after the other: latency p50/p99 and requests/s
    unary  c=N     N connections (default 50): requests/s, and the proxy's CPU per request
    stream c=1     20-chunk SSE streams (to the caller), each read to the end: streams/s and chunks/s
    stream c=N

`--relay` adds a third target, a bare aiohttp relay (same path, same bytes, no parsing, no
routing) on the proxy's CPU: the floor any aiohttp-based proxy pays for the extra hop.

The load comes from `--workers` processes, each with its own event loop (uvloop when installed)
and one keep-alive aiohttp ClientSession; a scenario's N connections are split between them. Each
run warms up (connections opened), then every worker starts its measured window at the same
instant (a barrier), and the parent samples the CPU time of the upstream and of the hop (proxy or
relay) from /proc over exactly that window.

Paths. A path (`--path`) is one way through the proxy: which model the caller asks for, how the
proxy's provider is configured, which URL, headers and body a direct call uses and how its answer
is checked, and which shape the lean upstream speaks. There are five:

    openai     model gpt-4o: the proxy passes the OpenAI request and answer through
    anthropic  model claude-3-5-sonnet-20241022: the caller still speaks OpenAI to the proxy, which
               translates to Anthropic's Messages API (POST /anthropic/v1/messages, x-api-key,
               anthropic-version) and the answer and stream events back to OpenAI's shapes
    vertex     model gemini-2.5-flash: the proxy translates to Vertex AI's Gemini API (POST
               /vertex/v1/projects/bench-project/locations/us-central1/publishers/google/models/
               gemini-2.5-flash:generateContent, or :streamGenerateContent?alt=sse for streams),
               forwarding the caller's Bearer key as the OAuth token, and the answer back
    bedrock    model bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0 (the `provider/model` form):
               the proxy translates to AWS Bedrock's Converse API (POST /bedrock/model/anthropic.
               claude-3-5-sonnet-20240620-v1%3A0/converse, the model id percent-encoded, or
               /converse-stream for streams, answered as a binary AWS event stream), forwarding the
               caller's Bearer key as a Bedrock API key (`Authorization: Bearer`), and the answer back
    bedrock-sigv4  the same calls (model bedrock-sigv4/..., under /bedrock-sigv4/model/...) from a
               bedrock provider with AWS keys in its YAML, so the proxy signs every call with
               botocore's SigV4 instead (the lean upstream checks the `AWS4-HMAC-SHA256` scheme, not
               the signature): the cost of signing, against `bedrock`. Not in the default run.

`--path` takes a comma-separated list and defaults to openai, anthropic, vertex and bedrock (so
`make bench` runs those, in about three minutes). A translating path always brings `openai` along
as its baseline: `--path vertex` runs openai and vertex, `--path openai` runs the passthrough
alone, and `--path bedrock-sigv4` runs openai, bedrock and bedrock-sigv4. All paths share one
upstream, one proxy process (configured with every path's provider) and one relay, and the
scenarios interleave the paths (unary c=1 for every path and target, then unary c=N, ...), so the
paths see the same conditions. Each path gets its own table; with more than one path, a last
"translation overhead" table sets each translating path's proxy CPU per request/stream and added
latency at c=1 against openai's, as a ratio and a difference: what the translation costs on top of
a passthrough hop.

SigV4. With `bedrock-sigv4`, a last table sets it against `bedrock` alone: the same Converse
calls, the same translation, a signature instead of an API key, so `bedrock-sigv4-bedrock` in its
CPU rows is what SigV4 costs the proxy per request (and per stream: one signature each). A
micro-benchmark before the runs times `tensorwall_proxy.upstream.sign_sigv4` alone with timeit on
the proxy's (idle) CPU, for one representative Converse call, in microseconds per signature; the
last line sets the two side by side. The difference in the proxy also holds what goes with a
signature there (the credentials frozen for each call, caches colder than in a tight loop).

How to read it.
- `proxy/direct` below 1 for rates and above 1 for latencies is the cost of the extra hop.
- `added ms` is proxy p50 - direct p50 (and p99): what one proxy hop adds. At c=1 nothing queues,
  so this is the hop itself: a second loopback round trip plus the proxy's work. Compare it with
  the relay column (`--relay`) before blaming the proxy's code.
- `CPU ms/req` is the hop process's own user+system time divided by the requests completed in the
  same window. It does not depend on whether this machine could generate enough load: one core of
  proxy serves about 1000 / (ms per request) requests per second.
- "who was busy" gives every process's CPU as a share of one core per run, and the "limit" lines
  say which one was saturated. When none was, the run waited on something else: on a VM usually
  the wake-up of an idle vCPU, which the "wake-up probe" measures (a 1-byte ping-pong between the
  generator's CPU and the proxy's). On 2 CPUs direct calls never cross CPUs (generator and
  upstream share one) while proxied ones cross four times per request, so slow wake-ups land on
  the proxy's numbers only; `--no-pin` lets the scheduler keep most hand-offs on a running CPU.
- Streams: the caller gets 20 OpenAI chunks (role, 18 contents, finish) and [DONE] on every path.
  openai: the proxy asks the upstream for the usage chunk (to count tokens) and drops it, so the
  upstream sends one event more through the proxy than direct. anthropic: the upstream sends the
  same 23 named events either way (message_start, content_block_start, 18 text_delta,
  content_block_stop, message_delta, message_stop), and a direct run's chunks/s counts those events.
  vertex: the upstream sends the same 18 SSE events either way, one Gemini response per word (the
  last one with finishReason and usageMetadata), CRLF-framed and with no terminator, as Google
  sends them; the proxy makes the role chunk and a content chunk of the first, a content chunk of
  each other, and a content and the finish chunk of the last, and adds [DONE] when the upstream's
  response ends. A direct run's chunks/s counts those 18 events.
  bedrock: the upstream sends the same 22 event-stream messages either way (messageStart, 18
  contentBlockDelta, one per word, contentBlockStop, messageStop, metadata with the usage), each
  with its prelude, headers and CRCs; the proxy cuts them with botocore's parser and makes the role
  chunk of messageStart, a content chunk of each delta and the finish chunk of messageStop, and
  ends with [DONE] on metadata. A direct run cuts them by their length prefixes (cheap: it leaves
  the CRCs to the proxy, and to the lean upstream, which decodes its own frames with botocore's
  EventStreamBuffer once at start-up), and its chunks/s counts those 22 messages.
- RSS is of the one proxy (and relay) process that served every path: idle before the first run,
  and after the last.

Every run is bounded (`--warmup` + `--seconds` each): by default 4 scenarios x 4 paths x 2 targets
(direct, proxy) = 32 runs of 5 s (1 s warm-up + 4 s measured; the default was 5 s measured before
bedrock joined), under three minutes in all; `--relay` makes it 48 runs, `--path bedrock-sigv4`
24. Results, the translation overhead, the SigV4 table and the micro-benchmark included, also go to
`--json` (default ./bench-results.json).

`--upstream fake` knows no `/bedrock-sigv4` prefix: measure bedrock-sigv4 with the lean upstream.

Adding a path: an entry in `PATHS` and its lean handler in `LEAN_SHAPES`; a path whose streams go
to another URL than its unary calls (vertex, bedrock) names it in `direct_stream_path`; a variant of
a path in one setting (bedrock-sigv4) names that path in `variant_of`, and may time what the
setting adds alone in `microbench`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import multiprocessing as mp
import os
import platform
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import timeit
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import IO, Any, Final
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp import web
from yarl import URL

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
    uvloop = None  # type: ignore[assignment]

HOST: Final = "127.0.0.1"
GATEWAY_KEY: Final = "bench-key"
CALLER_KEY: Final = "sk-bench"
REPO: Final = Path(__file__).resolve().parent.parent
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
STREAM_CHUNKS: Final = 20
CONTENT_CHUNKS: Final = STREAM_CHUNKS - 2  # the content chunks between the role chunk and the finish chunk
ANTHROPIC_VERSION: Final = "2023-06-01"  # the version the proxy pins (wire-formats §2)
VERTEX_PROJECT: Final = "bench-project"
VERTEX_LOCATION: Final = "us-central1"
VERTEX_MODEL: Final = "gemini-2.5-flash"
# What the proxy calls for VERTEX_MODEL under the `/vertex` base URL, up to the method (wire-formats §4.1).
VERTEX_MODEL_PATH: Final = (f"/vertex/v1/projects/{VERTEX_PROJECT}/locations/{VERTEX_LOCATION}"
                            f"/publishers/google/models/{VERTEX_MODEL}")
BEDROCK_REGION: Final = "us-east-1"
BEDROCK_MODEL: Final = "anthropic.claude-3-5-sonnet-20240620-v1:0"
# The model id as one path segment, every reserved character percent-encoded: `…v1%3A0` (wire-formats §5.1).
BEDROCK_MODEL_SEGMENT: Final = quote(BEDROCK_MODEL, safe="")
BEDROCK_SIGV4_KEY: Final = ("AKIDBENCH", "bench-secret")  # the SigV4 variant's YAML keys (never checked)
# 17 words: the fake echoes "[openai] " + this, one chunk per word, so its stream is role chunk +
# 18 content chunks + finish chunk = 20 chunks, the same count as the lean upstream's.
PROMPT: Final = ("please answer with a short friendly benchmark greeting so that every run sends "
                 "exactly the same text")
REQUEST_TIMEOUT: Final = 15.0  # per request: a hung proxy fails the run instead of hanging it
SATURATED: Final = 0.85  # a process (or CPU) busier than this share of one core is the limit
SLOW_WAKEUP_MS: Final = 1.0  # a probe p99 above this means wake-ups, not code, shape tail latency

Json = dict[str, Any]
Check = Callable[[bytes, bool], tuple[int, str | None]]  # (body, stream?) -> (chunks, problem or None)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --------------------------------------------------------------------------------------------------
# AWS event stream: Bedrock's binary stream framing (wire-formats §5.4), string headers only

EVENTSTREAM: Final = "application/vnd.amazon.eventstream"
_PRELUDE: Final = 12  # total length, headers length, prelude CRC: three big-endian uint32


def event_header(name: str, value: str) -> bytes:
    """One string header: name length (uint8), name, value type 7 (string), value length (uint16), value."""
    raw_name, raw_value = name.encode(), value.encode()
    return struct.pack(">B", len(raw_name)) + raw_name + struct.pack(">BH", 7, len(raw_value)) + raw_value


def encode_event(event_type: str, payload: Json) -> bytes:
    """One event message: the prelude and its CRC32, the three headers, the JSON payload, the CRC32
    of everything before it. botocore has a decoder and no encoder; `check_event_frames` checks this one."""
    headers = (event_header(":event-type", event_type) + event_header(":content-type", "application/json")
               + event_header(":message-type", "event"))
    body = orjson.dumps(payload)
    prelude = struct.pack(">II", _PRELUDE + len(headers) + len(body) + 4, len(headers))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + headers + body
    return message + struct.pack(">I", zlib.crc32(message))


def check_event_frames(frames: Sequence[bytes], events: Sequence[tuple[str, Json]]) -> None:
    """Decode `frames` with botocore's own parser (CRCs checked) and insist they read back as `events`."""
    from botocore.eventstream import EventStreamBuffer

    # wire-formats §5.4's worked size: a messageStop of these headers and payload is 122 bytes.
    if len(encode_event("messageStop", {"stopReason": "end_turn"})) != 122:
        raise RuntimeError("event-stream encoder: a messageStop is not the 122 bytes of wire-formats §5.4")
    buffer = EventStreamBuffer()
    buffer.add_data(b"".join(frames))
    decoded = [(message.headers, orjson.loads(message.payload)) for message in buffer]
    expected = [({":event-type": name, ":content-type": "application/json", ":message-type": "event"}, payload)
                for name, payload in events]
    if decoded != expected:
        raise RuntimeError(f"event-stream encoder: botocore reads {decoded[:2]}..., not {expected[:2]}...")


def event_frames(data: bytes) -> list[bytes] | None:
    """`data` cut into messages by their length prefixes (CRCs unchecked), or None when it is not
    whole messages."""
    frames: list[bytes] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _PRELUDE:
            return None
        (total,) = struct.unpack_from(">I", data, offset)
        if total < _PRELUDE + 4 or offset + total > len(data):
            return None
        frames.append(data[offset:offset + total])
        offset += total
    return frames


_TEXT_DELTA: Final = event_header(":event-type", "contentBlockDelta")
_METADATA: Final = event_header(":event-type", "metadata")


# --------------------------------------------------------------------------------------------------
# Micro-benchmarks: one thing a path adds, timed alone in this process


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
    """Run a micro-benchmark on `cpus` (the proxy's, idle between runs), then unpin this process."""
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


# --------------------------------------------------------------------------------------------------
# Paths: one way through the proxy, and what the upstream must look like for it


def openai_body(stream: bool, model: str = "gpt-4o") -> bytes:
    """The chat request every caller sends the proxy: OpenAI's shape, one short user message."""
    body: Json = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 64}
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


def check_openai(data: bytes, stream: bool) -> tuple[int, str | None]:
    """Whether an OpenAI-shaped answer is whole: a chat.completion, or 20 chunks and [DONE]."""
    if not stream:
        ok = data.startswith(b"{") and b'"choices"' in data
        return 0, None if ok else f"unexpected body {data[:200]!r}"
    # Counting `data: ` prefixes is cheap, so the generator spends its CPU on the load itself.
    chunks = data.count(b"data: ") - 1
    if chunks != STREAM_CHUNKS or not data.endswith(b"data: [DONE]\n\n"):
        return chunks, f"stream of {chunks} chunks ending {data[-60:]!r}"
    return chunks, None


def anthropic_body(stream: bool) -> bytes:
    """A direct call's Messages request: what the proxy itself sends for `openai_body`'s request.

    The same body (the user's text as one text block, the caller's max_tokens) keeps direct and
    proxied runs asking the upstream for the same answer, and the relay's bytes those of the proxy.
    """
    body: Json = {"model": PATHS["anthropic"].model, "max_tokens": 64,
                  "messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}]}
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


def check_anthropic(data: bytes, stream: bool) -> tuple[int, str | None]:
    """Whether an Anthropic answer is whole: a message, or 18 text deltas ending with message_stop.

    The chunks counted are all the named events received (23 from the lean upstream), not only the
    text deltas: that is what the receiver of a direct stream has to read.
    """
    if not stream:
        ok = data.startswith(b"{") and b'"content"' in data and b'"stop_reason"' in data
        return 0, None if ok else f"unexpected body {data[:200]!r}"
    events = data.count(b"event: ")
    deltas = data.count(b"text_delta")
    if deltas != CONTENT_CHUNKS or b"event: message_stop" not in data[-80:]:
        return events, f"stream of {events} events, {deltas} text deltas, ending {data[-60:]!r}"
    return events, None


def vertex_body(_stream: bool) -> bytes:
    """A direct call's generateContent request: what the proxy itself sends for `openai_body`'s request.

    The user's text as one part and the caller's max_tokens as maxOutputTokens, as for anthropic.
    A stream asks with the same body: the method in the URL (`direct_stream_path`) makes it one.
    """
    return orjson.dumps({"contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
                         "generationConfig": {"maxOutputTokens": 64}})


def check_vertex(data: bytes, stream: bool) -> tuple[int, str | None]:
    """Whether a Gemini answer is whole: a response with a finishReason, or 18 events, the last finished.

    A Gemini stream has no terminator: the last event is the one with the finishReason. The chunks
    counted are the events received (18 from the lean upstream).
    """
    if not stream:
        ok = data.startswith(b"{") and b'"candidates"' in data and b'"finishReason"' in data
        return 0, None if ok else f"unexpected body {data[:200]!r}"
    events = data.count(b"data: ")
    last = data[data.rfind(b"data: "):]
    if events != CONTENT_CHUNKS or b'"finishReason"' not in last or not data.endswith(b"\r\n\r\n"):
        return events, f"stream of {events} events ending {data[-60:]!r}"
    return events, None


def bedrock_body(_stream: bool) -> bytes:
    """A direct call's Converse request: what the proxy itself sends for `openai_body`'s request.

    The user's text as one text block and the caller's max_tokens as inferenceConfig.maxTokens. A
    stream asks with the same body: the operation in the URL (converse-stream) makes it one.
    """
    return orjson.dumps({"messages": [{"role": "user", "content": [{"text": PROMPT}]}],
                         "inferenceConfig": {"maxTokens": 64}})


def check_bedrock(data: bytes, stream: bool) -> tuple[int, str | None]:
    """Whether a Bedrock answer is whole: a Converse response, or event-stream messages that add up
    to the body, 18 of them text deltas, the last one metadata.

    The messages are cut by their length prefixes, which is cheap; their CRCs are left to the proxy,
    which parses every stream with botocore, and to the lean upstream's start-up self-check. The
    chunks counted are the messages received (22 from the lean upstream).
    """
    if not stream:
        ok = data.startswith(b"{") and b'"output"' in data and b'"stopReason"' in data
        return 0, None if ok else f"unexpected body {data[:200]!r}"
    frames = event_frames(data)
    if frames is None:
        return 0, f"{len(data)} bytes that are not whole event-stream messages, ending {data[-60:]!r}"
    deltas = sum(_TEXT_DELTA in frame for frame in frames)
    if deltas != CONTENT_CHUNKS or not frames or _METADATA not in frames[-1]:
        return len(frames), f"stream of {len(frames)} messages, {deltas} text deltas, ending {data[-60:]!r}"
    return len(frames), None


@dataclass(frozen=True)
class BenchPath:
    """What one path needs: the caller's model, the proxy config, the direct call, the lean shape."""

    name: str
    model: str
    provider_config: Callable[[str], Json]  # upstream base URL -> `providers:` section of the config
    direct_path: str  # the upstream URL path a direct call uses (the one the proxy calls)
    direct_headers: dict[str, str]
    direct_body: Callable[[bool], bytes]  # stream? -> the body a direct call sends
    direct_check: Check
    lean_routes: tuple[str, ...]  # upstream paths the lean server answers
    lean_shape: str  # key of LEAN_SHAPES
    direct_stream_path: str | None = None  # a stream's URL path (and query), when not direct_path
    variant_of: str | None = None  # the path this one differs from in one setting: run and compared with it
    default: bool = True  # part of the default run
    microbench: Callable[[], MicroBench] | None = None  # what the path adds, timed alone, run with it

    def direct_target(self, stream: bool) -> str:
        """The URL path (and query) a direct call, unary or streamed, sends its request to."""
        return self.direct_stream_path if stream and self.direct_stream_path else self.direct_path


# A SigV4 call's headers for direct runs (the lean upstream checks the scheme only; the proxy's
# own signatures are of this size).
SIGV4_SAMPLE_HEADERS: Final = {
    "Authorization": (f"AWS4-HMAC-SHA256 Credential={BEDROCK_SIGV4_KEY[0]}/20240620/{BEDROCK_REGION}/bedrock/"
                      f"aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature={'0' * 64}"),
    "X-Amz-Date": "20240620T120000Z",
}


def bedrock_path(name: str, provider: Json, auth_headers: dict[str, str], *,
                 variant_of: str | None = None, default: bool = True,
                 microbench: Callable[[], MicroBench] | None = None) -> BenchPath:
    """A Converse path: the provider `name` (extra settings `provider`) under the upstream's `/name`.

    The caller asks for `name/<model id>`, which the `provider/model` form routes to that provider
    with the model id as is; the proxy calls `/name/model/<model id percent-encoded>/converse`. The
    lean upstream's shape of the same name checks how the call is authenticated.
    """
    model_path = f"/{name}/model/{BEDROCK_MODEL_SEGMENT}"
    # aiohttp routes on the decoded path (`…v1:0`); the lean handler checks the raw one itself.
    route = f"/{name}/model/{BEDROCK_MODEL}"
    return BenchPath(
        name=name,
        model=f"{name}/{BEDROCK_MODEL}",
        provider_config=lambda base: {name: {**provider, "region": BEDROCK_REGION, "base_url": f"{base}/{name}"}},
        direct_path=f"{model_path}/converse",
        direct_headers={**auth_headers, "Content-Type": "application/json"},
        direct_body=bedrock_body,
        direct_check=check_bedrock,
        lean_routes=(f"{route}/converse", f"{route}/converse-stream"),
        lean_shape=name,
        direct_stream_path=f"{model_path}/converse-stream",
        variant_of=variant_of,
        default=default,
        microbench=microbench,
    )


PATHS: Final[dict[str, BenchPath]] = {
    "openai": BenchPath(
        name="openai",
        model="gpt-4o",  # the built-in pattern `gpt-*` sends it to the openai provider
        provider_config=lambda base: {"openai": {"base_url": f"{base}/openai/v1"}},
        direct_path="/openai/v1/chat/completions",
        # The upstream sees the same key the proxy forwards from the caller.
        direct_headers={"Authorization": f"Bearer {CALLER_KEY}", "Content-Type": "application/json"},
        direct_body=openai_body,
        direct_check=check_openai,
        lean_routes=("/openai/v1/chat/completions", "/v1/chat/completions"),
        lean_shape="openai",
    ),
    "anthropic": BenchPath(
        name="anthropic",
        model="claude-3-5-sonnet-20241022",  # the built-in pattern `claude-*` sends it to anthropic
        provider_config=lambda base: {"anthropic": {"base_url": f"{base}/anthropic/v1"}},
        direct_path="/anthropic/v1/messages",
        # The proxy forwards the caller's Bearer key as Anthropic's x-api-key, with a pinned version.
        direct_headers={"x-api-key": CALLER_KEY, "anthropic-version": ANTHROPIC_VERSION,
                        "Content-Type": "application/json"},
        direct_body=anthropic_body,
        direct_check=check_anthropic,
        lean_routes=("/anthropic/v1/messages",),
        lean_shape="anthropic",
    ),
    "vertex": BenchPath(
        name="vertex",
        model=VERTEX_MODEL,  # the built-in pattern `gemini-*` sends it to vertex
        provider_config=lambda base: {"vertex": {"project": VERTEX_PROJECT, "location": VERTEX_LOCATION,
                                                 "base_url": f"{base}/vertex"}},
        direct_path=f"{VERTEX_MODEL_PATH}:generateContent",
        # The proxy forwards the caller's Bearer key as the OAuth access token.
        direct_headers={"Authorization": f"Bearer {CALLER_KEY}", "Content-Type": "application/json"},
        direct_body=vertex_body,
        direct_check=check_vertex,
        # aiohttp routes on the path alone: the lean handler checks `alt=sse` itself.
        lean_routes=(f"{VERTEX_MODEL_PATH}:generateContent", f"{VERTEX_MODEL_PATH}:streamGenerateContent"),
        lean_shape="vertex",
        direct_stream_path=f"{VERTEX_MODEL_PATH}:streamGenerateContent?alt=sse",
    ),
    # The proxy forwards the caller's Bearer key as a Bedrock API key (`Authorization: Bearer`).
    "bedrock": bedrock_path("bedrock", {}, {"Authorization": f"Bearer {CALLER_KEY}"}),
    # YAML AWS keys: the proxy signs every call with botocore's SigV4, whatever the caller sends.
    "bedrock-sigv4": bedrock_path(
        "bedrock-sigv4",
        {"type": "bedrock", "aws_access_key_id": BEDROCK_SIGV4_KEY[0], "aws_secret_access_key": BEDROCK_SIGV4_KEY[1]},
        SIGV4_SAMPLE_HEADERS, variant_of="bedrock", default=False,
        microbench=sigv4_microbench),
}
BASELINE: Final = "openai"  # the passthrough every translating path is compared with


def proxy_config(paths: Sequence[BenchPath], upstream_base: str) -> str:
    """The proxy's YAML (JSON is YAML): one gateway key, every path's provider, short timeouts."""
    providers: Json = {}
    for path in paths:
        providers.update(path.provider_config(upstream_base))
    config = {
        "gateway_keys": [GATEWAY_KEY],
        "providers": providers,
        "timeouts": {"connect": 5, "first_byte": 30, "idle": 30, "total": 60},
        # The default SIGTERM drain is 60 s; the benchmark has nothing in flight when it stops.
        "server": {"drain_seconds": 1},
    }
    return json.dumps(config, indent=2)


# --------------------------------------------------------------------------------------------------
# The lean upstream: answers from bytes built once, so the upstream costs as little as it can


_LEAN_ID: Final = "chatcmpl-bench00000000000000000000000"
_LEAN_CREATED: Final = 1715367049
_LEAN_WORDS: Final = ("Hello", "there,", "this", "is", "a", "fixed", "answer", "from", "the", "lean",
                      "benchmark", "upstream,", "eighteen", "words", "long,", "one", "per", "chunk.")
_USAGE: Final = {"prompt_tokens": 19, "completion_tokens": len(_LEAN_WORDS), "total_tokens": 19 + len(_LEAN_WORDS)}


def _sse(data: Json | str) -> bytes:
    payload = data.encode() if isinstance(data, str) else orjson.dumps(data)
    return b"data: " + payload + b"\n\n"


def _stream_response() -> web.StreamResponse:
    return web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})


def lean_openai_completion() -> bytes:
    """A small, complete `chat.completion` body."""
    return orjson.dumps({
        "id": _LEAN_ID, "object": "chat.completion", "created": _LEAN_CREATED, "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(_LEAN_WORDS),
                                             "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": _USAGE, "system_fingerprint": "fp_bench0001",
    })


def lean_openai_stream() -> tuple[list[bytes], bytes]:
    """The 20 events of a stream (role, 18 contents, finish), and the usage event sent on request."""
    base: Json = {"id": _LEAN_ID, "object": "chat.completion.chunk", "created": _LEAN_CREATED,
                  "model": "gpt-4o", "system_fingerprint": "fp_bench0001"}

    def chunk(delta: Json, finish: str | None = None) -> bytes:
        return _sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    words = [w if i == 0 else " " + w for i, w in enumerate(_LEAN_WORDS)]
    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": w}) for w in words]
    events.append(chunk({}, "stop"))
    assert len(events) == STREAM_CHUNKS
    return events, _sse({**base, "choices": [], "usage": _USAGE})


def lean_openai_handler() -> Handler:
    """OpenAI's chat endpoint from fixed bytes; checks only what a real one refuses first (the key)."""
    completion = lean_openai_completion()
    events, usage_event = lean_openai_stream()
    done = _sse("[DONE]")
    unauthorized = orjson.dumps({"error": {"message": "missing bearer key", "type": "invalid_request_error",
                                           "param": None, "code": "invalid_api_key"}})

    async def chat(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return web.Response(status=401, body=unauthorized, content_type="application/json")
        body = orjson.loads(raw)
        if body.get("stream") is not True:
            return web.Response(body=completion, content_type="application/json")
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        response = _stream_response()
        await response.prepare(request)
        # One write per event, as a real streaming server sends them (the proxy sees real framing).
        for event in events:
            await response.write(event)
        if include_usage:  # the proxy asks for it on every stream, to count tokens
            await response.write(usage_event)
        await response.write(done)
        return response

    return chat


_LEAN_MSG_ID: Final = "msg_bench000000000000000000"
_ANTHROPIC_USAGE: Final = {"input_tokens": 19, "output_tokens": len(_LEAN_WORDS)}


def _named(event: str, data: Json) -> bytes:
    """One of Anthropic's named SSE events: the type in `event:` and again in the data."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps({"type": event, **data}) + b"\n\n"


def lean_anthropic_message() -> bytes:
    """A small, complete Messages answer: one text block, as Anthropic returns it."""
    return orjson.dumps({
        "id": _LEAN_MSG_ID, "type": "message", "role": "assistant", "model": PATHS["anthropic"].model,
        "content": [{"type": "text", "text": " ".join(_LEAN_WORDS)}],
        "stop_reason": "end_turn", "stop_sequence": None, "usage": _ANTHROPIC_USAGE,
    })


def lean_anthropic_stream() -> list[bytes]:
    """The 23 named events of a text answer: one text_delta per word, as the openai stream's contents.

    The proxy turns message_start into the role chunk, each text_delta into a content chunk and
    message_delta into the finish chunk; content_block_start (empty text), content_block_stop and
    message_stop (which ends the stream) yield none. So the caller gets the openai path's 20 chunks.
    """
    words = [w if i == 0 else " " + w for i, w in enumerate(_LEAN_WORDS)]
    message: Json = {"id": _LEAN_MSG_ID, "type": "message", "role": "assistant", "model": PATHS["anthropic"].model,
                     "content": [], "stop_reason": None, "stop_sequence": None,
                     "usage": {"input_tokens": _ANTHROPIC_USAGE["input_tokens"], "output_tokens": 1}}
    events = [_named("message_start", {"message": message}),
              _named("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})]
    events += [_named("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": w}}) for w in words]
    events += [_named("content_block_stop", {"index": 0}),
               _named("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                        "usage": {"output_tokens": _ANTHROPIC_USAGE["output_tokens"]}}),
               _named("message_stop", {})]
    assert sum(b"text_delta" in e for e in events) == CONTENT_CHUNKS
    return events


def lean_anthropic_handler() -> Handler:
    """Anthropic's Messages endpoint from fixed bytes; refuses, as a real one does first, a request
    without a key or without anthropic-version (in Anthropic's error envelope)."""
    message = lean_anthropic_message()
    events = lean_anthropic_stream()

    def error(status: int, kind: str, text: str) -> web.Response:
        body = orjson.dumps({"type": "error", "error": {"type": kind, "message": text}})
        return web.Response(status=status, body=body, content_type="application/json")

    async def messages(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        if not request.headers.get("x-api-key"):
            return error(401, "authentication_error", "x-api-key header is required")
        if not request.headers.get("anthropic-version"):
            return error(400, "invalid_request_error", "anthropic-version: header is required")
        if orjson.loads(raw).get("stream") is not True:
            return web.Response(body=message, content_type="application/json")
        response = _stream_response()
        await response.prepare(request)
        for event in events:  # one write per event, as for openai
            await response.write(event)
        return response

    return messages


_LEAN_RESPONSE_ID: Final = "bench0000000000000000000"
_GEMINI_USAGE: Final = {"promptTokenCount": 19, "candidatesTokenCount": len(_LEAN_WORDS),
                        "totalTokenCount": 19 + len(_LEAN_WORDS)}


def _gemini(parts: list[Json], finish: bool = False) -> Json:
    """One GenerateContentResponse of one candidate; the finished one carries the usage."""
    candidate: Json = {"index": 0, "content": {"role": "model", "parts": parts}}
    if not finish:
        return {"candidates": [candidate], "modelVersion": VERTEX_MODEL, "responseId": _LEAN_RESPONSE_ID}
    return {"candidates": [{**candidate, "finishReason": "STOP"}], "usageMetadata": _GEMINI_USAGE,
            "modelVersion": VERTEX_MODEL, "responseId": _LEAN_RESPONSE_ID}


def lean_vertex_response() -> bytes:
    """A small, complete generateContent answer: one text part, as Vertex returns it."""
    return orjson.dumps(_gemini([{"text": " ".join(_LEAN_WORDS)}], finish=True))


def lean_vertex_stream() -> list[bytes]:
    """The 18 events of an `alt=sse` stream: one response per word carrying only its new text.

    The last one also carries finishReason and usageMetadata, and nothing follows it: the stream
    ends when the response does. Google frames events with CRLF. The proxy turns the first event
    into the role chunk and a content chunk, every other into a content chunk, and the last into a
    content chunk and the finish chunk: the openai path's 20 chunks.
    """
    words = [w if i == 0 else " " + w for i, w in enumerate(_LEAN_WORDS)]
    events = [b"data: " + orjson.dumps(_gemini([{"text": w}], finish=i == len(words) - 1)) + b"\r\n\r\n"
              for i, w in enumerate(words)]
    assert len(events) == CONTENT_CHUNKS
    return events


def lean_vertex_handler() -> Handler:
    """Vertex's generateContent and streamGenerateContent from fixed bytes; refuses, in Google's
    error envelope, a request without a Bearer token (as a real one does first) and a stream
    without `alt=sse` (which a real one would answer as a JSON array, a shape this one lacks)."""
    response_body = lean_vertex_response()
    events = lean_vertex_stream()

    def error(status: int, google_status: str, text: str) -> web.Response:
        body = orjson.dumps({"error": {"code": status, "message": text, "status": google_status}})
        return web.Response(status=status, body=body, content_type="application/json")

    async def generate(request: web.Request) -> web.StreamResponse:
        await request.read()
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return error(401, "UNAUTHENTICATED", "Request is missing required authentication credential.")
        if not request.path.endswith(":streamGenerateContent"):
            return web.Response(body=response_body, content_type="application/json")
        if request.query.get("alt") != "sse":
            return error(400, "INVALID_ARGUMENT", "the lean upstream streams only with ?alt=sse")
        response = _stream_response()
        await response.prepare(request)
        for event in events:  # one write per event, as for openai
            await response.write(event)
        return response

    return generate


_BEDROCK_USAGE: Final = {"inputTokens": 19, "outputTokens": len(_LEAN_WORDS), "totalTokens": 19 + len(_LEAN_WORDS)}


def lean_bedrock_response() -> bytes:
    """A small, complete Converse answer: one text block, with the metrics the service model requires."""
    return orjson.dumps({"output": {"message": {"role": "assistant", "content": [{"text": " ".join(_LEAN_WORDS)}]}},
                         "stopReason": "end_turn", "usage": _BEDROCK_USAGE, "metrics": {"latencyMs": 1}})


def lean_bedrock_stream() -> list[bytes]:
    """The 22 event-stream messages of a ConverseStream text answer, checked with botocore's parser.

    messageStart, one contentBlockDelta per word (no contentBlockStart: Bedrock often opens a text
    block with its first delta), contentBlockStop, messageStop, then metadata with the usage. The
    proxy turns messageStart into the role chunk, each delta into a content chunk and messageStop
    into the finish chunk; contentBlockStop yields none, and metadata ends the stream ([DONE]; the
    caller asked for no usage chunk). So the caller gets the openai path's 20 chunks.
    """
    words = [w if i == 0 else " " + w for i, w in enumerate(_LEAN_WORDS)]
    events: list[tuple[str, Json]] = [("messageStart", {"role": "assistant"})]
    events += [("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": w}}) for w in words]
    events += [("contentBlockStop", {"contentBlockIndex": 0}), ("messageStop", {"stopReason": "end_turn"}),
               ("metadata", {"usage": _BEDROCK_USAGE, "metrics": {"latencyMs": 1}})]
    frames = [encode_event(name, payload) for name, payload in events]
    check_event_frames(frames, events)  # once, at start-up: a broken encoder stops the upstream here
    assert sum(name == "contentBlockDelta" for name, _ in events) == CONTENT_CHUNKS
    return frames


def lean_bedrock_handler(scheme: str) -> Handler:
    """Bedrock's Converse and ConverseStream from fixed bytes. Refuses, in AWS's error shape
    (x-amzn-ErrorType, `{"message"}`), a call whose Authorization does not start with `scheme`
    (`Bearer ` for an API key, `AWS4-HMAC-SHA256 ` for SigV4, whose signature is not verified),
    and one whose raw path does not carry the model id percent-encoded (the `%3A` that is signed)."""
    response_body = lean_bedrock_response()
    frames = lean_bedrock_stream()

    def error(status: int, kind: str, text: str) -> web.Response:
        return web.Response(status=status, body=orjson.dumps({"message": text}), content_type="application/json",
                            headers={"x-amzn-ErrorType": kind})

    async def converse(request: web.Request) -> web.StreamResponse:
        await request.read()
        if not request.headers.get("Authorization", "").startswith(scheme):
            return error(403, "AccessDeniedException", f"the lean upstream wants an Authorization of {scheme.strip()}")
        if f"/model/{BEDROCK_MODEL_SEGMENT}/" not in request.raw_path:
            return error(400, "ValidationException", f"the model id is not percent-encoded in {request.raw_path}")
        if not request.path.endswith("/converse-stream"):
            return web.Response(body=response_body, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": EVENTSTREAM})
        await response.prepare(request)
        for frame in frames:  # one write per message, as for openai
            await response.write(frame)
        return response

    return converse


LEAN_SHAPES: Final[dict[str, Callable[[], Handler]]] = {
    "openai": lean_openai_handler,
    "anthropic": lean_anthropic_handler,
    "vertex": lean_vertex_handler,
    "bedrock": lambda: lean_bedrock_handler("Bearer "),
    "bedrock-sigv4": lambda: lean_bedrock_handler("AWS4-HMAC-SHA256 "),
}


def lean_app(paths: Sequence[BenchPath]) -> web.Application:
    """One upstream for every path: each path's routes answered by its shape's handler."""
    app = web.Application()
    for path in paths:
        handler = LEAN_SHAPES[path.lean_shape]()
        for route in path.lean_routes:
            app.router.add_post(route, handler)
    return app


def run_app(app: web.Application, port: int) -> int:
    """Serve an app on 127.0.0.1:port until SIGTERM/SIGINT (uvloop when installed, like the proxy)."""
    if uvloop is not None:
        uvloop.install()
    web.run_app(app, host=HOST, port=port, access_log=None, print=None, handle_signals=True, shutdown_timeout=1)
    return 0


# --------------------------------------------------------------------------------------------------
# The bare relay (--relay): the least an aiohttp hop can do, as a yardstick for the proxy


RELAY_SESSION: Final = web.AppKey("relay_session", aiohttp.ClientSession)
# Headers that describe one connection or one body, not the request: aiohttp sets its own.
_HOP_HEADERS: Final = frozenset({"host", "content-length", "connection", "keep-alive", "transfer-encoding"})
_STREAMED: Final = frozenset({"text/event-stream", EVENTSTREAM})


def bare_relay_app(upstream_base: str) -> web.Application:
    """Same path, same bytes, same headers to the upstream; the answer back as it arrives."""

    async def session(app: web.Application) -> AsyncIterator[None]:
        # Pooled like the proxy's session, so the relay pays the same per-request costs, no more.
        connector = aiohttp.TCPConnector(limit=1024, limit_per_host=0)
        app[RELAY_SESSION] = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))
        yield
        await app[RELAY_SESSION].close()

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        # The path as received, still percent-encoded (`…v1%3A0` stays as it came).
        url = URL(upstream_base + request.path_qs, encoded=True)
        async with request.app[RELAY_SESSION].post(url, data=body, headers=headers) as upstream:
            if upstream.content_type not in _STREAMED:
                return web.Response(status=upstream.status, body=await upstream.read(),
                                    content_type=upstream.content_type)
            response = web.StreamResponse(status=upstream.status, headers={"Content-Type": upstream.content_type})
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            return response

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_post("/{tail:.*}", relay)
    return app


# --------------------------------------------------------------------------------------------------
# Processes: start, pin, wait until ready, stop; CPU and memory from /proc


@dataclass(frozen=True)
class Pinning:
    """Which CPUs each party may run on (None: not pinned), and why, in one line."""

    upstream: frozenset[int] | None
    proxy: frozenset[int] | None  # the proxy, and the bare relay when there is one
    generator: frozenset[int] | None
    description: str


def available_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def plan_pinning(enabled: bool) -> Pinning:
    """Give the proxy a CPU of its own whenever there are two; the load shares with the upstream."""
    cpus = available_cpus()
    if not enabled or len(cpus) < 2 or not hasattr(os, "sched_setaffinity"):
        why = "disabled by --no-pin" if not enabled else f"{len(cpus)} CPU(s), or no sched_setaffinity"
        return Pinning(None, None, None, f"no pinning ({why}): all processes share every CPU")
    upstream, proxy, rest = cpus[0], cpus[1], cpus[2:]
    if rest:
        return Pinning(frozenset({upstream}), frozenset({proxy}), frozenset(rest),
                       f"upstream on CPU {upstream}, proxy on CPU {proxy}, load generator on CPUs "
                       f"{','.join(map(str, rest))}")
    # Two CPUs: the proxy is what is measured, so it gets one to itself; the load generator and the
    # upstream share the other (so in direct runs that one CPU does all the work).
    return Pinning(frozenset({upstream}), frozenset({proxy}), frozenset({upstream}),
                   f"upstream on CPU {upstream}, proxy alone on CPU {proxy}, load generator shares "
                   f"CPU {upstream} with the upstream (only 2 CPUs)")


def free_port() -> int:
    """A port nobody listens on now (the OS picks it; the tiny race is harmless on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """A subprocess we started, its log file, and where it answers."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_tail(self, lines: int = 20) -> str:
        self.log.flush()
        text = Path(self.log.name).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def start_server(name: str, argv: Sequence[str], port: int, cpus: frozenset[int] | None, log_dir: Path) -> Server:
    """Start a server subprocess in its own session, so a Ctrl-C reaches only us and we stop it."""
    log = open(log_dir / f"{name}.log", "w+b")  # noqa: SIM115 - closed by stop_server
    process = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                               start_new_session=True)
    if cpus is not None:
        # Right after fork/exec the interpreter has no other thread yet; threads inherit the mask.
        os.sched_setaffinity(process.pid, cpus)
    return Server(name, process, port, log)


def stop_server(server: Server) -> None:
    """SIGTERM, a short grace period, then SIGKILL: never leave a server behind."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    server.log.close()


def wait_until(ready: Callable[[], bool], server: Server, timeout: float = 20.0) -> None:
    """Poll `ready` until it holds; fail at once, with the server's log, if the server died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if ready():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{server.name} did not become ready within {timeout:g}s:\n{server.log_tail()}")


def tcp_accepts(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=1):
        return True


def http_request(port: int, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One plain HTTP/1.1 exchange (http.client never goes through an http_proxy variable)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLK_TCK


def rss_mib(pid: int) -> float:
    """Resident set size from /proc/PID/status, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --------------------------------------------------------------------------------------------------
# The wake-up probe: how long waking an idle CPU takes here (a VM's vCPUs can take milliseconds)


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


# --------------------------------------------------------------------------------------------------
# The load generator: worker processes, each one event loop and one keep-alive session


@dataclass(frozen=True)
class Target:
    """Where a run's requests go: direct to the upstream, through the bare relay, or through the proxy."""

    name: str
    bench_path: str  # the BenchPath's name: which way through the proxy
    port: int
    path: Callable[[bool], str]  # stream? -> the URL path (and query)
    headers: dict[str, str]
    body: Callable[[bool], bytes]
    check: Check
    hop: Server | None  # the process between client and upstream, whose CPU is the hop's cost

    def url(self, stream: bool) -> URL:
        # Paths are written encoded: yarl would otherwise decode `%3A` to `:` on the wire.
        return URL(f"http://{HOST}:{self.port}{self.path(stream)}", encoded=True)


@dataclass(frozen=True)
class Scenario:
    name: str
    stream: bool
    concurrency: int


@dataclass(frozen=True)
class LoadSpec:
    """What one worker does: `connections` loops of request-after-request against one URL."""

    url: URL
    headers: dict[str, str]
    body: bytes
    stream: bool
    check: Check
    connections: int
    warmup: float
    seconds: float
    cpus: frozenset[int] | None


@dataclass
class WorkerResult:
    requests: int = 0
    chunks: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds, completed requests only
    cpu: float = 0.0  # the worker's own CPU seconds over the measured window
    wall: float = 0.0
    failure: str | None = None  # the worker itself broke (not a request)

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(text)


async def one_request(session: aiohttp.ClientSession, spec: LoadSpec) -> tuple[int, str | None]:
    """Send one request and read the answer to the end: (chunks received, problem or None)."""
    try:
        async with session.post(spec.url, data=spec.body, headers=spec.headers) as response:
            data = await response.read()
            if response.status != 200:
                return 0, f"HTTP {response.status}: {data[:300]!r}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, f"{type(exc).__name__}: {exc}"
    return spec.check(data, spec.stream)


async def request_loop(session: aiohttp.ClientSession, spec: LoadSpec, deadline: float,
                       result: WorkerResult | None) -> None:
    """Request after request on one connection until `deadline`; record only completed ones."""
    while (start := time.perf_counter()) < deadline:
        chunks, error = await one_request(session, spec)
        end = time.perf_counter()
        if result is None or end > deadline:
            continue  # warm-up, or finished after the window closed: not counted
        if error is not None:
            result.error(error)
            continue
        result.requests += 1
        result.chunks += chunks
        result.latencies.append(end - start)


async def run_worker(spec: LoadSpec, barrier: Barrier) -> WorkerResult:
    connector = aiohttp.TCPConnector(limit=spec.connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Warm-up: open the keep-alive connections and let every process reach a steady state.
        deadline = time.perf_counter() + spec.warmup
        await asyncio.gather(*(request_loop(session, spec, deadline, None) for _ in range(spec.connections)))
        # Nothing is in flight here, so blocking the loop on the barrier costs nothing.
        barrier.wait(timeout=REQUEST_TIMEOUT + spec.warmup + 30)
        result = WorkerResult()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        deadline = wall0 + spec.seconds
        await asyncio.gather(*(request_loop(session, spec, deadline, result) for _ in range(spec.connections)))
        result.cpu, result.wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return result


def worker_main(spec: LoadSpec, barrier: Barrier, results: mp.Queue[WorkerResult]) -> None:
    """Entry point of a load worker process."""
    # The parent handles Ctrl-C, and terminates us: die quietly, without the parent's SIGTERM handler.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if spec.cpus is not None:
        os.sched_setaffinity(0, spec.cpus)
    try:
        if uvloop is not None:
            result = uvloop.run(run_worker(spec, barrier))
        else:
            result = asyncio.run(run_worker(spec, barrier))
    except Exception as exc:  # reported by the parent, which has the terminal
        barrier.abort()
        result = WorkerResult(failure=f"{type(exc).__name__}: {exc}")
    results.put(result)


def split(total: int, parts: int) -> list[int]:
    """`total` connections over at most `parts` workers, as evenly as possible, none empty."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@contextlib.contextmanager
def workers(specs: list[LoadSpec], barrier: Barrier,
            results: mp.Queue[WorkerResult]) -> Iterator[Sequence[mp.process.BaseProcess]]:
    """Start the load workers, and terminate any still alive on the way out (error, Ctrl-C)."""
    ctx = mp.get_context("fork")  # the parent runs no event loop, so forking it is safe
    processes = [ctx.Process(target=worker_main, args=(spec, barrier, results), daemon=True) for spec in specs]
    for process in processes:
        process.start()
    try:
        yield processes
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join(timeout=5)


# --------------------------------------------------------------------------------------------------
# One measurement: a target, a scenario, every process's CPU over the same window


@dataclass
class Measurement:
    path: str
    target: str
    scenario: str
    stream: bool
    concurrency: int
    seconds: float
    requests: int
    errors: int
    error_samples: list[str]
    rps: float
    chunks_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    # Shares of one core (1.0 = one core fully busy) over the measured window.
    generator_cpu: float
    generator_worker_max_cpu: float
    upstream_cpu: float
    hop_cpu: float | None  # the proxy's (or relay's); None for direct runs
    hop_cpu_ms_per_req: float | None
    upstream_cpu_ms_per_req: float


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def measure(target: Target, scenario: Scenario, upstream: Server, args: argparse.Namespace,
            pinning: Pinning) -> Measurement:
    """Run one scenario against one target and measure every process over the same window."""
    body = target.body(scenario.stream)
    specs = [LoadSpec(target.url(scenario.stream), target.headers, body, scenario.stream, target.check, n,
                      args.warmup, args.seconds, pinning.generator)
             for n in split(scenario.concurrency, args.workers)]
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(len(specs) + 1)
    queue: mp.Queue[WorkerResult] = ctx.Queue()
    watched = [upstream] + ([target.hop] if target.hop else [])
    with workers(specs, barrier, queue):
        barrier.wait(timeout=REQUEST_TIMEOUT + args.warmup + 30)
        cpu0 = [cpu_seconds(s.pid) for s in watched]
        wall0 = time.perf_counter()
        time.sleep(args.seconds)
        used = [cpu_seconds(s.pid) - before for s, before in zip(watched, cpu0, strict=True)]
        wall = time.perf_counter() - wall0
        # Read before joining: a worker cannot exit while its result is still in the pipe.
        results = [queue.get(timeout=REQUEST_TIMEOUT + 30) for _ in specs]
    failures = [r.failure for r in results if r.failure]
    if failures:
        raise RuntimeError(f"load worker failed ({target.bench_path} {target.name} {scenario.name}): {failures[0]}")
    return summarize(target, scenario, results, wall, used[0], used[1] if target.hop else None, args.seconds)


def summarize(target: Target, scenario: Scenario, results: list[WorkerResult], wall: float,
              upstream_cpu: float, hop_cpu: float | None, seconds: float) -> Measurement:
    latencies = sorted(x for r in results for x in r.latencies)
    requests = sum(r.requests for r in results)
    chunks = sum(r.chunks for r in results)
    errors = [s for r in results for s in r.error_samples]
    per_req = 1000 / requests if requests else float("nan")
    return Measurement(
        path=target.bench_path, target=target.name, scenario=scenario.name, stream=scenario.stream, concurrency=scenario.concurrency,
        seconds=seconds, requests=requests, errors=sum(r.errors for r in results), error_samples=errors[:5],
        rps=requests / seconds, chunks_per_s=chunks / seconds,
        p50_ms=percentile(latencies, 50) * 1000, p90_ms=percentile(latencies, 90) * 1000,
        p99_ms=percentile(latencies, 99) * 1000, max_ms=(latencies[-1] * 1000 if latencies else 0.0),
        generator_cpu=sum(r.cpu for r in results) / wall,
        generator_worker_max_cpu=max((r.cpu / r.wall for r in results if r.wall), default=0.0),
        upstream_cpu=upstream_cpu / wall,
        hop_cpu=hop_cpu / wall if hop_cpu is not None else None,
        hop_cpu_ms_per_req=hop_cpu * per_req if hop_cpu is not None else None,
        upstream_cpu_ms_per_req=upstream_cpu * per_req,
    )


# --------------------------------------------------------------------------------------------------
# Before measuring: one request per target and kind, checked, so a broken setup fails loudly


def sanity_check(targets: list[Target]) -> list[str]:
    """One unary and one streamed request per target; the problems found (empty: all good)."""
    problems: list[str] = []
    for target in targets:
        for stream in (False, True):
            status, data = http_request(target.port, "POST", target.path(stream), target.body(stream),
                                        target.headers)
            kind = f"{target.bench_path} {target.name} {'stream' if stream else 'unary'}"
            if status != 200:
                problems.append(f"{kind}: HTTP {status}: {data[:300]!r}")
                continue
            _, problem = target.check(data, stream)
            if problem is not None:
                problems.append(f"{kind}: {problem}")
    return problems


# --------------------------------------------------------------------------------------------------
# Report

Results = dict[tuple[str, str], Measurement]  # one path's runs, by (target, scenario)
PathResults = dict[str, Results]  # by path name, in the order the paths were given


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_line(args: argparse.Namespace) -> str:
    loop = "on" if uvloop is not None else "off"
    upstream_loop = loop if args.upstream == "lean" else "off (asyncio.run)"
    return (f"machine: {len(available_cpus())} CPUs ({platform.machine()}, {cpu_model()}), "
            f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}, uvloop: proxy {loop}, "
            f"load generator {loop}, {args.upstream} upstream {upstream_loop}")


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _over(top: float | None, bottom: float | None) -> float | None:
    return None if top is None or not bottom else top / bottom


def _minus(top: float | None, bottom: float | None) -> float | None:
    return None if top is None or bottom is None else top - bottom


def _ratio(top: float | None, bottom: float | None) -> str:
    ratio = _over(top, bottom)
    return "-" if ratio is None else f"{ratio:.2f}"


def table(results: Results, scenarios: list[Scenario], names: list[str],
          rss: dict[str, dict[str, float]]) -> list[str]:
    """The one table: a metric per row; a column per target, then the proxy's ratios and added ms."""
    relay = "relay" in names
    header = ["metric", *names, "proxy/direct", *(["proxy/relay"] if relay else []), "added ms"]
    rows: list[list[str]] = []

    def row(label: str, values: dict[str, float | None], digits: int = 0, added: bool = False) -> None:
        d, p = values.get("direct"), values.get("proxy")
        cells = [label, *(_fmt(values.get(n), digits) for n in names), _ratio(p, d)]
        if relay:
            cells.append(_ratio(p, values.get("relay")))
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
    row("hop RSS MiB      idle", {n: rss[n]["idle"] for n in rss}, 1)
    row("hop RSS MiB      after all runs", {n: rss[n]["after"] for n in rss}, 1)
    return render_table(header, rows)


def render_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Columns as wide as their widest cell; the first (a label) left-aligned, numbers right-aligned."""
    widths = [max(len(r[i]) for r in [*rows, header]) for i in range(len(header))]

    def render(cells: list[str]) -> str:
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(padded)

    return [render(header), "  ".join("-" * w for w in widths), *(render(r) for r in rows)]


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
                row[f"{path}/{baseline}"] = _over(value, base)
                row[f"{path}-{baseline}"] = _minus(value, base)
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
        diffs = [_minus(row.values[p], base) for p in others]
        cells.append([f"{row.metric:<19} {row.scenario}", *(_fmt(row.values[p], 3) for p in paths),
                      *(_ratio(row.values[p], base) for p in others),
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
    diffs = [(row.scenario, _minus(row.values[variant], row.values[of])) for row in rows
             if row.metric.startswith("proxy CPU")]
    summary = ", ".join(f"{d:+.3f} ms ({scenario})" for scenario, d in diffs if d is not None)
    lines.append(f"{variant} costs the proxy {summary} of CPU per request/stream more than {of}")
    if micro is not None:
        lines += [micro.line(), f"  -> {micro.best_us / 1000:.3f} ms per call alone"]
    return lines


def busy_lines(results: Results, scenarios: list[Scenario], names: list[str]) -> list[str]:
    """Every process's CPU per run, as a share of one core: where the time went."""
    lines = ["who was busy (share of one core over the window; generator = all workers together):"]
    for scenario in scenarios:
        for name in names:
            m = results[name, scenario.name]
            hop = f", {name} {m.hop_cpu:.0%}" if m.hop_cpu is not None else ""
            lines.append(f"  {name:<6} {scenario.name:<12} generator {m.generator_cpu:.0%} "
                         f"(busiest worker {m.generator_worker_max_cpu:.0%}), upstream {m.upstream_cpu:.0%}{hop}")
    return lines


def saturated(m: Measurement, pinning: Pinning) -> list[str]:
    """The processes (or CPUs) that were busy to the limit during one run."""
    found: list[str] = []
    if m.hop_cpu is not None and m.hop_cpu >= SATURATED:
        found.append(f"{m.target} at {m.hop_cpu:.0%} of its CPU")
    if m.generator_worker_max_cpu >= SATURATED:
        # One event loop is one thread: a worker at 100% cannot go faster whatever the CPU count.
        found.append(f"a load worker at {m.generator_worker_max_cpu:.0%} of a CPU")
    if pinning.generator is None:
        total = m.generator_cpu + m.upstream_cpu + (m.hop_cpu or 0.0)
        cpus = len(available_cpus())
        if total >= SATURATED * cpus:
            found.append(f"all {cpus} CPUs ({total:.0%} of one in all)")
    elif pinning.generator == pinning.upstream:
        shared = m.generator_cpu + m.upstream_cpu
        if shared >= SATURATED:
            found.append(f"the CPU of load generator + upstream ({shared:.0%})")
    else:
        if m.generator_cpu >= SATURATED * len(pinning.generator):
            found.append(f"the load generator's CPUs ({m.generator_cpu:.0%} of one)")
        if m.upstream_cpu >= SATURATED:
            found.append(f"upstream at {m.upstream_cpu:.0%} of its CPU")
    return found


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
        line += "; --relay shows whether a bare hop pays it too"
    return [line]


def rate_verdict(results: Results, scenario: Scenario, names: list[str], pinning: Pinning,
                 worst_ms: float) -> list[str]:
    """Which process or CPU was full in each concurrent run, and what that makes the proxy's rate."""
    d, p = results["direct", scenario.name], results["proxy", scenario.name]
    unit = "streams" if scenario.stream else "requests"
    limits = {n: saturated(results[n, scenario.name], pinning) for n in names}
    lines = [f"{scenario.name}: limited by " + "; ".join(f"{n}: {', '.join(found) or 'nothing saturated'}"
                                                       for n, found in limits.items())]
    if p.hop_cpu is not None and p.hop_cpu >= SATURATED:
        if len(limits["proxy"]) > 1:
            lines.append(f"  -> {p.rps:,.0f} {unit}/s is about the proxy's capacity on one CPU here "
                         "(the load side was full too; the CPU ms line below leaves it out)")
        else:
            lines.append(f"  -> {p.rps:,.0f} {unit}/s is the proxy's capacity on one CPU here")
    elif limits["proxy"]:
        lines.append("  -> the load side, not the proxy, was the limit: the proxy's rate is a lower bound")
    else:
        why = "idle-CPU wake-ups (see the probe)" if worst_ms >= SLOW_WAKEUP_MS else "round trips and scheduling"
        lines.append(f"  -> no CPU was full: the proxy run waited on {why}; its rate understates the proxy")
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
        return ["errors: none (every counted request answered 200 with a complete body)"]
    lines = ["ERRORS (failed requests are not counted in the rates above):"]
    for m in failed:
        lines.append(f"  {m.path} {m.target} {m.scenario}: {m.errors} failed, e.g.")
        lines.extend(f"    {sample}" for sample in m.error_samples)
    for hop in hops:
        lines.append(f"{hop.name} log tail:\n{hop.log_tail()}")
    return lines


# --------------------------------------------------------------------------------------------------
# Main


def path_names(text: str) -> list[str]:
    """`--path`: comma-separated path names, the openai baseline first when a translating path is
    asked for, and a variant's path just before the variant."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PATHS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown path {', '.join(unknown) or repr(text)}; "
                                         f"choose from {', '.join(PATHS)}")
    # A translation's cost is only readable next to the passthrough's, a variant's next to its path's.
    wanted = [BASELINE] if any(n != BASELINE for n in names) else []
    for name in names:
        variant_of = PATHS[name].variant_of
        wanted += [variant_of, name] if variant_of else [name]
    return list(dict.fromkeys(wanted))  # in order, once each


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark tensorwall-proxy against direct upstream calls.")
    defaults = [name for name, path in PATHS.items() if path.default]
    parser.add_argument("--path", type=path_names, default=path_names(",".join(defaults)), metavar="PATH[,PATH]",
                        help=f"ways through the proxy to measure, of {', '.join(PATHS)} (default "
                             f"{','.join(defaults)}); a translating path brings {BASELINE} along as its "
                             "baseline, bedrock-sigv4 brings bedrock")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per run (default 4)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run (default 1)")
    parser.add_argument("--concurrency", type=int, default=50,
                        help="connections of the concurrent runs (default 50)")
    parser.add_argument("--workers", type=int, default=2, help="load generator processes (default 2)")
    parser.add_argument("--upstream", choices=("lean", "fake"), default="lean",
                        help="lean: fixed answers from this file (default); fake: tests/fakes (heavier)")
    parser.add_argument("--relay", action="store_true",
                        help="also measure a bare aiohttp relay on the proxy's CPU, as a yardstick")
    parser.add_argument("--json", default="bench-results.json",
                        help="where to write the results (default ./bench-results.json)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    # Internal: how this file runs its own servers in subprocesses.
    parser.add_argument("--serve-lean-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-relay", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--relay-to", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0 or args.concurrency < 1 or args.workers < 1:
        parser.error("--seconds must be > 0, --warmup >= 0, --concurrency and --workers >= 1")
    return args


def start_upstream(args: argparse.Namespace, paths: list[BenchPath], pinning: Pinning, log_dir: Path) -> Server:
    port = free_port()
    if args.upstream == "lean":
        argv = [sys.executable, str(Path(__file__).resolve()), "--path", ",".join(p.name for p in paths),
                "--serve-lean-upstream", str(port)]
    else:
        argv = [sys.executable, str(REPO / "scripts" / "fake_upstream.py"), "--host", HOST, "--port", str(port)]
    server = start_server("upstream", argv, port, pinning.upstream, log_dir)
    wait_until(lambda: tcp_accepts(port), server)
    return server


def start_proxy(paths: list[BenchPath], upstream: Server, pinning: Pinning, log_dir: Path) -> Server:
    port = free_port()
    config = log_dir / "bench-config.yaml"
    config.write_text(proxy_config(paths, upstream.base_url))
    argv = [sys.executable, "-m", "tensorwall_proxy", "serve", "--config", str(config), "--host", HOST,
            "--port", str(port)]
    server = start_server("proxy", argv, port, pinning.proxy, log_dir)
    wait_until(lambda: http_request(port, "GET", "/healthz")[0] == 200, server)
    return server


def start_relay(upstream: Server, pinning: Pinning, log_dir: Path) -> Server:
    port = free_port()
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve-relay", str(port),
            "--relay-to", upstream.base_url]
    server = start_server("relay", argv, port, pinning.proxy, log_dir)
    wait_until(lambda: tcp_accepts(port), server)
    return server


def make_targets(path: BenchPath, upstream: Server, relay: Server | None, proxy: Server) -> list[Target]:
    """direct, relay (when started) and proxy: the same request, each the way its receiver wants it."""
    targets = [Target("direct", path.name, upstream.port, path.direct_target, path.direct_headers,
                      path.direct_body, path.direct_check, None)]
    if relay is not None:
        # The relay forwards bytes unchanged, so it gets exactly the direct request.
        targets.append(Target("relay", path.name, relay.port, path.direct_target, path.direct_headers,
                              path.direct_body, path.direct_check, relay))
    # Through the proxy the caller speaks OpenAI on every path; only the model differs.
    proxy_headers = {"X-API-Key": GATEWAY_KEY, "Authorization": f"Bearer {CALLER_KEY}",
                     "Content-Type": "application/json"}
    targets.append(Target("proxy", path.name, proxy.port, lambda _stream: "/v1/chat/completions",
                          proxy_headers, lambda stream: openai_body(stream, path.model), check_openai, proxy))
    return targets


def run(args: argparse.Namespace) -> int:
    paths = [PATHS[name] for name in args.path]
    pinning = plan_pinning(not args.no_pin)
    print(machine_line(args))
    print(f"pinning: {pinning.description}")
    models = ", ".join(f"{p.name} (model {p.model})" for p in paths)
    print(f"paths: {models}; upstream: {args.upstream}, {args.seconds:g} s per run after {args.warmup:g} s "
          f"warm-up, {args.workers} load worker process(es), concurrency {args.concurrency}", flush=True)
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="tw-bench-") as tmp:
        try:
            upstream = start_upstream(args, paths, pinning, Path(tmp))
            servers.append(upstream)
            relay = start_relay(upstream, pinning, Path(tmp)) if args.relay else None
            if relay is not None:
                servers.append(relay)
            proxy = start_proxy(paths, upstream, pinning, Path(tmp))
            servers.append(proxy)
            targets = {p.name: make_targets(p, upstream, relay, proxy) for p in paths}
            return measure_all(args, pinning, targets, upstream)
        finally:
            for server in reversed(servers):
                stop_server(server)


def measure_all(args: argparse.Namespace, pinning: Pinning, targets: dict[str, list[Target]],
                upstream: Server) -> int:
    """Check, measure and report every path: one table each, then the translation overhead."""
    first = next(iter(targets.values()))  # every path has the same hops: the one relay, the one proxy
    hops = [t.hop for t in first if t.hop is not None]
    rss = {hop.name: {"idle": rss_mib(hop.pid)} for hop in hops}
    problems = sanity_check([t for path_targets in targets.values() for t in path_targets])
    if problems:
        print("sanity check failed, nothing measured:\n  " + "\n  ".join(problems))
        for hop in hops:
            print(f"{hop.name} log:\n{hop.log_tail()}")
        return 1
    probes = [wake_probe(pinning.generator, pinning.proxy)]
    print(probes[0].line(), flush=True)
    micro = {path: run_pinned(timed, pinning.proxy) for path in targets if (timed := PATHS[path].microbench)}
    for path, m in micro.items():
        print(f"{path} {m.line()}", flush=True)
    by_path = run_scenarios(args, targets, upstream, pinning)
    for hop in hops:
        rss[hop.name]["after"] = rss_mib(hop.pid)
    # Conditions on a shared host drift: probe again, so the verdicts see the worst of both.
    probes.append(wake_probe(pinning.generator, pinning.proxy))
    print(probes[1].line().replace("wake-up probe", "wake-up probe after the runs"))
    names = [t.name for t in first]
    scenarios = scenarios_of(args)
    for path, results in by_path.items():
        streams = PATHS[path].direct_stream_path
        direct = PATHS[path].direct_path + (f", streams {streams}" if streams else "")
        print(f"\n=== path {path}: model {PATHS[path].model}, direct {direct} ===")
        for line in [*table(results, scenarios, names, rss), "", *busy_lines(results, scenarios, names), "",
                     *verdicts(results, scenarios, names, pinning, probes)]:
            print(line)
    overhead = translation_overhead(by_path, scenarios) if len(by_path) > 1 else []
    if overhead:
        print()
        print("\n".join(overhead_table(overhead, BASELINE)))
    variants = {path: of for path in by_path if (of := PATHS[path].variant_of) is not None and of in by_path}
    for path, of in variants.items():
        print()
        print("\n".join(variant_lines(variant_rows(overhead, path, of), path, of, micro.get(path))))
    measurements = [m for results in by_path.values() for m in results.values()]
    print()
    print("\n".join(error_lines(measurements, hops)))
    write_json(args, pinning, measurements, overhead, rss, probes, micro, variants)
    return 1 if any(m.errors for m in measurements) else 0


def scenarios_of(args: argparse.Namespace) -> list[Scenario]:
    n = args.concurrency
    return [Scenario("unary c=1", False, 1), Scenario(f"unary c={n}", False, n),
            Scenario("stream c=1", True, 1), Scenario(f"stream c={n}", True, n)]


def run_scenarios(args: argparse.Namespace, targets: dict[str, list[Target]], upstream: Server,
                  pinning: Pinning) -> PathResults:
    """Every scenario against every path's targets, back to back, so paths and targets see the same
    conditions: a drift of the host between paths would otherwise pass for translation cost."""
    by_path: PathResults = {path: {} for path in targets}
    width = max(map(len, targets))
    for scenario in scenarios_of(args):
        for path, path_targets in targets.items():
            for target in path_targets:
                m = measure(target, scenario, upstream, args, pinning)
                by_path[path][target.name, scenario.name] = m
                print(f"  {path:<{width}} {target.name:<6} {scenario.name:<12} {m.rps:>9,.0f}/s  p50 {m.p50_ms:7.3f} ms  "
                      f"p99 {m.p99_ms:7.3f} ms  errors {m.errors}", flush=True)
    return by_path


def write_json(args: argparse.Namespace, pinning: Pinning, measurements: list[Measurement],
               overhead: list[OverheadRow], rss: dict[str, dict[str, float]], probes: list[WakeProbe],
               micro: dict[str, MicroBench], variants: dict[str, str]) -> None:
    document = {
        "machine": machine_line(args),
        "pinning": pinning.description,
        "paths": {name: {"model": PATHS[name].model, "direct_path": PATHS[name].direct_path,
                         "direct_stream_path": PATHS[name].direct_target(True)} for name in args.path},
        "upstream": args.upstream,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "wake_probes": [asdict(p) for p in probes],
        "rss_mib": rss,
        "runs": [asdict(m) for m in measurements],
        # Empty with one path; otherwise one row per metric, with every path's value, ratio and difference.
        "translation_overhead": {"baseline": BASELINE, "rows": [row.as_json(BASELINE) for row in overhead]},
        # A variant (bedrock-sigv4) against the path it varies (bedrock): the cost of its one setting.
        "variants": {path: {"of": of, "rows": [row.as_json(of) for row in variant_rows(overhead, path, of)]}
                     for path, of in variants.items()},
        "micro_benchmarks": {path: asdict(m) for path, m in micro.items()},
    }
    Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    print(f"results written to {args.json}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_lean_upstream is not None:
        return run_app(lean_app([PATHS[name] for name in args.path]), args.serve_lean_upstream)
    if args.serve_relay is not None:
        return run_app(bare_relay_app(args.relay_to), args.serve_relay)
    # SIGTERM ends us like Ctrl-C does, so the finally blocks stop the servers and workers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted; servers and workers stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
