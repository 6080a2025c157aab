"""Which ``Host`` and ``Origin`` a request may carry while gateway auth is off (DESIGN §6, §14).

Without gateway keys, whoever can reach the port can use it, and a web page the operator visits
can reach a loopback port too: by DNS rebinding (a name of the attacker's that now resolves to
127.0.0.1, so the request carries that name as its ``Host``) or by a cross-site "simple" request
(a form or ``fetch`` with a ``text/plain`` body, which needs no CORS preflight and carries the
page's ``Origin``). So, with auth off:

- the ``Host`` (port ignored, case-insensitive) must be ``localhost``, a loopback literal, the bound
  address when it is not a wildcard, or one of ``server.allowed_hosts``; on a non-loopback bind
  (``serve --no-gateway-key``) this applies only when ``allowed_hosts`` is set; a request without
  a ``Host`` (HTTP/1.0) passes, since no browser sends one;
- an ``Origin`` must be loopback (``http(s)://localhost``, a loopback literal, any port) or one of
  ``server.allowed_origins``; ``Origin: null`` (sandboxed frames, ``file:`` pages) is foreign.

Refusals are 403 ``forbidden_host`` / ``forbidden_origin``. Pure: no I/O; with auth on, nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from .config import Config, is_loopback
from .errors import GatewayError

_WILDCARDS: Final = frozenset({"", "0.0.0.0", "::"})
# Host values already judged allowed, so repeated requests skip the parsing; refused ones are not
# kept (an attacker chooses them freely), and the cache stops growing at this size.
_CACHE_SIZE: Final = 256



def forbidden_host() -> GatewayError:
    return GatewayError(403, "The Host header names no address this gateway serves (gateway auth is off: "
                        "only loopback names, the bound address and server.allowed_hosts are answered).",
                        code="forbidden_host")


def forbidden_origin() -> GatewayError:
    return GatewayError(403, "Requests from this Origin are refused (gateway auth is off: only loopback "
                        "origins and server.allowed_origins are answered).", code="forbidden_origin")


def host_name(value: str) -> str:
    """A Host header's name: without the port or an IPv6 literal's brackets, lowercased, no trailing dot."""
    value = value.strip().lower()
    if value.startswith("["):
        name = value[1:value.find("]")] if "]" in value else value[1:]
    elif value.count(":") == 1:
        name = value.partition(":")[0]
    else:
        name = value  # a bare IPv6 literal (not valid in Host, but unambiguous) or a plain name
    return name[:-1] if name.endswith(".") else name


def _loopback_name(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def origin_allowed(origin: str, allowed: frozenset[str]) -> bool:
    """Whether a browser ``Origin`` is loopback or one of ``allowed`` (lowercased origins, no slash)."""
    origin = origin.strip().lower().rstrip("/")
    if origin in allowed:
        return True
    scheme, sep, rest = origin.partition("://")
    if not sep or scheme not in ("http", "https") or not rest or "/" in rest or "@" in rest:
        return False  # "null", file:, chrome-extension:, or something no browser sends
    return _loopback_name(host_name(rest))


@dataclass(slots=True)
class HostRule:
    """The Host/Origin rule of one configuration and bind address."""

    hosts: frozenset[str] | None  # allowed names besides loopback ones; None: any Host
    origins: frozenset[str]
    _seen: set[str]

    def refusal(self, headers: Mapping[str, str]) -> GatewayError | None:
        """The 403 a request with these headers gets, or None when it may be served."""
        host = headers.get("Host")
        if host is not None and self.hosts is not None and host not in self._seen:
            name = host_name(host)
            if name not in self.hosts and not _loopback_name(name):
                return forbidden_host()
            if len(self._seen) < _CACHE_SIZE:
                self._seen.add(host)
        origin = headers.get("Origin")
        if origin is not None and not origin_allowed(origin, self.origins):
            return forbidden_origin()
        return None


def host_rule(config: Config, bind: str) -> HostRule | None:
    """The rule for a configuration served on ``bind``; None while gateway auth is on."""
    if config.gateway_keys:
        return None
    server = config.server
    allowed = frozenset(host_name(name) for name in server.allowed_hosts)
    hosts: frozenset[str] | None = None  # a non-loopback bind (--no-gateway-key) without a list: any Host
    if is_loopback(bind) or allowed:
        hosts = allowed if bind in _WILDCARDS else allowed | {host_name(bind)}
    origins = frozenset(origin.strip().lower().rstrip("/") for origin in server.allowed_origins)
    return HostRule(hosts, origins, set())


class HostGuard:
    """The rule for the running configuration, rebuilt when a reload swaps the configuration."""

    __slots__ = ("_config", "_rule", "bind")

    def __init__(self, bind: str) -> None:
        self.bind = bind
        self._config: Config | None = None
        self._rule: HostRule | None = None

    def rule(self, config: Config) -> HostRule | None:
        if config is not self._config:
            self._rule = host_rule(config, self.bind)
            self._config = config
        return self._rule
