"""Paths: the ways through the proxy, what each provider's API gets, and the checks that answers are whole.

A path is which model the caller asks for, how the proxy's provider is configured, and the URL,
headers and body of a direct call, which is what the proxy itself sends its provider for the
caller's request (so direct and proxied runs ask the upstream for the same answer). A caller always
speaks OpenAI to the proxy (`openai_body`, `check_openai`). A check returns (chunks counted, problem
or None); it counts markers instead of parsing, so the load generator spends its CPU on the load.
`proxy_config` writes the one YAML that configures every path's provider in one proxy process.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

import orjson

from .common import CALLER_KEY, CONTENT_CHUNKS, GATEWAY_KEY, PROMPT, STREAM_CHUNKS, Json

OPENAI_MODEL: Final = "gpt-4o"
ANTHROPIC_MODEL: Final = "claude-3-5-sonnet-20241022"
ANTHROPIC_VERSION: Final = "2023-06-01"  # the version the proxy pins
VERTEX_PROJECT: Final = "bench-project"
VERTEX_LOCATION: Final = "us-central1"
VERTEX_MODEL: Final = "gemini-2.5-flash"
VERTEX_MODEL_PATH: Final = (f"/vertex/v1/projects/{VERTEX_PROJECT}/locations/{VERTEX_LOCATION}"
                            f"/publishers/google/models/{VERTEX_MODEL}")
BEDROCK_REGION: Final = "us-east-1"
BEDROCK_MODEL: Final = "anthropic.claude-3-5-sonnet-20240620-v1:0"
BEDROCK_MODEL_SEGMENT: Final = quote(BEDROCK_MODEL, safe="")  # `…v1%3A0`, as the proxy sends it


@dataclass(frozen=True)
class Check:
    """Whether an answer is whole: a JSON body holding the `unary` markers, or a stream holding
    `deltas` (CONTENT_CHUNKS by default) `delta` markers and ending with `end`. It counts the stream's
    chunks by `event` markers (less `uncounted`: [DONE] is no chunk)."""

    unary: tuple[bytes, ...]
    event: bytes
    delta: bytes
    end: bytes
    deltas: int = CONTENT_CHUNKS
    uncounted: int = 0

    def __call__(self, data: bytes, stream: bool) -> tuple[int, str | None]:
        """(chunks counted, problem or None)."""
        if not stream:
            ok = data.startswith(b"{") and all(marker in data for marker in self.unary)
            return 0, None if ok else f"unexpected body {data[:200]!r}"
        chunks, deltas = data.count(self.event) - self.uncounted, data.count(self.delta)
        if deltas != self.deltas or self.end not in data[-300:]:
            return chunks, f"stream of {chunks} chunks, {deltas} {self.delta!r}, ending {data[-60:]!r}"
        return chunks, None


check_openai: Final = Check((b'"choices"',), b"data: ", b"data: ", b"data: [DONE]\n\n", STREAM_CHUNKS + 1, 1)
# Event-stream messages are counted by their encoded headers, not parsed: the proxy checks every CRC.
_BEDROCK_EVENT: Final = b"\x0d:message-type\x07\x00\x05event"
check_bedrock: Final = Check((b'"output"', b'"stopReason"'), _BEDROCK_EVENT,
                             b"\x0b:event-type\x07\x00\x11contentBlockDelta", b"\x0b:event-type\x07\x00\x08metadata")


# The paced test's first chunk in an OpenAI stream: the first word (the role chunk's "" is none).
FIRST_WORD: Final = re.compile(rb'"content":"[^"]')


def openai_body(stream: bool, model: str = OPENAI_MODEL) -> bytes:
    """The chat request every caller sends the proxy: OpenAI's shape, one short user message."""
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 64,
                         **({"stream": True} if stream else {})})


def anthropic_body(stream: bool) -> bytes:
    return orjson.dumps({"model": ANTHROPIC_MODEL, "max_tokens": 64, **({"stream": True} if stream else {}),
                         "messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}]})


def vertex_body(_stream: bool) -> bytes:
    """The method in the URL makes a stream of it."""
    return orjson.dumps({"contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
                         "generationConfig": {"maxOutputTokens": 64}})


def bedrock_body(_stream: bool) -> bytes:
    """The operation in the URL (converse-stream) makes a stream of it."""
    return orjson.dumps({"messages": [{"role": "user", "content": [{"text": PROMPT}]}],
                         "inferenceConfig": {"maxTokens": 64}})


@dataclass(frozen=True)
class BenchPath:
    """What one path needs: the caller's model, the proxy's provider, the direct call."""

    name: str
    model: str
    provider_config: Callable[[str], Json]  # upstream base URL -> this path's `providers:` entries
    direct_path: str  # the upstream URL path a direct call uses (the one the proxy calls)
    direct_headers: dict[str, str]
    direct_body: Callable[[bool], bytes]  # stream? -> the body a direct call sends
    direct_check: Check
    direct_stream_path: str | None = None  # a stream's URL path (and query), when not direct_path

    def direct_target(self, stream: bool) -> str:
        """The URL path (and query) a direct call, unary or streamed, sends its request to."""
        return self.direct_stream_path if stream and self.direct_stream_path else self.direct_path


_BEARER: Final = {"Authorization": f"Bearer {CALLER_KEY}", "Content-Type": "application/json"}
_BEDROCK_PATH: Final = f"/bedrock/model/{BEDROCK_MODEL_SEGMENT}"

PATHS: Final[dict[str, BenchPath]] = {
    # The built-in patterns (gpt-*, claude-*, gemini-*, provider/model) pick each path's provider.
    "openai": BenchPath("openai", OPENAI_MODEL, lambda base: {"openai": {"base_url": f"{base}/openai/v1"}},
                        "/openai/v1/chat/completions", _BEARER, openai_body, check_openai),
    # The proxy forwards the caller's Bearer key as Anthropic's x-api-key, with a pinned version.
    "anthropic": BenchPath(
        "anthropic", ANTHROPIC_MODEL, lambda base: {"anthropic": {"base_url": f"{base}/anthropic/v1"}},
        "/anthropic/v1/messages",
        {"x-api-key": CALLER_KEY, "anthropic-version": ANTHROPIC_VERSION, "Content-Type": "application/json"},
        anthropic_body, Check((b'"content"', b'"stop_reason"'), b"event: ", b"text_delta", b"event: message_stop")),
    # The caller's Bearer key goes on as the OAuth access token.
    "vertex": BenchPath(
        "vertex", VERTEX_MODEL,
        lambda base: {"vertex": {"project": VERTEX_PROJECT, "location": VERTEX_LOCATION, "base_url": f"{base}/vertex"}},
        f"{VERTEX_MODEL_PATH}:generateContent", _BEARER, vertex_body,
        Check((b'"candidates"', b'"finishReason"'), b"data: ", b"data: ", b'"finishReason"'),
        f"{VERTEX_MODEL_PATH}:streamGenerateContent?alt=sse"),
    # The caller's Bearer key goes on as a Bedrock API key; the model id is percent-encoded.
    "bedrock": BenchPath(
        "bedrock", f"bedrock/{BEDROCK_MODEL}",
        lambda base: {"bedrock": {"region": BEDROCK_REGION, "base_url": f"{base}/bedrock"}},
        f"{_BEDROCK_PATH}/converse", _BEARER, bedrock_body, check_bedrock, f"{_BEDROCK_PATH}/converse-stream"),
}
BASELINE: Final = "openai"  # the passthrough every translating path is compared with


def proxy_config(paths: Sequence[BenchPath], upstream_base: str) -> str:
    """The proxy's YAML (JSON is YAML): one gateway key, every path's provider, short timeouts.

    The paced model (`gpt-4o-paced`) needs nothing of its own: `gpt-*` sends it to openai.
    """
    providers: Json = {}
    for path in paths:
        providers.update(path.provider_config(upstream_base))
    return json.dumps({"gateway_keys": [GATEWAY_KEY], "providers": providers,
                       "timeouts": {"connect": 5, "first_byte": 30, "idle": 30, "total": 60},
                       "server": {"drain_seconds": 1}}, indent=2)


def path_names(text: str) -> list[str]:
    """`--path`: comma-separated names, the openai baseline first when a translating path is asked for
    (a translation's cost reads only next to the passthrough's)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PATHS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown path {', '.join(unknown) or repr(text)}; "
                                         f"choose from {', '.join(PATHS)}")
    return list(dict.fromkeys(([BASELINE] if any(n != BASELINE for n in names) else []) + names))
