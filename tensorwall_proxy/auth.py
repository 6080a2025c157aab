"""Who may call the gateway (X-API-Key against sha256 digests) and which credential an attempt carries.

DESIGN §6 precedence, first that applies: the endpoint's or provider's YAML ``api_key``; ``auth:
ambient`` (vertex, bedrock); ``auth: none``; ``auth: forward`` with the caller's Bearer (vertex and
bedrock fall back to ambient credentials when the caller sent none); otherwise 401
``missing_provider_key``. Keys are held in ``Secret`` and compared only as digests.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

from .config import ProviderConfig, Secret

if TYPE_CHECKING:
    from .providers import UpstreamCall
from .errors import GatewayError

CredentialKind = Literal["server", "caller", "ambient", "none"]

# Caller headers that may cross to an upstream, by provider type; everything else is rebuilt.
FORWARDED_HEADERS: Final[dict[str, tuple[str, ...]]] = {
    "openai": ("OpenAI-Organization", "OpenAI-Project"),
    "anthropic": ("anthropic-beta",),
}


@dataclass(frozen=True, slots=True)
class Credential:
    """What one attempt authenticates with. ``secret`` is None for ambient and none."""

    kind: CredentialKind
    secret: Secret | None = None
    # The cloud project ambient credentials belong to (google-auth reports it), for a vertex
    # provider whose YAML names none.
    project: str | None = None
    # Signs a finished upstream call (SigV4 for bedrock): it covers the exact URL and body bytes,
    # so the provider applies it last.
    sign: Callable[[UpstreamCall], UpstreamCall] | None = field(default=None, compare=False)

    @property
    def health_digest(self) -> str | None:
        """The digest health is kept under: the caller's key's, or None for the server's own."""
        return self.secret.digest() if self.kind == "caller" and self.secret is not None else None


NO_CREDENTIAL: Final = Credential("none")
AMBIENT: Final = Credential("ambient")


class GatewayKeys:
    """The accepted X-API-Key values, as digests. Empty: gateway auth is off."""

    __slots__ = ("_digests",)

    def __init__(self, digests: Iterable[str]) -> None:
        self._digests = tuple(bytes.fromhex(d.removeprefix("sha256:")) for d in digests)

    @property
    def enabled(self) -> bool:
        """Whether a key is required at all."""
        return bool(self._digests)

    def check(self, presented: str | None) -> None:
        """Raise 401 ``invalid_gateway_key`` unless ``presented`` is one of the keys.

        The presented key is hashed and compared with every digest in constant time, so neither
        the key's length nor which digest nearly matched shows in the timing. A digest sent as the
        key is hashed like any other string, so it never matches.
        """
        if not self._digests:
            return
        if presented:
            candidate = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
            matched = False
            for digest in self._digests:
                matched |= hmac.compare_digest(candidate, digest)
            if matched:
                return
        raise GatewayError(
            401,
            "Missing or invalid gateway key: send one of the configured keys in the X-API-Key header."
            if presented else "Missing gateway key: send it in the X-API-Key header.",
            type="invalid_request_error",
            code="invalid_gateway_key",
        )


def caller_key(authorization: str | None) -> Secret | None:
    """The caller's provider key from ``Authorization: Bearer <key>``, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return Secret(token)


def credential_for(provider: ProviderConfig, endpoint_key: Secret | None, caller: Secret | None) -> Credential | None:
    """The credential an attempt on this endpoint carries, or None when it has none to carry."""
    if endpoint_key is not None:
        return Credential("server", endpoint_key)
    if provider.api_key is not None:
        return Credential("server", provider.api_key)
    if provider.auth == "ambient" or (provider.type == "bedrock" and (
            provider.aws_access_key_id is not None or provider.profile)):
        return AMBIENT  # YAML AWS keys or a profile mean SigV4, whatever the caller sends
    if provider.auth == "none" or provider.type == "ollama":
        # Ollama never receives the caller's key (DESIGN §6): only a YAML api_key, handled above.
        return NO_CREDENTIAL
    if caller is not None:
        return Credential("caller", caller)
    if provider.type in ("vertex", "bedrock"):
        return AMBIENT
    if provider.type == "lmstudio":
        # LM Studio wants no key unless "Require Authentication" is on: send the caller's when given.
        return NO_CREDENTIAL
    return None


def uses_caller_key(provider: ProviderConfig, endpoint_key: Secret | None) -> bool:
    """Whether attempts on this endpoint carry the caller's key (when the caller sends one)."""
    return (endpoint_key is None and provider.api_key is None and provider.auth == "forward"
            and provider.type != "ollama")


def missing_provider_key(provider: str) -> GatewayError:
    """401 for a request whose endpoints all need the caller's key and got none."""
    return GatewayError(
        401,
        f"No provider key for '{provider}': send it as 'Authorization: Bearer <key>' "
        "or configure an api_key for the provider.",
        type="invalid_request_error",
        code="missing_provider_key",
    )
