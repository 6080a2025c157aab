"""Anthropic's wire as every type that carries Claude uses it: how a key travels, which betas cross,
and Claude's own rules for a request (sampling fields, the JSON-mode instruction).

``anthropic`` (Anthropic's API) and ``bedrock`` (Claude models) both read it; it is the one shared
wire module of DESIGN §14, so neither translator imports the other.

The key: an API key goes as ``x-api-key``; a token that is not an API key (an OAuth token
``sk-ant-oat…``, or a JWT-shaped value) goes as ``Authorization: Bearer`` (DESIGN §14).

Betas: with the caller's own key every beta passes, since the caller pays. Under a server-side key
only the provider's ``betas:`` globs pass (default: the behavioural betas, never the billed ones
such as ``context-1m-*``), so a gateway key cannot switch on paid features on the operator's
account. Either way the value sent is capped at ``MAX_BETA_HEADER`` bytes, whole entries only.

Pure: no I/O.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from fnmatch import translate
from typing import TYPE_CHECKING, Any, Final

from .policy import FieldPolicy, temperature

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


def passed_betas(value: str, provider: ProviderConfig, credential: Credential) -> str | None:
    """The ``anthropic-beta`` value to send for the caller's ``value``, or None to send none."""
    allowed = None if credential.kind == "caller" else _matcher(
        DEFAULT_BETAS if provider.betas is None else provider.betas)
    kept: list[str] = []
    size = -1  # the first entry needs no comma
    for entry in value.split(","):
        beta = entry.strip()
        if not beta or (allowed is not None and not allowed(beta)):
            continue
        size += len(beta) + 1
        if size > MAX_BETA_HEADER:
            break
        kept.append(beta)
    return ",".join(kept) or None


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
