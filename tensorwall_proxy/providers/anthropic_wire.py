"""Anthropic's Messages wire as every type that carries Claude uses it: the chat translators (request,
answer, the stream state machine), how a key travels, which betas cross, which models are Claude,
and Claude's own rules for a request (sampling fields, the JSON-mode instruction).

``anthropic`` (Anthropic's API), ``bedrock`` (Claude models) and ``vertex`` (Claude models, in
Vertex's envelope) all read it; it is the one shared wire module of DESIGN §14, so no translator
imports another.

Chat translation: the request side hoists system and developer messages into ``system``, merges
consecutive same-role turns (tool results first), turns images, tools, tool choice, stop, user and
response_format into Anthropic's forms, and ``reasoning_effort`` into extended thinking. The answer
side puts text, tool calls, thinking (``reasoning_content``), the stop reason and the usage where the
OpenAI SDK looks. Thinking with tools: Anthropic wants the assistant's thinking block, with its
signature, back on the tool-use turn; it travels inside the tool call id the client keeps
(``ids.attach``, compressed), and a turn whose history lacks it is sent with thinking off. When the
request wants reasoning state (``providers/reasoning.py``), thinking blocks also come back as the
pivot's ``reasoning_state``.

The key: an API key goes as ``x-api-key``; a token that is not an API key (an OAuth token
``sk-ant-oat…``, or a JWT-shaped value) goes as ``Authorization: Bearer`` (DESIGN §14).

Betas: with the caller's own key every beta passes to Anthropic, since the caller pays. Under a
server-side key only the provider's ``betas:`` globs pass (default: the behavioural betas, never the
billed ones such as ``context-1m-*``), so a gateway key cannot switch on paid features on the
operator's account. Bedrock and Vertex refuse betas they do not know: only those of their type's
versioned table (``TYPE_BETAS``) reach them. Either way the value sent is capped at
``MAX_BETA_HEADER`` bytes, whole entries only; every beta stripped is reported with the call
(``UpstreamCall.stripped``), and one whose body field is present is refused (``require_pairs``).

Pure: no I/O.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from fnmatch import translate
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import orjson

from ..errors import FailureKind, UnsupportedField, UpstreamError, bad_request
from ..sse import SseEvent
from ..tokens import count_of
from .blocks import BlockStream
from .catalog import TYPES
from .contract import ChatRequest
from .ids import attach, detach, for_upstream
from .policy import FieldPolicy, check, reasoning_budget, temperature
from .reasoning import REASONING_STATE, entries, restored
from .shapes import (
    StateBudget,
    completion,
    convert_turns,
    data_url,
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


# The behavioural betas of the versioned table: they change how a request is answered, not what it costs.
DEFAULT_BETAS: Final[tuple[str, ...]] = (
    "claude-code-*", "interleaved-thinking-*", "context-management-*", "prompt-caching-scope-*",
    "fine-grained-tool-streaming-*", "effort-*", "token-efficient-tools-*",
)
# Betas billed on the account (documented here; they pass only by name in `betas:` or with `["*"]`).
BILLED_BETAS: Final[tuple[str, ...]] = (
    "context-1m-*", "extended-cache-ttl-*", "code-execution-*", "web-search-*", "web-fetch-*",
    "mcp-client-*", "files-api-*", "skills-*",
)
MAX_BETA_HEADER: Final = 1024
# The versioned table of which betas a type that carries Claude accepts at all (wire-formats-dialects
# C.6, D.4; version 2026-06): Bedrock and Vertex refuse a request with a beta they do not know, so
# only these reach them; Anthropic's own API takes every beta (None). Dates are left to the globs.
BETA_TABLE_VERSION: Final = "2026-06"
TYPE_BETAS: Final[Mapping[str, tuple[str, ...] | None]] = MappingProxyType({
    "anthropic": None,
    "bedrock": ("computer-use-*", "context-1m-*", "context-management-*", "compact-*", "effort-*",
                "fine-grained-tool-streaming-*", "tool-search-tool-*", "thinking-binding-controls-*",
                "thinking-display-updates-*", "mid-conversation-output-config-*",
                "mid-conversation-tool-changes-*", "dangerous-tool-use-*"),
    "vertex": ("computer-use-*", "context-1m-*", "context-management-*", "interleaved-thinking-*", "compact-*",
               "tool-search-tool-*", "web-search-*", "per-turn-control-*", "thinking-binding-controls-*",
               "thinking-display-updates-*", "dangerous-tool-use-*"),
})
# Betas the tables know by name beside those: what Bedrock and Vertex strip (the metric's labels).
_STRIPPED_BETAS: Final = ("output-128k-*", "structured-outputs-*", "fast-mode-*", "advisor-tool-*",
                          "advanced-tool-use-*", "thinking-token-count-*", "oauth-*")
KNOWN_BETAS: Final[tuple[str, ...]] = tuple(dict.fromkeys((
    *DEFAULT_BETAS, *BILLED_BETAS, *(g for table in TYPE_BETAS.values() for g in table or ()), *_STRIPPED_BETAS)))
# A beta and the top-level body field it enables: one without the other is refused upstream.
BETA_FIELDS: Final[tuple[tuple[str, str], ...]] = (
    ("context-management-*", "context_management"), ("mcp-client-*", "mcp_servers"), ("compact-*", "compaction"),
)

# The version in a Claude model id: claude-opus-4-1-20250805, claude-3-7-sonnet, claude-2.1, claude-v2, and the
# same inside Bedrock (anthropic.claude-…-v1:0) and Vertex (claude-…@date) ids. A minor version is
# one or two digits, so the date after claude-sonnet-4 is not taken for one.
_CLAUDE_VERSION: Final = re.compile(r"claude-(?:(?:opus|sonnet|haiku)-)?v?(\d+)(?:[-.](\d{1,2})(?!\d))?")
# The instruction that stands in for OpenAI's JSON mode, which Anthropic has no switch for.
JSON_OBJECT_INSTRUCTION: Final = "Respond with a single JSON object and nothing else."

_JWT: Final = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def auth_header(key: str) -> tuple[str, str]:
    """The header a key travels in: ``x-api-key``, or ``Authorization: Bearer`` for a token."""
    if key.startswith("sk-ant-oat") or _JWT.fullmatch(key):
        return "Authorization", f"Bearer {key}"
    return "x-api-key", key


@functools.lru_cache(maxsize=64)
def _matcher(globs: tuple[str, ...]) -> Callable[[str], bool]:
    """One compiled pattern per `betas:` list (cached: compiled once, not per request)."""
    if "*" in globs:
        return lambda beta: True
    if not globs:
        return lambda beta: False
    pattern = re.compile("|".join(f"(?:{translate(glob)})" for glob in globs))
    return lambda beta: pattern.match(beta) is not None


class Betas(NamedTuple):
    """The caller's betas split for one attempt: what is sent, and what is stripped (counted, logged)."""

    kept: tuple[str, ...]
    stripped: tuple[str, ...]


def caller_betas(header: str | None, listed: Any = None) -> list[str]:
    """The betas a caller asked for: the ``anthropic-beta`` header's entries, then a body's
    ``anthropic_beta`` list (Bedrock's form), each once."""
    out: list[str] = []
    for beta in [*(header or "").split(","), *(listed if isinstance(listed, list) else ())]:
        beta = beta.strip() if isinstance(beta, str) else ""
        if beta and beta not in out:
            out.append(beta)
    return out


def split_betas(betas: list[str], provider: ProviderConfig, credential: Credential) -> Betas:
    """Which of ``betas`` reach ``provider``: those its type accepts (``TYPE_BETAS``) and, under a
    server-side credential, those its ``betas:`` globs name (default ``DEFAULT_BETAS``). The
    whole list is capped at ``MAX_BETA_HEADER`` bytes; what does not fit is stripped too."""
    accepted = TYPE_BETAS.get(provider.type)
    by_type = _matcher(accepted) if accepted is not None else None
    by_key = None if credential.kind == "caller" else _matcher(
        DEFAULT_BETAS if provider.betas is None else provider.betas)
    kept: list[str] = []
    stripped: list[str] = []
    size = -1  # the first entry needs no comma
    for beta in betas:
        if (by_type is not None and not by_type(beta)) or (by_key is not None and not by_key(beta)) \
                or size + len(beta) + 1 > MAX_BETA_HEADER:
            stripped.append(beta)
            continue
        size += len(beta) + 1
        kept.append(beta)
    return Betas(tuple(kept), tuple(stripped))


def passed_betas(value: str, provider: ProviderConfig, credential: Credential) -> Betas:
    """The caller's ``anthropic-beta`` value split for ``provider`` (``split_betas``)."""
    return split_betas(caller_betas(value), provider, credential)


def beta_label(beta: str) -> str:
    """A stripped beta as the metric names it: its family in the tables (``context-1m``), else ``other``."""
    for glob in KNOWN_BETAS:
        if _matcher((glob,))(beta):
            return glob.removesuffix("-*")
    return "other"


def require_pairs(stripped: tuple[str, ...], body: Mapping[str, Any], provider: ProviderConfig) -> None:
    """A stripped beta whose field is in the body would be sent half-paired (a sure 400 upstream, or
    the field silently ignored): refused here, naming both (DESIGN §14)."""
    for beta in stripped:
        for glob, field_name in BETA_FIELDS:
            if field_name in body and _matcher((glob,))(beta):
                raise UnsupportedField(field_name, f"'{field_name}' needs the beta '{beta}', which provider "
                                                   f"'{provider.name}' does not pass; send neither or use a "
                                                   "provider that takes both.")


# A Bedrock model id's own name: after an ARN's last `/`, without a cross-region profile's prefix.
_BEDROCK_ANTHROPIC: Final = re.compile(r"(?:[a-z]{2,7}(?:-[a-z]+)?\.)?anthropic\.")


def anthropic_family(provider: ProviderConfig, model: str) -> bool:
    """Whether a bedrock or vertex ``model`` is Claude, spoken to in Anthropic's Messages wire (DESIGN
    §14): a Bedrock id (after an ARN's last ``/``, past a region prefix) starting ``anthropic.``, a
    Vertex id starting ``claude-``, or one the provider's ``anthropic_models:`` globs name."""
    if provider.anthropic_models and _matcher(provider.anthropic_models)(model):
        return True
    if provider.type == "bedrock":
        return _BEDROCK_ANTHROPIC.match(model.rpartition("/")[2]) is not None
    return provider.type == "vertex" and model.startswith("claude-")


def native_messages(req: ChatRequest, provider: ProviderConfig, credential: Credential,
                    betas_in_body: bool = False) -> tuple[dict[str, Any], Betas]:
    """The caller's Messages body for a native attempt, as it came (the carrier sets ``model``),
    and the caller's betas split for ``provider``; with ``betas_in_body`` (Bedrock), a body's own
    ``anthropic_beta`` list is read and taken out, to be written back as what is kept."""
    assert req.native is not None  # the relay asks for a native call only when the dialect made a body
    body = dict(req.native)
    listed = body.pop("anthropic_beta", None) if betas_in_body else None
    betas = split_betas(caller_betas(req.headers.get("anthropic-beta"), listed), provider, credential)
    require_pairs(betas.stripped, body, provider)
    return body, betas


@functools.lru_cache(maxsize=256)  # bounded: with the prefix form the model id is the caller's
def one_sampling_field(model: str) -> bool:
    """Whether a model takes ``temperature`` or ``top_p`` but refuses both together: Claude 4.1 and
    later, and a Claude whose id names no version. Other models keep both."""
    match = _CLAUDE_VERSION.search(model)
    if match is None:
        return "claude" in model
    return (int(match[1]), int(match[2] or 0)) >= (4, 1)


def claude_sampling(body: Mapping[str, Any], policy: FieldPolicy, claude: str | None) -> tuple[float | None, Any]:
    """``(temperature, top_p)`` to send, None for either to leave out: temperature clamped by the
    type's field policy; for ``claude`` (the model id, when the model is a Claude) 4.1 and later
    only one of them, temperature first, since those refuse both together."""
    temperature_ = temperature(body, policy)
    top_p = body.get("top_p")
    if top_p is not None and temperature_ is not None and claude is not None and one_sampling_field(claude):
        top_p = None
    return temperature_, top_p


# The catalog's defaults, for a provider whose YAML emptied them.
DEFAULT_VERSION: Final = str(TYPES["anthropic"].default("version"))
DEFAULT_MAX_TOKENS: Final = int(TYPES["anthropic"].default("default_max_tokens"))
# From this API version on Anthropic refuses temperature, top_p and top_k for every model.
SAMPLING_DROPPED_SINCE: Final = "2026-10-21"
FINISH_REASONS: Final[dict[str, str]] = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
    "max_tokens": "length", "model_context_window_exceeded": "length",
    "tool_use": "tool_calls", "refusal": "content_filter",
}

# What Anthropic refuses, clamps and maps of a chat body: its catalog entry's field policy.
POLICY: Final = TYPES["anthropic"].policy
# Anthropic error types met mid-stream → (failure kind, status the caller sees).
_STREAM_ERRORS: Final[dict[str, tuple[FailureKind, int]]] = {
    "overloaded_error": ("overloaded", 503), "rate_limit_error": ("rate_limited", 429),
    "timeout_error": ("timeout", 504),
}
# Marks thinking state in a tool call id, so state from another provider is never taken for ours.
_STATE_TAG: Final = b"A1"
_THINKING_TYPES: Final = ("thinking", "redacted_thinking")
# What a thinking block is made of: what Anthropic needs back, nothing else (cache_control, …).
_THINKING_KEYS: Final = ("type", "thinking", "signature", "data")


def thinking_block(block: Mapping[str, Any]) -> dict[str, Any]:
    """A thinking or redacted_thinking block as it goes back to Anthropic."""
    return {k: v for k, v in block.items() if k in _THINKING_KEYS}


# --- request ------------------------------------------------------------------------------------


def _image_block(url: str, param: str) -> dict[str, Any]:
    if url.startswith("data:"):
        parsed = data_url(url)
        if parsed is None or not parsed[0].startswith("image/"):
            raise UnsupportedField(param, f"'{param}' must be a base64 data: URL of an image or an https: URL.")
        return {"type": "image", "source": {"type": "base64", "media_type": parsed[0], "data": parsed[1]}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise UnsupportedField(param, f"'{param}': Anthropic takes images as data: or https: URLs.")


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content if isinstance(content, list) else []):
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        param = f"{where}.content[{j}]"
        if kind == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": str(part["text"])})
        elif kind == "image_url":
            blocks.append(_image_block(image_url(part), f"{param}.image_url.url"))
        elif kind == "file":
            blocks.append(_document_block(part.get("file"), param))
        else:
            raise UnsupportedField(param, f"Content parts of type '{kind}' are not supported by Anthropic.")
    return blocks


def _document_block(file: Any, param: str) -> dict[str, Any]:
    data = file.get("file_data") if isinstance(file, dict) else None
    parsed = data_url(data) if isinstance(data, str) else None
    if parsed is not None and parsed[0] == "application/pdf":
        return {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": parsed[1]}}
    raise UnsupportedField(param, f"'{param}': Anthropic takes files as base64 PDF data (file_data).")


def encode_thinking(blocks: list[dict[str, Any]]) -> bytes:
    """Thinking blocks as compact state for a tool call id."""
    return pack_state(_STATE_TAG, blocks)


def decode_thinking(state: bytes | None, param: str = "messages",
                    budget: StateBudget | None = None) -> list[dict[str, Any]] | None:
    """Thinking blocks from a tool call id's state; None when it holds none of ours, or is damaged;
    400 naming ``param`` when it inflates past its bound."""
    blocks = unpack_state(_STATE_TAG, state, param, budget)
    if blocks is not None and all(b.get("type") in _THINKING_TYPES for b in blocks):
        return blocks
    return None


def _assistant_blocks(message: Mapping[str, Any], where: str, budget: StateBudget) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    # Restored by the dialect: the turn's own thinking, so the ids' copy is not read.
    thinking: list[dict[str, Any]] | None = [thinking_block(b) for b in restored(message, "anthropic")
                                              if b.get("type") in _THINKING_TYPES] or None
    calls = items(message.get("tool_calls"))
    tool_blocks = []
    for k, call in enumerate(calls):
        if not isinstance(call, dict):
            continue
        function = obj(call.get("function"))
        client_id = str(call.get("id") or f"call_{k}")
        if thinking is None:
            thinking = decode_thinking(detach(client_id)[1], f"{where}.tool_calls[{k}].id", budget)
        name = tool_name(function.get("name"), f"{where}.tool_calls[{k}].function.name")
        tool_blocks.append({"type": "tool_use", "id": for_upstream(client_id, "anthropic"), "name": name,
                            "input": tool_input(function.get("arguments"))})
    if thinking:
        blocks.extend(thinking)  # the thinking comes first on a tool-use turn, as Anthropic sent it
    text = text_of(message.get("content"))
    if text:
        blocks.append({"type": "text", "text": text})
    blocks.extend(tool_blocks)
    return blocks


def _tool_result(message: Mapping[str, Any], where: str) -> dict[str, Any]:
    tool_call_id = message.get("tool_call_id")
    if not isinstance(tool_call_id, str) or not tool_call_id:
        raise bad_request(f"'{where}.tool_call_id' is required.", param=f"{where}.tool_call_id")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": for_upstream(tool_call_id, "anthropic")}
    text = text_of(message.get("content"))
    if text:
        block["content"] = text
    return block


def convert_messages(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """OpenAI messages → (Anthropic ``system`` blocks, Anthropic ``messages``), merged and ordered."""
    budget = StateBudget()
    texts, turns = convert_turns(messages, "Anthropic",
                                 lambda message, where: _user_blocks(message.get("content"), where),
                                 lambda message, where: _assistant_blocks(message, where, budget),
                                 lambda message, where: [_tool_result(message, where)])
    system = [{"type": "text", "text": text} for text in texts if text]
    for turn in turns:
        if turn["role"] == "user" and len(turn["content"]) > 1:
            # Tool results must lead the user turn that answers a tool use.
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    return system, turns


def _tools(body: Mapping[str, Any], turns: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(items(body.get("tools"))):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not function.get("name"):
            raise UnsupportedField(f"tools[{i}]", f"'tools[{i}]': only function tools are supported by Anthropic.")
        spec: dict[str, Any] = {"name": tool_name(function["name"], f"tools[{i}].function.name"),
                                "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
        if function.get("description"):
            spec["description"] = function["description"]
        tools.append(spec)
    # A history with tool use must come with tool definitions; an OpenAI client may omit them once
    # it stops offering tools, so the names the history uses are declared with an open schema.
    declared = {t["name"] for t in tools}
    for turn in turns:
        for block in turn["content"]:
            if block["type"] == "tool_use" and block["name"] not in declared:
                declared.add(block["name"])
                tools.append({"name": block["name"], "input_schema": {"type": "object"}})
    return tools or None


def _tool_choice(body: Mapping[str, Any]) -> dict[str, Any] | None:
    choice = body.get("tool_choice")
    result: dict[str, Any] | None
    if choice is None:
        result = None
    elif choice == "auto":
        result = {"type": "auto"}
    elif choice == "none":
        result = {"type": "none"}
    elif choice == "required":
        result = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        function = obj(choice.get("function"))
        result = {"type": "tool", "name": tool_name(function.get("name"), "tool_choice.function.name")}
    elif isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = obj(choice.get("allowed_tools"))
        result = {"type": "any" if allowed.get("mode") == "required" else "auto"}
    else:
        raise UnsupportedField("tool_choice", "'tool_choice' has a form Anthropic does not support.")
    if body.get("parallel_tool_calls") is False and (result is None or result["type"] != "none"):
        result = {**(result or {"type": "auto"}), "disable_parallel_tool_use": True}
    return result


def _thinking_budget(body: Mapping[str, Any], turns: list[dict[str, Any]]) -> int | None:
    budget = reasoning_budget(body, POLICY)
    if budget is None:
        return None
    last_assistant = next((t for t in reversed(turns) if t["role"] == "assistant"), None)
    if last_assistant is not None:
        content = last_assistant["content"]
        if any(b["type"] == "tool_use" for b in content) and content[0]["type"] not in _THINKING_TYPES:
            return None  # the tool-use turn's thinking did not come back: Anthropic requires it
    return budget


def sampling(body: Mapping[str, Any], version: str, model: str) -> dict[str, Any]:
    """``temperature`` (clamped to Anthropic's 0 to 1) and ``top_p`` as the API version and the model
    take them (DESIGN §14): none from 2026-10-21 on; one of them, temperature first, for Claude 4.1
    and later; both for older models."""
    if version[:10] >= SAMPLING_DROPPED_SINCE:
        return {}
    out: dict[str, Any] = {}
    temperature, top_p = claude_sampling(body, POLICY, model)
    if temperature is not None:
        out["temperature"] = temperature
    if top_p is not None:
        out["top_p"] = top_p
    return out


def translate_request(req: ChatRequest, provider: ProviderConfig, model: str) -> dict[str, Any]:
    """The Anthropic Messages body for an OpenAI chat request."""
    body = req.body
    check(body, POLICY)
    system, turns = convert_messages(body["messages"])
    if not turns:
        raise bad_request("Anthropic needs at least one user or assistant message with content.", param="messages")

    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") \
        or provider.default_max_tokens or DEFAULT_MAX_TOKENS
    out: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": turns}
    tools = _tools(body, turns)
    choice = _tool_choice(body) if tools else None
    budget = _thinking_budget(body, turns)
    if choice is not None and choice["type"] in ("any", "tool"):
        budget = None  # Anthropic refuses thinking with forced tool use; the caller's tool_choice wins
    if budget is not None:
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if max_tokens <= budget:
            out["max_tokens"] = budget + max_tokens  # the caller's limit stays for the visible answer

    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        if response_format.get("type") == "json_schema":
            spec = obj(response_format.get("json_schema"))
            schema = spec.get("schema") or {"type": "object"}
            out["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        elif response_format.get("type") == "json_object":
            system.append({"type": "text", "text": JSON_OBJECT_INSTRUCTION})
    if system:
        out["system"] = system

    stop = stop_sequences(body)
    if stop:
        out["stop_sequences"] = stop
    if tools:
        out["tools"] = tools
        if choice is not None:
            out["tool_choice"] = choice
    user = body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    if budget is None:  # thinking takes no sampling parameters
        out.update(sampling(body, provider.version or DEFAULT_VERSION, model))
    if req.stream:
        out["stream"] = True
    return out


# --- response -----------------------------------------------------------------------------------


def _usage(raw: Any) -> dict[str, Any]:
    raw = raw if isinstance(raw, dict) else {}
    read = count_of(raw, "cache_read_input_tokens")
    created = count_of(raw, "cache_creation_input_tokens")
    # Anthropic's input_tokens leave the cached ones out; OpenAI's prompt_tokens count them.
    prompt = count_of(raw, "input_tokens") + read + created
    cache_seen = "cache_read_input_tokens" in raw or "cache_creation_input_tokens" in raw
    return usage(prompt, count_of(raw, "output_tokens"),
                 cached=read if cache_seen else None, cache_creation=created if cache_seen else None)


def translate_response(message: Mapping[str, Any], created: int | None = None, keep_state: bool = False) -> bytes:
    """An Anthropic message → an OpenAI ``chat.completion`` body; with ``keep_state``, its thinking
    blocks as the pivot's ``reasoning_state`` too."""
    texts: list[str] = []
    reasoning: list[str] = []
    thinking: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    for block in message.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "thinking":
            reasoning.append(block.get("thinking") or "")
            thinking.append(thinking_block(block))
        elif kind == "redacted_thinking":
            thinking.append(thinking_block(block))
        elif kind == "tool_use":
            tool_id = str(block.get("id") or "")
            if not tool_calls and thinking:
                tool_id = attach(tool_id, encode_thinking(thinking))
            tool_calls.append({"id": tool_id, "type": "function", "function": {
                "name": block.get("name"), "arguments": orjson.dumps(block.get("input") or {}).decode()}})
    out_message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not tool_calls else None,
                                   "refusal": None}
    if reasoning:
        out_message["reasoning_content"] = "".join(reasoning)
    if keep_state and thinking:
        out_message[REASONING_STATE] = entries("anthropic", thinking)
    if tool_calls:
        out_message["tool_calls"] = tool_calls
    finish = FINISH_REASONS.get(str(message.get("stop_reason")), "stop")
    return completion(str(message.get("id") or "msg"), str(message.get("model") or ""), out_message, finish,
                      _usage(message.get("usage")), created)


# --- stream -------------------------------------------------------------------------------------


def stream_error(provider: str, data: Mapping[str, Any]) -> UpstreamError:
    """An Anthropic ``error`` event → the failure it stands for."""
    error = obj(data.get("error"))
    kind, status = _STREAM_ERRORS.get(str(error.get("type")), ("server", 502))
    return UpstreamError(kind, status, str(error.get("message") or "Anthropic stream error"),
                         provider=provider, type=str(error.get("type") or "api_error"))


class AnthropicStream(BlockStream):
    """Anthropic's named SSE events → OpenAI chunks (the block bookkeeping is ``BlockStream``'s).

    The first tool call's id carries the thinking that preceded it.
    """

    __slots__ = ("_usage",)
    _wire = "anthropic"

    def __init__(self, provider: str, wants_usage: bool, keep_state: bool = False) -> None:
        super().__init__(provider, wants_usage, keep_state)
        self._usage: dict[str, Any] = {}

    def _pack(self, reasoning: list[dict[str, Any]]) -> bytes:
        return encode_thinking(reasoning)

    def feed(self, event: SseEvent) -> list[bytes]:
        data = load_object(event.data, self._provider, "an event")
        kind = event.event or data.get("type")
        if kind == "content_block_delta":
            delta = data.get("delta")
            if type(delta) is dict and delta.get("type") == "text_delta":  # the common event, first
                text = delta.get("text")
                if not text or type(text) is not str:
                    return []
                self.visible = True
                return [self._chunks.content(text)]
            return self._delta(data)
        if kind == "content_block_start":
            return self._start(data)
        if kind == "content_block_stop":
            return self._stop(data)
        if kind == "message_start":
            message = obj(data.get("message"))
            self._chunks.id = str(message.get("id") or "")
            self._chunks.model = str(message.get("model") or "")
            self._usage.update(obj(message.get("usage")))
            return self._role()
        if kind == "message_delta":
            delta = obj(data.get("delta"))
            self._usage.update(obj(data.get("usage")))  # output_tokens is a running total
            return self._finish(FINISH_REASONS.get(str(delta.get("stop_reason")), "stop"))
        if kind == "message_stop":
            self.visible = True
            return self._end(_usage(self._usage))
        if kind == "error":
            raise stream_error(self._provider, data)
        return []  # ping, and event types newer than this translator

    def _start(self, data: Mapping[str, Any]) -> list[bytes]:
        index = data.get("index")
        block = dict(data.get("content_block") or {})
        kind = block.get("type")
        if not isinstance(index, int):
            return []
        self._blocks[index] = block
        if kind == "text" and block.get("text"):
            self.visible = True
            return [self._chunks.chunk({"content": block["text"]})]
        if kind == "tool_use":
            return self._tool_start(block, str(block.get("id") or ""), block.get("name"))
        if kind == "thinking":
            block.setdefault("thinking", "")
            block.setdefault("signature", "")
        return []

    def _delta(self, data: Mapping[str, Any]) -> list[bytes]:
        delta = obj(data.get("delta"))
        block = self._blocks.get(data.get("index"))  # type: ignore[arg-type]
        kind = delta.get("type")
        if kind == "input_json_delta" and block is not None and block.get("type") == "tool_use":
            return self._tool_arguments(block, delta.get("partial_json") or "")
        if kind == "thinking_delta":
            text = delta.get("thinking") or ""
            if block is not None:
                block["thinking"] = block.get("thinking", "") + text
            return self._reasoning_text(text)
        if kind == "signature_delta" and block is not None:
            block["signature"] = block.get("signature", "") + (delta.get("signature") or "")
        return []

    def _stop(self, data: Mapping[str, Any]) -> list[bytes]:
        block = self._blocks.get(data.get("index"))  # type: ignore[arg-type]
        if block is None:
            return []
        kind = block.get("type")
        if kind in _THINKING_TYPES:
            return self._reasoning_done(thinking_block(block))
        if kind == "tool_use":
            return self._tool_stop(block)
        return []

    def close(self) -> list[bytes]:
        if not self.done:
            raise UpstreamError("server", 502, "Anthropic ended the stream before message_stop.",
                                provider=self._provider)
        return []


