"""The tool call id codec (DESIGN §7), and its twin for function names: one id the client keeps, a deterministic short id per upstream.

Three jobs:

* ``unique_id(prefix)``: a fresh id for a response or a request (``chatcmpl-…``, ``req_…``).

* ``for_upstream(client_id, style)``: the id an upstream accepts. An id already valid for the
  style passes unchanged; any other is replaced by a hash of it in the style's alphabet and
  length, so an assistant ``tool_calls[].id`` and the later ``tool_call_id`` that names it map
  to the same upstream id on every turn and across providers.
* ``attach(id, state)`` / ``detach(client_id)``: provider state that must come back on the next
  turn (Gemini's ``thoughtSignature``, a thinking block) travels inside the id the client keeps,
  after a marker, base64url-encoded. The client treats the id as opaque, so it returns intact.
* ``for_gemini(name)`` / ``from_gemini(name)``: function names the same way. Gemini refuses some
  names OpenAI accepts (``2fa_lookup``: a leading digit); those are sent under a prefix that is
  stripped from the names Gemini answers with, so the caller sees its own names back.

Pure but for ``unique_id``'s generator: no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import re
from dataclasses import dataclass
from typing import Final, Literal

IdStyle = Literal["openai", "anthropic", "bedrock", "mistral"]

_ALNUM: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# The marker between an id and the state carried with it. "~" is outside every upstream alphabet,
# so a carried id can never be mistaken for a plain valid one.
STATE_MARKER: Final = "~tw1~"
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]+")

# Ids name responses and requests; they guard nothing, so they need to be unique, not unguessable.
# secrets.token_hex would cost a getrandom() system call on every request; this generator is
# seeded from os.urandom once, and again in a forked child so two processes never share a sequence.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def unique_id(prefix: str) -> str:
    """``prefix`` and 24 random hex digits (96 bits), like OpenAI's own ids."""
    return f"{prefix}{_ids.getrandbits(96):024x}"


@dataclass(frozen=True, slots=True)
class _Style:
    valid: re.Pattern[str]
    prefix: str
    length: int  # length of the hash part
    alphabet: str


_STYLES: Final[dict[IdStyle, _Style]] = {
    # OpenAI, Azure, Groq and the other OpenAI-compatible servers: at most 40 of [A-Za-z0-9_-].
    "openai": _Style(re.compile(r"[A-Za-z0-9_-]{1,40}"), "call_", 24, _ALNUM),
    "anthropic": _Style(re.compile(r"[A-Za-z0-9_-]{1,64}"), "toolu_", 24, _ALNUM),
    "bedrock": _Style(re.compile(r"[A-Za-z0-9_.:-]{1,64}"), "tooluse_", 22, _ALNUM),
    # Mistral: exactly nine alphanumerics, nothing else.
    "mistral": _Style(re.compile(r"[A-Za-z0-9]{9}"), "", 9, _ALNUM),
}


def _hash_chars(text: str, length: int, alphabet: str) -> str:
    number = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest(), "big")
    chars = []
    for _ in range(length):
        number, rem = divmod(number, len(alphabet))
        chars.append(alphabet[rem])
    return "".join(chars)


def for_upstream(client_id: str, style: IdStyle) -> str:
    """The id to send to an upstream of ``style`` for the id the client holds (deterministic)."""
    base, _ = detach(client_id)
    spec = _STYLES[style]
    if spec.valid.fullmatch(base):
        return base
    # Hash the whole client id, not just its base, so two ids that differ only in carried state
    # never collide upstream.
    return spec.prefix + _hash_chars(client_id, spec.length, spec.alphabet)


def attach(tool_id: str, state: bytes) -> str:
    """A client-facing id that carries ``state`` back to us on the next turn."""
    if not state:
        return tool_id
    return tool_id + STATE_MARKER + base64.urlsafe_b64encode(state).rstrip(b"=").decode("ascii")


def base_id(client_id: str) -> str:
    """The id a client-facing id was made from, without the state it carries (none decoded)."""
    base, marker, _ = client_id.rpartition(STATE_MARKER)
    return base if marker else client_id


def detach(client_id: str) -> tuple[str, bytes | None]:
    """``(id, state)`` from a client-facing id; state is None when the id carries none or is mangled."""
    # The last marker: the encoded state never holds "~", the id before it might.
    base, marker, encoded = client_id.rpartition(STATE_MARKER)
    if not marker:
        return client_id, None
    if not _BASE64URL.fullmatch(encoded):
        return base, None  # mangled: better no state than garbage sent upstream as a signature
    try:
        state = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except ValueError:
        return base, None
    return base, state


# Gemini's function names: a letter or an underscore, then letters, digits, "_", ".", ":" and "-",
# at most 64 in all (Vertex's FunctionDeclaration).
_GEMINI_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")
# Marks a name the gateway changed. OpenAI's function names never hold a ".", and a caller's name
# that starts with the prefix is prefixed again, so the mapping is one to one and reversible.
NAME_PREFIX: Final = "tw."


def for_gemini(name: str) -> str | None:
    """The function name Gemini is sent for a caller's: the same when Gemini takes it, else under
    the prefix; None when no prefix makes it one Gemini takes (a space, too long)."""
    if not name.startswith(NAME_PREFIX) and _GEMINI_NAME.fullmatch(name):
        return name
    prefixed = NAME_PREFIX + name
    return prefixed if _GEMINI_NAME.fullmatch(prefixed) else None


def from_gemini(name: str) -> str:
    """The caller's function name for one Gemini answers with (``for_gemini`` reversed)."""
    return name[len(NAME_PREFIX):] if name.startswith(NAME_PREFIX) else name
