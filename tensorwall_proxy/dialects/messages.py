"""Anthropic Messages (``/v1/messages``), through the pivot for every provider type (DESIGN §12).

A Messages body becomes a chat request (``MessagesRequest``: the pivot, plus the extensions it has no
field for and the estimate its stream opens with); the pivot's answer becomes a Message object, and
its stream is re-encoded by ``MessagesStream``, a state machine fed pivot chunks that emits
Anthropic's event grammar: ``message_start`` (usage included), ``ping``, content blocks with
contiguous indexes, one open at a time, ``message_delta`` with the stop reason and the usage,
``message_stop``. Nothing comes out before the first visible pivot chunk, so ``message_start``,
``ping`` and the start of a text or thinking block are held with the commit point (DESIGN §14).

Translation (wire-formats-dialects B.7): ``system`` and mid-conversation system turns become system
messages; ``tool_result`` blocks become tool messages ahead of the turn's other content (``is_error``
prefixes the text, images a tool returned follow in a user message); ``tool_use`` blocks become tool
calls; images, PDF and text documents, and search results become the pivot's parts. Thinking blocks
coming back are dropped: no translated provider can read another's signature, and a tool call's id
carries the state a provider needs (DESIGN §7). ``thinking`` and ``output_config.effort`` become
``reasoning_effort``; ``top_k`` and ``cache_control`` breakpoints have no chat field and travel as
extensions of the request, which today's translators drop (the relay counts the dropped markers).
Field policy (DESIGN §7): 400 where ignoring a field would change the result's count or shape
(a forced server tool, a file the pivot cannot carry); hints dropped.

A provider that speaks Messages itself (anthropic; bedrock and vertex for Claude) gets the caller's
body instead (``ChatRequest.native``, less the gateway's own state: ``native.py``), the caller's
``anthropic-version`` and betas as its rules allow, and its answer and stream relayed as it came.

Errors take Anthropic's shape ``{"type": "error", "error": {"type", "message"}}``, with ``code`` for
the gateway's own errors, and overload as 529 ``overloaded_error``. This module does no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from .. import limits
from ..errors import GatewayError, UpstreamError, bad_request
from ..providers import ChatRequest, StreamDecoder
from ..providers.shapes import obj
from ..sse import encode
from . import DialectPath, native
from .chat import parse_chat
from .responses import new_id
from .streams import ChunkStream

# `thinking.budget_tokens` → `reasoning_effort`, by the largest budget each effort stands for
# (LiteLLM's defaults, B.7); a larger budget is `high`, the most every chat provider knows.
_EFFORT_BUDGETS: Final = ((1024, "low"), (2048, "medium"))
# `output_config.effort` → `reasoning_effort`: Anthropic's two efforts above `high` have no chat word.
_EFFORTS: Final = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}
# Finish reasons of the pivot → Anthropic's stop reasons.
STOP_REASONS: Final = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                       "function_call": "tool_use", "content_filter": "refusal"}
# Blocks of a server tool's history: only Anthropic ran the tool, and only Anthropic can read them.
_SERVER_HISTORY: Final = frozenset({
    "server_tool_use", "web_search_tool_result", "web_fetch_tool_result", "code_execution_tool_result",
    "bash_code_execution_tool_result", "text_editor_code_execution_tool_result", "tool_search_tool_result",
    "container_upload", "mcp_tool_use", "mcp_tool_result",
})
# The longest `metadata.user_id` passed on as the pivot's `user` (OpenAI's limit for `user`); a
# longer one is a hint dropped.
MAX_USER_ID: Final = 256
# Anthropic's error types by status (wire-formats-dialects B.5); any other 4xx is invalid_request_error.
_ERROR_TYPES: Final = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                       403: "permission_error", 404: "not_found_error", 408: "timeout_error",
                       413: "request_too_large", 429: "rate_limit_error", 504: "timeout_error",
                       529: "overloaded_error"}
OVERLOADED: Final = 529


@dataclass(frozen=True, slots=True)
class MessagesRequest(ChatRequest):
    """The pivot of a Messages body, with the extension chat has no field for (``top_k``; the cache
    breakpoints are ``ChatRequest.cache_markers``) and the input estimate ``message_start`` carries."""

    top_k: int | None = None
    estimate: int = 0


# --- request ------------------------------------------------------------------------------------


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise bad_request(f"'{where}' must be a string.", param=where)
    return value


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """``content`` as a list of blocks (a string is one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise bad_request(f"'{where}' must be a string or an array of content blocks.", param=where)
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise bad_request(f"'{where}[{j}]' must be a content block (an object with a 'type').",
                              param=f"{where}[{j}]")
    return content


class _Markers:
    """Counts the ``cache_control`` breakpoints of one request while it is parsed."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def see(self, block: Mapping[str, Any]) -> None:
        if block.get("cache_control") is not None:
            self.count += 1


def _image(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source, dict):
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise bad_request(f"'{where}.source' needs 'media_type' and 'data'.", param=f"{where}.source")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if kind == "url" and isinstance(source, dict):
        return {"type": "image_url", "image_url": {"url": _text(source.get("url"), f"{where}.source.url")}}
    raise bad_request(f"'{where}.source': images are taken as base64 data or a URL; a '{kind}' source needs "
                      "Anthropic's file store, which this model's provider does not have.", param=f"{where}.source")


def _document(block: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    title = block.get("title")
    if kind == "base64" and isinstance(source, dict) and source.get("media_type") == "application/pdf":
        file: dict[str, Any] = {"file_data": f"data:application/pdf;base64,{_text(source.get('data'), where)}"}
        if isinstance(title, str) and title:
            file["filename"] = title
        return [{"type": "file", "file": file}]
    if kind == "text" and isinstance(source, dict):
        text = _text(source.get("data"), f"{where}.source.data")
        return [{"type": "text", "text": f"{title}\n\n{text}" if isinstance(title, str) and title else text}]
    if kind == "content" and isinstance(source, dict):
        return [part for j, inner in enumerate(_blocks(source.get("content"), f"{where}.source.content"))
                for part in _user_part(inner, f"{where}.source.content[{j}]", None)]
    raise bad_request(f"'{where}.source': documents are taken as base64 PDF, plain text or content blocks; a "
                      f"'{kind}' source cannot reach this model's provider.", param=f"{where}.source")


def _user_part(block: Mapping[str, Any], where: str, markers: _Markers | None) -> list[dict[str, Any]]:
    """One block of a user turn (not a tool result) → the pivot's parts."""
    if markers is not None:
        markers.see(block)
    kind = block["type"]
    if kind == "text":
        return [{"type": "text", "text": _text(block.get("text"), f"{where}.text")}]
    if kind == "image":
        return [_image(block, where)]
    if kind == "document":
        return _document(block, where)
    if kind == "search_result":
        texts = [_text(b.get("text"), f"{where}.content") for b in _blocks(block.get("content"), f"{where}.content")
                 if b.get("type") == "text"]
        head = " — ".join(str(block[name]) for name in ("title", "source") if isinstance(block.get(name), str))
        return [{"type": "text", "text": "\n".join([head, *texts]) if head else "\n".join(texts)}]
    if kind in ("thinking", "redacted_thinking") or kind in _SERVER_HISTORY:
        return []
    raise bad_request(f"'{where}': content blocks of type {kind!r} are not supported.", param=f"{where}.type")


def _tool_result(block: Mapping[str, Any], where: str, markers: _Markers) -> tuple[dict[str, Any], list[Any]]:
    """A ``tool_result`` block → its tool message, and the images it returned (a chat tool message
    has no place for them: they follow in a user message)."""
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str) or not tool_use_id:
        raise bad_request(f"'{where}.tool_use_id' is required.", param=f"{where}.tool_use_id")
    content = block.get("content")
    texts: list[str] = []
    images: list[Any] = []
    if content is not None:
        for j, inner in enumerate(_blocks(content, f"{where}.content")):
            markers.see(inner)
            for part in _user_part(inner, f"{where}.content[{j}]", None):
                if part["type"] == "text":
                    texts.append(part["text"])
                else:
                    images.append(part)
    text = "\n".join(texts)
    if block.get("is_error") is True:
        text = f"Error: {text}" if text else "Error"  # chat's tool message has no error flag
    # A result without content is still sent: dropping it would unpair the tool call (B.7).
    return {"role": "tool", "tool_call_id": tool_use_id, "content": text}, images


def _assistant(blocks: list[dict[str, Any]], where: str, markers: _Markers) -> dict[str, Any] | None:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        markers.see(block)
        kind = block["type"]
        at = f"{where}[{j}]"
        if kind == "text":
            texts.append(_text(block.get("text"), f"{at}.text"))
        elif kind == "tool_use":
            call_id, name = block.get("id"), block.get("name")
            if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
                raise bad_request(f"'{at}' needs an 'id' and a 'name'.", param=at)
            arguments = block.get("input")
            calls.append({"id": call_id, "type": "function", "function": {
                "name": name, "arguments": orjson.dumps(arguments if isinstance(arguments, dict) else {}).decode()}})
        elif kind in ("thinking", "redacted_thinking") or kind in _SERVER_HISTORY:
            continue
        else:
            raise bad_request(f"'{at}': content blocks of type {kind!r} are not supported in an assistant turn.",
                              param=f"{at}.type")
    text = "".join(texts)
    if not text and not calls:
        return None  # a turn of thinking alone: nothing a translated provider can read
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _system_text(system: Any, where: str, markers: _Markers) -> str:
    if isinstance(system, str):
        return system
    texts = []
    for j, block in enumerate(_blocks(system, where)):
        markers.see(block)
        if block["type"] != "text":
            raise bad_request(f"'{where}[{j}]': system blocks must be text blocks.", param=f"{where}[{j}].type")
        texts.append(_text(block.get("text"), f"{where}[{j}].text"))
    return "\n\n".join(text for text in texts if text)


def _messages(body: Mapping[str, Any], markers: _Markers) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        text = _system_text(system, "system", markers)
        if text:
            out.append({"role": "system", "content": text})
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' is required and must be a non-empty array.", param="messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(f"'{where}' must be an object.", param=where)
        role = message.get("role")
        content = message.get("content")
        if role == "system":
            text = _system_text(content, f"{where}.content", markers)
            if text:
                out.append({"role": "system", "content": text})
        elif role == "assistant":
            turn = _assistant(_blocks(content, f"{where}.content"), f"{where}.content", markers)
            if turn is not None:
                out.append(turn)
        elif role == "user":
            if isinstance(content, str):
                out.append({"role": "user", "content": content})
                continue
            parts: list[Any] = []
            for j, block in enumerate(_blocks(content, f"{where}.content")):
                at = f"{where}.content[{j}]"
                if block["type"] == "tool_result":
                    markers.see(block)
                    tool, images = _tool_result(block, at, markers)
                    out.append(tool)  # tool messages lead: they answer the assistant turn before
                    parts.extend(images)
                else:
                    parts.extend(_user_part(block, at, markers))
            if parts:
                out.append({"role": "user", "content": parts})
        else:
            raise bad_request(f"'{where}.role' must be user, assistant or system.", param=f"{where}.role")
    if not any(message["role"] != "system" for message in out):
        raise bad_request("'messages' holds no content a model can answer.", param="messages")
    return out


def _tools(body: Mapping[str, Any], markers: _Markers) -> tuple[list[dict[str, Any]], set[str]]:
    """Client tools as pivot functions, and the names of the server tools left out (only Anthropic
    runs them)."""
    tools = body.get("tools")
    if tools is None:
        return [], set()
    if not isinstance(tools, list):
        raise bad_request("'tools' must be an array.", param="tools")
    out: list[dict[str, Any]] = []
    dropped: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise bad_request(f"'{where}' must be an object.", param=where)
        markers.see(tool)
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise bad_request(f"'{where}.name' is required.", param=f"{where}.name")
        if tool.get("type") not in (None, "custom"):
            dropped.add(name)  # a server tool, or one whose schema only Anthropic knows
            continue
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise bad_request(f"'{where}.input_schema' is required: a JSON schema object.", param=f"{where}.input_schema")
        function: dict[str, Any] = {"name": name, "parameters": schema}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    return out, dropped


def _tool_choice(choice: Any, dropped: set[str]) -> tuple[Any, bool]:
    """``tool_choice`` → the pivot's, and whether parallel tool use is off."""
    if not isinstance(choice, dict):
        raise bad_request("'tool_choice' must be an object with a 'type'.", param="tool_choice")
    kind = choice.get("type")
    parallel_off = choice.get("disable_parallel_tool_use") is True
    if kind == "auto":
        return "auto", parallel_off
    if kind == "any":
        return "required", parallel_off
    if kind == "none":
        return "none", False
    if kind == "tool":
        name = _text(choice.get("name"), "tool_choice.name")
        if name in dropped:
            raise bad_request(f"'tool_choice' forces the tool {name!r}, which only Anthropic runs; this model's "
                              "provider cannot.", param="tool_choice")
        return {"type": "function", "function": {"name": name}}, parallel_off
    raise bad_request("'tool_choice.type' must be auto, any, tool or none.", param="tool_choice.type")


def _effort(body: Mapping[str, Any]) -> str | None:
    """``thinking`` (with ``output_config.effort``) → ``reasoning_effort`` (B.7), or None.

    Without thinking, ``effort`` only tunes how many tokens the answer spends: a hint, dropped. Claude
    Code sends it whatever the model, and a model without reasoning (gpt-4o) refuses
    ``reasoning_effort``; with ``MAX_THINKING_TOKENS=0`` it sends no thinking, and so reaches one."""
    thinking = body.get("thinking")
    config = body.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    if thinking is None:
        return None
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "adaptive", "disabled"):
        raise bad_request("'thinking.type' must be enabled, adaptive or disabled.", param="thinking.type")
    if thinking["type"] == "disabled":
        return None
    if thinking["type"] == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            raise bad_request("'thinking.budget_tokens' must be a positive integer.", param="thinking.budget_tokens")
        if effort is None:
            return next((word for limit, word in _EFFORT_BUDGETS if budget <= limit), "high")
    if effort is None:
        return None
    if effort not in _EFFORTS:
        raise bad_request("'output_config.effort' must be low, medium, high, xhigh or max.",
                          param="output_config.effort")
    return _EFFORTS[effort]


def _output_format(body: Mapping[str, Any]) -> dict[str, Any] | None:
    config = body.get("output_config")
    if config is None:
        return None
    if not isinstance(config, dict):
        raise bad_request("'output_config' must be an object.", param="output_config")
    spec = config.get("format")
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get("type") != "json_schema" or not isinstance(spec.get("schema"), dict):
        raise bad_request("'output_config.format' must be {\"type\": \"json_schema\", \"schema\": {...}}.",
                          param="output_config.format")
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": spec["schema"]}}


def _number(body: Mapping[str, Any], name: str) -> Any:
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise bad_request(f"'{name}' must be a number.", param=name)
    return value


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    """The input estimate (DESIGN §13): the characters of the pivot's text content / 4, rounded up."""
    chars = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(part["text"]) for part in content if part.get("type") == "text")
        for call in message.get("tool_calls") or ():
            chars += len(call["function"]["arguments"])
    return math.ceil(chars / 4)


def parse_messages(body: dict[str, Any], headers: Mapping[str, str], *, counting: bool = False) -> MessagesRequest:
    """A ``POST /v1/messages`` body → the pivot; 400 in Anthropic's shape for what the gateway relies
    on. ``counting``: a ``count_tokens`` body, which has no ``max_tokens`` and is never streamed."""
    markers = _Markers()
    if body.get("cache_control") is not None:
        markers.count += 1  # the top-level breakpoint: the last cacheable block
    pivot: dict[str, Any] = {"model": body.get("model"), "messages": _messages(body, markers)}
    max_tokens = body.get("max_tokens")
    if not counting:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise bad_request("'max_tokens' is required: a positive integer.", param="max_tokens")
        pivot["max_tokens"] = max_tokens
    stream = body.get("stream", False) if not counting else False
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean.", param="stream")
    tools, dropped = _tools(body, markers)
    if tools:
        pivot["tools"] = tools
        if body.get("tool_choice") is not None:
            choice, parallel_off = _tool_choice(body["tool_choice"], dropped)
            pivot["tool_choice"] = choice
            if parallel_off:
                pivot["parallel_tool_calls"] = False
    elif body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], dropped)  # a forced server tool is refused all the same
    for name in ("temperature", "top_p"):
        if _number(body, name) is not None:
            pivot[name] = body[name]
    top_k = body.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)):
        raise bad_request("'top_k' must be an integer.", param="top_k")
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise bad_request("'stop_sequences' must be an array of strings.", param="stop_sequences")
        if stops:
            pivot["stop"] = stops
    effort = _effort(body)
    if effort is not None:
        pivot["reasoning_effort"] = effort
    response_format = _output_format(body)
    if response_format is not None:
        pivot["response_format"] = response_format
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        user = metadata.get("user_id")
        if isinstance(user, str) and user and len(user) <= MAX_USER_ID:
            pivot["user"] = user
    if stream:
        pivot["stream"] = True
        pivot["stream_options"] = {"include_usage": True}  # message_delta carries the usage
    checked = parse_chat(pivot, headers)
    forwarded = dict(checked.headers)
    version = headers.get("anthropic-version")
    if version:
        forwarded["anthropic-version"] = version  # for a native attempt only; translators send their own
    return MessagesRequest(checked.body, checked.stream, checked.wants_usage, forwarded,
                           native=native.messages_body(body), cache_markers=markers.count, top_k=top_k,
                           estimate=estimate_tokens(pivot["messages"]))


def count_tokens_body(req: MessagesRequest, counted: int | None = None) -> bytes:
    """``POST /v1/messages/count_tokens`` answered in Anthropic's shape: a provider's count, else the estimate."""
    return orjson.dumps({"input_tokens": req.estimate if counted is None else counted})


# --- answer -------------------------------------------------------------------------------------


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def usage_of(usage: Any, estimate: int = 0) -> dict[str, int]:
    """The pivot's usage → Anthropic's: cache reads and writes are outside ``input_tokens`` there and
    inside ``prompt_tokens`` in the pivot, so they are subtracted, never copied (B.4). Without a
    usage, ``input_tokens`` is the estimate."""
    usage = usage if isinstance(usage, dict) else {}
    details = usage.get("prompt_tokens_details")
    read = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    created = _count(usage.get("cache_creation_input_tokens"))
    prompt = _count(usage.get("prompt_tokens")) if "prompt_tokens" in usage else estimate
    return {"input_tokens": max(prompt - read - created, 0), "output_tokens": _count(usage.get("completion_tokens")),
            "cache_creation_input_tokens": created, "cache_read_input_tokens": read}


def _request_of(req: ChatRequest) -> MessagesRequest:
    if not isinstance(req, MessagesRequest):  # only this dialect's parse makes the requests it is handed
        raise TypeError("a Messages answer needs the request its parse made")
    return req


def _input(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments (JSON text) as a ``tool_use`` block's ``input`` object."""
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except orjson.JSONDecodeError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {}


def _reasoning(message: Mapping[str, Any]) -> str:
    value = message.get("reasoning_content") or message.get("reasoning")
    return value if isinstance(value, str) else ""


def _stop_reason(finish: Any, calls: bool) -> str:
    reason = STOP_REASONS.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"
    return "tool_use" if calls and reason == "end_turn" else reason


def _message_id(upstream: Any) -> str:
    """Anthropic's own id when the answer came from it, else a new ``msg_`` id."""
    return upstream if isinstance(upstream, str) and upstream.startswith("msg_") else new_id("msg_")


def message_answer(req: ChatRequest, answer: bytes) -> bytes:
    """A ``chat.completion`` body → a Message object."""
    request = _request_of(req)
    parsed = orjson.loads(answer)
    choices = parsed.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = obj(choice.get("message"))
    content: list[dict[str, Any]] = []
    reasoning = _reasoning(message)
    if reasoning:
        # No translated provider's signature can be replayed elsewhere: the block carries none, and
        # comes back dropped; the provider's own state rides in the tool call id (DESIGN §7).
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content")
    refusal = message.get("refusal")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    elif isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    calls = [call for call in message.get("tool_calls") or () if isinstance(call, dict)]
    for call in calls:
        function = obj(call.get("function"))
        content.append({"type": "tool_use", "id": str(call.get("id") or new_id("toolu_")),
                        "name": str(function.get("name") or ""), "input": _input(function.get("arguments"))})
    stop_reason = "refusal" if isinstance(refusal, str) and refusal else _stop_reason(choice.get("finish_reason"),
                                                                                     bool(calls))
    return orjson.dumps({
        "id": _message_id(parsed.get("id")), "type": "message", "role": "assistant",
        "model": str(parsed.get("model") or request.body.get("model")), "content": content,
        "stop_reason": stop_reason, "stop_sequence": None, "usage": usage_of(parsed.get("usage"), request.estimate)})


# --- stream -------------------------------------------------------------------------------------


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return encode(orjson.dumps({"type": kind, **data}), kind)


class MessagesStream(ChunkStream):
    """Re-encodes the pivot's chunks, one attempt's stream, as Anthropic's events (B.4).

    The pivot decoder keeps the commit point, the end and the usage. Nothing comes out before the
    first visible chunk: ``message_start`` and ``ping`` come with it. A block opens on the first
    piece of its kind (thinking, text, a tool call), closing the one before it, so indexes are
    contiguous and one block is open at a time; everything closes, and ``message_delta`` and
    ``message_stop`` go out, when the pivot stream ends, after its usage chunk.
    """

    __slots__ = ("_calls", "_index", "_open", "_refused", "_req", "message_id")

    def __init__(self, req: MessagesRequest, inner: StreamDecoder) -> None:
        super().__init__(req, inner)
        self._req = req
        self.message_id = new_id("msg_")
        self._index = -1  # the last block opened
        self._open: str | None = None  # the open block's kind: thinking, text, or tool:<pivot index>
        self._calls: set[int] = set()  # pivot tool call indexes already opened
        self._refused = False

    def _start(self, out: list[bytes]) -> None:
        if self._started:
            return
        self._started = True
        # The input count is known only at the end of a pivot stream: message_start carries the
        # estimate (a 0 there breaks clients' cost display, B.4), message_delta the provider's count.
        out.append(_event("message_start", {"message": {
            "id": self.message_id, "type": "message", "role": "assistant", "model": self._model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": usage_of(None, self._req.estimate)}}))
        out.append(_event("ping", {}))

    def _choice(self, delta: Mapping[str, Any], out: list[bytes]) -> None:
        reasoning = _reasoning(delta)
        if reasoning:
            self._block(out, "thinking", {"type": "thinking", "thinking": "", "signature": ""})
            self._delta(out, {"type": "thinking_delta", "thinking": reasoning})
        for name in ("content", "refusal"):
            text = delta.get(name)
            if isinstance(text, str) and text:
                self._refused |= name == "refusal"
                self._block(out, "text", {"type": "text", "text": ""})
                self._delta(out, {"type": "text_delta", "text": text})
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                self._call(call, out)

    def _block(self, out: list[bytes], kind: str, start: dict[str, Any]) -> None:
        """Make ``kind`` the open block, closing the one before it."""
        if self._open == kind:
            return
        self._start(out)
        self._close_block(out)
        self._index += 1
        self._open = kind
        out.append(_event("content_block_start", {"index": self._index, "content_block": start}))

    def _delta(self, out: list[bytes], delta: dict[str, Any]) -> None:
        out.append(_event("content_block_delta", {"index": self._index, "delta": delta}))

    def _close_block(self, out: list[bytes]) -> None:
        if self._open is not None:
            out.append(_event("content_block_stop", {"index": self._index}))
            self._open = None

    def _call(self, call: Mapping[str, Any], out: list[bytes]) -> None:
        index = call.get("index", 0)
        function = obj(call.get("function"))
        kind = f"tool:{index}"
        if index not in self._calls:
            self._calls.add(index)
            self._block(out, kind, {"type": "tool_use", "id": str(call.get("id") or new_id("toolu_")),
                                    "name": str(function.get("name") or ""), "input": {}})
        fragment = function.get("arguments")
        # A fragment for a call already closed has no block to go to: providers stream one call at a time.
        if isinstance(fragment, str) and fragment and self._open == kind:
            self._delta(out, {"type": "input_json_delta", "partial_json": fragment})

    def _finish_stream(self, out: list[bytes]) -> None:
        self._start(out)
        self._close_block(out)
        reason = "refusal" if self._refused else _stop_reason(self._finish, bool(self._calls))
        out.append(_event("message_delta", {"delta": {"stop_reason": reason, "stop_sequence": None},
                                            "usage": usage_of(self._pivot_usage, self._req.estimate)}))
        out.append(_event("message_stop", {}))


# --- errors -------------------------------------------------------------------------------------


def error_status(error: GatewayError) -> int:
    """The status an error gets on this door: an overload is Anthropic's 529, any other keeps its own."""
    overloaded = error.kind == "overloaded" if isinstance(error, UpstreamError) else error.code == "overloaded"
    return OVERLOADED if overloaded else error.status


def error_object(error: GatewayError) -> dict[str, Any]:
    """``{"type": "error", "error": {type, message}}``; the gateway's own errors add their ``code``
    (DESIGN §14), so a caller can tell a gateway key refused from a provider's 401."""
    status = error_status(error)
    kind = _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    inner: dict[str, Any] = {"type": kind, "message": error.message}
    if error.code is not None and not isinstance(error, UpstreamError):
        inner["code"] = error.code
    return {"type": "error", "error": inner}


class Messages:
    """Anthropic Messages, through the pivot for every provider type."""

    __slots__ = ()
    name = "messages"
    # Every path under /v1/messages/ answers in Anthropic's shape.
    prefixes: tuple[str, ...] = ("/v1/messages/",)
    paths: tuple[DialectPath, ...] = (
        DialectPath("POST", "/v1/messages", "pivot"),
        DialectPath("POST", "/v1/messages/count_tokens", "count"),
    )
    is_pivot = False
    # Anthropic's SDKs read the request id from `request-id`.
    request_id_headers: tuple[str, ...] = ("request-id",)

    def parse(self, body: dict[str, Any], headers: Mapping[str, str]) -> ChatRequest:
        return parse_messages(body, headers)

    def encode_answer(self, req: ChatRequest, answer: bytes) -> bytes:
        return message_answer(req, answer)

    def encode_stream(self, req: ChatRequest, decoder: StreamDecoder) -> StreamDecoder:
        return MessagesStream(_request_of(req), decoder)

    def error_status(self, error: GatewayError) -> int:
        return error_status(error)

    def error_body(self, error: GatewayError) -> bytes:
        return orjson.dumps(error_object(error))

    # The rate-limit headers its clients read, as the function itself (no call per answer).
    rate_limit_headers = staticmethod(limits.anthropic_headers)

    def error_event(self, error: GatewayError, stream: StreamDecoder | None = None) -> bytes:
        return encode(orjson.dumps(error_object(error)), "error")


MESSAGES: Final = Messages()
