"""OpenAI's wire as every type that speaks it uses it: openai and its compatible types, and azure.

The request body is the caller's, with the field policy of the type (``policy.adapt``), tool call
ids in the form the type accepts, and — for streams — usage asked for where the type takes
``stream_options``. Streams are relayed as the upstream's own event bytes; only the usage chunk
the caller did not ask for is removed, and a usage that rides on the last chunk (Mistral) is split
into the separate chunk OpenAI clients expect. Also here: the JSON headers every translator sends,
upstream URLs, OpenAI-shaped errors and base64 embeddings.

The native half every type of this wire shares (DESIGN §12, §14): the dialects it passes through
(``completions``, ``responses``) live at ``NATIVE_PATHS`` under the type's API root; the caller's
body goes with only ``model`` set; answers come back as the upstream's bytes, read for their usage
and id (the Responses wire in ``responses_wire``, the legacy completions wire here).

Pure: no I/O, no aiohttp.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import orjson
from yarl import URL

from ..errors import UpstreamError, caller_status, kind_for_status, openai_error_fields, retry_after_seconds
from ..sse import DONE, DONE_EVENT, SseEvent, encode
from .contract import ChatRequest, NativeAnswer, NativeStream
from .ids import IdStyle, for_upstream
from .policy import FieldPolicy, adapt
from .reasoning import REASONING_STATE
from .responses_wire import ResponsesPassthrough, read_answer
from .shapes import embeddings_to_base64_list

if TYPE_CHECKING:
    from ..auth import Credential
    from ..config import ProviderConfig

USER_AGENT: Final = "tensorwall-proxy/0.1"

_URL_CACHE: dict[tuple[str, str], URL] = {}


def upstream_url(base: str, path: str) -> URL:
    """``base`` + ``path`` as a URL, parsed once per distinct pair (base URLs come from config)."""
    key = (base, path)
    url = _URL_CACHE.get(key)
    if url is None:
        if len(_URL_CACHE) > 1024:
            _URL_CACHE.clear()
        # Both halves are already encoded: the base by config.py, the path by path_segment().
        url = _URL_CACHE[key] = URL(base + path, encoded=True)
    return url


def auth_headers(forwarded: tuple[str, ...], credential: Credential, req_headers: Mapping[str, str]) -> dict[str, str]:
    """JSON headers plus the credential as ``Authorization: Bearer``; of the caller's headers only the
    ``forwarded`` ones (the type's catalog entry names them), and only with the caller's own key."""
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if credential.secret is not None:
        headers["Authorization"] = "Bearer " + credential.secret.reveal()
    if credential.kind == "caller":
        # Organisation and project scope the caller's own key, so they travel only with it.
        for name in forwarded:
            value = req_headers.get(name)
            if value:
                headers[name] = value
    return headers


def rewrite_tool_ids(messages: list[Any], style: IdStyle) -> list[Any] | None:
    """Messages with every tool call id in the style's form and without the pivot's reasoning-state
    extension (no OpenAI-compatible upstream takes it), or None when none needed changing."""
    changed: list[Any] | None = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        new: dict[str, Any] | None = None
        if role == "assistant" and REASONING_STATE in message:
            new = {name: value for name, value in message.items() if name != REASONING_STATE}
        if role == "assistant" and isinstance(message.get("tool_calls"), list):
            calls = message["tool_calls"]
            new_calls = []
            for call in calls:
                if isinstance(call, dict) and isinstance(call.get("id"), str):
                    upstream_id = for_upstream(call["id"], style)
                    if upstream_id != call["id"]:
                        call = {**call, "id": upstream_id}
                new_calls.append(call)
            if any(a is not b for a, b in zip(new_calls, calls, strict=True)):
                new = {**(new or message), "tool_calls": new_calls}
        elif role == "tool" and isinstance(message.get("tool_call_id"), str):
            upstream_id = for_upstream(message["tool_call_id"], style)
            if upstream_id != message["tool_call_id"]:
                new = {**message, "tool_call_id": upstream_id}
        if new is not None:
            if changed is None:
                changed = list(messages)
            changed[i] = new
    return changed


def adapt_chat_body(req: ChatRequest, policy: FieldPolicy, id_style: IdStyle, *, asks_usage: bool) -> dict[str, Any]:
    """The caller's body for an OpenAI-compatible upstream (model not yet set)."""
    body = dict(req.body)
    adapt(body, policy)
    messages = rewrite_tool_ids(body["messages"], id_style)
    if messages is not None:
        body["messages"] = messages
    if req.stream:
        if asks_usage:
            # Ask for usage even when the caller did not, to count tokens; the decoder hides it.
            options = body.get("stream_options")
            body["stream_options"] = {**options, "include_usage": True} if isinstance(options, dict) else {
                "include_usage": True}
        else:
            body.pop("stream_options", None)
    else:
        body.pop("stream_options", None)  # only valid with stream: true
    return body


def classify_openai_error(provider: ProviderConfig, status: int, headers: Mapping[str, str],
                          body: bytes) -> UpstreamError:
    """An OpenAI-shaped (or Mistral flat / FastAPI 422) error → UpstreamError, status kept for 4xx."""
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    message, type_, param, code = openai_error_fields(parsed)
    kind = kind_for_status(status)
    if message is None:
        text = body[:200].decode("utf-8", "replace").strip()
        message = f"Upstream '{provider.name}' answered HTTP {status}" + (f": {text}" if text else ".")
    return UpstreamError(kind, caller_status(status, kind), message, provider=provider.name, code=code, param=param,
                         type=type_ if status < 500 else None, retry_after=retry_after_seconds(headers))


def embeddings_to_base64(body: bytes) -> bytes:
    """An OpenAI embeddings list whose vectors are float lists → the same with base64 vectors."""
    parsed = orjson.loads(body)
    data = parsed.get("data") if isinstance(parsed, dict) else None
    if not isinstance(data, list):
        raise UpstreamError("server", 502, "Upstream embeddings response has no data list.")
    embeddings_to_base64_list(data)
    return orjson.dumps(parsed)


def _visible(chunk: Mapping[str, Any]) -> bool:
    """Whether a chunk holds something the client must see: the commit point (DESIGN §1)."""
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        if choice.get("finish_reason") or choice.get("text"):  # `text`: a legacy completions chunk
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict) and (
            delta.get("content") or delta.get("tool_calls") or delta.get("refusal")
            # Thinking commits (DESIGN §14), under either name the compatible servers give it.
            or delta.get("reasoning_content") or delta.get("reasoning")
            or delta.get("function_call") or delta.get("audio")
        ):
            return True
    return False


# A usage that is set (not null): its event goes through feed(), which counts and may hide it.
_USAGE_SET: Final = re.compile(rb'"usage"\s*:\s*(?!null)')


class PassthroughStream:
    """The stream decoder for OpenAI-shaped SSE: relays each event's own bytes.

    Events are parsed (orjson) until the commit point, and after it only those that may hold usage
    or an in-band error; what the client receives is the upstream's bytes, not a re-encoding — except for the two
    chunks this class exists to change: the usage chunk we asked for on the caller's behalf
    (removed) and a usage that rides on a content chunk when the caller asked for usage (split).
    """

    __slots__ = ("_hide_usage", "_pending", "_provider", "_split_usage", "done", "usage", "visible")
    # As a native decoder (legacy completions passed through): nothing kept of the answer's id.
    response_id: str | None = None
    opening: Mapping[str, Any] | None = None
    sequence: int = 0

    def __init__(self, provider: str, *, hide_usage: bool, split_usage: bool) -> None:
        self._provider = provider
        self._hide_usage = hide_usage
        self._split_usage = split_usage
        self._pending: bytes | None = None
        self.visible = False
        self.done = False
        self.usage: Mapping[str, Any] | None = None

    def feed(self, event: SseEvent) -> list[bytes]:
        data = event.data
        if data == DONE:
            self.done = True
            self.visible = True
            if self._pending is not None:
                pending, self._pending = self._pending, None
                return [pending, DONE_EVENT]
            return [DONE_EVENT]
        if self.visible and b'"error"' not in data and (b'"usage"' not in data or b'"usage":null' in data):
            # Past the commit point only errors and usage need a look: the common content chunk
            # goes out as it came, unparsed. (A spaced `"usage": null` just takes the slow path.)
            return [encode(data)]
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError("server", 502, f"Upstream '{self._provider}' sent an event that is not JSON.",
                                provider=self._provider) from None
        if not isinstance(chunk, dict):
            raise UpstreamError("server", 502, f"Upstream '{self._provider}' sent an event that is not an object.",
                                provider=self._provider)
        error = chunk.get("error")
        if error is not None:
            message, type_, _, code = openai_error_fields(chunk)
            raise UpstreamError("server", 502, message or f"Upstream '{self._provider}' failed mid-stream.",
                                provider=self._provider, code=code, type=type_)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
            choices = chunk.get("choices")
            if not choices:
                if self._hide_usage:
                    return []
            elif self._split_usage:
                # Mistral: usage rides on the last content chunk; OpenAI clients expect it alone.
                self._pending = encode(orjson.dumps({
                    "id": chunk.get("id"), "object": "chat.completion.chunk", "created": chunk.get("created"),
                    "model": chunk.get("model"), "choices": [], "usage": usage,
                }))
                chunk["usage"] = None
                self.visible = self.visible or _visible(chunk)
                return [encode(orjson.dumps(chunk))]
        if not self.visible and _visible(chunk):
            self.visible = True
        return [encode(data)]

    def split_plain(self, chunk: bytes) -> tuple[bytes, bytes]:
        """The leading events of ``chunk`` that go out as they came: single-line ``data:`` events
        holding no error, no usage but ``"usage":null`` and no [DONE] (content, the bulk of every
        stream). Before the commit point they are parsed only until one is visible."""
        if self.done or self._pending is not None or b"\r" in chunk:
            return b"", chunk
        end = chunk.rfind(b"\n\n") + 2  # past the last whole event
        found = [chunk.find(b'"error"', 0, end), chunk.find(b"[DONE]", 0, end)]
        if chunk.count(b'"usage"', 0, end) != chunk.count(b'"usage":null', 0, end):
            match = _USAGE_SET.search(chunk, 0, end)  # rare: the one event with the counts
            found.append(match.start() if match else 0)  # no match (a spaced null): all to feed()
        for at in found:
            if at >= 0:
                end = min(end, chunk.rfind(b"\n\n", 0, at) + 2)  # where that event begins
        if end < 2:
            return b"", chunk
        plain = chunk[:end] if end < len(chunk) else chunk
        # Single-line `data:` events only: every newline is one of an event's two closing ones, each
        # pair followed by the next `data:` (counting single bytes is the cheapest scan there is).
        if not plain.startswith(b"data:") or plain.count(b"\n") != 2 * plain.count(b"\n\ndata:") + 2:
            return b"", chunk  # comments, named or multi-line events: the framer's job
        start = 0
        while not self.visible and start < end:
            stop = plain.find(b"\n\n", start)
            try:
                parsed = orjson.loads(plain[start + 5:stop])
            except orjson.JSONDecodeError:
                return b"", chunk  # the event-by-event path reports it
            self.visible = isinstance(parsed, dict) and _visible(parsed)
            start = stop + 2
        return plain, chunk[end:]

    def close(self) -> list[bytes]:
        if not self.done:
            raise UpstreamError("server", 502, f"Upstream '{self._provider}' ended the stream before [DONE].",
                                provider=self._provider)
        return []


# Where each dialect a type of OpenAI's wire can pass through lives, under the type's API root.
NATIVE_PATHS: Final[Mapping[str, str]] = {"responses": "/responses", "completions": "/completions"}


def native_body(req: ChatRequest, model: str) -> bytes:
    """The caller's own body for a native attempt: every field as it came but ``model``."""
    assert req.native is not None  # the relay asks for a native call only when the dialect made a body
    body = dict(req.native)
    body["model"] = model
    return orjson.dumps(body)


class NativeReading:
    """What every type of this wire does alike with a native answer: read it (its stream, or its
    whole body) as the dialect's own. The types differ only in where they send the call."""

    __slots__ = ()

    def native_decoder(self, dialect: str, req: ChatRequest, provider: ProviderConfig) -> NativeStream:
        return native_decoder(dialect, provider.name)

    def read_native_answer(self, dialect: str, provider: ProviderConfig, body: bytes) -> NativeAnswer:
        return read_native_answer(dialect, provider.name, body)


def native_decoder(dialect: str, provider: str) -> NativeStream:
    """The decoder for a native stream: Responses events, or legacy completions chunks (which
    carry usage only when the caller asked for it: the body is the caller's)."""
    if dialect == "responses":
        return ResponsesPassthrough(provider)
    return PassthroughStream(provider, hide_usage=False, split_usage=False)


def read_native_answer(dialect: str, provider: str, body: bytes) -> NativeAnswer:
    """A whole native answer's usage (the pivot's shape) and id; ValueError when it is not one."""
    if dialect == "responses":
        return read_answer(provider, body)
    parsed = orjson.loads(body)
    if not isinstance(parsed, dict) or not isinstance(parsed.get("choices"), list):
        raise ValueError(f"upstream '{provider}' sent an answer that is not a completion")
    usage, answer_id = parsed.get("usage"), parsed.get("id")
    return NativeAnswer(usage if isinstance(usage, dict) else None, answer_id if isinstance(answer_id, str) else None)
