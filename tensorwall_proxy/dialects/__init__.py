"""The Dialect contract (DESIGN §12): what a front door owns, and nothing the relay needs to know.

A dialect is one API a caller may speak to the gateway. It owns its paths, the parsing of a caller's
body into the pivot (OpenAI's chat request, ``ChatRequest``), the encoding of the pivot's answer and
of its stream events back into its own shape, and the shape of its errors. The relay plans,
attempts and streams the pivot and hands the caller's side to the dialect the request came with;
outside this package no code knows which dialect a request came in.

A dialect is a module-level singleton: nothing is constructed per request. Modules here do no I/O
and import no aiohttp.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, Protocol

from ..errors import GatewayError
from ..limits import Verdict
from ..providers import ChatRequest
from ..providers import StreamDecoder as StreamDecoder

# What the HTTP layer does on a dialect's path:
#   pivot       the body is parsed into the pivot and relayed like any chat request
#   embeddings  OpenAI's embeddings (the body parsed by the dialect, relayed as embeddings)
#   models      the list of models the gateway serves, in the dialect's shape
#   model       one of them, named by the path's {model}
#   respond     as pivot, with Responses' state: the answer kept in the state store to be continued
#               by its id (`store`, `previous_response_id`), and the body parsed with the gateway's
#               reasoning key when it carries or asks for sealed reasoning state
#   upgrade     a WebSocket upgrade, answered 426 (clients then use HTTP); any other GET, 405
#   stored      a kept answer by the path's {id}: GET
#   forget      a kept answer by the path's {id}: DELETE
#   stored_input  the input a kept answer by the path's {id} was made from, one page
#   count       the input tokens a body would use (Anthropic's count_tokens), estimated
Operation = Literal["pivot", "respond", "embeddings", "models", "model", "upgrade", "stored", "forget",
                    "stored_input", "count"]


class DialectPath(NamedTuple):
    """One path a dialect serves: an aiohttp route pattern (``{model:.+}`` takes slashes)."""

    method: str
    path: str
    operation: Operation


class Dialect(Protocol):
    """One front door. Every method is pure; the relay calls them through the request's dialect."""

    name: str  # as a provider's `dialects:` names it (DESIGN §14): chat, completions, responses, messages
    # Path prefixes whose unknown paths this dialect answers (404 in its error shape); the longest wins.
    prefixes: tuple[str, ...]
    paths: tuple[DialectPath, ...]
    # True when the dialect's shape is the pivot's own (chat): answers and events go to the caller as
    # the provider translator made them, and the encode_* methods are never called.
    is_pivot: bool
    # Headers besides x-request-id that carry the request id on every response of this door.
    request_id_headers: tuple[str, ...]

    def parse(self, body: dict[str, Any], headers: Mapping[str, str]) -> ChatRequest:
        """A caller's JSON body → the pivot; 400 in this dialect's shape for what the gateway relies on."""
        ...

    def encode_answer(self, req: ChatRequest, answer: bytes) -> bytes:
        """The pivot's whole answer (an OpenAI ``chat.completion`` body) → this dialect's body."""
        ...

    def encode_stream(self, req: ChatRequest, decoder: StreamDecoder) -> StreamDecoder:
        """A decoder yielding this dialect's events from one yielding the pivot's chunks (one per attempt)."""
        ...

    def error_status(self, error: GatewayError) -> int:
        """An error response's status on this door (most keep ``error.status``)."""
        ...

    def error_body(self, error: GatewayError) -> bytes:
        """An error response's body in this dialect's shape."""
        ...

    def error_event(self, error: GatewayError, stream: StreamDecoder | None = None) -> bytes:
        """An error past the commit point: the one stream event that ends the stream. ``stream`` is
        the decoder ``encode_stream`` made for the attempt, when there is one (its events so far)."""
        ...

    def rate_limit_headers(self, verdict: Verdict) -> dict[str, str]:
        """A principal's limits as the rate-limit headers this door's clients read (DESIGN §13)."""
        ...


@dataclass(frozen=True, slots=True)
class Catalog:
    """The models the gateway serves, as every dialect lists them: route names, then
    ``<provider>/<model>`` for each id under a provider's ``models:``; built once per table."""

    owners: Mapping[str, str]  # model id → the provider that owns it, in listing order
    created: int  # when the table was built (Unix seconds): every model's `created`


def catalog(routes: Mapping[str, str], provider_models: Mapping[str, Iterable[str]], created: int) -> Catalog:
    """The catalog of ``{route: first provider}`` and ``{provider: listed model ids}``; a route name
    wins over the same ``<provider>/<model>``."""
    owners = dict(routes)
    for provider, models in provider_models.items():
        for model in models:
            owners.setdefault(f"{provider}/{model}", provider)
    return Catalog(owners, created)


class PathTable:
    """Which dialect a path belongs to: its own paths exactly, else the longest declared prefix.

    Built once, when the routes are wired; asked only for paths no route matched (the unknown
    path's 404 and a known path's 405 take the shape of the dialect they belong to).
    """

    __slots__ = ("_default", "_patterns", "_prefixes")

    def __init__(self, dialects: Iterable[Dialect], default: Dialect) -> None:
        self._default = default
        self._patterns: list[tuple[re.Pattern[str], str, Dialect]] = []
        prefixes: list[tuple[str, Dialect]] = []
        for dialect in dialects:
            prefixes.extend((prefix, dialect) for prefix in dialect.prefixes)
            for method, path, _ in dialect.paths:
                self._patterns.append((_compiled(path), method, dialect))
        self._prefixes = sorted(prefixes, key=lambda item: len(item[0]), reverse=True)

    def dialect(self, path: str) -> Dialect:
        """The dialect whose error shape ``path`` gets."""
        for pattern, _, dialect in self._patterns:
            if pattern.fullmatch(path):
                return dialect
        for prefix, dialect in self._prefixes:
            if path.startswith(prefix):
                return dialect
        return self._default

    def allowed(self, path: str) -> str | None:
        """The methods a known path answers (for a 405's Allow header), or None for an unknown path.
        aiohttp answers HEAD wherever it answers GET."""
        methods = [method for pattern, method, _ in self._patterns if pattern.fullmatch(path)]
        if not methods:
            return None
        return ", ".join(sorted({m for method in methods for m in ((method, "HEAD") if method == "GET" else (method,))}))


_PLACEHOLDER: Final = re.compile(r"\{(\w+)(?::([^{}]+))?\}")


def _compiled(path: str) -> re.Pattern[str]:
    """An aiohttp route pattern as a regular expression: ``{name}`` is one segment, ``{name:re}`` ``re``."""
    out, last = [], 0
    for match in _PLACEHOLDER.finditer(path):
        out.append(re.escape(path[last:match.start()]))
        out.append(f"(?:{match.group(2) or '[^/]+'})")
        last = match.end()
    out.append(re.escape(path[last:]))
    return re.compile("".join(out))
