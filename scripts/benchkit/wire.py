"""What goes over the wire: the request each provider's API gets, and the checks that an answer is whole.

A caller always speaks OpenAI to the proxy (`openai_body`, answers checked by `check_openai`). A
direct call (and the relay, which forwards bytes unchanged) sends what the proxy itself sends its
provider for that request (`anthropic_body`, `vertex_body`, `bedrock_body`), so direct and proxied
runs ask the upstream for the same answer. A check returns (chunks counted, problem or None); the
chunks are what the receiver of that stream has to read (see "How to read it" in bench.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final
from urllib.parse import quote

import orjson

from .common import CONTENT_CHUNKS, PROMPT, STREAM_CHUNKS, Json
from .eventstream import METADATA, TEXT_DELTA, event_frames

Check = Callable[[bytes, bool], tuple[int, str | None]]  # (body, stream?) -> (chunks, problem or None)

OPENAI_MODEL: Final = "gpt-4o"
ANTHROPIC_MODEL: Final = "claude-3-5-sonnet-20241022"
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


def openai_body(stream: bool, model: str = OPENAI_MODEL) -> bytes:
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


def has_content_event(data: bytes) -> bool:
    """Whether the start of an OpenAI SSE stream holds a whole event whose delta carries text.

    The paced test's time to first chunk ends here: the role chunk (`"content": ""`) does not count,
    the first word does. Only whole events are parsed (up to the last blank line), and only until
    one is found, so the cost is two small JSON parses per stream.
    """
    for event in data.split(b"\n\n")[:-1]:
        if not event.startswith(b"data: ") or event == b"data: [DONE]":
            continue
        try:
            chunk = orjson.loads(event[6:])
        except orjson.JSONDecodeError:
            continue
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if choices and isinstance(choices[0], dict) and (choices[0].get("delta") or {}).get("content"):
            return True
    return False


def anthropic_body(stream: bool) -> bytes:
    """A direct call's Messages request: what the proxy itself sends for `openai_body`'s request.

    The same body (the user's text as one text block, the caller's max_tokens) keeps direct and
    proxied runs asking the upstream for the same answer, and the relay's bytes those of the proxy.
    """
    body: Json = {"model": ANTHROPIC_MODEL, "max_tokens": 64,
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
    deltas = sum(TEXT_DELTA in frame for frame in frames)
    if deltas != CONTENT_CHUNKS or not frames or METADATA not in frames[-1]:
        return len(frames), f"stream of {len(frames)} messages, {deltas} text deltas, ending {data[-60:]!r}"
    return len(frames), None
