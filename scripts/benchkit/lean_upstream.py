"""The lean upstream: every path's provider API answered from bytes built once, as cheaply as it can.

`--upstream lean` (the default) runs `lean_app` in a subprocess (`bench.py --serve-lean-upstream
PORT`): one aiohttp server whose handlers check only what a real API refuses first (the key, a
required header, the URL form), then answer from pre-built bytes, writing a stream one event per
write as a real streaming server sends them (so the proxy sees real framing). Its own CPU per
request is measured in every run, so what it costs is visible, not assumed away.

The paced variant: a chat request for the model `gpt-4o-paced` (PACED_MODEL) gets the same 20
chunks with PACE_SECONDS (10 ms) between one chunk and the next, like a model producing tokens;
the paced test (paced.py) sends it direct, through the relay and through the proxy, which routes
the model to the openai provider by the built-in `gpt-*` rule and passes the name through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import orjson
from aiohttp import web

from .common import CONTENT_CHUNKS, STREAM_CHUNKS, Json
from .eventstream import EVENTSTREAM, check_event_frames, encode_event
from .paths import BenchPath
from .wire import ANTHROPIC_MODEL, BEDROCK_MODEL_SEGMENT, VERTEX_MODEL

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PACED_MODEL: Final = "gpt-4o-paced"
PACE_SECONDS: Final = 0.010  # between one chunk of a paced stream and the next


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
    """OpenAI's chat endpoint from fixed bytes; checks only what a real one refuses first (the key).

    A stream for PACED_MODEL waits PACE_SECONDS before each chunk after the first; the usage event
    and [DONE] follow the finish chunk at once, as a real server sends them.
    """
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
        paced = body.get("model") == PACED_MODEL
        response = _stream_response()
        await response.prepare(request)
        # One write per event, as a real streaming server sends them (the proxy sees real framing).
        for i, event in enumerate(events):
            if paced and i:
                await asyncio.sleep(PACE_SECONDS)
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
        "id": _LEAN_MSG_ID, "type": "message", "role": "assistant", "model": ANTHROPIC_MODEL,
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
    message: Json = {"id": _LEAN_MSG_ID, "type": "message", "role": "assistant", "model": ANTHROPIC_MODEL,
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
