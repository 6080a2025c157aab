"""One error tree for the whole gateway: HTTP status, OpenAI error body, and whether it may be retried.

Every failure a caller can see is a ``GatewayError``; nothing else is turned into a response.
The tree::

    GatewayError                      status, OpenAI type/code/param, x-should-retry
    ├── ConfigError                   the YAML is wrong (never reaches a caller: startup/reload)
    ├── UnsupportedField              a translator cannot express a field for one endpoint (400
    │                                 only when no endpoint of the route can serve the request)
    ├── ProviderNotConfigured         a required setting or credential is missing (503, likewise)
    └── UpstreamError                 an attempt failed; ``kind`` decides fallback and health
          kinds: connect | timeout | rate_limited | overloaded | server | auth | bad_request

This module is a leaf: it imports nothing of the gateway and does no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final, Literal, TypeVar

import orjson

FailureKind = Literal["connect", "timeout", "rate_limited", "overloaded", "server", "auth", "bad_request"]

# Failures that say nothing about the request itself: another endpoint (or later, the same one)
# may well succeed, so the relay falls back on them and they count against the endpoint's health.
FALLBACK_KINDS: frozenset[FailureKind] = frozenset({"connect", "timeout", "rate_limited", "overloaded", "server"})

# The longest wait an upstream's Retry-After may impose, on our cooldown and on the caller: the
# same cap as the cooldown itself (health.MAX_COOLDOWN_SECONDS), so a hostile or broken upstream
# cannot park an endpoint, or tell every client to go away, for a day.
MAX_RETRY_AFTER_SECONDS = 300.0

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


REDACTED: Final = "[redacted]"
# Anything shaped like a credential in upstream text (DESIGN §6, §14): OpenAI-style `sk-…` keys
# (Anthropic's `sk-ant-…` among them), Groq `gsk_…`, Google API keys `AIza…` and OAuth tokens
# `ya29.…`, AWS access key ids, JWTs, and whatever follows `Bearer`. Compiled once; used only on
# error text, never on content.
_KEY_SHAPED: Final = re.compile(
    r"(?i:\bbearer\s+)[^\s\"',;]+"
    r"|\b(?:sk-|gsk_)[A-Za-z0-9_\-]{6,}"
    r"|\bAIza[0-9A-Za-z_\-]{10,}"
    r"|\bya29\.[0-9A-Za-z_.\-]+"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{12,}"
    r"|\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"
)
# A credential shorter than this is not searched for verbatim: replacing a two-letter "key"
# everywhere would garble the message and protect nothing.
_MIN_SECRET: Final = 6


def redact(text: str, secret: str | None = None) -> str:
    """``text`` with ``secret`` and anything shaped like a key replaced by ``[redacted]``."""
    if secret is not None and len(secret) >= _MIN_SECRET and secret in text:
        text = text.replace(secret, REDACTED)
    return _KEY_SHAPED.sub(REDACTED, text)


class GatewayError(Exception):
    """An error the caller receives in OpenAI's shape ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        retry_after: float | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPE_BY_STATUS.get(status, "api_error" if status < 500 else "server_error")
        self.retry_after = retry_after
        # None: let the client decide. False: a retry can never help (the request itself is wrong).
        self.should_retry = should_retry if should_retry is not None else (
            False if 400 <= status < 500 and status not in (408, 409, 429) else None
        )

    def body(self) -> bytes:
        """The OpenAI error body."""
        return orjson.dumps(
            {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        )

    def headers(self) -> dict[str, str]:
        """Headers the error response carries besides the content type."""
        headers: dict[str, str] = {}
        if self.retry_after is not None and math.isfinite(self.retry_after):
            # Rounded up: a client that obeys it must not come back before the cooldown ends.
            headers["Retry-After"] = str(max(1, math.ceil(min(self.retry_after, MAX_RETRY_AFTER_SECONDS))))
        if self.should_retry is False:
            headers["x-should-retry"] = "false"
        return headers


class ConfigError(GatewayError):
    """The configuration is invalid. ``errors`` holds every problem, each led by its YAML path."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(500, "; ".join(errors), code="config_error")
        self.errors = errors


class UnsupportedField(GatewayError):
    """A field that one endpoint's provider cannot honour without changing the result's count or shape."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(400, message, param=param, code="unsupported_parameter")


class ProviderNotConfigured(GatewayError):
    """A provider that cannot be called as configured: its endpoints are skipped, 503 when none is left.

    The caller learns only which provider it is; ``detail`` (the missing setting, its environment
    variable, the credential source that failed) is for the log and ``check``: it describes the
    host the gateway runs on, which is not the caller's business.
    """

    def __init__(self, provider: str, detail: str) -> None:
        super().__init__(503, f"Provider '{provider}' is not configured on this gateway (the gateway's log says "
                              "what is missing).", type="server_error", code="provider_not_configured",
                         should_retry=False)
        self.provider = provider
        self.detail = detail


class UpstreamError(GatewayError):
    """One attempt failed. ``kind`` is what retry, fallback and cooldown look at, whatever the provider."""

    def __init__(
        self,
        kind: FailureKind,
        status: int,
        message: str,
        *,
        provider: str | None = None,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        retry_after: float | None = None,
        reached_upstream: bool = True,
    ) -> None:
        super().__init__(status, message, code=code, param=param, type=type, retry_after=retry_after)
        self.kind: FailureKind = kind
        self.provider = provider
        # False only when the request provably never left this process (refused, DNS, TLS, pool
        # wait): only then may the same endpoint be tried again without risking a double charge.
        self.reached_upstream = reached_upstream

    def redact(self, secret: str | None) -> None:
        """Remove ``secret`` (the attempt's own credential) and key-shaped text from what came from
        the upstream, before a caller or a log sees it."""
        self.message = redact(self.message, secret)
        self.args = (self.message,)
        if self.param is not None:
            self.param = redact(self.param, secret)

    @property
    def falls_back(self) -> bool:
        """Whether another endpoint may be tried after this failure."""
        return self.kind in FALLBACK_KINDS


def bad_request(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    """A 400 about the caller's request."""
    return GatewayError(400, message, param=param, code=code)


def kind_for_status(status: int) -> FailureKind:
    """The failure kind an upstream HTTP status stands for, before any provider-specific reading.

    A status below 400 that is not an answer (a redirect, 204, 304) is the upstream's failure."""
    if status < 400:
        return "server"
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth"
    if status in (408, 504):
        return "timeout"
    if status in (503, 529):
        return "overloaded"
    if status >= 500:
        return "server"
    return "bad_request"


def caller_status(status: int, kind: FailureKind) -> int:
    """The status the caller sees for an upstream failure: a 4xx keeps its own; the upstream's
    own failures become 502, overloaded 503, timeouts 504 (DESIGN §7)."""
    if kind == "timeout":
        return 504
    if kind == "overloaded":
        return 503
    if status >= 500 or status < 400:
        return 502
    return status


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds an upstream asked us to wait: ``retry-after-ms`` first (finer), then ``retry-after``,
    capped at ``MAX_RETRY_AFTER_SECONDS``.

    Only the delta-seconds form of Retry-After is read; an HTTP date is rare from these APIs and
    falls back to the configured cooldown, as does any value that is not a finite, non-negative
    number (``inf``, ``1e400``, ``nan``, ``-1``): a header we cannot trust is treated as absent.
    """
    seconds = _seconds(headers.get("retry-after-ms"), 1000.0)
    if seconds is None:
        seconds = _seconds(headers.get("retry-after"), 1.0)
    return seconds


def _seconds(raw: str | None, per_second: float) -> float | None:
    if not raw or len(raw) > 32:
        return None
    try:
        value = float(raw) / per_second
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return min(value, MAX_RETRY_AFTER_SECONDS)


def openai_error_fields(body: Any) -> tuple[str | None, str | None, str | None, str | None]:
    """(message, type, param, code) from an upstream error body in OpenAI's nested shape or Mistral's flat one."""
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict):
            body = inner
        elif isinstance(inner, str):
            return inner, None, None, None
        elif isinstance(body.get("detail"), list):
            # FastAPI-style validation failure (Mistral's 422): name the first offending field.
            first = body["detail"][0] if body["detail"] else {}
            if isinstance(first, dict):
                loc = first.get("loc") or []
                param = ".".join(str(part) for part in loc if part != "body") or None
                return f"{first.get('msg', 'invalid request')}: {param}", "invalid_request_error", param, None
        message = body.get("message")
        code = body.get("code")
        return (
            message if isinstance(message, str) else None,
            body.get("type") if isinstance(body.get("type"), str) else None,
            body.get("param") if isinstance(body.get("param"), str) else None,
            str(code) if code is not None else None,
        )
    return None, None, None, None


_Exc = TypeVar("_Exc", bound=BaseException)


def detach(exc: _Exc) -> _Exc:
    """``exc``, holding no frame: its traceback dropped, and those of the exceptions linked to it
    (``__cause__``, ``__context__``, and ``os_error``, where aiohttp's connection errors keep theirs).

    The one idiom for "no reference cycles on failure paths". A traceback holds frames, and a frame
    whose locals still hold the exception (kept in a variable, or the variable it was raised from)
    closes a cycle: exception → traceback → frame → exception. Reference counting cannot free it,
    and with the raised young-generation threshold (lifecycle.tune_gc) the request, its body and
    its frames would wait for the next collection. So the handler that keeps an exception past its
    ``except`` block, passes it on, or is the last to handle it, detaches it there::

        except UpstreamError as exc:
            failure = detach(exc)                           # kept for a later attempt or a raise
        except GatewayError as exc:
            return error_response(detach(exc), request_id)  # the last to see it

    Nothing else is needed: an exception raised from a variable is detached by whoever catches it,
    and a handler that turns a foreign exception into ours raises the new one inside the handler
    (``from None``), so the foreign one hangs from its ``__context__`` and loses its frames in the
    same detach. Only for exceptions no one will log with their traceback (errors the gateway
    expects); ``tests/e2e/test_cycles.py`` checks the failure paths end to end.
    """
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        for linked in (current.__cause__, current.__context__, getattr(current, "os_error", None)):
            if isinstance(linked, BaseException):
                pending.append(linked)
    return exc
