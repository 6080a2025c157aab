"""The lean upstream: every path's provider API answered from bytes built once, as cheaply as it can.

The test suite's fake (tests/fakes) validates and records every request: a direct run would measure
it. Here a request without its key is refused, any other answered from pre-built bytes, a stream one
event per write (the proxy sees real framing), 18 words the proxy turns into the caller's 20 chunks;
Bedrock's frames come from the fake's encoder. PACED_MODEL streams its chunks PACE_SECONDS apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

import orjson
from aiohttp import web

from tests.fakes.eventstream import encode_event

from .common import EVENTSTREAM, Json
from .paths import ANTHROPIC_MODEL, VERTEX_MODEL, BenchPath

PACED_MODEL: Final = "gpt-4o-paced"
PACE_SECONDS: Final = 0.010  # between one chunk of a paced stream and the next

_WORDS: Final = ("Hello", "there,", "this", "is", "a", "fixed", "answer", "from", "the", "lean",
                 "benchmark", "upstream,", "eighteen", "words", "long,", "one", "per", "chunk.")
_TEXT: Final = " ".join(_WORDS)
_PIECES: Final = [w if i == 0 else " " + w for i, w in enumerate(_WORDS)]  # concatenate back to _TEXT
_IN, _OUT = 19, len(_WORDS)  # usage: prompt and completion tokens


@dataclass(frozen=True)
class Shape:
    """One provider API's answers, as bytes."""

    unary: bytes
    events: list[bytes]
    key_header: str  # a request without it gets a 401
    stream_suffix: str = ""  # a stream is asked for by the URL (vertex, bedrock); else by `"stream": true`
    content_type: str = "text/event-stream"
    usage: bytes = b""  # sent after the events when the body asks for it (stream_options.include_usage)
    end: tuple[bytes, ...] = ()


def _sse(data: Json | str) -> bytes:
    return b"data: " + (data.encode() if isinstance(data, str) else orjson.dumps(data)) + b"\n\n"


def openai_shape() -> Shape:
    """Chat completions: role chunk, 18 content chunks, finish chunk; the usage event on request."""
    base: Json = {"id": "chatcmpl-bench0000", "created": 1715367049, "model": "gpt-4o"}
    usage = {"prompt_tokens": _IN, "completion_tokens": _OUT, "total_tokens": _IN + _OUT}

    def chunk(delta: Json, finish: str | None = None) -> bytes:
        return _sse({**base, "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    return Shape(orjson.dumps({**base, "object": "chat.completion", "usage": usage, "choices": [
        {"index": 0, "message": {"role": "assistant", "content": _TEXT}, "finish_reason": "stop"}]}),
        [chunk({"role": "assistant", "content": ""}), *(chunk({"content": p}) for p in _PIECES), chunk({}, "stop")],
        "Authorization", usage=_sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}),
        end=(_sse("[DONE]"),))


def anthropic_shape() -> Shape:
    """Messages: 23 named events (message_start, a text block of 18 deltas, the ends)."""
    def named(event: str, data: Json) -> bytes:
        return b"event: " + event.encode() + b"\ndata: " + orjson.dumps({"type": event, **data}) + b"\n\n"

    message: Json = {"id": "msg_bench0000", "type": "message", "role": "assistant", "model": ANTHROPIC_MODEL,
                     "stop_sequence": None}
    return Shape(orjson.dumps({**message, "content": [{"type": "text", "text": _TEXT}], "stop_reason": "end_turn",
                               "usage": {"input_tokens": _IN, "output_tokens": _OUT}}), [
        named("message_start", {"message": {**message, "content": [], "stop_reason": None,
                                            "usage": {"input_tokens": _IN, "output_tokens": 1}}}),
        named("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        *(named("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}}) for p in _PIECES),
        named("content_block_stop", {"index": 0}),
        named("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                "usage": {"output_tokens": _OUT}}),
        named("message_stop", {})], "x-api-key")


def vertex_shape() -> Shape:
    """generateContent, and streamGenerateContent?alt=sse: 18 CRLF-framed events, one per word, the
    last with finishReason and usageMetadata, no terminator (as Google sends them)."""
    def gemini(text: str, finish: bool) -> Json:
        candidate: Json = {"index": 0, "content": {"role": "model", "parts": [{"text": text}]}}
        if not finish:
            return {"candidates": [candidate], "modelVersion": VERTEX_MODEL}
        usage = {"promptTokenCount": _IN, "candidatesTokenCount": _OUT, "totalTokenCount": _IN + _OUT}
        return {"candidates": [{**candidate, "finishReason": "STOP"}], "usageMetadata": usage, "modelVersion": VERTEX_MODEL}

    events = [b"data: " + orjson.dumps(gemini(p, i == len(_PIECES) - 1)) + b"\r\n\r\n" for i, p in enumerate(_PIECES)]
    return Shape(orjson.dumps(gemini(_TEXT, True)), events, "Authorization", ":streamGenerateContent")


def bedrock_shape() -> Shape:
    """Converse, and ConverseStream: 22 event-stream messages (messageStart, 18 contentBlockDelta,
    contentBlockStop, messageStop, metadata with the usage)."""
    usage = {"inputTokens": _IN, "outputTokens": _OUT, "totalTokens": _IN + _OUT}
    return Shape(orjson.dumps({"output": {"message": {"role": "assistant", "content": [{"text": _TEXT}]}},
                               "stopReason": "end_turn", "usage": usage, "metrics": {"latencyMs": 1}}), [
        encode_event("messageStart", {"role": "assistant"}),
        *(encode_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": p}}) for p in _PIECES),
        encode_event("contentBlockStop", {"contentBlockIndex": 0}), encode_event("messageStop", {"stopReason": "end_turn"}),
        encode_event("metadata", {"usage": usage, "metrics": {"latencyMs": 1}})],
        "Authorization", "/converse-stream", EVENTSTREAM)


SHAPES: Final[dict[str, Callable[[], Shape]]] = {
    "openai": openai_shape, "anthropic": anthropic_shape, "vertex": vertex_shape, "bedrock": bedrock_shape}


def handler(shape: Shape) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def answer(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        if not request.headers.get(shape.key_header):
            return web.Response(status=401, body=b'{"error": "no key"}', content_type="application/json")
        body: Json = {} if shape.stream_suffix else orjson.loads(raw)
        if not (request.path.endswith(shape.stream_suffix) if shape.stream_suffix else body.get("stream") is True):
            return web.Response(body=shape.unary, content_type="application/json")
        options = body.get("stream_options")
        usage = [shape.usage] if shape.usage and isinstance(options, dict) and options.get("include_usage") else []
        pace = PACE_SECONDS if body.get("model") == PACED_MODEL else 0.0
        response = web.StreamResponse(headers={"Content-Type": shape.content_type, "Cache-Control": "no-cache"})
        await response.prepare(request)
        for i, event in enumerate(shape.events):  # one write per event, as a real streaming server sends them
            if pace and i:
                await asyncio.sleep(pace)
            await response.write(event)
        for event in (*usage, *shape.end):  # at once after the last chunk, as a real server sends them
            await response.write(event)
        return response

    return answer


def lean_app(paths: Sequence[BenchPath]) -> web.Application:
    """One upstream for every path: its direct URLs (as aiohttp routes them: decoded, no query)."""
    app = web.Application()
    for path in paths:
        answer = handler(SHAPES[path.name]())
        for target in {path.direct_target(False), path.direct_target(True)}:
            app.router.add_post(unquote(target.partition("?")[0]), answer)
    return app
