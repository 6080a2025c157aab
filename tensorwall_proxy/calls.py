"""``UpstreamCall``: what one attempt sends, the value the translators make and the transport sends.

A leaf module of its own so that the transport (``upstream.py``), the credential signers
(``auth.py``) and the translators (``providers/``) can all name it without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from yarl import URL


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """Everything the transport needs for one attempt; the credential is already in ``headers``."""

    method: str
    url: URL
    headers: Mapping[str, str]
    body: bytes
    stream: bool = False
    # Caller betas (Anthropic's `anthropic-beta`) the provider's rules kept from this call: counted and
    # logged by the relay, never lost silently (DESIGN §12).
    stripped: tuple[str, ...] = ()
