"""OpenAI's shapes as the translating providers (anthropic, vertex, bedrock) read and write them.

Reading: untrusted JSON taken apart without surprises (``obj``, ``items``), caller fields of the
wrong type refused as 400s where a translator reads them (``strings``, ``stop_sequences``,
``tool_name``), base64 ``data:`` URLs, the text of a content value, tool-call arguments as the
object other APIs want, provider state packed into a tool call id and inflated under bounds. Writing: a translated answer must look exactly like OpenAI's — a ``chat.completion`` object,
or ``chat.completion.chunk`` events that share one id, ``created`` and ``model``, carry ``"usage":
null`` while the caller asked for usage, end with exactly one ``choices: []`` usage chunk when it
did, and then ``[DONE]``; embeddings as OpenAI's list. This module owns those rules so each
translator only says what happened.

Pure: no I/O.
"""

from __future__ import annotations

import array
import base64
import sys
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any, Final

import orjson

from ..errors import UnsupportedField, UpstreamError, bad_request
from ..sse import DONE_EVENT, encode


def obj(value: Any) -> dict[str, Any]:
    """A JSON object from untrusted data, or an empty one."""
    return value if isinstance(value, dict) else {}


def items(value: Any) -> list[Any]:
    """A JSON array from untrusted data, or an empty one."""
    return value if isinstance(value, list) else []


# Caller input read by the translators. parse_chat checks the types the gateway itself relies on;
# these check the rest where a translator reads them, so a wrong JSON type is a 400 naming the
# field, never an exception (a 500). Each is one type test on the common path.


def strings(body: Mapping[str, Any], name: str, *, single: bool = False) -> list[str]:
    """``body[name]`` as a list of strings (empty when absent or null); with ``single``, a lone
    string is taken as a one-item list. 400 naming the field for any other value."""
    value = body.get(name)
    if value is None:
        return []
    if type(value) is list and all(type(item) is str for item in value):
        return value
    if single and type(value) is str:
        return [value]
    kind = "a string or an array of strings" if single else "an array of strings"
    raise bad_request(f"'{name}' must be {kind}.", param=name)


def stop_sequences(body: Mapping[str, Any]) -> list[str]:
    """``stop`` as the non-empty sequences it names."""
    return [stop for stop in strings(body, "stop", single=True) if stop]


def tool_name(value: Any, param: str) -> str:
    """A function name the caller sent; 400 naming where it is unless it is a non-empty string."""
    if type(value) is not str or not value:
        raise bad_request(f"'{param}' must be a non-empty string.", param=param)
    return value


# Media types callers write that the providers know under another name (browsers and many
# libraries say image/jpg; Anthropic, Gemini and Bedrock all want image/jpeg).
MEDIA_TYPE_ALIASES: Final = {"image/jpg": "image/jpeg"}


def data_url(url: str) -> tuple[str, str] | None:
    """``(media type, base64 data)`` of a base64 ``data:`` URL, the type lowercased and spelt as the
    providers want it; None for a data: URL that is not base64 or names no type."""
    header, comma, data = url.partition(",")
    if not comma or not header.startswith("data:") or ";base64" not in header:
        return None
    media_type = header[5:].partition(";")[0].strip().lower()
    if not media_type:
        return None
    return MEDIA_TYPE_ALIASES.get(media_type, media_type), data


def image_url(part: Mapping[str, Any]) -> str:
    """The URL of an ``image_url`` content part (an object with ``url``, or the URL alone)."""
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    return str(url or "")


# One OpenAI message (and where it is, `messages[3]`) → the blocks or parts of the upstream's turn.
TurnConverter = Callable[[Mapping[str, Any], str], list[dict[str, Any]]]


def convert_turns(messages: list[Any], label: str, user: TurnConverter, assistant: TurnConverter,
                  tool: TurnConverter, *, assistant_role: str = "assistant",
                  key: str = "content") -> tuple[list[str], list[dict[str, Any]]]:
    """OpenAI messages → (the system and developer texts in order, the upstream's turns).

    Every translated wire wants turns that alternate: a tool result is a user turn, consecutive
    turns of one role are merged into one (``key`` holds the blocks), and a message that converts
    to nothing is left out (the upstreams refuse empty turns; an empty OpenAI message says
    nothing). A role other than the four is 400 naming ``label``.
    """
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        where = f"messages[{i}]"
        if role in ("system", "developer"):
            system.append(text_of(message.get("content")))
            continue
        if role == "user":
            blocks, turn_role = user(message, where), "user"
        elif role == "assistant":
            blocks, turn_role = assistant(message, where), assistant_role
        elif role == "tool":
            blocks, turn_role = tool(message, where), "user"
        else:
            raise UnsupportedField(f"{where}.role", f"Messages of role '{role}' are not supported by {label}.")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == turn_role:
            turns[-1][key].extend(blocks)
        else:
            turns.append({"role": turn_role, key: blocks})
    return system, turns


def load_object(body: bytes, provider: str, what: str = "a body") -> dict[str, Any]:
    """An upstream JSON object; a 502 naming the provider when it is not one."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamError("server", 502, f"Upstream '{provider}' sent {what} that is not JSON.",
                            provider=provider) from None
    if not isinstance(value, dict):
        raise UpstreamError("server", 502, f"Upstream '{provider}' sent {what} that is not a JSON object.",
                            provider=provider)
    return value


def text_of(content: Any) -> str:
    """The text of an OpenAI content value: a string, or the text and refusal parts of a list."""
    if isinstance(content, str):
        return content
    return "".join(str(part.get("text") or part.get("refusal") or "") for part in items(content)
                   if isinstance(part, dict) and part.get("type") in ("text", "refusal"))


def tool_input(arguments: Any) -> dict[str, Any]:
    """``function.arguments`` (a JSON string) as the object other APIs take as a tool's input.

    OpenAI accepts any string here and models do produce broken JSON; such a call is still part
    of a valid conversation, so it is carried as ``{"arguments": <the text>}`` rather than refused.
    """
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        value = orjson.loads(arguments)
    except (orjson.JSONDecodeError, TypeError):
        return {"arguments": str(arguments)}
    return value if isinstance(value, dict) else {"arguments": value}


def pack_state(tag: bytes, blocks: list[dict[str, Any]]) -> bytes:
    """Provider blocks (thinking, reasoning) as compact state for a tool call id, marked by ``tag``."""
    return tag + zlib.compress(orjson.dumps(blocks), 6)


# Packed state comes back from the caller, so it is inflated under bounds (DESIGN §14): one id's
# state at most 4 MiB (a 32k-token thinking block is about 130 KB), all the ids of one request
# together at most 32 MiB. Without them a 1 MB id inflates to a gigabyte.
MAX_STATE_BYTES: Final = 4 * 1024 * 1024
MAX_REQUEST_STATE_BYTES: Final = 32 * 1024 * 1024


class StateBudget:
    """What the packed state of one request may still inflate to, in bytes."""

    __slots__ = ("left",)

    def __init__(self, left: int = MAX_REQUEST_STATE_BYTES) -> None:
        self.left = left


def inflate(data: bytes, param: str, budget: StateBudget | None = None) -> bytes | None:
    """Packed state the caller sent back, inflated under its bounds; None when it is damaged.

    Past ``MAX_STATE_BYTES`` (or what the request's ``budget`` has left) it is a 400 naming
    ``param``: such state was made to be a bomb, not damaged in transit. Every packed state the
    gateway inflates (tool call ids, sealed reasoning items) goes through here.
    """
    limit = MAX_STATE_BYTES if budget is None else min(MAX_STATE_BYTES, budget.left)
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, max(limit, 1))  # a max_length of 0 would mean no bound at all
    except zlib.error:
        return None
    if inflater.unconsumed_tail or len(raw) > limit or (not inflater.eof and len(raw) >= limit):
        if limit < MAX_STATE_BYTES:
            raise bad_request(f"This request carries more than {MAX_REQUEST_STATE_BYTES >> 20} MiB of packed "
                              f"state; '{param}' is past it.", param=param, code="packed_state_too_large")
        raise bad_request(f"'{param}' carries packed state larger than {MAX_STATE_BYTES >> 20} MiB.", param=param,
                          code="packed_state_too_large")
    if budget is not None:
        budget.left -= len(raw)
    if not inflater.eof or inflater.unused_data:
        return None  # truncated, or something after the end
    return raw


def unpack_state(tag: bytes, state: bytes | None, param: str = "messages",
                 budget: StateBudget | None = None) -> list[dict[str, Any]] | None:
    """The blocks packed under ``tag``; None for no state, another provider's, or a damaged one.

    State that would inflate past its bound is a 400 naming ``param`` (the tool call id).
    """
    if not state or not state.startswith(tag):
        return None
    raw = inflate(state[len(tag):], param, budget)
    if raw is None:
        return None
    try:
        blocks = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return blocks if isinstance(blocks, list) and all(isinstance(b, dict) for b in blocks) else None


def embedding_texts(value: Any, provider: str) -> list[str]:
    """``input`` as a list of texts; token arrays are refused where the API embeds text only."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise UnsupportedField("input", f"{provider} embeds text only: 'input' must be a string or an array of strings.")


def floats_to_base64(values: list[float]) -> str:
    """Little-endian float32, base64: what OpenAI returns for encoding_format: base64."""
    packed = array.array("f", values)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def embeddings_to_base64_list(data: list[Any]) -> None:
    """Turn the float-list vectors of OpenAI embedding items into base64, in place."""
    for item in data:
        if isinstance(item, dict) and isinstance(item.get("embedding"), list):
            item["embedding"] = floats_to_base64(item["embedding"])


def embeddings(vectors: list[list[float]], model: str, tokens: int, as_base64: bool) -> bytes:
    """OpenAI's embeddings list, vectors in input order, packed as base64 when asked."""
    data = [{"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(vectors)]
    if as_base64:
        embeddings_to_base64_list(data)
    return orjson.dumps({"object": "list", "data": data, "model": model,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def usage(prompt: int, completion: int, *, cached: int | None = None, cache_creation: int | None = None,
          reasoning: int | None = None) -> dict[str, Any]:
    """OpenAI's usage object; ``prompt`` already includes cached tokens (OpenAI counts them in).

    Cache reads are OpenAI's ``prompt_tokens_details.cached_tokens``. OpenAI has no field for cache
    writes, so they go beside its own fields under Anthropic's name, ``cache_creation_input_tokens``
    (as other OpenAI-compatible gateways report them), never into ``prompt_tokens_details``, whose
    keys OpenAI defines. Both appear whenever the provider reported its cache counts.
    """
    result: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                              "total_tokens": prompt + completion}
    if cached is not None or cache_creation is not None:
        result["prompt_tokens_details"] = {"cached_tokens": cached or 0}
    if cache_creation is not None:
        result["cache_creation_input_tokens"] = cache_creation
    if reasoning is not None:
        result["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return result


def completion(completion_id: str, model: str, message: dict[str, Any], finish_reason: str,
               usage_: Mapping[str, Any] | None, created: int | None = None) -> bytes:
    """A whole ``chat.completion`` body with one choice."""
    return orjson.dumps({
        "id": completion_id, "object": "chat.completion",
        "created": int(time.time()) if created is None else created, "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage_,
    })


class ChunkEncoder:
    """Encodes the chunks of one translated stream with the fields every chunk must share.

    Every chunk starts with the same id, created and model, so those bytes are made once (again
    only when one of them changes) and each chunk encodes just its delta: the bytes are the
    same as ``orjson.dumps`` of the whole chunk, at a third of the cost.
    """

    __slots__ = ("_created", "_head", "_id", "_model", "wants_usage")

    def __init__(self, wants_usage: bool, created: int | None = None) -> None:
        self.wants_usage = wants_usage
        self._created = int(time.time()) if created is None else created
        self._id = ""
        self._model = ""
        self._head: bytes | None = None

    @property
    def id(self) -> str:
        return self._id

    @id.setter
    def id(self, value: str) -> None:
        if value != self._id:
            self._id, self._head = value, None

    @property
    def model(self) -> str:
        return self._model

    @model.setter
    def model(self, value: str) -> None:
        if value != self._model:
            self._model, self._head = value, None

    @property
    def created(self) -> int:
        return self._created

    def chunk(self, delta: Mapping[str, Any], finish_reason: str | None = None, index: int = 0) -> bytes:
        """One ``chat.completion.chunk`` event for one choice."""
        return b"".join((self._head or self._make_head(), b"%d" % index, b',"delta":', orjson.dumps(delta),
                         b',"logprobs":null,"finish_reason":',
                         b"null" if finish_reason is None else orjson.dumps(finish_reason), self._tail()))

    def content(self, text: str, index: int = 0) -> bytes:
        """``chunk({"content": text}, index=index)``: the chunk almost every event of a stream is."""
        return b"".join((self._head or self._make_head(), b"%d" % index, b',"delta":{"content":', orjson.dumps(text),
                         b'},"logprobs":null,"finish_reason":null', self._tail()))

    def _make_head(self) -> bytes:
        self._head = (b'data: {"id":' + orjson.dumps(self._id) + b',"object":"chat.completion.chunk","created":'
                      + b"%d" % self._created + b',"model":' + orjson.dumps(self._model) + b',"choices":[{"index":')
        return self._head

    def _tail(self) -> bytes:
        # As OpenAI: usage is null on every chunk but the last, when the caller asked for it.
        return b'}],"usage":null}\n\n' if self.wants_usage else b"}]}\n\n"

    def end(self, usage_: Mapping[str, Any] | None) -> list[bytes]:
        """The closing events: the usage chunk when the caller asked for it, then ``[DONE]``."""
        if not self.wants_usage:
            return [DONE_EVENT]
        body = {"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model,
                "choices": [], "usage": usage_}
        return [encode(orjson.dumps(body)), DONE_EVENT]
