"""AWS Bedrock Runtime: Converse and ConverseStream translators, event-stream framing, InvokeModel embeddings.

Requests: messages become Converse turns that alternate user/assistant (consecutive turns merged,
tool results in user turns), images become bytes, sampling becomes ``inferenceConfig``, tools
``toolConfig``, ``response_format`` ``outputConfig``, and ``reasoning_effort`` Claude's thinking in
``additionalModelRequestFields``. Tool call ids pass through the codec in Bedrock's form (at most
64 of ``[a-zA-Z0-9_.:-]``); a reasoning block rides inside the first tool call's id, as for
Anthropic, and a turn that lost it is sent with reasoning off. When the request wants reasoning
state, answers carry their ``reasoningContent`` blocks as the pivot's ``reasoning_state`` (wire
``converse``), and blocks restored there on an assistant message lead that turn.

Streams: the binary AWS event stream is cut into messages by botocore's own parser as bytes
arrive; events (and exceptions inside an HTTP 200) become OpenAI chunks. botocore is imported only
when a Bedrock stream first needs it. Signing (SigV4) is not done here: an ambient credential
carries a signer from upstream.py, which build_request applies to the finished call.

Messages for Claude (``anthropic.`` ids, also behind a region prefix or an ARN, or the provider's
``anthropic_models:``) pass through natively: InvokeModel / InvokeModelWithResponseStream with the
caller's Messages body (no ``model``, no ``stream``, ``anthropic_version`` and the betas that pass as
``anthropic_beta``), the stream's ``chunk`` frames unwrapped into Anthropic's SSE events; CountTokens
counts the same body.

Pure: no I/O, no aiohttp.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

import orjson

from ..errors import (
    FailureKind,
    UnsupportedField,
    UpstreamError,
    caller_status,
    kind_for_status,
    retry_after_seconds,
)
from ..sse import SseEvent
from ..tokens import count_of
from .anthropic_wire import JSON_OBJECT_INSTRUCTION, Betas, anthropic_family, claude_sampling, native_messages
from .blocks import BlockStream
from .catalog import TYPES
from .contract import (
    ChatRequest,
    EmbeddingsRequest,
    NativeStream,
    UpstreamCall,
    path_segment,
    read_input_tokens,
)
from .ids import attach, detach, for_upstream, unique_id
from .messages_wire import MessagesPassthrough, NativeMessages
from .openai_wire import USER_AGENT, upstream_url
from .policy import check, reasoning_budget
from .reasoning import REASONING_STATE, entries, restored
from .shapes import (
    StateBudget,
    completion,
    convert_turns,
    data_url,
    embedding_texts,
    embeddings,
    image_url,
    items,
    load_object,
    obj,
    pack_state,
    stop_sequences,
    text_of,
    tool_input,
    tool_name,
    unpack_state,
    usage,
)

if TYPE_CHECKING:
    from ..auth import Credential
    from ..config import ProviderConfig

DEFAULT_MAX_TOKENS: Final = 4096
# The `anthropic_version` InvokeModel wants in a Messages body (wire-formats-dialects C.1).
ANTHROPIC_VERSION: Final = "bedrock-2023-05-31"
FINISH_REASONS: Final[dict[str, str]] = {
    "end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
    "model_context_window_exceeded": "length", "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter", "content_filtered": "content_filter",
}
# Exception name (header or stream event, any case) → (failure kind, AWS's own HTTP status); the
# caller sees that status through errors.caller_status, as for every provider (a 500 is our 502).
EXCEPTIONS: Final[dict[str, tuple[FailureKind, int]]] = {
    "throttlingexception": ("rate_limited", 429), "modelnotreadyexception": ("rate_limited", 429),
    "serviceunavailableexception": ("overloaded", 503), "internalserverexception": ("server", 500),
    "modeltimeoutexception": ("timeout", 408), "modelstreamerrorexception": ("server", 502),
    "validationexception": ("bad_request", 400), "servicequotaexceededexception": ("bad_request", 400),
    "accessdeniedexception": ("auth", 403), "resourcenotfoundexception": ("bad_request", 404),
    "modelerrorexception": ("bad_request", 424),
}
# By media type as shapes.data_url spells it (image/jpg is image/jpeg there).
IMAGE_FORMATS: Final = {"image/png": "png", "image/jpeg": "jpeg", "image/gif": "gif", "image/webp": "webp"}
# Model ids as users send them: base ids, inference profiles (us.…), ARNs.
_MODEL_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,2047}")
COHERE_BATCH: Final = 96
_STATE_TAG: Final = b"B1"
_REGION: Final = str(TYPES["bedrock"].default("region"))
# What Bedrock refuses, clamps and maps of a chat body: its catalog entry's field policy.
POLICY: Final = TYPES["bedrock"].policy


# --- URLs and credentials -----------------------------------------------------------------------


def base_url(provider: ProviderConfig) -> str:
    """The configured host root, else the regional Bedrock Runtime host."""
    return provider.base_url or f"https://bedrock-runtime.{provider.region or _REGION}.amazonaws.com"


def model_url(provider: ProviderConfig, model: str, operation: str) -> str:
    """``/model/{model id, every reserved character percent-encoded}/{operation}``."""
    if not _MODEL_ID.fullmatch(model):
        raise UnsupportedField("model", f"'{model}' is not a Bedrock model id, inference profile or ARN.")
    return f"/model/{path_segment(model, 'Bedrock model id')}/{operation}"


def _call(provider: ProviderConfig, credential: Credential, model: str, operation: str, body: Any,
          stream: bool = False) -> UpstreamCall:
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if stream:
        headers["Accept"] = "application/vnd.amazon.eventstream"
    if credential.secret is not None:
        headers["Authorization"] = "Bearer " + credential.secret.reveal()  # a Bedrock API key
    call = UpstreamCall("POST", upstream_url(base_url(provider), model_url(provider, model, operation)),
                        headers, orjson.dumps(body), stream)
    # SigV4 covers the exact URL and body bytes, so it is applied last, to the finished call.
    return credential.sign(call) if credential.sign is not None else call


# --- request ------------------------------------------------------------------------------------


def _image(url: str, param: str) -> dict[str, Any]:
    if not url.startswith("data:"):
        raise UnsupportedField(param, f"'{param}': Bedrock's Converse API takes images as bytes; send a "
                                      "base64 data: URL instead of a link.")
    parsed = data_url(url)
    image_format = IMAGE_FORMATS.get(parsed[0]) if parsed is not None else None
    if parsed is None or image_format is None:
        raise UnsupportedField(param, f"'{param}': Bedrock takes png, jpeg, gif and webp images as base64 data: URLs.")
    return {"image": {"format": image_format, "source": {"bytes": parsed[1]}}}


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content.strip() else []
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(items(content)):
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        param = f"{where}.content[{j}]"
        if kind == "text":
            if str(part.get("text") or "").strip():
                blocks.append({"text": str(part["text"])})
        elif kind == "image_url":
            blocks.append(_image(image_url(part), f"{param}.image_url.url"))
        else:
            raise UnsupportedField(param, f"Content parts of type '{kind}' are not supported by Bedrock.")
    return blocks


def encode_reasoning(blocks: list[dict[str, Any]]) -> bytes:
    """Reasoning blocks as compact state for a tool call id."""
    return pack_state(_STATE_TAG, blocks)


def decode_reasoning(state: bytes | None, param: str = "messages",
                     budget: StateBudget | None = None) -> list[dict[str, Any]] | None:
    """Reasoning blocks from a tool call id's state; None when it holds none of ours, or is damaged;
    400 naming ``param`` when it inflates past its bound."""
    return unpack_state(_STATE_TAG, state, param, budget)


def _assistant_blocks(message: Mapping[str, Any], where: str, budget: StateBudget) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    # Restored by the dialect: the turn's own reasoning, so the ids' copy is not read.
    reasoning: list[dict[str, Any]] | None = [b for b in restored(message, "converse")
                                               if "reasoningText" in b or "redactedContent" in b] or None
    tool_blocks = []
    for k, call in enumerate(items(message.get("tool_calls"))):
        function = obj(obj(call).get("function"))
        client_id = str(obj(call).get("id") or f"call_{k}")
        if reasoning is None:
            reasoning = decode_reasoning(detach(client_id)[1], f"{where}.tool_calls[{k}].id", budget)
        tool_blocks.append({"toolUse": {"toolUseId": for_upstream(client_id, "bedrock"),
                                        "name": tool_name(function.get("name"), f"{where}.tool_calls[{k}].function.name"),
                                        "input": tool_input(function.get("arguments"))}})
    if reasoning:
        blocks.extend({"reasoningContent": block} for block in reasoning)
    text = text_of(message.get("content"))
    if text.strip():
        blocks.append({"text": text})
    blocks.extend(tool_blocks)
    return blocks


def _tool_result(message: Mapping[str, Any]) -> dict[str, Any]:
    text = text_of(message.get("content"))
    return {"toolResult": {"toolUseId": for_upstream(str(message.get("tool_call_id") or "call"), "bedrock"),
                           "content": [{"text": text or " "}]}}


def convert_messages(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """OpenAI messages → (Converse ``system``, ``messages``), alternating, tool results in user turns.

    Bedrock refuses text in a user turn that holds tool results; a user message that follows tool
    results is carried inside the last result's content instead, so no turn is invented.
    """
    budget = StateBudget()
    texts, turns = convert_turns(messages, "Bedrock",
                                 lambda message, where: _user_blocks(message.get("content"), where),
                                 lambda message, where: _assistant_blocks(message, where, budget),
                                 lambda message, where: [_tool_result(message)])
    system = [{"text": text} for text in texts if text.strip()]
    for turn in turns:
        results = [b for b in turn["content"] if "toolResult" in b]
        if results and len(results) < len(turn["content"]):
            results[-1]["toolResult"]["content"].extend(b for b in turn["content"] if "toolResult" not in b)
            turn["content"] = results
    return system, turns


def _has_tool_blocks(turns: list[dict[str, Any]]) -> bool:
    return any("toolUse" in b or "toolResult" in b for t in turns for b in t["content"])


def _tool_config(body: Mapping[str, Any], turns: list[dict[str, Any]]) -> dict[str, Any] | None:
    tools = []
    for i, tool in enumerate(items(body.get("tools"))):
        function = obj(obj(tool).get("function"))
        if not function.get("name"):
            raise UnsupportedField(f"tools[{i}]", f"'tools[{i}]': only function tools are supported by Bedrock.")
        spec: dict[str, Any] = {"name": tool_name(function["name"], f"tools[{i}].function.name"), "inputSchema": {
            "json": function.get("parameters") or {"type": "object", "properties": {}}}}
        if function.get("description"):
            spec["description"] = function["description"]
        tools.append({"toolSpec": spec})
    declared = {t["toolSpec"]["name"] for t in tools}
    for turn in turns:
        for block in turn["content"]:
            name = obj(block.get("toolUse")).get("name")
            if name and name not in declared:  # a tool history needs its tools declared
                declared.add(name)
                tools.append({"toolSpec": {"name": name, "inputSchema": {"json": {"type": "object"}}}})
    choice = body.get("tool_choice")
    if not tools or (choice == "none" and not _has_tool_blocks(turns)):
        return None  # Converse has no "none": without tools the model cannot call one
    config: dict[str, Any] = {"tools": tools}
    if choice == "required":
        config["toolChoice"] = {"any": {}}
    elif choice == "auto":
        config["toolChoice"] = {"auto": {}}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        config["toolChoice"] = {"tool": {"name": tool_name(obj(choice.get("function")).get("name"),
                                                           "tool_choice.function.name")}}
    return config


def _reasoning_budget(body: Mapping[str, Any], model: str, turns: list[dict[str, Any]],
                      tool_config: Mapping[str, Any] | None) -> int | None:
    budget = reasoning_budget(body, POLICY)
    # Only Claude takes a thinking budget on Bedrock; for other families the hint is dropped.
    if budget is None or "anthropic.claude" not in model:
        return None
    if tool_config is not None and set(obj(tool_config.get("toolChoice"))) & {"any", "tool"}:
        return None  # thinking refuses forced tool use; the caller's tool_choice wins
    last = next((t for t in reversed(turns) if t["role"] == "assistant"), None)
    if last is not None and any("toolUse" in b for b in last["content"]) and "reasoningContent" not in last["content"][0]:
        return None  # the tool-use turn's reasoning did not come back: Claude requires it
    return budget


def translate_request(req: ChatRequest, provider: ProviderConfig, model: str) -> dict[str, Any]:
    """The Converse body for an OpenAI chat request."""
    body = req.body
    check(body, POLICY)
    system, turns = convert_messages(body["messages"])
    if not turns:
        raise UnsupportedField("messages", "Bedrock needs at least one user or assistant message with content.")
    out: dict[str, Any] = {"messages": turns}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") \
        or provider.default_max_tokens or DEFAULT_MAX_TOKENS
    inference: dict[str, Any] = {"maxTokens": max_tokens}
    tool_config = _tool_config(body, turns)
    budget = _reasoning_budget(body, model, turns, tool_config)
    extra: dict[str, Any] = {}
    if budget is not None:
        extra["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if max_tokens <= budget:
            inference["maxTokens"] = budget + max_tokens
    else:
        # Claude 4.1 and later refuse temperature and top_p together, here as on Anthropic's API.
        temperature, top_p = claude_sampling(body, POLICY, model if "anthropic.claude" in model else None)
        if temperature is not None:
            inference["temperature"] = temperature
        if top_p is not None:
            inference["topP"] = top_p
    stop = stop_sequences(body)
    if stop:
        inference["stopSequences"] = stop
    out["inferenceConfig"] = inference
    response_format = obj(body.get("response_format"))
    if response_format.get("type") == "json_schema":
        spec = obj(response_format.get("json_schema"))
        schema: dict[str, Any] = {"schema": orjson.dumps(spec.get("schema") or {"type": "object"}).decode()}
        if spec.get("name"):
            schema["name"] = spec["name"]
        out["outputConfig"] = {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": schema}}}
    elif response_format.get("type") == "json_object":
        system.append({"text": JSON_OBJECT_INSTRUCTION})
    if system:
        out["system"] = system
    if tool_config is not None:
        out["toolConfig"] = tool_config
    if body.get("top_k") is not None:  # not OpenAI's, but callers send it as an extra for Bedrock models
        extra["top_k"] = body["top_k"]
    if extra:
        out["additionalModelRequestFields"] = extra
    return out


# --- response -----------------------------------------------------------------------------------


def _usage(raw: Any) -> dict[str, Any]:
    raw = obj(raw)
    read = count_of(raw, "cacheReadInputTokens")
    write = count_of(raw, "cacheWriteInputTokens")
    prompt = count_of(raw, "inputTokens") + read + write
    cache_seen = raw.get("cacheReadInputTokens") is not None or raw.get("cacheWriteInputTokens") is not None
    return usage(prompt, count_of(raw, "outputTokens"), cached=read if cache_seen else None,
                 cache_creation=write if cache_seen else None)


def translate_response(response: Mapping[str, Any], model: str, created: int | None = None,
                       keep_state: bool = False) -> bytes:
    """A Converse response → an OpenAI ``chat.completion`` body; with ``keep_state``, its reasoning
    blocks as the pivot's ``reasoning_state`` too."""
    texts: list[str] = []
    reasoning_text: list[str] = []
    reasoning: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    for block in items(obj(obj(response.get("output")).get("message")).get("content")):
        block = obj(block)
        if "text" in block:
            texts.append(str(block["text"]))
        elif "reasoningContent" in block:
            content = obj(block["reasoningContent"])
            reasoning.append(content)
            reasoning_text.append(str(obj(content.get("reasoningText")).get("text") or ""))
        elif "toolUse" in block:
            tool = obj(block["toolUse"])
            tool_id = str(tool.get("toolUseId") or "")
            if not tool_calls and reasoning:
                tool_id = attach(tool_id, encode_reasoning(reasoning))
            tool_calls.append({"id": tool_id, "type": "function", "function": {
                "name": tool.get("name"), "arguments": orjson.dumps(tool.get("input") or {}).decode()}})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not tool_calls else None,
                               "refusal": None}
    if any(reasoning_text):
        message["reasoning_content"] = "".join(reasoning_text)
    if keep_state and reasoning:
        message[REASONING_STATE] = entries("converse", reasoning)
    if tool_calls:
        message["tool_calls"] = tool_calls
    finish = FINISH_REASONS.get(str(response.get("stopReason")), "stop")
    # Converse answers carry no id of their own (the request id is a header): make one.
    return completion(unique_id("chatcmpl-"), model, message, finish,
                      _usage(response.get("usage")), created)


def exception_error(provider: str, name: str, message: str, retry_after: float | None = None) -> UpstreamError:
    """An AWS exception name (header or stream event) → the failure it stands for."""
    kind, status = EXCEPTIONS.get(name.lower(), ("server", 502))
    return UpstreamError(kind, caller_status(status, kind), message or name, provider=provider, code=name,
                         retry_after=retry_after)


def classify(provider: ProviderConfig, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
    """``x-amzn-ErrorType`` (cut at ``:``, last ``#`` segment) and ``{"message"}`` → UpstreamError."""
    try:
        parsed = obj(orjson.loads(body)) if body else {}
    except orjson.JSONDecodeError:
        parsed = {}
    name = (headers.get("x-amzn-ErrorType") or headers.get("x-amzn-errortype") or str(
        parsed.get("__type") or parsed.get("code") or "")).split(":")[0].rsplit("#", 1)[-1]
    message = str(parsed.get("message") or parsed.get("Message") or f"Bedrock answered HTTP {status}.")
    if name.lower() in EXCEPTIONS:
        return exception_error(provider.name, name, message, retry_after_seconds(headers))
    kind = kind_for_status(status)
    return UpstreamError(kind, caller_status(status, kind), message, provider=provider.name, code=name or None,
                         retry_after=retry_after_seconds(headers))


# --- stream -------------------------------------------------------------------------------------


@functools.cache
def _event_stream_buffer() -> type[Any]:
    """botocore's EventStreamBuffer, remembering the header blocks it has parsed.

    Every message of one kind carries the same header bytes (``:event-type``, ``:content-type``,
    ``:message-type``), and botocore parses them in pure Python, field by field, for each message:
    two thirds of the cost of reading a Converse stream. A block seen before is parsed once. The
    checksums are still verified for every message, and all the rest is botocore's.
    """
    from botocore.eventstream import EventStreamBuffer

    seen: dict[bytes, Any] = {}

    class CachingBuffer(EventStreamBuffer):  # type: ignore[misc]
        def _parse_headers(self) -> Any:
            raw = self._data[_PRELUDE_BYTES:self._prelude.headers_end]
            headers = seen.get(raw)
            if headers is None:
                headers = super()._parse_headers()
                if len(seen) < 256:  # bounded: header blocks come from the upstream
                    seen[raw] = headers
            return headers

    return CachingBuffer


# The prelude: total length, headers length, prelude CRC (botocore's _PRELUDE_LENGTH).
_PRELUDE_BYTES: Final = 12


class EventStreamFramer:
    """AWS event-stream bytes → events, by botocore's parser, as the bytes arrive.

    Each message becomes an ``SseEvent`` whose name is the ``:event-type`` (events) or
    ``exception:<:exception-type>`` (exceptions inside the HTTP 200), and whose data is the payload.
    """

    def __init__(self) -> None:
        from botocore.eventstream import ParserError

        self._buffer = _event_stream_buffer()()
        self._parser_error: type[Exception] = ParserError
        # A broken frame after good ones: the good ones are delivered first, the failure next.
        self._broken: UpstreamError | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        if self._broken is not None:
            raise self._broken
        self._buffer.add_data(chunk)
        events = []
        try:
            for message in self._buffer:
                headers = message.headers
                kind = headers.get(":message-type")
                if kind == "event":
                    events.append(SseEvent(str(headers.get(":event-type") or ""), message.payload))
                elif kind == "exception":
                    events.append(SseEvent("exception:" + str(headers.get(":exception-type") or ""),
                                           message.payload))
                else:
                    payload = orjson.dumps({"message": headers.get(":error-message") or "error"})
                    events.append(SseEvent("exception:" + str(headers.get(":error-code") or "error"), payload))
        except self._parser_error as exc:
            self._broken = UpstreamError("server", 502, f"Bedrock sent a broken event stream ({type(exc).__name__}).")
            if not events:
                raise self._broken from None
        return events

    def flush(self) -> list[SseEvent]:
        if self._broken is not None:
            raise self._broken
        return []

    @property
    def idle(self) -> bool:
        # Not tracked: a Bedrock stream is translated, never relayed as raw bytes.
        return False


class BedrockStream(BlockStream):
    """ConverseStream events → OpenAI chunks (the block bookkeeping is ``BlockStream``'s)."""

    __slots__ = ("_stopped",)
    _wire = "converse"

    def __init__(self, provider: str, model: str, wants_usage: bool, keep_state: bool = False) -> None:
        super().__init__(provider, wants_usage, keep_state)
        self._chunks.model = model
        self._chunks.id = unique_id("chatcmpl-")
        self._stopped = False

    def _pack(self, reasoning: list[dict[str, Any]]) -> bytes:
        return encode_reasoning(reasoning)

    def feed(self, event: SseEvent) -> list[bytes]:
        name = event.event or ""
        data = load_object(event.data, self._provider, "an event") if event.data else {}
        if name.startswith("exception:"):
            raise exception_error(self._provider, name.partition(":")[2], str(data.get("message") or ""))
        if name == "contentBlockDelta":
            return self._delta(data)
        if name == "messageStart":
            return self._role()
        if name == "contentBlockStart":
            return self._start(data)
        if name == "contentBlockStop":
            return self._stop(data)
        if name == "messageStop":
            self._stopped = True
            return self._finish(FINISH_REASONS.get(str(data.get("stopReason")), "stop"))
        if name == "metadata":
            return self._end(_usage(data.get("usage")))  # usage comes after messageStop: this is the end
        return []

    def _block(self, data: Mapping[str, Any]) -> dict[str, Any]:
        index = int(data.get("contentBlockIndex") or 0)
        return self._blocks.setdefault(index, {})  # text blocks often come without a start event

    def _start(self, data: Mapping[str, Any]) -> list[bytes]:
        tool = obj(obj(data.get("start")).get("toolUse"))
        if not tool:
            return []
        block = self._block(data)
        block["kind"] = "tool"
        return self._tool_start(block, str(tool.get("toolUseId") or ""), tool.get("name"))

    def _delta(self, data: Mapping[str, Any]) -> list[bytes]:
        delta = obj(data.get("delta"))
        block = self._block(data)
        if "text" in delta:
            return self._text(str(delta.get("text") or ""))
        if "toolUse" in delta and block.get("kind") == "tool":
            return self._tool_arguments(block, str(obj(delta["toolUse"]).get("input") or ""))
        if "reasoningContent" in delta:
            reasoning = obj(delta["reasoningContent"])
            block["kind"] = "reasoning"
            if "text" in reasoning:
                text = str(reasoning.get("text") or "")
                block["text"] = block.get("text", "") + text
                if text:
                    return self._reasoning_text(text)
            if "signature" in reasoning:
                block["signature"] = block.get("signature", "") + str(reasoning.get("signature") or "")
            if "redactedContent" in reasoning:
                block["redacted"] = str(reasoning.get("redactedContent") or "")
        return []

    def _stop(self, data: Mapping[str, Any]) -> list[bytes]:
        block = self._block(data)
        if block.get("kind") == "reasoning":
            if "redacted" in block:
                return self._reasoning_done({"redactedContent": block["redacted"]})
            return self._reasoning_done({"reasoningText": {"text": block.get("text", ""),
                                                           "signature": block.get("signature", "")}})
        if block.get("kind") == "tool":
            return self._tool_stop(block)
        return []

    def close(self) -> list[bytes]:
        if self.done:
            return []
        if self._stopped:  # messageStop came but no metadata: end without usage
            return self._end(None)
        raise UpstreamError("server", 502, "Bedrock ended the stream before messageStop.", provider=self._provider)


def _invoke_body(req: ChatRequest, provider: ProviderConfig, credential: Credential) -> tuple[dict[str, Any], Betas]:
    """The caller's Messages body as InvokeModel takes it: no ``model`` (the URL names it), no
    ``stream`` (the operation says it), ``anthropic_version``, and the betas that pass in the body."""
    body, betas = native_messages(req, provider, credential, betas_in_body=True)
    body.pop("model", None)
    body.pop("stream", None)
    body.setdefault("anthropic_version", ANTHROPIC_VERSION)
    if betas.kept:
        body["anthropic_beta"] = list(betas.kept)
    return body, betas


class InvokeStream(MessagesPassthrough):
    """InvokeModelWithResponseStream for a Claude model: each ``chunk`` frame's base64 ``bytes`` is one
    Anthropic event, relayed as SSE (``event: <type>``); an exception frame is the failure it names."""

    __slots__ = ()

    def feed(self, event: SseEvent) -> list[bytes]:
        name = event.event or ""
        if name.startswith("exception:"):
            data = load_object(event.data, self._provider, "an event") if event.data else {}
            raise exception_error(self._provider, name.partition(":")[2], str(data.get("message") or ""))
        if name != "chunk":
            return []  # an event type newer than this decoder
        raw = load_object(event.data, self._provider, "an event").get("bytes")
        try:
            decoded = base64.b64decode(raw if isinstance(raw, str) else "", validate=True)
        except (binascii.Error, ValueError):
            raise UpstreamError("server", 502, f"Bedrock sent a chunk that is not base64 ({self._provider}).",
                                provider=self._provider) from None
        return self.relay(decoded)


# --- the provider -------------------------------------------------------------------------------


class Bedrock(NativeMessages):
    """The Provider for AWS Bedrock Runtime: chat through Converse, Messages for Claude through
    InvokeModel (the Messages body without ``model`` and ``stream``, ``anthropic_version`` and the
    betas that pass in the body)."""

    type = "bedrock"

    def framer(self) -> EventStreamFramer:
        return EventStreamFramer()

    def build_request(self, req: ChatRequest, provider: ProviderConfig, model: str,
                      credential: Credential) -> UpstreamCall:
        body = translate_request(req, provider, model)
        return _call(provider, credential, model, "converse-stream" if req.stream else "converse", body, req.stream)

    def parse_response(self, req: ChatRequest, provider: ProviderConfig, body: bytes) -> bytes:
        return translate_response(load_object(body, provider.name), str(req.body.get("model") or ""),
                                  keep_state=req.wants_reasoning_state)

    def stream_decoder(self, req: ChatRequest, provider: ProviderConfig) -> BedrockStream:
        return BedrockStream(provider.name, str(req.body.get("model") or ""), req.wants_usage,
                             req.wants_reasoning_state)

    def classify_error(self, provider: ProviderConfig, status: int, headers: Mapping[str, str],
                       body: bytes) -> UpstreamError:
        return classify(provider, status, headers, body)

    def build_embeddings_request(self, req: EmbeddingsRequest, provider: ProviderConfig, model: str,
                                 credential: Credential) -> list[UpstreamCall]:
        texts = embedding_texts(req.body.get("input"), "Bedrock")
        if "titan-embed" in model:
            # Titan takes one text per call: the inputs fan out, concurrently.
            extra = {"dimensions": req.body["dimensions"]} if req.body.get("dimensions") else {}
            return [_call(provider, credential, model, "invoke", {"inputText": text, **extra}) for text in texts]
        if "cohere.embed" in model:
            input_type = req.body.get("input_type") or "search_document"
            return [_call(provider, credential, model, "invoke", {"texts": texts[i:i + COHERE_BATCH],
                                                                   "input_type": input_type})
                    for i in range(0, len(texts), COHERE_BATCH)]
        raise UnsupportedField("model", f"Bedrock embeddings are served for Titan and Cohere models, not '{model}'.")

    def native(self, dialect: str, provider: ProviderConfig, model: str) -> bool:
        return dialect == "messages" and dialect in provider.speaks and anthropic_family(provider, model)

    def build_native_request(self, dialect: str, req: ChatRequest, provider: ProviderConfig, model: str,
                             credential: Credential) -> UpstreamCall:
        body, betas = _invoke_body(req, provider, credential)
        operation = "invoke-with-response-stream" if req.stream else "invoke"
        return replace(_call(provider, credential, model, operation, body, req.stream), stripped=betas.stripped)

    def build_count_tokens_request(self, req: ChatRequest, provider: ProviderConfig, model: str,
                                   credential: Credential) -> UpstreamCall | None:
        """CountTokens with the InvokeModel body, base64 in its envelope (it wants ``max_tokens``,
        which a count_tokens body has not: the provider's default stands in)."""
        if req.native is None or not self.native("messages", provider, model):
            return None
        body, betas = _invoke_body(req, provider, credential)
        body.setdefault("max_tokens", provider.default_max_tokens or DEFAULT_MAX_TOKENS)
        wrapped = {"input": {"invokeModel": {"body": base64.b64encode(orjson.dumps(body)).decode()}}}
        return replace(_call(provider, credential, model, "count-tokens", wrapped), stripped=betas.stripped)

    def read_count_tokens(self, provider: ProviderConfig, body: bytes) -> int:
        return read_input_tokens(body, "inputTokens")

    def native_decoder(self, dialect: str, req: ChatRequest, provider: ProviderConfig) -> NativeStream:
        return InvokeStream(provider.name)

    def parse_embeddings_response(self, req: EmbeddingsRequest, provider: ProviderConfig,
                                  bodies: list[bytes]) -> bytes:
        vectors: list[list[float]] = []
        tokens = 0
        for body in bodies:
            parsed = load_object(body, provider.name)
            if "embedding" in parsed:
                vectors.append(list(items(parsed["embedding"])))
                tokens += count_of(parsed, "inputTextTokenCount")
            else:
                vectors.extend(list(items(v)) for v in items(parsed.get("embeddings")))
        return embeddings(vectors, str(req.body.get("model") or ""), tokens, req.base64)
