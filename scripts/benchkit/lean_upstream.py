"""The lean upstream: every provider API a path calls, answered from bytes built once, as cheaply as it can.

The test suite's fake (tests/fakes) validates and records every request: a direct run would measure
it. Here a request without its key is refused, any other answered from pre-built bytes, a stream one
event per write (the proxy sees real framing), 18 words the proxy turns into the caller's 20 chunks;
Bedrock's frames come from the fake's encoder. PACED_MODEL streams its chunks PACE_SECONDS apart.
`GET /last` says which URL (path and query, as sent) the last request came to: the sanity check
reads from it what the proxy called for the caller's request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

import orjson
from aiohttp import web

from tests.fakes.eventstream import encode_event

from .paths import ANTHROPIC_MODEL, EVENTSTREAM, OPENAI_MODEL, PACED_MODEL, PATHS, VERTEX_MODEL, Json

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
    content_type: str = "text/event-stream"
    usage: bytes = b""  # sent after the events when the body asks for it (stream_options.include_usage)
    end: tuple[bytes, ...] = ()


def _sse(data: Json | str, end: bytes = b"\n\n") -> bytes:
    return b"data: " + (data.encode() if isinstance(data, str) else orjson.dumps(data)) + end


def _named(event: str, data: Json) -> bytes:
    """An event with its name, as Anthropic and OpenAI's Responses send them: also its data's `type`."""
    return b"event: " + event.encode() + b"\n" + _sse({"type": event, **data})


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
        usage=_sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}),
        end=(_sse("[DONE]"),))


def anthropic_shape() -> Shape:
    """Messages: 23 named events (message_start, a text block of 18 deltas, the ends)."""
    message: Json = {"id": "msg_bench0000", "type": "message", "role": "assistant", "model": ANTHROPIC_MODEL,
                     "stop_sequence": None}
    return Shape(orjson.dumps({**message, "content": [{"type": "text", "text": _TEXT}], "stop_reason": "end_turn",
                               "usage": {"input_tokens": _IN, "output_tokens": _OUT}}), [
        _named("message_start", {"message": {**message, "content": [], "stop_reason": None,
                                            "usage": {"input_tokens": _IN, "output_tokens": 1}}}),
        _named("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        *(_named("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}}) for p in _PIECES),
        _named("content_block_stop", {"index": 0}),
        _named("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                "usage": {"output_tokens": _OUT}}),
        _named("message_stop", {})])


def responses_shape() -> Shape:
    """OpenAI's Responses: created, in_progress, a message item (added, its part added, 18 output_text
    deltas, the dones), completed with the whole Response and its usage; 26 named events."""
    part: Json = {"type": "output_text", "text": _TEXT, "annotations": [], "logprobs": []}
    item: Json = {"id": "msg_bench0000", "type": "message", "status": "completed", "role": "assistant", "content": [part]}
    response: Json = {"id": "resp_bench0000", "object": "response", "created_at": 1715367049, "model": OPENAI_MODEL,
                      "error": None, "incomplete_details": None, "instructions": None, "tools": [],
                      "tool_choice": "auto", "parallel_tool_calls": True, "temperature": 1.0, "top_p": 1.0,
                      "metadata": {}, "store": False, "max_output_tokens": 64}
    usage = {"input_tokens": _IN, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
             "output_tokens": _OUT, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": _IN + _OUT}
    running = {"response": {**response, "status": "in_progress", "output": [], "usage": None}}
    done = {**response, "status": "completed", "completed_at": 1715367050, "output": [item], "usage": usage}
    at = {"item_id": item["id"], "output_index": 0, "content_index": 0}
    steps: list[tuple[str, Json]] = [("response.created", running), ("response.in_progress", running),
             ("response.output_item.added", {"output_index": 0, "item": {**item, "status": "in_progress", "content": []}}),
             ("response.content_part.added", {**at, "part": {**part, "text": ""}}),
             *(("response.output_text.delta", {**at, "delta": p, "logprobs": []}) for p in _PIECES),
             ("response.output_text.done", {**at, "text": _TEXT, "logprobs": []}),
             ("response.content_part.done", {**at, "part": part}),
             ("response.output_item.done", {"output_index": 0, "item": item}), ("response.completed", {"response": done})]
    return Shape(orjson.dumps(done), [_named(kind, {"sequence_number": i, **data}) for i, (kind, data) in enumerate(steps)])


def vertex_shape() -> Shape:
    """generateContent, and streamGenerateContent?alt=sse: 18 CRLF-framed events, one per word, the
    last with finishReason and usageMetadata, no terminator (as Google sends them)."""
    def gemini(text: str, finish: bool) -> Json:
        candidate: Json = {"index": 0, "content": {"role": "model", "parts": [{"text": text}]}}
        if not finish:
            return {"candidates": [candidate], "modelVersion": VERTEX_MODEL}
        usage = {"promptTokenCount": _IN, "candidatesTokenCount": _OUT, "totalTokenCount": _IN + _OUT}
        return {"candidates": [{**candidate, "finishReason": "STOP"}], "usageMetadata": usage, "modelVersion": VERTEX_MODEL}

    events = [_sse(gemini(p, i == len(_PIECES) - 1), b"\r\n\r\n") for i, p in enumerate(_PIECES)]
    return Shape(orjson.dumps(gemini(_TEXT, True)), events)


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
        EVENTSTREAM)


SHAPES: Final[dict[str, Callable[[], Shape]]] = {"openai": openai_shape, "responses": responses_shape,
                                                  "anthropic": anthropic_shape, "vertex": vertex_shape, "bedrock": bedrock_shape}


def handler(shape: Shape, key: str, url_stream: bool | None,
            last: list[str]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A route's answers: 401 without the `key` header; a stream when the URL is a stream's (`url_stream`)
    or, where the URL does not say (None), when the body asks for one."""
    async def answer(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        last[0] = request.raw_path
        if not request.headers.get(key):
            return web.Response(status=401, body=b'{"error": "no key"}', content_type="application/json")
        body: Json = {} if url_stream is not None else orjson.loads(raw)
        if not (url_stream if url_stream is not None else body.get("stream") is True):
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


def lean_app() -> web.Application:
    """One upstream for every path's direct URLs (as aiohttp routes them: decoded, no query), and `GET /last`.
    Each wants the direct call's key header (its first but Content-Type)."""
    last = [""]
    shapes = {api: make() for api, make in SHAPES.items()}
    routes = {unquote(path.direct.url_path(stream).partition("?")[0]): handler(
        shapes[path.upstream], next(h for h in path.direct.headers if h != "Content-Type"),
        stream if path.direct.stream_path else None, last) for path in PATHS.values() for stream in (False, True)}
    app = web.Application()
    for route, answer in routes.items():
        app.router.add_post(route, answer)

    async def seen(_request: web.Request) -> web.Response:
        return web.Response(text=last[0])

    app.router.add_get("/last", seen)
    return app
