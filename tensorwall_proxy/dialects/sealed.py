"""Sealed reasoning state: a translated provider's thinking as an ``encrypted_content`` only the
gateway can verify (DESIGN §12 "Reasoning state for stateless clients", §14).

A stateless Responses client (Codex with ``store: false``) keeps a turn's thinking state for the
gateway and sends it back on the next turn. The token is signed, not encrypted (§14): ``twr1.``,
then base64url without padding of the zlib-compressed state followed by an HMAC-SHA256 (32 bytes)
over the version prefix and that compressed state. Only the holder of the key makes one that
verifies, so a token altered, made by another gateway or of a version this one does not know is a
400 naming the input item (``input[3].encrypted_content``) — never a provider's error about a bad
signature, never an exception. It inflates under the bound of every packed state (4 MiB, and what
the request's budget has left).

Pure: no I/O; the key is always the caller's argument.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import zlib
from typing import Final

from ..errors import GatewayError, bad_request
from ..providers.shapes import StateBudget, inflate

VERSION: Final = "twr1."
_VERSION_BYTES: Final = VERSION.encode("ascii")
# Any version of ours, known or not: "twr" and a number. OpenAI's own tokens look nothing like it.
_OURS: Final = re.compile(r"twr[0-9]+\.")
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
_MAC_BYTES: Final = 32
# What OpenAI answers for an encrypted_content it cannot verify.
CODE: Final = "invalid_encrypted_content"


def ours(token: object) -> bool:
    """Whether ``token`` claims to be one of the gateway's (any version); anything else (OpenAI's own
    ``encrypted_content``) is someone else's business and is never unsealed here."""
    return isinstance(token, str) and _OURS.match(token) is not None


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, _VERSION_BYTES + payload, hashlib.sha256).digest()


def seal(key: bytes, state: bytes) -> str:
    """``state`` as a token that only ``key`` verifies."""
    payload = zlib.compress(state, 6)
    return VERSION + base64.urlsafe_b64encode(payload + _mac(key, payload)).rstrip(b"=").decode("ascii")


def _refused(param: str, why: str) -> GatewayError:
    return bad_request(f"'{param}' {why}; send reasoning items back exactly as this gateway returned them.",
                       param=param, code=CODE)


def unseal(key: bytes, token: object, param: str = "encrypted_content", budget: StateBudget | None = None) -> bytes:
    """The state ``seal(key, state)`` made ``token`` from; 400 in OpenAI's shape naming ``param`` for a
    token that is not ours, tampered with, of an unknown version, or inflating past its bound."""
    if not isinstance(token, str):
        raise bad_request(f"'{param}' must be a string.", param=param, code=CODE)
    if not token.startswith(VERSION):
        if ours(token):
            raise _refused(param, "was made by a version of this gateway that this one does not know")
        raise _refused(param, "was not made by this gateway")
    encoded = token[len(VERSION):]
    if len(encoded) % 4 == 1 or not _BASE64URL.fullmatch(encoded):
        raise _refused(param, "is damaged")
    raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    if len(raw) <= _MAC_BYTES or not hmac.compare_digest(mac, _mac(key, payload)):
        raise _refused(param, "does not verify: it was changed, or made with another key")
    state = inflate(payload, param, budget)
    if state is None:  # verified yet damaged: only a key that leaked makes this
        raise _refused(param, "is damaged")
    return state
