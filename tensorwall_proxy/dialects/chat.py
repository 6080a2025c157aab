"""OpenAI Chat Completions, the pivot itself, and the legacy Completions beside it (DESIGN §12).

Two dialects share OpenAI's error shape and the ``/v1/`` prefix:

- ``CHAT``: ``/v1/chat/completions`` (its body is the pivot: validated, never copied), plus OpenAI's
  ``/v1/embeddings`` and ``/v1/models`` (the list and one model by id).
- ``COMPLETIONS``: the legacy ``/v1/completions``. ``prompt`` becomes one user message; the answer
  and each stream chunk become ``text_completion`` objects. Fields that only the legacy API has go
  by the field policy: 400 naming the field where ignoring it would change the result (``echo``,
  ``best_of > 1``, ``logprobs``, a ``suffix``), dropped when they hold their default.

Validation here covers what the gateway itself relies on; the upstream validates the rest. This
module does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final

import orjson

from .. import limits
from ..auth import FORWARDED_HEADERS
from ..errors import GatewayError, bad_request
from ..providers import ChatRequest, EmbeddingsRequest, StreamDecoder
from ..providers.reasoning import REASONING_STATE
from ..sse import DONE_EVENT, encode
from . import Catalog, DialectPath
from .streams import PivotStream

_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_FORWARDED: Final = tuple({name for names in FORWARDED_HEADERS.values() for name in names})
MAX_MODEL_NAME: Final = 256
# Inputs in one embeddings request: OpenAI's own limit. Some providers take one input per upstream
# call (Bedrock Titan, Gemini embeddings), so this also bounds one request's upstream calls.
MAX_EMBEDDING_INPUTS: Final = 2048
# Every dialect of OpenAI's shape answers the unknown paths under /v1/, and OpenAI's shape is the
# gateway's default for any other path ("/" is the shortest prefix, so every dialect's own wins).
_OPENAI_PREFIXES: Final[tuple[str, ...]] = ("/v1/", "/")


def _check_model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a non-empty string.", param="model")
    if len(model) > MAX_MODEL_NAME or not model.isprintable():
        raise bad_request(f"'model' must be at most {MAX_MODEL_NAME} printable characters.", param="model",
                          code="invalid_model")
    return model


def _check_type(body: Mapping[str, Any], name: str, types: type | tuple[type, ...], what: str) -> None:
    value = body.get(name)
    if value is None:
        return
    # JSON true is a Python int too: a boolean passes only where a boolean is asked for.
    ok = isinstance(value, bool) if types is bool else isinstance(value, types) and not isinstance(value, bool)
    if not ok:
        raise bad_request(f"'{name}' must be {what}.", param=name)


# The fields of a chat body whose type the gateway itself relies on: (types, what the error says).
_CHAT_TYPED: Final[dict[str, tuple[type | tuple[type, ...], str]]] = {
    "stream": (bool, "a boolean"),
    "stream_options": (dict, "an object"),
    "tools": (list, "an array"),
    "n": (int, "an integer"),
    "max_tokens": (int, "an integer"),
    "max_completion_tokens": (int, "an integer"),
    "temperature": ((int, float), "a number"),
    "top_p": ((int, float), "a number"),
}


def parse_chat(body: dict[str, Any], headers: Mapping[str, str]) -> ChatRequest:
    """Validate a chat body (the pivot as it comes) for what the gateway itself relies on."""
    _check_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' is required and must be a non-empty array.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"'messages[{i}]' must be an object.", param=f"messages[{i}]")
        role = message.get("role")
        if role not in _ROLES:
            raise bad_request(f"'messages[{i}].role' must be one of {', '.join(sorted(_ROLES))}.",
                              param=f"messages[{i}].role")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise bad_request(f"'messages[{i}].content' must be a string or an array of parts.",
                              param=f"messages[{i}].content")
        if REASONING_STATE in message:
            # The pivot's extension: only a dialect restores it (from state it sealed), never a caller.
            raise bad_request(f"'messages[{i}].{REASONING_STATE}' is not a Chat Completions field.",
                              param=f"messages[{i}].{REASONING_STATE}")
    for name, (types, what) in _CHAT_TYPED.items():
        if name in body:
            _check_type(body, name, types, what)
    n = body.get("n")
    if n is not None and n < 1:
        raise bad_request("'n' must be at least 1.", param="n")
    stream = body.get("stream") is True
    options = body.get("stream_options")
    if options is not None and not stream:
        raise bad_request("'stream_options' is only allowed when 'stream' is true.", param="stream_options")
    wants_usage = bool(options and options.get("include_usage") is True)
    forwarded = {name: headers[name] for name in _FORWARDED if name in headers}
    return ChatRequest(body, stream, wants_usage, forwarded)


def parse_embeddings(body: dict[str, Any]) -> EmbeddingsRequest:
    """Validate an embeddings body: model, input, encoding_format."""
    _check_model(body)
    value = body.get("input")
    if value is None or value == "" or value == []:
        raise bad_request("'input' is required: a string, an array of strings or of token arrays.", param="input")
    if not isinstance(value, str | list):
        raise bad_request("'input' must be a string or an array.", param="input")
    # A list of integers is one input (a token array), however long.
    if len(value) > MAX_EMBEDDING_INPUTS and isinstance(value, list) and not all(type(v) is int for v in value):
        raise bad_request(f"'input' holds {len(value)} inputs; at most {MAX_EMBEDDING_INPUTS} are allowed per request.",
                          param="input", code="too_many_inputs")
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in ("float", "base64"):
        raise bad_request("'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
    _check_type(body, "dimensions", int, "an integer")
    return EmbeddingsRequest(body, encoding == "base64")


def _model_object(model_id: str, owner: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owner}


def models_body(catalog: Catalog) -> bytes:
    """GET /v1/models: OpenAI's list of every model the catalog holds."""
    created = catalog.created
    return orjson.dumps({"object": "list", "data": [_model_object(model_id, owner, created)
                                                    for model_id, owner in catalog.owners.items()]})


def model_body(catalog: Catalog, model_id: str) -> bytes:
    """GET /v1/models/{id}: the model object ``/v1/models`` lists under ``model_id``; 404 otherwise."""
    owner = catalog.owners.get(model_id)
    if owner is None:
        raise GatewayError(404, f"The model '{model_id}' does not exist on this gateway.", param="model",
                           code="model_not_found")
    return orjson.dumps(_model_object(model_id, owner, catalog.created))


def _openai_error_event(error: GatewayError) -> bytes:
    return encode(error.body())


class Chat:
    """OpenAI Chat Completions: the pivot's own dialect, so answers and events pass as they are."""

    __slots__ = ()
    name = "chat"
    prefixes = _OPENAI_PREFIXES
    paths: tuple[DialectPath, ...] = (
        DialectPath("POST", "/v1/chat/completions", "pivot"),
        DialectPath("POST", "/v1/embeddings", "embeddings"),
        DialectPath("GET", "/v1/models", "models"),
        DialectPath("GET", "/v1/models/{model:.+}", "model"),
    )
    is_pivot = True
    request_id_headers: tuple[str, ...] = ()

    # The function itself, not a method calling it: the chat hot path pays no extra call.
    parse = staticmethod(parse_chat)

    def encode_answer(self, req: ChatRequest, answer: bytes) -> bytes:
        return answer

    def encode_stream(self, req: ChatRequest, decoder: StreamDecoder) -> StreamDecoder:
        return decoder

    def error_status(self, error: GatewayError) -> int:
        return error.status

    def error_body(self, error: GatewayError) -> bytes:
        return error.body()

    # The rate-limit headers its clients read, as the function itself (no call per answer).
    rate_limit_headers = staticmethod(limits.openai_headers)

    def error_event(self, error: GatewayError, stream: StreamDecoder | None = None) -> bytes:
        return _openai_error_event(error)


# Fields only the legacy API has: the value each takes when absent, which is dropped silently.
_COMPLETIONS_ONLY: Final = frozenset({"prompt", "suffix", "echo", "best_of", "logprobs"})


def parse_completions(body: dict[str, Any], headers: Mapping[str, str]) -> ChatRequest:
    """A legacy completions body → the pivot: ``prompt`` as one user message, every other field as
    chat has it (``max_tokens``, ``temperature``, ``stop``, ``n``, ``stream``, … mean the same)."""
    _check_model(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad_request("'prompt' is required and must be a string or an array of one string; token "
                          "arrays and batches of prompts are not supported.", param="prompt")
    _check_type(body, "echo", bool, "a boolean")
    _check_type(body, "best_of", int, "an integer")
    _check_type(body, "suffix", str, "a string")
    # The field policy (DESIGN §7): refused where ignoring would change the result, dropped at a default.
    if body.get("echo") is True:
        raise bad_request("'echo' is not supported: the prompt is not returned with the completion.", param="echo")
    best_of = body.get("best_of")
    if best_of is not None and best_of != 1:
        raise bad_request("'best_of' other than 1 is not supported.", param="best_of")
    if body.get("logprobs") is not None:
        raise bad_request("'logprobs' is not supported on /v1/completions.", param="logprobs")
    if body.get("suffix"):
        raise bad_request("'suffix' is not supported: insertion is not available through the gateway.",
                          param="suffix")
    pivot = {name: value for name, value in body.items() if name not in _COMPLETIONS_ONLY}
    pivot["messages"] = [{"role": "user", "content": prompt}]
    # The body itself goes to a provider that takes legacy completions (`dialects: [chat, completions]`).
    return replace(parse_chat(pivot, headers), native=body)


def _choice(choice: Any, default_index: int, key: str) -> dict[str, Any]:
    """A chat choice (``key``: ``message`` whole, ``delta`` streamed) as a text_completion choice."""
    part = choice.get(key) if isinstance(choice, dict) else None
    text = part.get("content") if isinstance(part, dict) else None
    index = choice.get("index") if isinstance(choice, dict) else None
    return {"text": text if isinstance(text, str) else "", "index": index if isinstance(index, int) else default_index,
            "logprobs": None, "finish_reason": choice.get("finish_reason") if isinstance(choice, dict) else None}


def _text_completion(chunk: Mapping[str, Any], choices: list[dict[str, Any]]) -> dict[str, Any]:
    out = {"id": chunk.get("id"), "object": "text_completion", "created": chunk.get("created"),
           "model": chunk.get("model"), "choices": choices}
    if chunk.get("system_fingerprint") is not None:
        out["system_fingerprint"] = chunk["system_fingerprint"]
    if chunk.get("usage") is not None:
        out["usage"] = chunk["usage"]
    return out


def completion_answer(answer: bytes) -> bytes:
    """A ``chat.completion`` body → a ``text_completion`` body (usage carried as it is)."""
    parsed = orjson.loads(answer)
    choices = parsed.get("choices") or []
    return orjson.dumps(_text_completion(parsed, [_choice(c, i, "message") for i, c in enumerate(choices)]))


class CompletionStream(PivotStream):
    """Re-encodes the pivot's chunks, one attempt's stream, as ``text_completion`` chunks.

    The pivot decoder keeps the commit point, the end and the usage; a chunk that carries neither text,
    nor a finish reason, nor usage (the opening role chunk) has no counterpart here and is left out.
    Every event goes through ``feed``: none passes plain, since each one is rewritten.
    """

    __slots__ = ()

    def _out(self, events: list[bytes]) -> list[bytes]:
        inner = self._inner
        self.visible, self.done, self.usage = inner.visible, inner.done, inner.usage
        out: list[bytes] = []
        for event in events:
            if event == DONE_EVENT or not event.startswith(b"data: {"):
                out.append(event)
                continue
            chunk = orjson.loads(event[6:].rstrip(b"\n"))
            if not isinstance(chunk, dict) or "choices" not in chunk:
                out.append(event)  # an error event: OpenAI's shape is this dialect's too
                continue
            choices = [_choice(c, i, "delta") for i, c in enumerate(chunk["choices"] or [])]
            if chunk.get("usage") is None and all(not c["text"] and c["finish_reason"] is None for c in choices):
                continue
            out.append(encode(orjson.dumps(_text_completion(chunk, choices))))
        return out


class Completions:
    """OpenAI's legacy Completions, through the pivot for every provider."""

    __slots__ = ()
    name = "completions"
    prefixes = _OPENAI_PREFIXES
    paths: tuple[DialectPath, ...] = (DialectPath("POST", "/v1/completions", "pivot"),)
    is_pivot = False
    request_id_headers: tuple[str, ...] = ()

    def parse(self, body: dict[str, Any], headers: Mapping[str, str]) -> ChatRequest:
        return parse_completions(body, headers)

    def encode_answer(self, req: ChatRequest, answer: bytes) -> bytes:
        return completion_answer(answer)

    def encode_stream(self, req: ChatRequest, decoder: StreamDecoder) -> StreamDecoder:
        return CompletionStream(decoder)

    def error_status(self, error: GatewayError) -> int:
        return error.status

    def error_body(self, error: GatewayError) -> bytes:
        return error.body()

    # The rate-limit headers its clients read, as the function itself (no call per answer).
    rate_limit_headers = staticmethod(limits.openai_headers)

    def error_event(self, error: GatewayError, stream: StreamDecoder | None = None) -> bytes:
        return _openai_error_event(error)


CHAT: Final = Chat()
COMPLETIONS: Final = Completions()

