"""What authenticates a call to Anthropic and which of the caller's ``anthropic-beta`` values cross.

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
from collections.abc import Callable
from fnmatch import translate
from typing import TYPE_CHECKING, Final

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
