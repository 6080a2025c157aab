"""The YAML route table → frozen dataclasses, validated, with every error named by its YAML path.

Owns: the schema (server, gateway_keys, providers, routes, rules, timeouts, retries, state, limits), the nine
default providers and how the YAML merges over them (what a type's keys and defaults are is the
type's own, in ``providers/catalog.py``), ``${VAR}`` / ``${VAR:-default}`` / ``${file:PATH}``
interpolation, and ``Secret``, the masked type credentials travel in.

It never opens a socket, and it collects every problem before raising one ``ConfigError``,
so ``tensorwall-proxy check`` can print them all at once.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from yarl import URL

from .errors import ConfigError
from .providers.catalog import (
    DIALECT_NAMES,
    TYPE_NAMES,
    TYPES,
    VENDOR_PREFIXES,
    AmbientKind,
    ProviderType,
    TypeName,
)

PROVIDER_TYPES: Final[tuple[TypeName, ...]] = TYPE_NAMES
AuthMode = Literal["forward", "ambient", "none"]
Strategy = Literal["weighted", "priority"]
StateBackend = Literal["sqlite", "redis"]
FailMode = Literal["open", "closed"]

# The nine providers that exist whatever the YAML says; a YAML entry of the same name merges over
# its default key by key. Values go through the same interpolation as the YAML's own.
DEFAULT_PROVIDERS: Final[dict[str, dict[str, Any]]] = {name: kind.defaults(True) for name, kind in TYPES.items()}
# What a provider of a type gets when it is not named like the default one (`azure-eu: {type: azure}`):
# the type's fixed defaults, without the default provider's own environment variables.
TYPE_DEFAULTS: Final[dict[str, dict[str, Any]]] = {name: kind.defaults(False) for name, kind in TYPES.items()}

_COMMON_KEYS: Final = frozenset({"type", "auth", "api_key", "models", "key_scope", "dialects"})

SHA256_PREFIX: Final = "sha256:"
_DIGEST_RE: Final = re.compile(r"sha256:[0-9a-fA-F]{64}", re.IGNORECASE)
_INTERP_RE: Final = re.compile(r"\$\{([^}]*)\}")
_ENV_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A provider name is the prefix of `<provider>/<model>`, so it can hold no '/'.
_PROVIDER_NAME_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class Secret:
    """A credential. Its repr and str are masked so no log line or traceback can show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The credential itself, for the one header that carries it."""
        return self._value

    def digest(self) -> str:
        """``sha256:`` + hex digest: what health state and logs may keep instead of the key."""
        return key_digest(self._value)

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def key_digest(key: str) -> str:
    """``sha256:`` + the lowercase hex SHA-256 of the key's UTF-8 bytes (DESIGN §6)."""
    return SHA256_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 32 * 1024 * 1024
    drain_seconds: float = 60.0
    shutdown_delay_seconds: float = 0.0
    # Requests served at once; past it a fast 503 with Retry-After, never an unbounded queue.
    max_in_flight: int = 1024
    # Connection bounds (DESIGN §4): what one connection may cost before it sends a whole request.
    header_timeout_seconds: float = 10.0   # the request head must arrive within this
    body_timeout_seconds: float = 30.0     # at most this between two reads of a request body (408)
    keepalive_seconds: float = 75.0        # an idle connection between requests is closed after this
    max_connections: int = 4096            # past it a new connection is closed at once (and counted)
    max_header_bytes: int = 32 * 1024      # the whole request head; 431 past it
    # Memory bounds: request bodies held across requests (per process; 503 past it), an upstream
    # answer counted after decompression (502 past it), what a stream holds before its commit point.
    max_buffered_body_bytes: int = 64 * 1024 * 1024
    max_upstream_body_bytes: int = 64 * 1024 * 1024
    max_held_bytes: int = 1024 * 1024
    # With gateway auth off: browser Origins and Host names allowed besides loopback (DESIGN §6, §14).
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    # A port of its own for /metrics; when set, the API port serves no /metrics.
    metrics_port: int | None = None


@dataclass(frozen=True, slots=True)
class Timeouts:
    # Why these defaults: a long reasoning model may think for minutes before its first token, and
    # a non-streamed call only gets headers when generation ends, so `total` must cover a whole answer.
    connect: float = 10.0
    first_byte: float = 120.0
    idle: float = 120.0
    total: float = 600.0


@dataclass(frozen=True, slots=True)
class Retries:
    attempts: int = 3
    cooldown_seconds: float = 30.0
    # Retry budget: retries (fallbacks included) may add at most this share of the request rate,
    # plus a small floor per second, so an outage does not multiply the load on what is left.
    budget_ratio: float = 0.2
    budget_min_per_second: float = 10.0


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    type: TypeName
    auth: AuthMode = "forward"
    api_key: Secret | None = None
    models: tuple[str, ...] = ()
    base_url: str = ""
    endpoint: str = ""
    api_version: str = ""
    version: str = ""
    default_max_tokens: int | None = None
    project: str = ""
    location: str = ""
    region: str = ""
    aws_access_key_id: Secret | None = None
    aws_secret_access_key: Secret | None = None
    aws_session_token: Secret | None = None
    profile: str = ""
    # Providers that share a key_scope may receive the same caller key (DESIGN §14); default: the name.
    key_scope: str = ""
    # Anthropic betas (globs) passed from callers under a server-side credential; None: the default
    # table of behavioural betas (DESIGN §14).
    betas: tuple[str, ...] | None = None
    # Bedrock and Vertex model ids (globs) that are Claude whatever their name says (application
    # inference profile ARNs): spoken to in Anthropic's Messages wire (DESIGN §14).
    anthropic_models: tuple[str, ...] = ()
    # The dialects passed through natively (DESIGN §12, §14), `chat` always among them; None: the
    # type's default (`openai` and `azure` speak chat and responses).
    dialects: tuple[str, ...] | None = None
    # Why a request routed here cannot be sent (a required setting is empty), or None.
    unconfigured: str | None = None
    # What the gateway may know about the type (providers/catalog.py): ask it, never the type's name.
    kind: ProviderType = field(init=False, repr=False, compare=False)
    # Derived once here, read on every request (credential_for): see the properties below.
    _server: bool = field(init=False, repr=False, compare=False, default=False)
    _forwards: bool = field(init=False, repr=False, compare=False, default=False)
    # `dialects` resolved: what a request in one of these dialects is passed through as, not translated.
    speaks: frozenset[str] = field(init=False, repr=False, compare=False, default=frozenset())

    def __post_init__(self) -> None:
        kind = TYPES[self.type]
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "speaks", frozenset(self.dialects or kind.dialects) | {"chat"})
        server = (self.api_key is not None or self.auth == "ambient"
                  or (kind.sigv4 and (self.aws_access_key_id is not None or bool(self.profile))))
        object.__setattr__(self, "_server", server)
        object.__setattr__(self, "_forwards", not server and self.auth == "forward" and kind.forwards)

    @property
    def scope(self) -> str:
        """The key scope the caller's key is bound to within one request (DESIGN §14)."""
        return self.key_scope or self.name

    @property
    def server_credential(self) -> bool:
        """Whether the provider authenticates with a credential of the operator's: a YAML
        ``api_key``, ``auth: ambient``, or YAML AWS keys / a profile (SigV4, DESIGN §14)."""
        return self._server

    @property
    def ambient_kind(self) -> AmbientKind | None:
        """The ambient credentials the type can use (google-auth ADC, the AWS chain), or None."""
        return self.kind.ambient

    def carries_caller_key(self, endpoint_key: Secret | None = None) -> bool:
        """Whether attempts on this provider (through an endpoint with ``endpoint_key``) carry the
        caller's key when the caller sends one."""
        return endpoint_key is None and self._forwards

    def accepts_caller_key(self, key: str) -> bool:
        """False for a key with another vendor's well-known prefix (``sk-ant-`` to a non-anthropic
        provider, ...): such a key is never sent here."""
        if not key.startswith(VENDOR_PREFIXES):
            return True  # the common case: one C-level test
        return key.startswith(self.kind.key_prefixes)


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    provider: str
    model: str | None = None
    weight: int = 1
    priority: int = 0
    api_key: Secret | None = None


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    endpoints: tuple[EndpointConfig, ...]
    strategy: Strategy = "weighted"
    timeouts: Timeouts | None = None
    # The output cap reserved for a request to this route that names none (DESIGN §14).
    max_output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """A principal's limits (DESIGN §13); None: not limited in that dimension."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    concurrent: int | None = None

    @property
    def counts_tokens(self) -> bool:
        """Whether a request must reserve tokens (and be reconciled to its usage)."""
        return self.tokens_per_minute is not None or self.tokens_per_day is not None


@dataclass(frozen=True, slots=True)
class Principal:
    """One ``gateway_keys`` entry: who is calling (DESIGN §13). ``id`` is what logs, metrics, stored
    responses' owners and the limit counters name it by: its ``name``, or the key's digest."""

    digest: str  # sha256:<hex> of the key
    name: str | None = None
    models: tuple[str, ...] | None = None  # globs over public model names; None: every model
    expires_at: float | None = None  # Unix seconds; from then on the key is refused like a wrong one
    limits: Limits | None = None

    @property
    def id(self) -> str:
        """The principal's name, or the digest of a key that has none."""
        return self.name if self.name is not None else self.digest


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """The top-level ``limits:`` section: what applies to every principal's limits."""

    # Tokens reserved for the output of a request that names no cap and whose route sets none.
    default_output_reservation: int = 4096


@dataclass(frozen=True, slots=True)
class RuleConfig:
    match: str
    provider: str
    strip: str = ""


# Per store call (DESIGN §14): SQLite is a local file, yet a write may wait for another worker's
# transaction; Redis is a network round trip that takes well under a millisecond when it is healthy.
DEFAULT_STATE_TIMEOUT_MS: Final[Mapping[StateBackend, float]] = {"sqlite": 250.0, "redis": 50.0}
# Where the SQLite backend keeps its files when neither `state.path` nor systemd's STATE_DIRECTORY says.
DEFAULT_STATE_PATH: Final = "tensorwall-state"
STATE_BACKENDS: Final[tuple[StateBackend, ...]] = ("sqlite", "redis")


@dataclass(frozen=True, slots=True)
class StateConfig:
    """The state store (DESIGN §13, §14): which backend, where, and how long a call may take.

    A changed ``state:`` section takes a restart: the open store keeps the settings it opened with.
    """

    backend: StateBackend = "sqlite"
    # SQLite: the directory holding limits.db and responses.db (absolute once parsed).
    path: str = DEFAULT_STATE_PATH
    # Redis: redis:// or rediss://; a Secret because it may carry a password.
    url: Secret | None = None
    key_prefix: str = "tw:"
    timeout_ms: float = 0.0  # 0: the backend's default (DEFAULT_STATE_TIMEOUT_MS)
    fail_mode: FailMode = "open"
    responses: bool = True
    responses_ttl_seconds: int = 7 * 24 * 3600
    # Signs what the gateway hands out (encrypted_content); None: a secret generated into the store.
    secret: Secret | None = None

    def __post_init__(self) -> None:
        if self.timeout_ms <= 0:
            object.__setattr__(self, "timeout_ms", DEFAULT_STATE_TIMEOUT_MS[self.backend])

    @property
    def timeout_seconds(self) -> float:
        """``timeout_ms`` in seconds, as asyncio takes it."""
        return self.timeout_ms / 1000.0


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    gateway_keys: tuple[Principal, ...]  # empty = gateway auth off
    providers: Mapping[str, ProviderConfig]
    routes: Mapping[str, RouteConfig]
    rules: tuple[RuleConfig, ...] | None  # None: the built-in pattern table
    timeouts: Timeouts = field(default_factory=Timeouts)
    retries: Retries = field(default_factory=Retries)
    state: StateConfig = field(default_factory=StateConfig)
    limits: LimitSettings = field(default_factory=LimitSettings)
    source: str = "<memory>"


class _Errors:
    """Collects problems so the whole file is reported at once, one per cause."""

    def __init__(self) -> None:
        self.items: list[str] = []
        # Paths whose ${...} could not be resolved: what follows from that (an empty value, a bad
        # URL) is the same problem and is not reported again.
        self.unresolved: set[str] = set()

    def add(self, path: str, message: str) -> None:
        if path in self.unresolved:
            return
        self.items.append(f"{path}: {message}" if path else message)

    def add_unresolved(self, path: str, message: str) -> None:
        self.add(path, message)
        self.unresolved.add(path)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


# --- interpolation -------------------------------------------------------------------------------


def _interpolate(value: Any, path: str, env: Mapping[str, str], errors: _Errors, base_dir: Path) -> Any:
    """Replace ${VAR}, ${VAR:-default} and ${file:PATH} in every string of a YAML tree."""
    if isinstance(value, str):
        if "${" not in value:
            return value

        def substitute(match: re.Match[str]) -> str:
            expr = match.group(1)
            if expr.startswith("file:"):
                file_path = Path(os.path.expanduser(expr[5:]))
                if not file_path.is_absolute():
                    file_path = base_dir / file_path
                try:
                    content = file_path.read_text(encoding="utf-8").strip()
                except OSError as exc:
                    errors.add_unresolved(path, f"cannot read {file_path}: {exc.strerror or exc}")
                    return ""
                if not content:
                    errors.add_unresolved(path, f"file {file_path} is empty")
                return content
            name, sep, default = expr.partition(":-")
            if not _ENV_NAME_RE.fullmatch(name):
                errors.add_unresolved(path, f"'${{{expr}}}' is not a valid variable reference")
                return ""
            if name in env:
                return env[name]
            if sep:
                return default
            errors.add_unresolved(path, f"environment variable {name} is not set (use ${{{name}:-}} for an empty default)")
            return ""

        return _INTERP_RE.sub(substitute, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, _join(path, str(k)), env, errors, base_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, _join(path, i), env, errors, base_dir) for i, v in enumerate(value)]
    return value


# --- typed readers ------------------------------------------------------------------------------


def _check_keys(raw: Mapping[str, Any], allowed: frozenset[str], path: str, errors: _Errors) -> None:
    for key in raw:
        if key not in allowed:
            hint = ", ".join(sorted(allowed))
            errors.add(_join(path, str(key)), f"unknown key (expected one of: {hint})")


def _number(raw: Any, path: str, errors: _Errors, default: float, *, minimum: float = 0.0,
            positive: bool = False, maximum: float = math.inf) -> float:
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        errors.add(path, f"expected a number, got {type(raw).__name__}")
        return default
    try:
        value = float(raw)
    except ValueError:
        errors.add(path, f"expected a number, got {raw!r}")
        return default
    if not math.isfinite(value):
        errors.add(path, f"expected a finite number, got {raw!r}")
        return default
    if positive and value <= 0:
        errors.add(path, f"must be greater than 0, got {raw!r}")
        return default
    if value < minimum:
        errors.add(path, f"must be at least {minimum:g}, got {raw!r}")
        return default
    if value > maximum:
        errors.add(path, f"must be at most {maximum:g}, got {raw!r}")
        return default
    return value


def _integer(raw: Any, path: str, errors: _Errors, default: int, *, minimum: int = 0,
             maximum: int | None = None) -> int:
    if raw is None:
        return default
    if isinstance(raw, bool):
        errors.add(path, "expected an integer, got a boolean")
        return default
    parsed: int | None = None
    if isinstance(raw, int):
        parsed = raw
    elif isinstance(raw, str) and raw.isascii():
        # int() takes one optional sign and ASCII digits here: "--3" fails, and "²" never gets here.
        with contextlib.suppress(ValueError):
            parsed = int(raw)
    if parsed is None:
        errors.add(path, f"expected an integer, got {raw!r}")
        return default
    value = parsed
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        errors.add(path, f"must be {bound}, got {value}")
        return default
    return value


def _string(raw: Any, path: str, errors: _Errors, default: str = "") -> str:
    if raw is None:
        return default
    if isinstance(raw, datetime.date):
        return raw.isoformat()  # YAML reads an unquoted 2024-10-21 as a date; versions are written so
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        errors.add(path, f"expected a string, got {type(raw).__name__}")
        return default
    return str(raw)


def _mapping(raw: Any, path: str, errors: _Errors) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errors.add(path, f"expected a mapping, got {type(raw).__name__}")
        return {}
    return {str(k): v for k, v in raw.items()}


def _secret(raw: Any, path: str, errors: _Errors) -> Secret | None:
    if raw is None:
        return None
    value = _string(raw, path, errors)
    if not value:
        errors.add(path, "is empty (an unset ${VAR:-} default?); remove the key to send no credential")
        return None
    return Secret(value)


def _http_url(raw: str, path: str, errors: _Errors) -> str:
    """A base URL, validated, without its trailing slash (a path prefix in it is kept)."""
    if not raw:
        return ""
    url = URL(raw)
    if url.scheme not in ("http", "https") or not url.host:
        errors.add(path, f"expected an http(s) URL, got {raw!r}")
        return ""
    if url.query_string or url.fragment:
        errors.add(path, f"a base URL takes no query or fragment, got {raw!r}")
        return ""
    # Normalised once (percent-encoding included) so requests can build on it without re-parsing.
    return str(url).rstrip("/")


def _api_version(raw: str, path: str, errors: _Errors) -> str:
    # It lands in a query string: dates, letters and dashes only.
    if raw and not re.fullmatch(r"[0-9A-Za-z.-]+", raw):
        errors.add(path, f"expected an api-version like 2024-10-21, got {raw!r}")
        return ""
    return raw


# --- sections -----------------------------------------------------------------------------------


def _read_server(raw: Any, errors: _Errors) -> ServerConfig:
    data = _mapping(raw, "server", errors)
    _check_keys(data, frozenset(ServerConfig.__slots__), "server", errors)
    d = ServerConfig()
    return ServerConfig(
        host=_string(data.get("host"), "server.host", errors, d.host) or d.host,
        port=_integer(data.get("port"), "server.port", errors, d.port, minimum=0, maximum=65535),
        max_body_bytes=_integer(data.get("max_body_bytes"), "server.max_body_bytes", errors, d.max_body_bytes,
                                minimum=1024),
        drain_seconds=_number(data.get("drain_seconds"), "server.drain_seconds", errors, d.drain_seconds),
        shutdown_delay_seconds=_number(data.get("shutdown_delay_seconds"), "server.shutdown_delay_seconds",
                                       errors, d.shutdown_delay_seconds),
        max_in_flight=_integer(data.get("max_in_flight"), "server.max_in_flight", errors, d.max_in_flight,
                               minimum=1),
        header_timeout_seconds=_number(data.get("header_timeout_seconds"), "server.header_timeout_seconds",
                                       errors, d.header_timeout_seconds, positive=True),
        body_timeout_seconds=_number(data.get("body_timeout_seconds"), "server.body_timeout_seconds", errors,
                                     d.body_timeout_seconds, positive=True),
        keepalive_seconds=_number(data.get("keepalive_seconds"), "server.keepalive_seconds", errors,
                                  d.keepalive_seconds, positive=True),
        max_connections=_integer(data.get("max_connections"), "server.max_connections", errors,
                                 d.max_connections, minimum=1),
        max_header_bytes=_integer(data.get("max_header_bytes"), "server.max_header_bytes", errors,
                                  d.max_header_bytes, minimum=1024, maximum=1024 * 1024),
        max_buffered_body_bytes=_integer(data.get("max_buffered_body_bytes"), "server.max_buffered_body_bytes",
                                         errors, d.max_buffered_body_bytes, minimum=1024),
        max_upstream_body_bytes=_integer(data.get("max_upstream_body_bytes"), "server.max_upstream_body_bytes",
                                         errors, d.max_upstream_body_bytes, minimum=1024),
        max_held_bytes=_integer(data.get("max_held_bytes"), "server.max_held_bytes", errors, d.max_held_bytes,
                                minimum=1024),
        allowed_origins=_strings(data.get("allowed_origins"), "server.allowed_origins", errors),
        allowed_hosts=_strings(data.get("allowed_hosts"), "server.allowed_hosts", errors),
        metrics_port=(None if data.get("metrics_port") is None else
                      _integer(data.get("metrics_port"), "server.metrics_port", errors, 0, minimum=0, maximum=65535)),
    )


def _strings(raw: Any, path: str, errors: _Errors) -> tuple[str, ...]:
    """A list of non-empty strings (origins, host names, globs)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errors.add(path, f"expected a list of strings, got {type(raw).__name__}")
        return ()
    out: list[str] = []
    for i, item in enumerate(raw):
        value = _string(item, _join(path, i), errors).strip()
        if value:
            out.append(value)
    return tuple(out)


def _read_timeouts(raw: Any, path: str, errors: _Errors, base: Timeouts) -> Timeouts:
    data = _mapping(raw, path, errors)
    _check_keys(data, frozenset(Timeouts.__slots__), path, errors)

    def one(key: str) -> float:
        return _number(data.get(key), _join(path, key), errors, getattr(base, key), positive=True)

    return Timeouts(connect=one("connect"), first_byte=one("first_byte"), idle=one("idle"), total=one("total"))


def _read_retries(raw: Any, errors: _Errors) -> Retries:
    data = _mapping(raw, "retries", errors)
    _check_keys(data, frozenset(Retries.__slots__), "retries", errors)
    d = Retries()
    return Retries(
        attempts=_integer(data.get("attempts"), "retries.attempts", errors, d.attempts, minimum=1, maximum=20),
        cooldown_seconds=_number(data.get("cooldown_seconds"), "retries.cooldown_seconds", errors,
                                 d.cooldown_seconds),
        budget_ratio=_number(data.get("budget_ratio"), "retries.budget_ratio", errors, d.budget_ratio),
        budget_min_per_second=_number(data.get("budget_min_per_second"), "retries.budget_min_per_second", errors,
                                      d.budget_min_per_second),
    )


def _choice(raw: Any, path: str, errors: _Errors, choices: tuple[str, ...], default: str) -> str:
    value = _string(raw, path, errors, default) or default
    if value not in choices:
        errors.add(path, f"expected {' or '.join(choices)}, got {value!r}")
        return default
    return value


def _switch(raw: Any, path: str, errors: _Errors, default: bool) -> bool:
    """``on``/``off`` (YAML 1.1 reads them unquoted as booleans), ``true``/``false`` alike."""
    if raw is None:
        return default
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("on", "off", "true", "false"):
        return raw.strip().lower() in ("on", "true")
    errors.add(path, f"expected on or off, got {raw!r}")
    return default


def _state_path(raw: Any, env: Mapping[str, str], errors: _Errors) -> str:
    """The SQLite directory, absolute: ``state.path``, else systemd's ``$STATE_DIRECTORY`` (its first
    entry: the unit may list several), else ``./tensorwall-state``."""
    given = _string(raw, "state.path", errors).strip()
    if not given:
        given = env.get("STATE_DIRECTORY", "").split(":")[0] or DEFAULT_STATE_PATH
    return os.path.abspath(os.path.expanduser(given))


def _redis_url(raw: Any, errors: _Errors) -> Secret | None:
    # The URL may carry a password: no message here repeats it.
    text = _string(raw, "state.url", errors).strip()
    if not text:
        return None
    try:
        url = URL(text)
    except ValueError:
        url = None
    if url is None or url.scheme not in ("redis", "rediss") or not url.host:
        errors.add("state.url", "expected a redis:// or rediss:// URL with a host (the value is not shown)")
        return None
    return Secret(text)


def _read_state(raw: Any, env: Mapping[str, str], errors: _Errors) -> StateConfig:
    data = _mapping(raw, "state", errors)
    _check_keys(data, frozenset(StateConfig.__slots__), "state", errors)
    d = StateConfig()
    backend = _choice(data.get("backend"), "state.backend", errors, STATE_BACKENDS, d.backend)
    url = _redis_url(data.get("url"), errors)
    given = data.get("url") not in (None, "")  # a bad one is reported as such, not as missing too
    if backend == "redis" and not given and "state.url" not in errors.unresolved:
        errors.add("state.url", "required with `backend: redis` (redis://host:6379/0, or rediss:// for TLS)")
    key_prefix = _string(data.get("key_prefix"), "state.key_prefix", errors, d.key_prefix)
    if len(key_prefix) > 64 or not key_prefix.isprintable() or " " in key_prefix:
        errors.add("state.key_prefix", "expected at most 64 printable characters without spaces")
        key_prefix = d.key_prefix
    return StateConfig(
        backend=backend,  # type: ignore[arg-type]  # one of STATE_BACKENDS, checked above
        path=_state_path(data.get("path"), env, errors),
        url=url,
        key_prefix=key_prefix,
        # 0 (absent) is the backend's default; a minute is far past any useful wait on a request's path.
        timeout_ms=_number(data.get("timeout_ms"), "state.timeout_ms", errors, 0.0, positive=True, maximum=60_000),
        fail_mode=_choice(data.get("fail_mode"), "state.fail_mode", errors,  # type: ignore[arg-type]
                          ("open", "closed"), d.fail_mode),
        responses=_switch(data.get("responses"), "state.responses", errors, d.responses),
        responses_ttl_seconds=_integer(data.get("responses_ttl_seconds"), "state.responses_ttl_seconds", errors,
                                       d.responses_ttl_seconds, minimum=1),
        secret=_secret(data.get("secret"), "state.secret", errors),
    )


# A principal's name: it labels metrics and is a Redis hash tag (`{tw:<name>}`), so no braces,
# spaces or colons (a name never looks like a digest).
_PRINCIPAL_NAME_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}")
_PRINCIPAL_KEYS: Final = frozenset({"name", "key", "models", "expires", "limits"})


def _read_gateway_keys(raw: Any, present: bool, errors: _Errors) -> tuple[Principal, ...]:
    if not present:
        errors.add("gateway_keys", "missing: list the accepted X-API-Key values, or write `gateway_keys: []` "
                                   "to turn gateway auth off")
        return ()
    if not isinstance(raw, list):
        # Only an explicit [] turns auth off: `gateway_keys:` with nothing after it is a mistake.
        errors.add("gateway_keys", f"expected a list (use [] to turn gateway auth off), got {type(raw).__name__}")
        return ()
    principals: list[Principal] = []
    # digest or name → the path that first had it, and whether that entry was a mapping. A plain key
    # listed twice is harmless; a key shared with a principal would make the principal ambiguous.
    seen: dict[str, tuple[str, bool]] = {}
    for i, item in enumerate(raw):
        path = _join("gateway_keys", i)
        mapped = isinstance(item, dict)
        principal = _read_principal(item, path, errors) if mapped else _read_key(item, path, errors)
        if principal is None:
            continue
        for what, value in (("key", principal.digest), ("name", principal.name)):
            if value is None:
                continue
            if value in seen and (mapped or seen[value][1]):
                errors.add(path, f"the same {what} as {seen[value][0]}: each principal has a key and a name of "
                                 "its own")
            seen.setdefault(value, (path, mapped))
        principals.append(principal)
    return tuple(principals)


def _read_key(raw: Any, path: str, errors: _Errors) -> Principal | None:
    """A key as the YAML gives it (plain, or a ``sha256:`` digest) as a principal of its digest."""
    value = _string(raw, path, errors)
    if not value:
        errors.add(path, "is empty (an unset ${VAR:-} default?); an empty key never turns auth off")
        return None
    if value[:len(SHA256_PREFIX)].lower() == SHA256_PREFIX:
        if not _DIGEST_RE.fullmatch(value):
            errors.add(path, "a digest is `sha256:` followed by 64 hex digits (see `tensorwall-proxy hash-key`)")
            return None
        return Principal(value.lower())
    return Principal(key_digest(value))


def _read_principal(raw: Mapping[str, Any], path: str, errors: _Errors) -> Principal | None:
    """A mapping entry of ``gateway_keys``: name, key, models, expires, limits (DESIGN §13)."""
    data = _mapping(raw, path, errors)
    _check_keys(data, _PRINCIPAL_KEYS, path, errors)
    name = None
    if data.get("name") is not None:
        name = _string(data["name"], _join(path, "name"), errors)
        if not _PRINCIPAL_NAME_RE.fullmatch(name):
            errors.add(_join(path, "name"), "a principal's name is 1 to 64 of letters, digits, '_', '.', '@' and "
                                            "'-', starting with a letter, a digit or '_'")
            name = None
    if data.get("key") is None:
        errors.add(_join(path, "key"), "required: the key (plain, from ${ENV} or ${file:...}) or its sha256: digest")
        return None
    keyed = _read_key(data["key"], _join(path, "key"), errors)
    models = None
    if data.get("models") is not None:
        models = _strings(data["models"], _join(path, "models"), errors)
    expires_at = _expiry(data.get("expires"), _join(path, "expires"), errors)
    limits = _read_limits(data["limits"], _join(path, "limits"), errors) if data.get("limits") is not None else None
    if keyed is None:
        return None
    return Principal(keyed.digest, name=name, models=models, expires_at=expires_at, limits=limits)


def _expiry(raw: Any, path: str, errors: _Errors) -> float | None:
    """``expires``: a date (the key serves through that UTC day) or a date-time (with its zone,
    else UTC), as Unix seconds from which the key is refused."""
    if raw is None:
        return None
    moment: datetime.datetime | None = None
    if isinstance(raw, datetime.datetime):
        moment = raw
    elif isinstance(raw, datetime.date):
        moment = datetime.datetime.combine(raw + datetime.timedelta(days=1), datetime.time())
    elif isinstance(raw, str):
        with contextlib.suppress(ValueError):
            if len(raw.strip()) == 10:
                day = datetime.date.fromisoformat(raw.strip())
                moment = datetime.datetime.combine(day + datetime.timedelta(days=1), datetime.time())
            else:
                moment = datetime.datetime.fromisoformat(raw.strip())
    if moment is None:
        errors.add(path, f"expected a date (2027-06-30) or a date-time (2027-06-30T18:00:00Z), got {raw!r}")
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _read_limits(raw: Any, path: str, errors: _Errors) -> Limits | None:
    data = _mapping(raw, path, errors)
    _check_keys(data, frozenset(Limits.__slots__), path, errors)

    def one(key: str) -> int | None:
        if data.get(key) is None:
            return None
        return _integer(data[key], _join(path, key), errors, 1, minimum=1, maximum=10**12)

    limits = Limits(requests_per_minute=one("requests_per_minute"), tokens_per_minute=one("tokens_per_minute"),
                    tokens_per_day=one("tokens_per_day"), concurrent=one("concurrent"))
    return limits if limits != Limits() else None


def _read_limit_settings(raw: Any, errors: _Errors) -> LimitSettings:
    data = _mapping(raw, "limits", errors)
    _check_keys(data, frozenset(LimitSettings.__slots__), "limits", errors)
    d = LimitSettings()
    return LimitSettings(default_output_reservation=_integer(
        data.get("default_output_reservation"), "limits.default_output_reservation", errors,
        d.default_output_reservation, minimum=0, maximum=10**9))


def _read_provider(name: str, raw: Mapping[str, Any], errors: _Errors) -> ProviderConfig | None:
    path = _join("providers", name)
    ptype = raw.get("type", name if name in TYPES else None)
    if ptype is None:
        errors.add(path, f"a provider not named like one of the nine types needs `type` ({', '.join(PROVIDER_TYPES)})")
        return None
    if ptype not in PROVIDER_TYPES:
        errors.add(_join(path, "type"), f"unknown provider type {ptype!r} (expected one of: {', '.join(PROVIDER_TYPES)})")
        return None
    kind = TYPES[ptype]
    _check_keys(raw, _COMMON_KEYS | kind.keys, path, errors)

    default_auth: AuthMode = kind.default_auth
    auth = _string(raw.get("auth"), _join(path, "auth"), errors, default_auth) or default_auth
    if auth not in ("forward", "ambient", "none"):
        errors.add(_join(path, "auth"), f"expected forward, ambient or none, got {auth!r}")
        auth = default_auth
    if auth == "ambient" and kind.ambient is None:
        names = " and ".join(t.name for t in TYPES.values() if t.ambient is not None)
        errors.add(_join(path, "auth"), f"ambient credentials exist only for {names} providers")
        auth = default_auth

    models_raw = raw.get("models") or []
    models: list[str] = []
    if not isinstance(models_raw, list):
        errors.add(_join(path, "models"), "expected a list of model ids")
    else:
        for i, m in enumerate(models_raw):
            model = _string(m, _join(_join(path, "models"), i), errors)
            if model:
                models.append(model)

    def text(key: str) -> str:
        return _string(raw.get(key), _join(path, key), errors).strip()

    base_url = _http_url(text("base_url"), _join(path, "base_url"), errors)
    endpoint = _http_url(text("endpoint"), _join(path, "endpoint"), errors)
    default_max_tokens = None
    if raw.get("default_max_tokens") is not None:
        default_max_tokens = _integer(raw.get("default_max_tokens"), _join(path, "default_max_tokens"),
                                      errors, 4096, minimum=1)
    provider = ProviderConfig(
        name=name,
        type=ptype,
        auth=auth,  # type: ignore[arg-type]  # checked against the three modes above
        api_key=_secret(raw.get("api_key"), _join(path, "api_key"), errors),
        models=tuple(models),
        base_url=base_url,
        endpoint=endpoint,
        api_version=_api_version(text("api_version"), _join(path, "api_version"), errors),
        version=text("version"),
        default_max_tokens=default_max_tokens,
        project=text("project"),
        location=text("location"),
        region=text("region"),
        aws_access_key_id=_secret(raw.get("aws_access_key_id"), _join(path, "aws_access_key_id"), errors),
        aws_secret_access_key=_secret(raw.get("aws_secret_access_key"), _join(path, "aws_secret_access_key"),
                                      errors),
        aws_session_token=_secret(raw.get("aws_session_token"), _join(path, "aws_session_token"), errors),
        profile=text("profile"),
        key_scope=text("key_scope") or name,
        betas=_strings(raw["betas"], _join(path, "betas"), errors) if raw.get("betas") is not None else None,
        anthropic_models=_strings(raw.get("anthropic_models"), _join(path, "anthropic_models"), errors),
        dialects=_dialects(raw["dialects"], _join(path, "dialects"), kind, errors)
        if raw.get("dialects") is not None else None,
    )
    setting, env_var = kind.required, kind.required_env
    if not getattr(provider, setting):
        # Where to set it: a default provider reads its environment variable; another only its YAML.
        hint = f"set {env_var} or {_join(path, setting)}" if name == ptype else f"set {_join(path, setting)}"
        provider = replace(provider, unconfigured=f"provider '{name}' is not configured: {setting} is empty ({hint})")
    return provider


def _dialects(raw: Any, path: str, kind: ProviderType, errors: _Errors) -> tuple[str, ...]:
    """A provider's ``dialects:``: names the gateway knows whose native path the type's wire has;
    ``chat`` is implied."""
    names: list[str] = ["chat"]
    for i, name in enumerate(_strings(raw, path, errors)):
        if name not in DIALECT_NAMES:
            errors.add(_join(path, i), f"unknown dialect {name!r} (expected one of: {', '.join(DIALECT_NAMES)})")
        elif name not in kind.declarable:
            errors.add(_join(path, i), f"provider type '{kind.name}' cannot pass {name!r} through natively "
                                       f"(it can: {', '.join(kind.declarable)})")
        elif name not in names:
            names.append(name)
    return tuple(names)


def _read_providers(raw: Any, defaults: Mapping[str, dict[str, Any]], errors: _Errors,
                    env: Mapping[str, str] | None = None) -> dict[str, ProviderConfig]:
    data = _mapping(raw, "providers", errors)
    merged: dict[str, dict[str, Any]] = {name: dict(values) for name, values in defaults.items()}
    for name, values in data.items():
        if values is None:
            values = {}
        if not isinstance(values, dict):
            errors.add(_join("providers", name), f"expected a mapping, got {type(values).__name__}")
            continue
        if not _PROVIDER_NAME_RE.fullmatch(name):
            errors.add(_join("providers", name), "a provider name takes letters, digits, '_', '-' and '.'")
            continue
        if name in TYPES and values.get("type", name) == name:
            merged[name].update(values)
        else:
            type_defaults = _interpolate(TYPE_DEFAULTS.get(str(values.get("type")), {}), _join("providers", name),
                                         os.environ if env is None else env, errors, Path.cwd())
            merged[name] = {**type_defaults, **values}
    providers: dict[str, ProviderConfig] = {}
    for name, values in merged.items():
        provider = _read_provider(name, values, errors)
        if provider is not None:
            providers[name] = provider
    return providers


def _read_endpoint(raw: Any, path: str, providers: Mapping[str, ProviderConfig],
                   errors: _Errors) -> EndpointConfig | None:
    data = _mapping(raw, path, errors)
    _check_keys(data, frozenset(EndpointConfig.__slots__), path, errors)
    provider = _string(data.get("provider"), _join(path, "provider"), errors)
    if not provider:
        errors.add(_join(path, "provider"), "required")
        return None
    if provider not in providers:
        errors.add(_join(path, "provider"), f"unknown provider {provider!r}")
        return None
    model = _string(data.get("model"), _join(path, "model"), errors) or None
    return EndpointConfig(
        provider=provider,
        model=model,
        weight=_integer(data.get("weight"), _join(path, "weight"), errors, 1, minimum=0),
        priority=_integer(data.get("priority"), _join(path, "priority"), errors, 0, minimum=0),
        api_key=_secret(data.get("api_key"), _join(path, "api_key"), errors),
    )


def _read_routes(raw: Any, providers: Mapping[str, ProviderConfig], base: Timeouts,
                 errors: _Errors) -> dict[str, RouteConfig]:
    data = _mapping(raw, "routes", errors)
    routes: dict[str, RouteConfig] = {}
    for name, value in data.items():
        path = _join("routes", name)
        route = _mapping(value, path, errors)
        _check_keys(route, frozenset({"strategy", "endpoints", "timeouts", "max_output_tokens"}), path, errors)
        strategy = _choice(route.get("strategy"), _join(path, "strategy"), errors, ("weighted", "priority"),
                           "weighted")
        raw_endpoints = route.get("endpoints")
        if not isinstance(raw_endpoints, list) or not raw_endpoints:
            errors.add(_join(path, "endpoints"), "expected a non-empty list of endpoints")
            continue
        endpoints = [
            _read_endpoint(item, _join(_join(path, "endpoints"), i), providers, errors)
            for i, item in enumerate(raw_endpoints)
        ]
        timeouts = None
        if route.get("timeouts") is not None:
            timeouts = _read_timeouts(route["timeouts"], _join(path, "timeouts"), errors, base)
        routes[name] = RouteConfig(
            name=name,
            endpoints=tuple(e for e in endpoints if e is not None),
            strategy=strategy,  # type: ignore[arg-type]  # checked above
            timeouts=timeouts,
            max_output_tokens=None if route.get("max_output_tokens") is None else _integer(
                route["max_output_tokens"], _join(path, "max_output_tokens"), errors, 1, minimum=1, maximum=10**9),
        )
    return routes


def _read_rules(raw: Any, present: bool, providers: Mapping[str, ProviderConfig],
                errors: _Errors) -> tuple[RuleConfig, ...] | None:
    if not present:
        return None
    if not isinstance(raw, list):
        errors.add("rules", f"expected a list, got {type(raw).__name__}")
        return None
    rules: list[RuleConfig] = []
    for i, item in enumerate(raw):
        path = _join("rules", i)
        data = _mapping(item, path, errors)
        _check_keys(data, frozenset(RuleConfig.__slots__), path, errors)
        match = _string(data.get("match"), _join(path, "match"), errors)
        provider = _string(data.get("provider"), _join(path, "provider"), errors)
        if not match:
            errors.add(_join(path, "match"), "required")
            continue
        if provider not in providers:
            errors.add(_join(path, "provider"), f"unknown provider {provider!r}" if provider else "required")
            continue
        rules.append(RuleConfig(match=match, provider=provider,
                                strip=_string(data.get("strip"), _join(path, "strip"), errors)))
    return tuple(rules)


def _check_key_scopes(routes: Mapping[str, RouteConfig], providers: Mapping[str, ProviderConfig],
                      errors: _Errors) -> None:
    """Within one request the caller's key reaches at most one key scope (DESIGN §6, §14): a route
    whose endpoints would carry it to two is refused, naming the endpoint and the remedies."""
    for route in routes.values():
        first: tuple[int, ProviderConfig] | None = None
        for i, endpoint in enumerate(route.endpoints):
            provider = providers[endpoint.provider]
            if not provider.carries_caller_key(endpoint.api_key):
                continue
            if first is None:
                first = (i, provider)
                continue
            j, other = first
            if provider.scope == other.scope:
                continue
            errors.add(
                f"routes.{route.name}.endpoints[{i}]",
                f"would carry the caller's key to provider '{provider.name}' (key scope '{provider.scope}') "
                f"while endpoints[{j}] carries it to '{other.name}' (key scope '{other.scope}'); within one "
                "request the caller's key reaches one key scope. Give this endpoint (or its provider) an "
                "api_key, set `auth: none` on a provider that needs no key, or give providers that may "
                "share the caller's key one `key_scope`",
            )


_TOP_KEYS: Final = frozenset({"server", "gateway_keys", "providers", "routes", "rules", "timeouts", "retries",
                              "state", "limits"})


# The quoted pieces of PyYAML's problems that are its own words: a token name like '<block end>',
# or one character like ']' or '\t'. Any other quoted piece is the file's own text (a tag, an
# alias name) and may be a secret.
_QUOTED: Final = re.compile(r"'([^']*)'")
_OWN_WORD: Final = re.compile(r"<[a-z ]+>|\\?.")


def _without_file_text(problem: str) -> str:
    """The problem up to the first quoted piece of the file's own text."""
    for match in _QUOTED.finditer(problem):
        if not _OWN_WORD.fullmatch(match.group(1)):
            return problem[:match.start()] + "(not shown)"
    return problem


def yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """What is wrong with the YAML and where (line and column), never the offending line itself.

    PyYAML's own message quotes the line under a caret, and that line may hold a key pasted in by
    hand: only the position and the kind of problem are kept.
    """
    if isinstance(exc, yaml.reader.ReaderError):
        before = text[:max(exc.position, 0)]
        line, column = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
        code = f" (#x{exc.character:04x})" if isinstance(exc.character, int) else ""
        return f"line {line}, column {column}: a character YAML does not allow{code}: {exc.reason}"
    if not isinstance(exc, yaml.MarkedYAMLError):
        return type(exc).__name__
    problem = _without_file_text(exc.problem or exc.context or "invalid syntax")
    where = f"line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}: " if exc.problem_mark else ""
    if exc.context and exc.problem and exc.context_mark is not None:
        context = _without_file_text(exc.context)
        problem += f" ({context} at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1})"
    return where + problem


def parse_config(text: str, *, env: Mapping[str, str] | None = None, source: str = "<memory>",
                 base_dir: Path | None = None) -> Config:
    """Parse and validate YAML text. Raises ConfigError listing every problem with its YAML path."""
    errors = _Errors()
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: not valid YAML: {yaml_problem(exc, text)}"]) from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError([f"{source}: the top level must be a mapping"])
    environ = os.environ if env is None else env
    base = base_dir or Path.cwd()
    _check_keys(loaded, _TOP_KEYS, "", errors)
    # Defaults are interpolated too, and under their own YAML path, so a bad ${...} there is named.
    raw = _interpolate(loaded, "", environ, errors, base)
    defaults = {name: _interpolate(values, _join("providers", name), environ, errors, base)
                for name, values in DEFAULT_PROVIDERS.items()}

    server = _read_server(raw.get("server"), errors)
    gateway_keys = _read_gateway_keys(raw.get("gateway_keys"), "gateway_keys" in raw, errors)
    providers = _read_providers(raw.get("providers"), defaults, errors, environ)
    timeouts = _read_timeouts(raw.get("timeouts"), "timeouts", errors, Timeouts())
    retries = _read_retries(raw.get("retries"), errors)
    routes = _read_routes(raw.get("routes"), providers, timeouts, errors)
    rules = _read_rules(raw.get("rules"), "rules" in raw, providers, errors)
    state = _read_state(raw.get("state"), environ, errors)
    limits = _read_limit_settings(raw.get("limits"), errors)
    _check_key_scopes(routes, providers, errors)
    if errors.items:
        raise ConfigError(errors.items)
    return Config(server=server, gateway_keys=gateway_keys, providers=providers, routes=routes, rules=rules,
                  timeouts=timeouts, retries=retries, state=state, limits=limits, source=source)


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML file (relative ``${file:...}`` paths resolve next to it)."""
    file_path = Path(path)
    try:
        text = file_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{file_path}: cannot read: {exc.strerror or exc}"]) from None
    return parse_config(text, env=env, source=str(file_path), base_dir=file_path.parent)


def default_config_path(env: Mapping[str, str] | None = None) -> str:
    """``$TENSORWALL_CONFIG``, else ``config/tensorwall.yaml``."""
    environ = os.environ if env is None else env
    return environ.get("TENSORWALL_CONFIG") or "config/tensorwall.yaml"


def is_loopback(host: str) -> bool:
    """Whether a bind address is loopback only (the one place auth-off may listen)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
