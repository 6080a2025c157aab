"""OpenAI Responses (``/v1/responses``), through the pivot for every provider type (DESIGN §12).

A Responses body becomes a chat request (``ResponsesRequest``, the pivot plus what the answer must
echo and name back); the pivot's answer becomes a Response object, and its stream is re-encoded by
``ResponsesStream``, a state machine fed pivot chunks that emits OpenAI's event grammar with
``sequence_number``s. ``response.created`` / ``in_progress`` come out with the first visible chunk,
so they are held with the commit point like everything before it (DESIGN §14).

A provider that speaks Responses itself gets the caller's body instead (``ChatRequest.native``,
less the gateway's own state: ``native.py``) and its stream relayed as it came; past the commit
point a broken native stream ends with ``native_failed``'s ``response.failed``.

Stored conversations are ``conversations.py``'s (the chain before a follow-up arrives here already
in ``input``). Reasoning items, in answers, streams and input, are ``reasoning.py``'s (their state
sealed by ``sealed.py``). Hosted tools (``web_search``, …) exist only at OpenAI: dropped when
``tool_choice`` does not force them, 400 when it does. This module does no I/O.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from .. import limits
from ..errors import GatewayError, bad_request
from ..providers import ChatRequest, StreamDecoder
from ..providers.contract import NativeStream
from ..sse import encode
from . import DialectPath, native
from .chat import _OPENAI_PREFIXES, parse_chat
from .reasoning import KeptReasoning, StreamedReasoning, answer_item, asks_state, stream_delta
from .streams import ChunkStream

# Tools only OpenAI runs itself: no other provider has them.
HOSTED_TOOLS: Final = frozenset({
    "web_search", "web_search_2025_08_26", "web_search_preview", "web_search_preview_2025_03_11",
    "file_search", "code_interpreter", "mcp", "image_generation", "computer", "computer_use_preview",
    "local_shell", "shell", "apply_patch", "tool_search", "programmatic_tool_calling",
})
# What a Codex `custom` tool becomes for a provider without free-form tools (DESIGN §14).
_CUSTOM_PARAMETERS: Final = {"type": "object", "properties": {"input": {"type": "string"}},
                             "required": ["input"], "additionalProperties": False}
_ROLES: Final = {"user": "user", "assistant": "assistant", "system": "system",
                 # Not every provider type takes `developer`; it means what `system` means to them.
                 "developer": "system"}
# Fields with no pivot counterpart, dropped (the field policy, DESIGN §7): they change nothing the
# caller gets back (metadata, caching hints, identifiers, what to include of state not kept here).
# `store` is the HTTP layer's business (stored.py), `previous_response_id` too: by the parse, a
# follow-up's conversation is in its input.
_DROPPED: Final = frozenset({
    "metadata", "safety_identifier", "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options",
    "include", "truncation", "client_metadata", "store", "service_tier", "max_tool_calls",
    "stream_options", "context_management", "moderation", "previous_response_id",
})
# The namespaced name a provider sees: joined so the pair comes back through the table, not by splitting.
NAMESPACE_SEPARATOR: Final = "__"


@dataclass(frozen=True, slots=True)
class ResponsesRequest(ChatRequest):
    """The pivot of a Responses body, with what its answer needs: the caller's fields to echo, the
    function names that stand for custom tools, the flattened names of namespaced tools, and the
    key that seals and unseals reasoning state (when the body needs it)."""

    echo: Mapping[str, Any] = field(default_factory=dict)
    custom: frozenset[str] = frozenset()
    namespaced: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # flat name → (namespace, name)
    reasoning_key: bytes | None = field(default=None, repr=False)

    @property
    def sealing_key(self) -> bytes | None:
        """The key answers seal reasoning state with: only when the caller asked for that state."""
        return self.reasoning_key if self.wants_reasoning_state else None


def _text_of(content: Any, where: str) -> str:
    """The text of an output (a string, or parts of which the text ones count)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content
                       if isinstance(part, dict) and part.get("type") in ("input_text", "output_text", "text"))
    raise bad_request(f"'{where}' must be a string or an array of parts.", param=where)


def _part(part: Any, where: str) -> dict[str, Any]:
    """One input content part → the pivot's part."""
    if not isinstance(part, dict):
        raise bad_request(f"'{where}' must be an object.", param=where)
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        text = part.get("text")
        if not isinstance(text, str):
            raise bad_request(f"'{where}.text' must be a string.", param=f"{where}.text")
        return {"type": "text", "text": text}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise bad_request(f"'{where}': only images given by 'image_url' (a URL or a data: URL) are supported; "
                              "'file_id' needs the provider's file store.", param=f"{where}.image_url")
        image: dict[str, Any] = {"url": url}
        detail = part.get("detail")
        if detail in ("low", "high", "auto"):
            image["detail"] = detail
        elif detail == "original":
            image["detail"] = "high"
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        if part.get("file_url") is not None:
            raise bad_request(f"'{where}.file_url' is not supported; send the file as 'file_data'.",
                              param=f"{where}.file_url")
        file = {name: part[name] for name in ("file_data", "file_id", "filename") if part.get(name) is not None}
        return {"type": "file", "file": file}
    raise bad_request(f"'{where}': content parts of type {kind!r} are not supported.", param=f"{where}.type")


def _message(item: Mapping[str, Any], where: str) -> dict[str, Any]:
    role = _ROLES.get(item.get("role"))  # type: ignore[arg-type]
    if role is None:
        raise bad_request(f"'{where}.role' must be one of user, assistant, system, developer.", param=f"{where}.role")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise bad_request(f"'{where}.content' must be a string or an array of parts.", param=f"{where}.content")
    if role != "user":
        # Assistant, system and developer turns are text: one string, as every provider takes it.
        refusal = "".join(str(p.get("refusal", "")) for p in content if isinstance(p, dict) and p.get("type") == "refusal")
        text = _text_of(content, f"{where}.content")
        return {"role": role, "content": text or refusal}
    return {"role": role, "content": [_part(part, f"{where}.content[{i}]") for i, part in enumerate(content)]}


def _flat_name(item: Mapping[str, Any]) -> str:
    name = str(item.get("name") or "")
    namespace = item.get("namespace")
    return f"{namespace}{NAMESPACE_SEPARATOR}{name}" if isinstance(namespace, str) and namespace else name


def _messages(body: Mapping[str, Any], kept: KeptReasoning) -> list[dict[str, Any]]:
    """``instructions`` and ``input`` → the pivot's messages; reasoning items with state go to ``kept``."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise bad_request("'instructions' must be a string.", param="instructions")
        messages.append({"role": "system", "content": instructions})
    value = body.get("input")
    if isinstance(value, str):
        messages.append({"role": "user", "content": value})
        return messages
    if not isinstance(value, list) or not value:
        raise bad_request("'input' is required: a string or a non-empty array of items.", param="input")
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"'{where}' must be an object.", param=where)
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, where))
        elif kind in ("function_call", "custom_tool_call"):
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise bad_request(f"'{where}.call_id' is required.", param=f"{where}.call_id")
            if kind == "function_call":
                arguments = item.get("arguments")
                if not isinstance(arguments, str):
                    raise bad_request(f"'{where}.arguments' must be a JSON string.", param=f"{where}.arguments")
            else:
                arguments = orjson.dumps({"input": str(item.get("input", ""))}).decode()
            call = {"id": call_id, "type": "function", "function": {"name": _flat_name(item), "arguments": arguments}}
            last = messages[-1] if messages else None
            # Consecutive calls are one assistant turn, with the text that came before them.
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise bad_request(f"'{where}.call_id' is required.", param=f"{where}.call_id")
            messages.append({"role": "tool", "tool_call_id": call_id,
                             "content": _text_of(item.get("output", ""), f"{where}.output")})
        elif kind == "reasoning":
            kept.item(item, where, messages)
        elif kind == "item_reference":
            raise bad_request(f"'{where}': item references are not supported; send the items themselves, or "
                              "continue a stored response with 'previous_response_id'.", param=where)
        else:
            raise bad_request(f"'{where}': input items of type {kind!r} are not supported.", param=f"{where}.type")
    return messages


def _function(name: str, tool: Mapping[str, Any], parameters: Any) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if tool.get("description") is not None:
        function["description"] = tool["description"]
    if parameters is not None:
        function["parameters"] = parameters
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _forced(choice: Any) -> str | None:
    """The tool type ``tool_choice`` forces, if it names one."""
    return str(choice.get("type")) if isinstance(choice, dict) else None


def _tools(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]], frozenset[str], dict[str, tuple[str, str]]]:
    """The caller's tools as pivot functions, the names that stand for custom tools, and the flattened
    namespaced names."""
    tools = body.get("tools")
    if tools is None:
        return [], frozenset(), {}
    if not isinstance(tools, list):
        raise bad_request("'tools' must be an array.", param="tools")
    out: list[dict[str, Any]] = []
    custom: set[str] = set()
    namespaced: dict[str, tuple[str, str]] = {}
    forced = _forced(body.get("tool_choice"))

    def add(tool: Any, where: str, namespace: str | None) -> None:
        if not isinstance(tool, dict):
            raise bad_request(f"'{where}' must be an object.", param=where)
        kind = tool.get("type")
        name = tool.get("name")
        if kind in HOSTED_TOOLS:
            if forced == kind:
                raise bad_request(f"'tool_choice' forces the hosted tool {kind!r}, which only OpenAI runs; this "
                                  "model's provider cannot.", param="tool_choice")
            return  # only OpenAI runs it; the model answers without it
        if kind == "namespace":
            if namespace is not None or not isinstance(name, str) or not isinstance(tool.get("tools"), list):
                raise bad_request(f"'{where}': a namespace tool needs a 'name' and an array of 'tools'.", param=where)
            for j, inner in enumerate(tool["tools"]):
                add(inner, f"{where}.tools[{j}]", name)
            return
        if not isinstance(name, str) or not name:
            raise bad_request(f"'{where}.name' is required.", param=f"{where}.name")
        flat = f"{namespace}{NAMESPACE_SEPARATOR}{name}" if namespace is not None else name
        if namespace is not None:
            namespaced[flat] = (namespace, name)
        if kind == "function":
            out.append(_function(flat, tool, tool.get("parameters")))
        elif kind == "custom":
            custom.add(flat)
            out.append(_function(flat, tool, _CUSTOM_PARAMETERS))
        elif isinstance(tool.get("parameters"), dict):
            out.append(_function(flat, tool, tool["parameters"]))  # an unknown type with a schema
        else:
            raise bad_request(f"'{where}': tools of type {kind!r} are not supported.", param=f"{where}.type")

    for i, tool in enumerate(tools):
        add(tool, f"tools[{i}]", None)
    return out, frozenset(custom), namespaced


def _tool_choice(choice: Any) -> Any:
    if choice is None or choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") in ("function", "custom") and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": _flat_name(choice)}}
    raise bad_request("'tool_choice' must be none, auto, required, or a function or custom tool by name.",
                      param="tool_choice")


def _response_format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise bad_request("'text' must be an object.", param="text")
    spec = text.get("format")
    if spec is None or (isinstance(spec, dict) and spec.get("type") == "text"):
        return None
    if isinstance(spec, dict) and spec.get("type") == "json_object":
        return {"type": "json_object"}
    if isinstance(spec, dict) and spec.get("type") == "json_schema":
        if not isinstance(spec.get("name"), str) or not isinstance(spec.get("schema"), dict):
            raise bad_request("'text.format' of type json_schema needs a 'name' and a 'schema'.", param="text.format")
        schema = {name: spec[name] for name in ("name", "schema", "strict", "description") if spec.get(name) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise bad_request("'text.format.type' must be text, json_object or json_schema.", param="text.format")


# The fields echoed in the Response, with the value each has when the caller sent none (A.5).
_ECHOED: Final[tuple[tuple[str, Any], ...]] = (
    ("instructions", None), ("tool_choice", "auto"), ("parallel_tool_calls", True), ("temperature", 1.0),
    ("top_p", 1.0), ("max_output_tokens", None), ("metadata", {}), ("text", {"format": {"type": "text"}}),
    ("reasoning", {"effort": None, "summary": None}), ("store", False), ("truncation", "disabled"),
    ("user", None), ("prompt_cache_key", None), ("safety_identifier", None),
)


def _echo(body: Mapping[str, Any], previous: str | None, stored: bool) -> dict[str, Any]:
    echo = {name: body[name] if body.get(name) is not None else default for name, default in _ECHOED}
    echo["store"] = stored  # what the gateway does, whatever the caller asked
    echo["previous_response_id"] = previous
    tools = []
    for tool in body.get("tools") or ():
        if isinstance(tool, dict) and tool.get("type") == "function":
            tool = {"parameters": None, "strict": None, **tool}  # the schema requires both, nullable
        tools.append(tool)
    echo["tools"] = tools
    return echo


def parse_responses(body: dict[str, Any], headers: Mapping[str, str], key: bytes | None = None, *,
                    previous: str | None = None, stored: bool = False) -> ResponsesRequest:
    """A ``POST /v1/responses`` body → the pivot, with what its answer echoes; 400 in OpenAI's shape.
    ``key`` seals and unseals reasoning state (``reasoning.needs_key`` says when the body needs it);
    ``previous``: the stored response a follow-up continues (its conversation already in ``input``);
    ``stored``: whether the answer will be stored."""
    if body.get("conversation") is not None:
        raise bad_request("'conversation' objects are not supported; continue a stored response with "
                          "'previous_response_id'.", param="conversation")
    if body.get("background") is True:
        raise bad_request("'background' responses are not supported.", param="background")
    if body.get("top_logprobs"):
        raise bad_request("'top_logprobs' is not supported on /v1/responses.", param="top_logprobs")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean.", param="stream")
    tools, custom, namespaced = _tools(body)
    kept = KeptReasoning(key)
    pivot: dict[str, Any] = {"model": body.get("model"), "messages": _messages(body, kept)}
    for name in ("temperature", "top_p", "user"):
        if body.get(name) is not None:
            pivot[name] = body[name]
    if body.get("max_output_tokens") is not None:
        pivot["max_tokens"] = body["max_output_tokens"]
    if tools:
        pivot["tools"] = tools
        if body.get("parallel_tool_calls") is not None:
            pivot["parallel_tool_calls"] = body["parallel_tool_calls"]
        if body.get("tool_choice") is not None:
            pivot["tool_choice"] = _tool_choice(body["tool_choice"])
    response_format = _response_format(body.get("text"))
    if response_format is not None:
        pivot["response_format"] = response_format
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        pivot["reasoning_effort"] = reasoning["effort"]
    if stream:
        pivot["stream"] = True
        pivot["stream_options"] = {"include_usage": True}  # response.completed carries the usage
    checked = parse_chat(pivot, headers)
    kept.attach()  # after parse_chat, which refuses the pivot's extension from any caller
    return ResponsesRequest(checked.body, checked.stream, checked.wants_usage, checked.headers,
                            native=native.responses_body(body), echo=_echo(body, previous, stored), custom=custom,
                            namespaced=namespaced, wants_reasoning_state=key is not None and asks_state(body),
                            reasoning_key=key)


def new_id(prefix: str) -> str:
    """An id the gateway makes: ``prefix`` + 24 hex digits from the CSPRNG (DESIGN §12, §14)."""
    return prefix + secrets.token_hex(12)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def usage_of(usage: Any) -> dict[str, Any]:
    """The pivot's usage → a Response's, every counter present (0 where the provider gave none)."""
    usage = usage if isinstance(usage, dict) else {}
    prompt = usage.get("prompt_tokens_details")
    completion = usage.get("completion_tokens_details")
    prompt = prompt if isinstance(prompt, dict) else {}
    completion = completion if isinstance(completion, dict) else {}
    input_tokens, output_tokens = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": _count(prompt.get("cached_tokens")),
                                 "cache_write_tokens": _count(usage.get("cache_creation_input_tokens"))},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": _count(completion.get("reasoning_tokens"))},
        "total_tokens": _count(usage.get("total_tokens")) or input_tokens + output_tokens,
    }


def _status(finish_reason: Any) -> tuple[str, dict[str, str] | None]:
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def response_object(req: ResponsesRequest, response_id: str, created_at: int, model: str, status: str,
                    output: list[dict[str, Any]], usage: dict[str, Any] | None,
                    incomplete: dict[str, str] | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
    """A whole Response object (A.5): every field the schema requires, the caller's fields echoed."""
    out: dict[str, Any] = {"id": response_id, "object": "response", "created_at": created_at, "status": status,
                           "completed_at": int(time.time()) if status == "completed" else None,
                           "error": error, "incomplete_details": incomplete, "model": model, "output": output}
    out.update(req.echo)
    out["usage"] = usage
    return out


def _text_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def _call_item(req: ResponsesRequest, call_id: str, flat: str, arguments: str) -> dict[str, Any]:
    """A pivot tool call → a ``function_call`` item, or the ``custom_tool_call`` it stands for."""
    namespace, name = req.namespaced.get(flat, (None, flat))
    if flat in req.custom:
        try:
            parsed = orjson.loads(arguments or "{}")
        except orjson.JSONDecodeError:
            parsed = None
        value = parsed.get("input") if isinstance(parsed, dict) else None
        item = {"id": new_id("ctc_"), "type": "custom_tool_call", "status": "completed", "call_id": call_id,
                "name": name, "input": value if isinstance(value, str) else arguments}
    else:
        item = {"id": new_id("fc_"), "type": "function_call", "status": "completed", "call_id": call_id,
                "name": name, "arguments": arguments}
    if namespace is not None:
        item["namespace"] = namespace
    return item


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _request_of(req: ChatRequest) -> ResponsesRequest:
    if not isinstance(req, ResponsesRequest):  # only this dialect's parse makes the requests it is handed
        raise TypeError("a Responses answer needs the request its parse made")
    return req


def response_answer(req: ChatRequest, answer: bytes) -> bytes:
    """A ``chat.completion`` body → a Response object."""
    request = _request_of(req)
    parsed = orjson.loads(answer)
    choices = parsed.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = _obj(choice.get("message"))
    status, incomplete = _status(choice.get("finish_reason"))
    reasoning = answer_item(message, new_id("rs_"), request.sealing_key)
    output: list[dict[str, Any]] = [reasoning] if reasoning is not None else []
    content = message.get("content")
    if isinstance(content, str) and content:
        output.append(_text_item(new_id("msg_"), content, status))
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            output.append(_call_item(request, str(call.get("id") or new_id("call_")), str(function.get("name") or ""),
                                     str(function.get("arguments") or "")))
    created = parsed.get("created")
    return orjson.dumps(response_object(
        request, new_id("resp_"), created if isinstance(created, int) else int(time.time()),
        str(parsed.get("model") or request.body.get("model")), status, output, usage_of(parsed.get("usage")),
        incomplete))


class ResponsesStream(ChunkStream):
    """Re-encodes the pivot's chunks, one attempt's stream, as OpenAI's Responses events (A.6, A.12).

    Nothing comes out before the first visible chunk: ``response.created`` and ``in_progress``
    come with it, so they are held with the commit point. A message item opens on the first text, a
    function call item on a call's first fragment (closing the item before it); everything closes,
    and the one terminal event goes out, when the pivot stream ends, after its usage chunk.
    """

    def __init__(self, req: ResponsesRequest, inner: StreamDecoder) -> None:
        super().__init__(req, inner)
        self._req = req
        self.response_id = new_id("resp_")
        self.sequence = 0  # the next event's sequence_number
        self._created_at = int(time.time())
        self._output: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None  # the item being streamed: its index and state
        self._calls: dict[int, dict[str, Any]] = {}  # pivot tool call index → its open state
        self._finish: Any = None
        self._pivot_usage: Any = None
        self.final: dict[str, Any] | None = None  # the Response the terminal event carried

    def _event(self, out: list[bytes], kind: str, **fields: Any) -> None:
        fields = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        out.append(encode(orjson.dumps(fields), kind))

    def response(self, status: str, usage: dict[str, Any] | None = None, incomplete: dict[str, str] | None = None,
                 error: dict[str, Any] | None = None) -> dict[str, Any]:
        """The Response as it stands."""
        return response_object(self._req, self.response_id, self._created_at, self._model, status,
                               list(self._output), usage, incomplete, error)

    def _start(self, out: list[bytes]) -> None:
        if not self._started:
            self._started = True
            self._event(out, "response.created", response=self.response("in_progress"))
            self._event(out, "response.in_progress", response=self.response("in_progress"))

    def _choice(self, delta: Mapping[str, Any], out: list[bytes]) -> None:
        thought, state = stream_delta(delta)
        if thought or state:
            self._reasoning(thought, state, out)
        text = delta.get("content")
        if isinstance(text, str) and text:
            self._text(text, out)
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                self._call(call, out)

    def _text(self, text: str, out: list[bytes]) -> None:
        self._start(out)
        state = self._open
        if state is None or state["kind"] != "message":
            self._close_item(out)
            item_id = new_id("msg_")
            state = self._open = {"kind": "message", "id": item_id, "index": len(self._output), "text": []}
            self._output.append({"id": item_id, "type": "message", "status": "in_progress", "role": "assistant",
                                 "content": []})
            self._event(out, "response.output_item.added", output_index=state["index"], item=self._output[-1])
            self._event(out, "response.content_part.added", item_id=item_id, output_index=state["index"],
                        content_index=0, part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})
        state["text"].append(text)
        self._event(out, "response.output_text.delta", item_id=state["id"], output_index=state["index"],
                    content_index=0, delta=text, logprobs=[])

    def _reasoning(self, text: str, state: list[Any], out: list[bytes]) -> None:
        self._start(out)
        if self._open is None or self._open["kind"] != "reasoning":
            self._close_item(out)
            item = StreamedReasoning(new_id("rs_"), len(self._output))
            self._open = {"kind": "reasoning", "index": item.index, "id": item.id, "item": item}
            self._output.append(item.added())
            self._event(out, "response.output_item.added", output_index=item.index, item=item.added())
        for kind, fields in self._open["item"].feed(text, state):
            self._event(out, kind, **fields)

    def _call(self, call: Mapping[str, Any], out: list[bytes]) -> None:
        index = call.get("index", 0)
        function = _obj(call.get("function"))
        fragment = function.get("arguments")
        fragment = fragment if isinstance(fragment, str) else ""
        state = self._calls.get(index)
        if state is None:
            self._start(out)
            self._close_item(out)
            flat = str(function.get("name") or "")
            namespace, name = self._req.namespaced.get(flat, (None, flat))
            custom = flat in self._req.custom
            item: dict[str, Any] = {"id": new_id("ctc_" if custom else "fc_"),
                                    "type": "custom_tool_call" if custom else "function_call",
                                    "status": "in_progress", "call_id": str(call.get("id") or new_id("call_")),
                                    "name": name}
            item["input" if custom else "arguments"] = ""
            if namespace is not None:
                item["namespace"] = namespace
            state = self._calls[index] = self._open = {"kind": "call", "custom": custom, "flat": flat,
                                                       "index": len(self._output), "id": item["id"],
                                                       "call_id": item["call_id"], "arguments": []}
            self._output.append(item)
            self._event(out, "response.output_item.added", output_index=state["index"], item=dict(item))
        if not fragment:
            return
        state["arguments"].append(fragment)
        if not state["custom"] and state is self._open:
            # A custom call's input is the JSON's one field: it goes out whole when the call closes.
            self._event(out, "response.function_call_arguments.delta", item_id=state["id"],
                        output_index=state["index"], delta=fragment)

    def _close_item(self, out: list[bytes]) -> None:
        state = self._open
        if state is None:
            return
        self._open = None
        index, item_id = state["index"], state["id"]
        status = "incomplete" if self._finish == "length" else "completed"
        if state["kind"] == "message":
            text = "".join(state["text"])
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            self._event(out, "response.output_text.done", item_id=item_id, output_index=index, content_index=0,
                        text=text, logprobs=[])
            self._event(out, "response.content_part.done", item_id=item_id, output_index=index, content_index=0,
                        part=part)
            item = self._output[index] = _text_item(item_id, text, status)
        elif state["kind"] == "reasoning":
            events, item = state["item"].close(self._req.sealing_key)
            for kind, fields in events:
                self._event(out, kind, **fields)
            self._output[index] = item
        else:
            arguments = "".join(state["arguments"])
            final = _call_item(self._req, state["call_id"], state["flat"], arguments)
            final["id"] = item_id
            if state["custom"]:
                self._event(out, "response.custom_tool_call_input.delta", item_id=item_id, output_index=index,
                            delta=final["input"])
                self._event(out, "response.custom_tool_call_input.done", item_id=item_id, output_index=index,
                            input=final["input"])
            else:
                self._event(out, "response.function_call_arguments.done", item_id=item_id, output_index=index,
                            name=final["name"], arguments=arguments)
            item = self._output[index] = final
        self._event(out, "response.output_item.done", output_index=index, item=item)

    def _finish_stream(self, out: list[bytes]) -> None:
        self._start(out)
        self._close_item(out)  # every item before the open one was closed when the next opened
        status, incomplete = _status(self._finish)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        self.final = self.response(status, usage_of(self._pivot_usage), incomplete)
        self._event(out, kind, response=self.final)
        self.done = True

    def failed(self, error: GatewayError) -> bytes:
        """The terminal ``response.failed`` event for an error past the commit point."""
        out: list[bytes] = []
        self._start(out)
        self._event(out, "response.failed", response=self.response(
            "failed", usage_of(self._pivot_usage), None, {"code": _failure_code(error), "message": error.message}))
        self.done = True
        return b"".join(out)


class Responses:
    """OpenAI Responses, through the pivot for every provider type."""

    __slots__ = ()
    name = "responses"
    prefixes = _OPENAI_PREFIXES
    paths: tuple[DialectPath, ...] = (
        DialectPath("POST", "/v1/responses", "respond"),
        DialectPath("GET", "/v1/responses", "upgrade"),
        DialectPath("GET", "/v1/responses/{id}", "stored"),
        DialectPath("DELETE", "/v1/responses/{id}", "forget"),
        DialectPath("GET", "/v1/responses/{id}/input_items", "stored_input"),
    )
    is_pivot = False
    request_id_headers: tuple[str, ...] = ()

    def parse(self, body: dict[str, Any], headers: Mapping[str, str]) -> ChatRequest:
        return parse_responses(body, headers)

    def encode_answer(self, req: ChatRequest, answer: bytes) -> bytes:
        return response_answer(req, answer)

    def encode_stream(self, req: ChatRequest, decoder: StreamDecoder) -> StreamDecoder:
        return ResponsesStream(_request_of(req), decoder)

    def error_status(self, error: GatewayError) -> int:
        return error.status

    def error_body(self, error: GatewayError) -> bytes:
        return error.body()

    # The rate-limit headers its clients read, as the function itself (no call per answer).
    rate_limit_headers = staticmethod(limits.openai_headers)

    def error_event(self, error: GatewayError, stream: StreamDecoder | None = None) -> bytes:
        if isinstance(stream, ResponsesStream):
            return stream.failed(error)
        if isinstance(stream, NativeStream):
            return native_failed(stream, error)
        # No stream state to end (an error of the gateway's own): OpenAI's `error` event.
        return encode(orjson.dumps({"type": "error", "sequence_number": 0, "code": error.code,
                                    "message": error.message, "param": error.param}), "error")


def native_failed(stream: NativeStream, error: GatewayError) -> bytes:
    """A native stream broken past its commit point: ``response.failed`` with the upstream's Response
    as ``response.created`` announced it (its id among it) and the next ``sequence_number``."""
    response = {**(stream.opening or {}), "status": "failed", "completed_at": None,
                "error": {"code": _failure_code(error), "message": error.message}}
    response.setdefault("id", stream.response_id or new_id("resp_"))
    event = {"type": "response.failed", "sequence_number": stream.sequence, "response": response}
    stream.sequence += 1
    stream.done = True
    return encode(orjson.dumps(event), "response.failed")


def _failure_code(error: GatewayError) -> str:
    """A failed Response's ``error.code`` for the gateway's own failures (A.5's codes)."""
    return "rate_limit_exceeded" if error.status == 429 else "server_error"


def upgrade_refused() -> GatewayError:
    """A WebSocket upgrade on /v1/responses: 426, so clients such as Codex use HTTP at once (A.9)."""
    return GatewayError(426, "WebSocket mode is not supported on this gateway; use HTTP POST /v1/responses.",
                        code="websocket_not_supported")


RESPONSES: Final = Responses()
