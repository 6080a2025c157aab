"""Vertex AI's Gemini API (generateContent, streamGenerateContent, predict, embedContent) translators.

Requests: messages become ``contents`` (roles user/model, consecutive turns merged) with
``systemInstruction``; images become ``inlineData`` / ``fileData``; the sampling fields,
``response_format`` and ``reasoning_effort`` become ``generationConfig``; tools become one
``functionDeclarations`` list with each JSON schema reduced to Google's OpenAPI subset; tool
results become ``functionResponse`` parts named after the call they answer. Function names Gemini
refuses travel under the prefix of ``ids.for_gemini`` and come back without it.

Responses: candidates become choices (``n`` > 1 works); function calls get ids, and a Gemini 3
``thoughtSignature`` rides inside that id (``ids.attach``) to be restored on the ``functionCall``
part when the conversation comes back, as Gemini requires. When the request wants reasoning
state, every signature (a text answer's too, which has no id to ride in) also comes back as the
pivot's ``reasoning_state`` (wire ``gemini``), and signatures restored there go back on the part
of the kind they came on. Streams are Gemini responses carrying new text only; function calls
arrive whole.

Claude models (``claude-…`` ids, or the provider's ``anthropic_models:``) are Anthropic's Messages
wire in Vertex's envelope: ``publishers/anthropic/models/{model}:rawPredict`` / ``:streamRawPredict``
with ``anthropic_version`` in the body and no ``model``. Chat (and the dialects on the pivot) goes
through ``anthropic_wire``'s translator; ``/v1/messages`` passes through natively. Token counts come
from ``count-tokens:rawPredict`` (Claude) and ``:countTokens`` (Gemini).

Pure: no I/O, no aiohttp. Tokens come from upstream.py's google-auth hook.
"""

from __future__ import annotations

import mimetypes
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import orjson

from ..errors import (
    FailureKind,
    ProviderNotConfigured,
    UnsupportedField,
    UpstreamError,
    bad_request,
    caller_status,
    kind_for_status,
    retry_after_seconds,
)
from ..sse import SseDecoder, SseEvent
from ..tokens import count_of, token_count
from .anthropic_wire import AnthropicStream, anthropic_family, native_messages
from .anthropic_wire import translate_request as claude_request
from .anthropic_wire import translate_response as claude_response
from .catalog import TYPES
from .contract import ChatRequest, EmbeddingsRequest, UpstreamCall, path_segment, read_input_tokens
from .ids import attach, detach, for_gemini, from_gemini, unique_id
from .messages_wire import NativeMessages
from .openai_wire import USER_AGENT, upstream_url
from .policy import check, reasoning_budget
from .reasoning import REASONING_STATE, entries, restored
from .shapes import (
    ChunkEncoder,
    convert_turns,
    data_url,
    embedding_texts,
    embeddings,
    image_url,
    items,
    load_object,
    obj,
    stop_sequences,
    text_of,
    tool_input,
    tool_name,
    usage,
)

if TYPE_CHECKING:
    from ..auth import Credential
    from ..config import ProviderConfig

API_VERSION: Final = "v1"
FINISH_REASONS: Final[dict[str, str]] = {
    "STOP": "stop", "MAX_TOKENS": "length", "FINISH_REASON_UNSPECIFIED": "stop", "OTHER": "stop",
    "SAFETY": "content_filter", "RECITATION": "content_filter", "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter", "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter", "IMAGE_RECITATION": "content_filter",
    "IMAGE_OTHER": "content_filter", "MODEL_ARMOR": "content_filter", "LANGUAGE": "content_filter",
}
# Google's status → (failure kind, status the caller sees).
STATUS_KINDS: Final[dict[str, FailureKind]] = {
    "INVALID_ARGUMENT": "bad_request", "FAILED_PRECONDITION": "bad_request", "OUT_OF_RANGE": "bad_request",
    "NOT_FOUND": "bad_request", "UNAUTHENTICATED": "auth", "PERMISSION_DENIED": "auth",
    "RESOURCE_EXHAUSTED": "rate_limited", "INTERNAL": "server", "UNKNOWN": "server",
    "UNAVAILABLE": "overloaded", "DEADLINE_EXCEEDED": "timeout",
}
# text-embedding-* models take at most this many instances (and about 20k tokens) in one :predict.
PREDICT_BATCH: Final = 250
PREDICT_TOKENS: Final = 20_000
# Schema keywords Gemini's OpenAPI subset accepts (functionDeclarations.parameters, responseSchema).
SCHEMA_KEYS: Final = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "items", "minItems", "maxItems",
    "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern",
    "minimum", "maximum", "anyOf", "propertyOrdering", "default", "example",
})
# Marks a thought signature in a tool call id, so another provider's state is never taken for it.
_STATE_TAG: Final = b"G1"
_LOCATION: Final = str(TYPES["vertex"].default("location"))
# The `anthropic_version` rawPredict wants in a Messages body (wire-formats-dialects D.1).
ANTHROPIC_VERSION: Final = "vertex-2023-10-16"
# What the Gemini translation refuses and maps of a chat body: its catalog entry's field policy.
POLICY: Final = TYPES["vertex"].policy


# --- URLs ---------------------------------------------------------------------------------------


def base_url(provider: ProviderConfig) -> str:
    """The configured host root, else Google's regional host (``global`` has no region prefix)."""
    if provider.base_url:
        return provider.base_url
    location = provider.location or _LOCATION
    if location == "global":
        return "https://aiplatform.googleapis.com"
    return f"https://{location}-aiplatform.googleapis.com"


def model_path(provider: ProviderConfig, project: str, model: str, method: str, publisher: str = "google") -> str:
    """``/v1/projects/…/publishers/{publisher}/models/{model}:{method}``, every segment encoded."""
    location = provider.location or _LOCATION
    return (f"/{API_VERSION}/projects/{path_segment(project, 'Vertex project')}"
            f"/locations/{path_segment(location, 'Vertex location')}"
            f"/publishers/{publisher}/models/{path_segment(model, 'Vertex model id')}:{method}")


def _claude_call(provider: ProviderConfig, credential: Credential, model: str, body: dict[str, Any],
                 stream: bool, betas: tuple[str, ...] = (), stripped: tuple[str, ...] = ()) -> UpstreamCall:
    """A Messages body for Claude in Vertex's envelope: ``rawPredict`` / ``streamRawPredict`` under the
    anthropic publisher, ``anthropic_version`` in the body and no ``model``; betas as a header."""
    body.pop("model", None)
    body.setdefault("anthropic_version", ANTHROPIC_VERSION)
    method = "streamRawPredict" if stream else "rawPredict"
    url = upstream_url(base_url(provider), model_path(provider, _project(provider, credential), model, method,
                                                      "anthropic"))
    headers = _headers(credential)
    if betas:
        headers["anthropic-beta"] = ",".join(betas)
    return UpstreamCall("POST", url, headers, orjson.dumps(body), stream, stripped)


def _project(provider: ProviderConfig, credential: Credential) -> str:
    project = provider.project or credential.project
    if not project:
        raise ProviderNotConfigured(provider.name, provider.unconfigured or "project is empty, and the credentials "
                                                                            "name none")
    return project


def _headers(credential: Credential) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if credential.secret is not None:
        headers["Authorization"] = "Bearer " + credential.secret.reveal()
    return headers


# --- schemas ------------------------------------------------------------------------------------


def reduce_schema(schema: Any, defs: Mapping[str, Any] | None = None, depth: int = 0) -> dict[str, Any]:
    """A JSON Schema reduced to Gemini's OpenAPI subset.

    Local ``$ref``s are inlined from ``$defs``/``definitions``; ``oneOf`` becomes ``anyOf``;
    ``const`` becomes a one-value ``enum``; a type list (or an enum) with ``null`` becomes
    ``nullable``; an enum that is not all strings is dropped (Gemini's enums are strings); every
    other keyword Gemini refuses (``additionalProperties``, ``$schema``, ``allOf``, …) is dropped.
    """
    if not isinstance(schema, dict) or depth > 32:
        return {}
    if defs is None:
        defs = {**obj(schema.get("definitions")), **obj(schema.get("$defs"))}
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target = defs.get(ref.rsplit("/", 1)[-1])
        merged = {**obj(target), **{k: v for k, v in schema.items() if k != "$ref"}}
        return reduce_schema(merged, defs, depth + 1)
    out: dict[str, Any] = {}
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        if len(kinds) < len(kind):
            out["nullable"] = True
        kind = kinds[0] if len(kinds) == 1 else None
        if len(kinds) > 1:
            out["anyOf"] = [{"type": k} for k in kinds]
    if isinstance(kind, str):
        out["type"] = kind
    enum = items(schema.get("enum")) if "enum" in schema else ([schema["const"]] if "const" in schema else None)
    if enum is not None:
        if None in enum:
            out["nullable"] = True
        values = [v for v in enum if v is not None]
        # Gemini's enum holds strings only; an enum of numbers is left to the description.
        if values and all(isinstance(v, str) for v in values):
            out["enum"] = values
    for key, value in schema.items():
        if key not in SCHEMA_KEYS or key in ("type", "enum"):
            continue
        if key == "properties":
            out[key] = {name: reduce_schema(sub, defs, depth + 1) for name, sub in obj(value).items()}
        elif key == "items":
            out[key] = reduce_schema(value, defs, depth + 1)
        elif key == "anyOf":
            out[key] = [reduce_schema(sub, defs, depth + 1) for sub in items(value)]
        else:
            out.setdefault(key, value)
    if "oneOf" in schema and "anyOf" not in out:
        out["anyOf"] = [reduce_schema(sub, defs, depth + 1) for sub in items(schema["oneOf"])]
    if out.get("type") == "object" and "properties" not in out and "anyOf" not in out:
        out["properties"] = {}
    return out


# --- request ------------------------------------------------------------------------------------


def _media_part(url: str, param: str) -> dict[str, Any]:
    if url.startswith("data:"):
        parsed = data_url(url)
        if parsed is None:
            raise UnsupportedField(param, f"'{param}' must be a base64 data: URL or a gs:// or https: URL.")
        return {"inlineData": {"mimeType": parsed[0], "data": parsed[1]}}
    if url.startswith(("gs://", "https://", "http://")):
        mime = mimetypes.guess_type(url.split("?")[0])[0] or "image/jpeg"
        return {"fileData": {"mimeType": mime, "fileUri": url}}
    raise UnsupportedField(param, f"'{param}': Gemini takes data:, gs:// and https: URLs.")


def _user_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(items(content)):
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        param = f"{where}.content[{j}]"
        if kind == "text":
            if part.get("text"):
                parts.append({"text": str(part["text"])})
        elif kind == "image_url":
            parts.append(_media_part(image_url(part), f"{param}.image_url.url"))
        elif kind == "file" and isinstance(obj(part.get("file")).get("file_data"), str):
            parts.append(_media_part(obj(part.get("file"))["file_data"], f"{param}.file.file_data"))
        elif kind == "input_audio":
            audio = obj(part.get("input_audio"))
            parts.append({"inlineData": {"mimeType": f"audio/{audio.get('format') or 'wav'}",
                                         "data": str(audio.get("data") or "")}})
        else:
            raise UnsupportedField(param, f"Content parts of type '{kind}' are not supported by Gemini.")
    return parts


def function_name(value: Any, param: str) -> str:
    """A caller's function name as Gemini is sent it (``ids.for_gemini``); 400 naming where it is
    when Gemini can take it in no form."""
    name = tool_name(value, param)
    mapped = for_gemini(name)
    if mapped is None:
        raise bad_request(f"'{param}': Gemini takes function names of at most 64 letters, digits, '_', '.', ':' "
                          f"and '-', starting with a letter or '_'; {name[:80]!r} cannot be sent.", param=param)
    return mapped


def encode_signature(signature: str) -> bytes:
    """A thought signature as state for a tool call id."""
    return _STATE_TAG + signature.encode("utf-8")


def decode_signature(state: bytes | None) -> str | None:
    """The thought signature in a tool call id's state, or None when it holds none of ours."""
    if not state or not state.startswith(_STATE_TAG):
        return None
    try:
        return state[len(_STATE_TAG):].decode("utf-8")
    except UnicodeDecodeError:
        return None


def _model_parts(message: Mapping[str, Any], names: dict[str, str], where: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    text = text_of(message.get("content"))
    if text:
        parts.append({"text": text})
    for k, call in enumerate(items(message.get("tool_calls"))):
        function = obj(obj(call).get("function"))
        name = function_name(function.get("name"), f"{where}.tool_calls[{k}].function.name")
        client_id = str(obj(call).get("id") or "")
        names[client_id] = name
        part: dict[str, Any] = {"functionCall": {"name": name, "args": tool_input(function.get("arguments"))}}
        signature = decode_signature(detach(client_id)[1])
        if signature:
            part["thoughtSignature"] = signature  # Gemini 3 wants it back on the very same part
        parts.append(part)
    for block in restored(message, "gemini"):
        _restore_signature(parts, block)
    return parts


def _restore_signature(parts: list[dict[str, Any]], block: Mapping[str, Any]) -> None:
    """A signature the dialect kept, back where Gemini put it: a call's on the first functionCall
    part, a text answer's on the last text part; never over one the part already has (its id's)."""
    signature = block.get("thoughtSignature")
    if type(signature) is not str or not signature:
        return
    kind = "functionCall" if block.get("on") == "functionCall" else "text"
    target = next((part for part in (parts if kind == "functionCall" else reversed(parts)) if kind in part), None)
    if target is not None and "thoughtSignature" not in target:
        target["thoughtSignature"] = signature


def _signature_block(part: Mapping[str, Any]) -> dict[str, Any] | None:
    """A part's thought signature as the pivot's reasoning state, with the kind of part it is on."""
    signature = part.get("thoughtSignature")
    if type(signature) is not str or not signature:
        return None
    return {"thoughtSignature": signature, "on": "functionCall" if "functionCall" in part else "text"}


def _function_response(message: Mapping[str, Any], names: Mapping[str, str], where: str) -> dict[str, Any]:
    tool_call_id = str(message.get("tool_call_id") or "")
    name = names.get(tool_call_id)
    if not name:
        raise UnsupportedField(f"{where}.tool_call_id",
                               f"'{where}.tool_call_id' names no earlier tool call: Gemini needs the function name.")
    text = text_of(message.get("content"))
    try:
        value = orjson.loads(text) if text else None
    except orjson.JSONDecodeError:
        value = None
    # Gemini's response must be an object: a JSON object result goes as it is, anything else wrapped.
    response = value if isinstance(value, dict) else {"content": text}
    return {"functionResponse": {"name": name, "response": response}}


def convert_messages(messages: list[Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """OpenAI messages → (``systemInstruction``, ``contents``) with consecutive same-role turns merged."""
    names: dict[str, str] = {}  # tool call id → function name, for the functionResponse parts
    texts, contents = convert_turns(messages, "Gemini",
                                    lambda message, where: _user_parts(message.get("content"), where),
                                    lambda message, where: _model_parts(message, names, where),
                                    lambda message, where: [_function_response(message, names, where)],
                                    assistant_role="model", key="parts")
    system = [{"text": text} for text in texts if text]
    return ({"parts": system} if system else None), contents


def _tool_config(body: Mapping[str, Any]) -> dict[str, Any] | None:
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if choice == "auto":
        return {"functionCallingConfig": {"mode": "AUTO"}}
    if choice == "none":
        return {"functionCallingConfig": {"mode": "NONE"}}
    if choice == "required":
        return {"functionCallingConfig": {"mode": "ANY"}}
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = function_name(obj(choice.get("function")).get("name"), "tool_choice.function.name")
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = obj(choice.get("allowed_tools"))
        names = [function_name(obj(t.get("function")).get("name"),
                               f"tool_choice.allowed_tools.tools[{j}].function.name")
                 for j, t in enumerate(items(allowed.get("tools"))) if isinstance(t, dict)]
        mode = "ANY" if allowed.get("mode") == "required" else "AUTO"
        config: dict[str, Any] = {"mode": mode}
        if mode == "ANY" and names:
            config["allowedFunctionNames"] = names
        return {"functionCallingConfig": config}
    raise UnsupportedField("tool_choice", "'tool_choice' has a form Gemini does not support.")


def _generation_config(body: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for openai_name, gemini_name in (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed")):
        if body.get(openai_name) is not None:
            config[gemini_name] = body[openai_name]
    for openai_name, gemini_name in (("presence_penalty", "presencePenalty"),
                                     ("frequency_penalty", "frequencyPenalty")):
        if body.get(openai_name):
            config[gemini_name] = body[openai_name]
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens:
        config["maxOutputTokens"] = max_tokens
    stop = stop_sequences(body)
    if stop:
        config["stopSequences"] = stop
    n = body.get("n")
    if n is not None and n > 1:
        config["candidateCount"] = n
    response_format = obj(body.get("response_format"))
    if response_format.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = obj(response_format.get("json_schema")).get("schema")
        if response_format.get("type") == "json_schema" and isinstance(schema, dict):
            config["responseSchema"] = reduce_schema(schema)
    budget = reasoning_budget(body, POLICY)  # "none" is 0: thinking off
    if budget is not None:
        config["thinkingConfig"] = {"thinkingBudget": budget, "includeThoughts": budget > 0}
    return config


def translate_request(req: ChatRequest) -> dict[str, Any]:
    """The Gemini ``generateContent`` body for an OpenAI chat request."""
    body = req.body
    check(body, POLICY)
    system, contents = convert_messages(body["messages"])
    if not contents:
        raise UnsupportedField("messages", "Gemini needs at least one user or assistant message with content.")
    out: dict[str, Any] = {"contents": contents}
    if system is not None:
        out["systemInstruction"] = system
    declarations = []
    for i, tool in enumerate(items(body.get("tools"))):
        function = obj(obj(tool).get("function"))
        if not function.get("name"):
            raise UnsupportedField(f"tools[{i}]", f"'tools[{i}]': only function tools are supported by Gemini.")
        declaration: dict[str, Any] = {"name": function_name(function["name"], f"tools[{i}].function.name")}
        if function.get("description"):
            declaration["description"] = function["description"]
        if isinstance(function.get("parameters"), dict) and function["parameters"].get("properties"):
            declaration["parameters"] = reduce_schema(function["parameters"])
        declarations.append(declaration)
    if declarations:
        out["tools"] = [{"functionDeclarations": declarations}]
        tool_config = _tool_config(body)
        if tool_config is not None:
            out["toolConfig"] = tool_config
    config = _generation_config(body)
    if config:
        out["generationConfig"] = config
    return out


# --- response -----------------------------------------------------------------------------------


def _usage(raw: Any) -> dict[str, Any]:
    raw = obj(raw)
    thoughts = count_of(raw, "thoughtsTokenCount")
    return usage(count_of(raw, "promptTokenCount"), count_of(raw, "candidatesTokenCount") + thoughts,
                 cached=token_count(raw.get("cachedContentTokenCount")), reasoning=thoughts if thoughts else None)


def _new_call_id() -> str:
    return unique_id("call_")


def _tool_call(part: Mapping[str, Any]) -> dict[str, Any]:
    call = obj(part.get("functionCall"))
    call_id = str(call.get("id") or _new_call_id())
    signature = part.get("thoughtSignature")
    if isinstance(signature, str) and signature:
        call_id = attach(call_id, encode_signature(signature))
    name = call.get("name")
    return {"id": call_id, "type": "function",
            "function": {"name": from_gemini(name) if isinstance(name, str) else name,
                         "arguments": orjson.dumps(obj(call.get("args"))).decode()}}


def _finish(reason: Any, has_calls: bool) -> str:
    finish = FINISH_REASONS.get(str(reason), "stop")
    # Gemini says STOP when it called a function; OpenAI clients look for tool_calls.
    return "tool_calls" if has_calls and finish == "stop" else finish


def translate_response(response: Mapping[str, Any], model: str, created: int | None = None,
                       keep_state: bool = False) -> bytes:
    """A Gemini response → an OpenAI ``chat.completion`` body with one choice per candidate; with
    ``keep_state``, each candidate's thought signatures as the pivot's ``reasoning_state`` too."""
    choices = []
    candidates = items(response.get("candidates"))
    for position, candidate in enumerate(candidates):
        candidate = obj(candidate)
        texts, thoughts, calls, signatures = [], [], [], []
        for part in items(obj(candidate.get("content")).get("parts")):
            part = obj(part)
            signature = _signature_block(part) if keep_state else None
            if signature is not None:
                signatures.append(signature)
            if "functionCall" in part:
                calls.append(_tool_call(part))
            elif part.get("thought") is True:
                thoughts.append(str(part.get("text") or ""))
            elif "text" in part:
                texts.append(str(part.get("text") or ""))
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None,
                                   "refusal": None}
        if thoughts:
            message["reasoning_content"] = "".join(thoughts)
        if signatures:
            message[REASONING_STATE] = entries("gemini", signatures)
        if calls:
            message["tool_calls"] = calls
        choices.append({"index": candidate.get("index", position), "message": message, "logprobs": None,
                        "finish_reason": _finish(candidate.get("finishReason"), bool(calls))})
    if not choices:
        # The prompt itself was blocked: no candidate, a blockReason.
        choices.append({"index": 0, "message": {"role": "assistant", "content": "", "refusal": None},
                        "logprobs": None, "finish_reason": "content_filter"})
    return orjson.dumps({
        "id": str(response.get("responseId") or unique_id("chatcmpl-")),
        "object": "chat.completion", "created": int(time.time()) if created is None else created,
        "model": str(response.get("modelVersion") or model), "choices": choices,
        "usage": _usage(response.get("usageMetadata")),
    })


def classify(provider: ProviderConfig, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
    """Google's ``{"error": {"code", "message", "status"}}`` → UpstreamError."""
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    error = obj(obj(parsed).get("error")) if isinstance(parsed, dict) else {}
    if not error and isinstance(parsed, list) and parsed:
        error = obj(obj(parsed[0]).get("error"))  # streamed errors may come as a one-item array
    google_status = str(error.get("status") or "")
    kind = STATUS_KINDS.get(google_status) or kind_for_status(status)
    message = str(error.get("message") or f"Vertex answered HTTP {status}.")
    return UpstreamError(kind, caller_status(status, kind) if status >= 400 else 502, message,
                         provider=provider.name, code=google_status or None,
                         retry_after=retry_after_seconds(headers))


class VertexStream:
    """Gemini's SSE responses (new text only, calls whole) → OpenAI chunks; ends when the connection does."""

    __slots__ = ("_chunks", "_finished", "_keep_state", "_model", "_provider", "_started", "_tools", "_usage", "done",
                 "usage", "visible")

    def __init__(self, provider: str, model: str, wants_usage: bool, keep_state: bool = False) -> None:
        self._provider = provider
        self._keep_state = keep_state
        self._model = model
        self._chunks = ChunkEncoder(wants_usage)
        self._chunks.model = model
        self._chunks.id = unique_id("chatcmpl-")
        self._started: set[int] = set()  # candidates whose role chunk went out
        self._tools: dict[int, int] = {}  # candidate → tool calls so far
        self._finished: set[int] = set()
        self._usage: dict[str, Any] = {}  # usageMetadata as merged over the events so far
        self.visible = False
        self.done = False
        self.usage: Mapping[str, Any] | None = None

    def feed(self, event: SseEvent) -> list[bytes]:
        data = load_object(event.data, self._provider, "an event")
        if "error" in data:
            error = obj(data["error"])
            google_status = str(error.get("status") or "")
            kind = STATUS_KINDS.get(google_status, "server")
            raise UpstreamError(kind, caller_status(int(error.get("code") or 500), kind),
                                str(error.get("message") or "Vertex failed mid-stream."),
                                provider=self._provider, code=google_status or None)
        if data.get("modelVersion"):
            self._chunks.model = str(data["modelVersion"])
        if not self._started and data.get("responseId"):
            self._chunks.id = str(data["responseId"])  # the same id a non-streamed answer would carry
        metadata = data.get("usageMetadata")
        if metadata and type(metadata) is dict:
            # Merged, not replaced: an event may carry only some counts (or only trafficType), and
            # the streamed usage must be the one the same answer gives unstreamed.
            self._usage.update(metadata)
            self.usage = _usage(self._usage)
        out: list[bytes] = []
        candidates = items(data.get("candidates"))
        if not candidates and obj(data.get("promptFeedback")).get("blockReason"):
            out += self._role(0)
            out.append(self._chunks.chunk({}, "content_filter", index=0))
            self._finished.add(0)
            self.visible = True
        for position, candidate in enumerate(candidates):
            candidate = obj(candidate)
            index = int(candidate.get("index", position))
            out += self._role(index)
            for part in items(obj(candidate.get("content")).get("parts")):
                out += self._part(index, obj(part))
            if candidate.get("finishReason"):
                self._finished.add(index)
                self.visible = True
                out.append(self._chunks.chunk(
                    {}, _finish(candidate["finishReason"], self._tools.get(index, 0) > 0), index=index))
        return out

    def _role(self, index: int) -> list[bytes]:
        if index in self._started:
            return []
        self._started.add(index)
        return [self._chunks.chunk({"role": "assistant", "content": ""}, index=index)]

    def _part(self, index: int, part: Mapping[str, Any]) -> list[bytes]:
        # The signature as reasoning state, when wanted: before the call it signs, after the text
        # it ends (Gemini streams a text answer's in a last, empty text part).
        signature = _signature_block(part) if self._keep_state else None
        state = [] if signature is None else [
            self._chunks.chunk({REASONING_STATE: entries("gemini", [signature])}, index=index)]
        if "functionCall" in part:
            position = self._tools.get(index, 0)
            self._tools[index] = position + 1
            call = _tool_call(part)
            self.visible = True
            return [*state, self._chunks.chunk({"tool_calls": [{"index": position, **call}]}, index=index)]
        text = part.get("text")
        if not isinstance(text, str) or not text:
            return state
        self.visible = True
        if part.get("thought") is True:
            return [self._chunks.chunk({"reasoning_content": text}, index=index), *state]
        return [self._chunks.content(text, index=index), *state]

    def split_plain(self, chunk: bytes) -> tuple[bytes, bytes]:
        return b"", chunk  # every event is translated

    def close(self) -> list[bytes]:
        if not self._finished or self._finished != self._started:
            raise UpstreamError("server", 502, "Vertex ended the stream before every candidate finished.",
                                provider=self._provider)
        self.done = True
        return self._chunks.end(self.usage)


class ClaudeOrGemini:
    """A streamed answer from Vertex, which is Gemini's or, for a Claude model, Anthropic's: the
    first event says which (Anthropic's are named, Gemini's are not), and the matching decoder
    reads the rest."""

    __slots__ = ("_claude", "_gemini", "_inner", "done", "usage", "visible")

    def __init__(self, gemini: VertexStream, claude: AnthropicStream) -> None:
        self._gemini = gemini
        self._claude = claude
        self._inner: VertexStream | AnthropicStream | None = None
        self.visible = False
        self.done = False
        self.usage: Mapping[str, Any] | None = None

    def feed(self, event: SseEvent) -> list[bytes]:
        if self._inner is None:
            self._inner = self._claude if event.event else self._gemini
        return self._mirror(self._inner.feed(event))

    def split_plain(self, chunk: bytes) -> tuple[bytes, bytes]:
        return b"", chunk  # every event is translated

    def close(self) -> list[bytes]:
        if self._inner is None:
            self._inner = self._gemini
        return self._mirror(self._inner.close())

    def _mirror(self, out: list[bytes]) -> list[bytes]:
        inner = self._inner
        assert inner is not None
        self.visible, self.done, self.usage = inner.visible, inner.done, inner.usage
        return out


class Vertex(NativeMessages):
    """The Provider for Vertex AI: Gemini models through their own API; Claude models through
    Anthropic's Messages wire in Vertex's envelope (rawPredict), chat translated by
    ``anthropic_wire`` and Messages passed through."""

    type = "vertex"

    def framer(self) -> SseDecoder:
        return SseDecoder()

    def build_request(self, req: ChatRequest, provider: ProviderConfig, model: str,
                      credential: Credential) -> UpstreamCall:
        if anthropic_family(provider, model):
            return _claude_call(provider, credential, model, claude_request(req, provider, model), req.stream)
        body = translate_request(req)
        method = "streamGenerateContent?alt=sse" if req.stream else "generateContent"
        url = upstream_url(base_url(provider), model_path(provider, _project(provider, credential), model, method))
        return UpstreamCall("POST", url, _headers(credential), orjson.dumps(body), req.stream)

    def parse_response(self, req: ChatRequest, provider: ProviderConfig, body: bytes) -> bytes:
        parsed = load_object(body, provider.name)
        if parsed.get("type") == "message":  # a Claude model's answer
            return claude_response(parsed, keep_state=req.wants_reasoning_state)
        return translate_response(parsed, str(req.body.get("model") or ""), keep_state=req.wants_reasoning_state)

    def stream_decoder(self, req: ChatRequest, provider: ProviderConfig) -> ClaudeOrGemini:
        return ClaudeOrGemini(VertexStream(provider.name, str(req.body.get("model") or ""), req.wants_usage,
                                           req.wants_reasoning_state),
                              AnthropicStream(provider.name, req.wants_usage, req.wants_reasoning_state))

    def native(self, dialect: str, provider: ProviderConfig, model: str) -> bool:
        return dialect == "messages" and dialect in provider.speaks and anthropic_family(provider, model)

    def build_native_request(self, dialect: str, req: ChatRequest, provider: ProviderConfig, model: str,
                             credential: Credential) -> UpstreamCall:
        body, betas = native_messages(req, provider, credential)
        return _claude_call(provider, credential, model, body, req.stream, betas.kept, betas.stripped)

    def build_count_tokens_request(self, req: ChatRequest, provider: ProviderConfig, model: str,
                                   credential: Credential) -> UpstreamCall | None:
        """Claude: ``count-tokens:rawPredict`` with the Messages body, ``model`` in it; Gemini:
        ``countTokens`` with the contents, system instruction and tools of the translated request."""
        if anthropic_family(provider, model):
            if req.native is None:
                return None
            body, betas = native_messages(req, provider, credential)
            body["model"] = model
            body.setdefault("anthropic_version", ANTHROPIC_VERSION)
            url = upstream_url(base_url(provider), model_path(provider, _project(provider, credential), "count-tokens",
                                                              "rawPredict", "anthropic"))
            headers = _headers(credential)
            if betas.kept:
                headers["anthropic-beta"] = ",".join(betas.kept)
            return UpstreamCall("POST", url, headers, orjson.dumps(body), False, betas.stripped)
        counted = {k: v for k, v in translate_request(req).items() if k in ("contents", "systemInstruction", "tools")}
        url = upstream_url(base_url(provider), model_path(provider, _project(provider, credential), model,
                                                          "countTokens"))
        return UpstreamCall("POST", url, _headers(credential), orjson.dumps(counted))

    def read_count_tokens(self, provider: ProviderConfig, body: bytes) -> int:
        return read_input_tokens(body, "input_tokens", "totalTokens")

    def classify_error(self, provider: ProviderConfig, status: int, headers: Mapping[str, str],
                       body: bytes) -> UpstreamError:
        return classify(provider, status, headers, body)

    def build_embeddings_request(self, req: EmbeddingsRequest, provider: ProviderConfig, model: str,
                                 credential: Credential) -> list[UpstreamCall]:
        texts = embedding_texts(req.body.get("input"), "Vertex")
        dimensions = req.body.get("dimensions")
        project = _project(provider, credential)
        headers = _headers(credential)
        if "gemini" in model:
            # gemini-embedding-* take one content per call: fan out, one call per input.
            url = upstream_url(base_url(provider), model_path(provider, project, model, "embedContent"))
            config = {"outputDimensionality": dimensions} if dimensions else None
            return [UpstreamCall("POST", url, headers, orjson.dumps(
                {"content": {"parts": [{"text": text}]}, **({"embedContentConfig": config} if config else {})}))
                for text in texts]
        url = upstream_url(base_url(provider), model_path(provider, project, model, "predict"))
        parameters = {"outputDimensionality": dimensions} if dimensions else None
        return [UpstreamCall("POST", url, headers, orjson.dumps(
            {"instances": [{"content": text} for text in batch], **({"parameters": parameters} if parameters else {})}))
            for batch in batches(texts)]

    def parse_embeddings_response(self, req: EmbeddingsRequest, provider: ProviderConfig,
                                  bodies: list[bytes]) -> bytes:
        vectors: list[list[float]] = []
        tokens = 0
        for body in bodies:
            parsed = load_object(body, provider.name)
            if "embedding" in parsed:
                vectors.append(list(obj(parsed["embedding"]).get("values") or []))
                tokens += count_of(obj(parsed.get("usageMetadata")), "promptTokenCount")
                continue
            for prediction in items(parsed.get("predictions")):
                values = obj(obj(prediction).get("embeddings"))
                vectors.append(list(values.get("values") or []))
                tokens += count_of(obj(values.get("statistics")), "token_count")
        return embeddings(vectors, str(req.body.get("model") or ""), tokens, req.base64)


def batches(texts: list[str]) -> list[list[str]]:
    """Inputs in :predict batches: at most 250 instances and about 20k tokens (4 characters each) a call."""
    out: list[list[str]] = []
    current: list[str] = []
    tokens = 0
    for text in texts:
        estimate = len(text) // 4 + 1
        if current and (len(current) >= PREDICT_BATCH or tokens + estimate > PREDICT_TOKENS):
            out.append(current)
            current, tokens = [], 0
        current.append(text)
        tokens += estimate
    if current:
        out.append(current)
    return out
