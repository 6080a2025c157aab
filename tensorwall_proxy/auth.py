"""Who may call the gateway (gateway keys against sha256 digests, read alike on every door) and which
credential an attempt carries.

DESIGN §6 precedence, first that applies: the endpoint's or provider's YAML ``api_key``; ``auth:
ambient`` or YAML AWS keys (vertex, bedrock); ``auth: none``; ``auth: forward`` with the caller's
Bearer; otherwise 401 ``missing_provider_key``. ``auth: forward`` never falls back to the host's
ambient credentials (DESIGN §14): the machine's cloud identity serves only where the YAML says
``auth: ambient``. A caller key with another vendor's well-known prefix is never sent. Keys are held
in ``Secret`` and compared only as digests.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, Protocol

from .calls import UpstreamCall
from .config import Principal, ProviderConfig, Secret
from .errors import GatewayError
from .providers.catalog import TYPES

CredentialKind = Literal["server", "caller", "ambient", "none"]

# Caller headers that may cross to an upstream, by provider type (each type's catalog entry names
# its own); everything else is rebuilt.
FORWARDED_HEADERS: Final[dict[str, tuple[str, ...]]] = {
    name: kind.forwarded_headers for name, kind in TYPES.items() if kind.forwarded_headers}


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


# A Bearer token: visible ASCII only (RFC 6750's b64token is narrower still). Anything else cannot be
# a provider key and cannot travel in an upstream header.
_PRINTABLE_ASCII: Final = frozenset(map(chr, range(0x21, 0x7F)))

NO_CREDENTIAL: Final = Credential("none")
AMBIENT: Final = Credential("ambient")


class HeaderValues(Protocol):
    """A request's headers as aiohttp holds them: every value a name was sent with."""

    def getall(self, key: str, default: list[str]) -> list[str]:
        """Every value of ``key``, in order; ``default`` when it was not sent."""
        ...


class GatewayKeys:
    """The accepted gateway keys as digests, each with its principal (DESIGN §13). Empty: gateway
    auth is off."""

    __slots__ = ("_clock", "_digests", "_principals")

    def __init__(self, principals: Iterable[Principal | str], clock: Callable[[], float] = time.time) -> None:
        held = tuple(p if isinstance(p, Principal) else Principal(p) for p in principals)
        self._principals = held
        self._digests = tuple(bytes.fromhex(p.digest.removeprefix("sha256:")) for p in held)
        self._clock = clock

    @property
    def enabled(self) -> bool:
        """Whether a key is required at all."""
        return bool(self._digests)

    def _holder(self, candidate: bytes) -> Principal | None:
        """The principal whose key has the SHA-256 digest ``candidate``, compared with every digest in
        constant time, so neither the key's length nor which digest nearly matched shows in the
        timing; an expired key is nobody's (refused like a wrong one)."""
        found: Principal | None = None
        for digest, principal in zip(self._digests, self._principals, strict=True):
            if hmac.compare_digest(candidate, digest):
                found = principal
        if found is not None and found.expires_at is not None and self._clock() >= found.expires_at:
            return None
        return found

    def admit(self, headers: HeaderValues) -> tuple[Principal | None, Secret | None]:
        """Read a request's credentials the way every door reads them (DESIGN §14): the principal
        whose gateway key it carries (None with gateway keys off) and the caller's provider key, or
        None. The principal's ``id`` is its name, or ``sha256:<digest>`` of a key without one.

        While gateway keys are on, ``X-API-Key`` is the gateway key, and ``Authorization: Bearer`` is
        the gateway key when its digest is one of the keys (then nothing of it is forwarded), otherwise
        the caller's provider key; one of the two must be a gateway key. With keys off the caller's
        provider key is the Bearer when there is one, else ``X-API-Key``. Two different gateway keys
        in one request, or one credential header sent twice with different values, is 401
        ``invalid_gateway_key`` naming the header. A digest sent as a key is hashed like any other
        string, so it never matches; a key past its ``expires`` is refused like a wrong one.
        """
        api_key = _single(headers, "X-API-Key")
        bearer = caller_key(_single(headers, "Authorization"))
        if not self._digests:
            return None, bearer if bearer is not None else _provider_key(api_key, "X-API-Key")
        bearer_digest = _sha256(bearer.reveal()) if bearer is not None else None
        bearer_holder = self._holder(bearer_digest) if bearer_digest is not None else None
        if api_key:
            key_digest = _sha256(api_key)
            holder = self._holder(key_digest)
            if holder is None:
                raise _refused("Missing or invalid gateway key: send one of the configured keys in the X-API-Key "
                               "header.", "X-API-Key")
            if bearer_holder is not None and bearer_holder is not holder:
                raise _refused("Two different gateway keys in one request: X-API-Key and the Authorization Bearer "
                               "name different keys; send one.", "Authorization")
        elif bearer_holder is None:
            raise _refused("Missing gateway key: send it in the X-API-Key header (or as the Authorization Bearer).",
                           "X-API-Key")
        else:
            holder = bearer_holder
        return holder, None if bearer_holder is not None else bearer


def may_use(principal: Principal | None, model: str) -> bool:
    """Whether ``principal`` may use the public model name ``model``: its ``models`` globs, or every
    model when it lists none (and with gateway keys off)."""
    if principal is None or principal.models is None:
        return True
    return any(fnmatch.fnmatchcase(model, glob) for glob in principal.models)


def check_model(principal: Principal | None, model: str) -> None:
    """403 ``model_not_allowed`` (DESIGN §13) unless ``principal`` may use ``model``; before any
    upstream call, whether the model exists or not (a refusal tells nothing of what the gateway serves)."""
    if not may_use(principal, model):
        raise GatewayError(403, f"This gateway key may not use the model '{model}'.", type="permission_error",
                           code="model_not_allowed", param="model")


def _sha256(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def _refused(message: str, header: str) -> GatewayError:
    return GatewayError(401, message, type="invalid_request_error", code="invalid_gateway_key", param=header)


def _single(headers: HeaderValues, name: str) -> str | None:
    """The one value of a credential header; 401 when it was sent more than once with different
    values (which one a proxy in front would pick is anyone's guess)."""
    values = headers.getall(name, [])
    if not values:
        return None
    if len(values) > 1 and any(value != values[0] for value in values[1:]):
        raise _refused(f"The {name} header was sent more than once with different values; send it once.", name)
    return values[0]


def _provider_key(token: str | None, header: str) -> Secret | None:
    """``token`` as the caller's provider key; 400 unless it is visible ASCII (raw non-UTF-8 bytes
    arrive as surrogates): a malformed request (RFC 6750 §3.1 ``invalid_request``), not a key any
    provider could accept or any upstream header could carry."""
    if not token:
        return None
    if not (token.isascii() and _PRINTABLE_ASCII.issuperset(token)):
        raise GatewayError(400, f"The {header} header is malformed: a key is visible ASCII only.",
                           code="invalid_authorization_header")
    return Secret(token)


def caller_key(authorization: str | None) -> Secret | None:
    """The key of ``Authorization: Bearer <key>``, or None (400 for one that is not visible ASCII)."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return _provider_key(token.strip(), "Authorization")


def credential_for(provider: ProviderConfig, endpoint_key: Secret | None, caller: Secret | None) -> Credential | None:
    """The credential an attempt on this endpoint carries, or None when it has none to carry."""
    if endpoint_key is not None:
        return Credential("server", endpoint_key)
    if provider.api_key is not None:
        return Credential("server", provider.api_key)
    if provider.server_credential:
        return AMBIENT  # auth: ambient, or YAML AWS keys / a profile: SigV4, whatever the caller sends
    if not provider.carries_caller_key():
        # auth: none, or Ollama, which never receives the caller's key (DESIGN §6).
        return NO_CREDENTIAL
    if caller is not None:
        # Another vendor's key is never sent here (DESIGN §14); the caller gets 401 instead.
        return Credential("caller", caller) if provider.accepts_caller_key(caller.reveal()) else None
    if provider.kind.key_optional:  # LM Studio, without its "Require Authentication"
        return NO_CREDENTIAL
    return None  # auth: forward without a key: never the host's ambient credentials


def missing_provider_key(provider: ProviderConfig | str, caller: Secret | None = None) -> GatewayError:
    """401 ``missing_provider_key``: no credential for ``provider``, and nothing sent.

    With a caller key, it was another vendor's. Without one, on a vertex/bedrock provider of a
    host that has ambient credentials, the message names the setting that would use them.
    """
    name = provider if isinstance(provider, str) else provider.name
    if caller is not None:
        message = (f"The provider key sent as 'Authorization: Bearer' belongs to another vendor than "
                   f"provider '{name}'; it was not sent.")
    else:
        message = (f"No provider key for '{name}': send it as 'Authorization: Bearer <key>' "
                   "or configure an api_key for the provider.")
        if not isinstance(provider, str) and ambient_credentials_present(provider):
            message += (f" The host's own cloud credentials are used only where the configuration says "
                        f"`providers.{name}.auth: ambient`.")
    return GatewayError(401, message, type="invalid_request_error", code="missing_provider_key")


# Environment variables through which the AWS credential chain finds credentials.
_AWS_ENV: Final = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                   "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")


def ambient_credentials_present(provider: ProviderConfig, env: Mapping[str, str] | None = None) -> bool:
    """Whether this host seems to have the ambient credentials a provider's type would use.

    Cheap on purpose (environment variables and one or two file tests, no botocore, no
    google-auth, no metadata-server call), so serving never imports the SDKs just to warn. An
    instance role reached only through the metadata server is not seen.
    """
    kind = provider.ambient_kind
    if kind is None:
        return False
    environ = os.environ if env is None else env
    home = Path(environ.get("HOME") or "~").expanduser()
    if kind == "aws":
        if any(environ.get(name) for name in _AWS_ENV):
            return True
        shared = environ.get("AWS_SHARED_CREDENTIALS_FILE") or str(home / ".aws" / "credentials")
        return Path(shared).is_file()
    if environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        return True
    gcloud = Path(environ["CLOUDSDK_CONFIG"]) if environ.get("CLOUDSDK_CONFIG") else home / ".config" / "gcloud"
    return (gcloud / "application_default_credentials.json").is_file()


def ambient_warnings(providers: Iterable[ProviderConfig], env: Mapping[str, str] | None = None) -> list[str]:
    """One line per vertex/bedrock provider left on ``auth: forward`` on a host whose ambient
    credentials it will NOT use (DESIGN §14), naming the setting that would."""
    return [
        f"providers.{p.name}: this host has ambient cloud credentials, but `auth: forward` (the default) "
        f"sends only the caller's key; set `providers.{p.name}.auth: ambient` to use the host's own identity"
        for p in providers
        if p.carries_caller_key() and ambient_credentials_present(p, env)
    ]
