"""Paths: the ways through the proxy, what the caller sends, what the provider's API gets, the checks.

A path is two calls that ask the upstream for the same answer: the caller's to the proxy (chat
completions, Responses or Messages, a model, `store`, a gateway key) and the direct one to the
provider's API, which is what the proxy itself sends its provider for that request (a native path:
the caller's body, on the provider's URL). A check counts markers instead of parsing, so the load
generator spends its CPU on the load. `proxy_config` writes the one YAML of every proxy process.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import orjson

Json = dict[str, Any]

GATEWAY_KEY: Final = "bench-key"  # a plain key: no limits, no state store
LIMITED_KEY: Final = "bench-limited-key"  # a principal's, whose limits are checked and settled, never reached
NEVER_REACHED: Final = {"requests_per_minute": 10**12, "tokens_per_minute": 10**12, "concurrent": 10**6}
CALLER_KEY: Final = "sk-bench"
PROMPT: Final = ("please answer with a short friendly benchmark greeting so that every run sends "
                 "exactly the same text")
STREAM_CHUNKS: Final = 20  # what a chat caller gets: role chunk, 18 content chunks, finish chunk
CONTENT_CHUNKS: Final = STREAM_CHUNKS - 2
EVENTSTREAM: Final = "application/vnd.amazon.eventstream"  # Bedrock's stream content type
OPENAI_MODEL: Final = "gpt-4o"
PACED_MODEL: Final = "gpt-4o-paced"  # the lean upstream paces its streams; `gpt-*` routes it to openai
ANTHROPIC_MODEL: Final = "claude-3-5-sonnet-20241022"
ANTHROPIC_VERSION: Final = "2023-06-01"  # the version the proxy pins
VERTEX_PROJECT: Final = "bench-project"
VERTEX_LOCATION: Final = "us-central1"
VERTEX_MODEL: Final = "gemini-2.5-flash"
VERTEX_MODEL_PATH: Final = (f"/vertex/v1/projects/{VERTEX_PROJECT}/locations/{VERTEX_LOCATION}"
                            f"/publishers/google/models/{VERTEX_MODEL}")
BEDROCK_REGION: Final = "us-east-1"
BEDROCK_MODEL: Final = "anthropic.claude-3-5-sonnet-20240620-v1:0"
REDIS_URL: Final = "redis://127.0.0.1:6379/0"  # limits-redis's store unless $REDIS_URL says otherwise
# Targets: the proxy's CPU per request on a path <= this x the chat passthrough's, in the same run.
NATIVE: Final = 1.1  # a body passed through to a provider that speaks the caller's dialect
TRANSLATED: Final = 1.5  # a body translated to the provider's API and its answer back


@dataclass(frozen=True)
class Check:
    """Whether an answer is whole: a JSON body holding the `unary` markers, or a stream holding
    `deltas` (CONTENT_CHUNKS by default) `delta` markers whose last event (from the last `event`
    marker, which counts the chunks, less `uncounted`: [DONE] is no chunk) holds `end`."""

    unary: tuple[bytes, ...]
    event: bytes
    delta: bytes
    end: bytes
    deltas: int = CONTENT_CHUNKS
    uncounted: int = 0

    def __call__(self, data: bytes, stream: bool) -> tuple[int, str | None]:
        if not stream:
            ok = data.startswith(b"{") and all(marker in data for marker in self.unary)
            return 0, None if ok else f"unexpected body {data[:200]!r}"
        chunks, deltas = data.count(self.event) - self.uncounted, data.count(self.delta)
        if deltas != self.deltas or self.end not in data[data.rfind(self.event):]:
            return chunks, f"stream of {chunks} chunks, {deltas} {self.delta!r}, ending {data[-60:]!r}"
        return chunks, None


check_openai: Final = Check((b'"choices"',), b"data: ", b"data: ", b"data: [DONE]\n\n", STREAM_CHUNKS + 1, 1)
check_responses: Final = Check((b'"object":"response"', b'"output"'), b"data: ", b'"response.output_text.delta"',
                               b'"response.completed"')
# Event-stream messages are counted by their encoded headers, not parsed: the proxy checks every CRC.
_BEDROCK_EVENT: Final = b"\x0b:event-type\x07"
check_messages: Final = Check((b'"content"', b'"stop_reason"'), b"event: ", b"text_delta", b"event: message_stop")
check_bedrock: Final = Check((b'"output"', b'"stopReason"'), _BEDROCK_EVENT, _BEDROCK_EVENT + b"\x00\x11contentBlockDelta",
                             _BEDROCK_EVENT + b"\x00\x08metadata")


def json_body(fields: Json, by_body: bool = True) -> Callable[[bool], bytes]:
    """stream? -> the request's JSON, encoded once; a stream's with `"stream": true` unless the URL asks for
    one instead (vertex's method, bedrock's operation)."""
    unary = orjson.dumps(fields)
    streamed = orjson.dumps({**fields, "stream": True}) if by_body else unary
    return lambda stream: streamed if stream else unary


@dataclass(frozen=True)
class Call:
    """One side's request: its URL path (and query, percent-encoded; a stream's own where the API
    streams elsewhere), headers and body (stream? -> bytes), and the check of its answer."""

    path: str
    headers: dict[str, str]
    body: Callable[[bool], bytes]
    check: Check
    stream_path: str | None = None

    def url_path(self, stream: bool) -> str:
        return self.stream_path if stream and self.stream_path else self.path


@dataclass(frozen=True)
class BenchPath:
    """One way through the proxy: the caller's call to it, and the direct call to the provider's API
    (`upstream` names that API: a lean_upstream.SHAPES key); its targets."""

    name: str
    model: str
    caller: Call
    upstream: str
    direct: Call
    cpu_ratio: float | None = TRANSLATED  # the target against the passthrough; None: reported only
    reference: str | None = None  # a path whose proxy runs this one's are judged against, in the same run:
    added_p50_ms: float = 0.0  # its p50 at c=1 may add this much to the reference's,
    rps_ratio: float | None = None  # its requests/s at c=N be this x the reference's
    proxy: str = "proxy"  # the server it goes through: proxy, or proxy-redis (state over Redis)


_BEARER: Final = {"Authorization": f"Bearer {CALLER_KEY}", "Content-Type": "application/json"}
_PROXY: Final = {"X-API-Key": GATEWAY_KEY, **_BEARER}  # the caller's key goes on to the provider
_LIMITED: Final = {**_PROXY, "X-API-Key": LIMITED_KEY}
_BEDROCK_PATH: Final = f"/bedrock/model/{quote(BEDROCK_MODEL, safe='')}"  # `…v1%3A0`, as the proxy sends it


def chat_call(model: str, headers: dict[str, str] = _PROXY) -> Call:
    """A chat request: OpenAI's shape, one short user message."""
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 64}
    return Call("/v1/chat/completions", headers, json_body(body), check_openai)


def responses_call(path: str, headers: dict[str, str], model: str, store: bool) -> Call:
    """A Responses request: the same message as `input`, `store` said (OpenAI's default is true)."""
    body = {"model": model, "input": PROMPT, "max_output_tokens": 64, "store": store}
    return Call(path, headers, json_body(body), check_responses)


def messages_call(path: str, headers: dict[str, str], model: str) -> Call:
    """A Messages request: the same message as a text block, at the version the proxy pins."""
    body = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}]}
    return Call(path, {**headers, "anthropic-version": ANTHROPIC_VERSION}, json_body(body), check_messages)


def openai_path(model: str) -> BenchPath:
    """The chat passthrough (also the paced test's, with PACED_MODEL)."""
    direct = Call("/openai/v1/chat/completions", _BEARER, chat_call(model).body, check_openai)
    return BenchPath("openai", model, chat_call(model), "openai", direct, None)


# The proxy forwards the caller's Bearer key as Anthropic's x-api-key, with a pinned version.
_ANTHROPIC: Final = messages_call("/anthropic/v1/messages", {"x-api-key": CALLER_KEY, "Content-Type": "application/json"},
                                  ANTHROPIC_MODEL)
_OPENAI: Final = openai_path(OPENAI_MODEL)
BASELINE: Final = "openai"  # the passthrough every other path's CPU is compared with
# The built-in patterns (gpt-*, claude-*, gemini-*, provider/model) pick each path's provider.
PATHS: Final[dict[str, BenchPath]] = {p.name: p for p in (
    _OPENAI,
    BenchPath("anthropic", ANTHROPIC_MODEL, chat_call(ANTHROPIC_MODEL), "anthropic", _ANTHROPIC),
    # The caller's Bearer key goes on as the OAuth access token.
    BenchPath("vertex", VERTEX_MODEL, chat_call(VERTEX_MODEL), "vertex", Call(
        f"{VERTEX_MODEL_PATH}:generateContent", _BEARER, json_body({
            "contents": [{"role": "user", "parts": [{"text": PROMPT}]}], "generationConfig": {"maxOutputTokens": 64}},
            by_body=False),
        Check((b'"candidates"', b'"finishReason"'), b"data: ", b"data: ", b'"finishReason"'),
        f"{VERTEX_MODEL_PATH}:streamGenerateContent?alt=sse")),
    # The caller's Bearer key goes on as a Bedrock API key; the model id is percent-encoded.
    BenchPath("bedrock", f"bedrock/{BEDROCK_MODEL}", chat_call(f"bedrock/{BEDROCK_MODEL}"), "bedrock", Call(
        f"{_BEDROCK_PATH}/converse", _BEARER, json_body({
            "messages": [{"role": "user", "content": [{"text": PROMPT}]}], "inferenceConfig": {"maxTokens": 64}},
            by_body=False), check_bedrock, f"{_BEDROCK_PATH}/converse-stream")),
    # Native: the caller's body (stateless, like the chat passthrough) on OpenAI's /responses.
    BenchPath("responses-openai", OPENAI_MODEL, responses_call("/v1/responses", _PROXY, OPENAI_MODEL, False),
              "responses", responses_call("/openai/v1/responses", _BEARER, OPENAI_MODEL, False), NATIVE),
    # Translated to Anthropic's Messages API; stored conversations: their added p50 is the target.
    BenchPath("responses-anthropic", ANTHROPIC_MODEL, responses_call("/v1/responses", _PROXY, ANTHROPIC_MODEL, False),
              "anthropic", _ANTHROPIC),
    BenchPath("responses-stored", ANTHROPIC_MODEL, responses_call("/v1/responses", _PROXY, ANTHROPIC_MODEL, True),
              "anthropic", _ANTHROPIC, None, "responses-anthropic", 0.2),
    # Messages with the keys as the anthropic SDK sends them beside a gateway key (X-API-Key; the
    # provider key as a Bearer): native, the body on Anthropic's /messages; translated, OpenAI's chat.
    BenchPath("messages-anthropic", ANTHROPIC_MODEL, messages_call("/v1/messages", _PROXY, ANTHROPIC_MODEL),
              "anthropic", _ANTHROPIC, NATIVE),
    BenchPath("messages-openai", OPENAI_MODEL, messages_call("/v1/messages", _PROXY, OPENAI_MODEL), "openai",
              _OPENAI.direct),
    # The chat passthrough under the limited principal's key: every request is checked and settled.
    *(BenchPath(f"limits-{store}", OPENAI_MODEL, chat_call(OPENAI_MODEL, _LIMITED), "openai", _OPENAI.direct,
                None, BASELINE, added, 0.8, proxy) for store, added, proxy in (
        ("sqlite", 0.1, "proxy"), ("redis", 0.3, "proxy-redis"))),
)}


def proxy_config(upstream_base: str, state: Json | None = None) -> str:
    """The proxy's YAML (JSON is YAML): two gateway keys (a plain one; the limited principal's), every
    path's provider, short timeouts, and `state` (the default: SQLite in STATE_DIRECTORY)."""
    providers = {"openai": {"base_url": f"{upstream_base}/openai/v1"},
                 "anthropic": {"base_url": f"{upstream_base}/anthropic/v1"},
                 "vertex": {"project": VERTEX_PROJECT, "location": VERTEX_LOCATION, "base_url": f"{upstream_base}/vertex"},
                 "bedrock": {"region": BEDROCK_REGION, "base_url": f"{upstream_base}/bedrock"}}
    keys = [GATEWAY_KEY, {"name": "bench-limited", "key": LIMITED_KEY, "limits": NEVER_REACHED}]
    return json.dumps({"gateway_keys": keys, "providers": providers, **({"state": state} if state else {}),
                       "timeouts": {"connect": 5, "first_byte": 30, "idle": 30, "total": 60},
                       "server": {"drain_seconds": 1}}, indent=2)


def path_names(text: str) -> list[str]:
    """`--path`: comma-separated names, each after what it is compared with (the openai baseline first;
    a path's reference): a path's cost reads only next to its reference's."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PATHS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown path {', '.join(unknown) or repr(text)}; "
                                         f"choose from {', '.join(PATHS)}")
    wanted = [ref for n in names for ref in (PATHS[n].reference, n) if ref]
    return list(dict.fromkeys(([BASELINE] if any(n != BASELINE for n in names) else []) + wanted))
