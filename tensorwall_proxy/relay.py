"""One request's journey: plan → attempts → translate → send → commit → stream → account.

This is the only module that knows all the others, and the only retry loop in the gateway: the
attempts go through the route's endpoints in the router's order, at most ``retries.attempts`` in
all, and fall back on connect errors, timeouts before the commit point, 408, 429 and 5xx. A
request travels as one ``Flow``, and the code below reads in that order.

The commit point (DESIGN §1): status and headers are held until the upstream has produced
something the client must see. Before it, any failure may still fall back to the next endpoint;
after it, a failure becomes one ``data: {"error": ...}`` event and the stream ends without
``[DONE]``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, NamedTuple, TypeVar

import aiohttp
import orjson
from aiohttp import web

from . import upstream
from .auth import Credential, GatewayKeys, check_model, credential_for, missing_provider_key
from .calls import UpstreamCall
from .clock import SilenceClock
from .config import Config, Principal, ProviderConfig, Secret, Timeouts
from .dialects import Catalog, Dialect
from .errors import (
    GatewayError,
    ProviderNotConfigured,
    UnsupportedField,
    UpstreamError,
    detach,
)
from .health import HealthBook, HealthKey, RetryBudget, when_all_blocked
from .limits import Admission, Limiter, RateLimited, Verdict, reservation
from .observability import THROTTLE, Ledger, Metrics, RequestRecord, outcome_of
from .providers import ChatRequest, EmbeddingsRequest, NativeStream, Provider, StreamDecoder, provider_for
from .providers.anthropic_wire import beta_label
from .router import LLMRouter, Route, RouteEndpoint
from .sse import SseError, SseEvent
from .state import Store
from .state.holder import Opening, StateHolder, open_limits
from .tokens import count_of

JSON: Final = "application/json"
# A failure that never reached the upstream may try the same endpoint again, this often, after
# RETRY_BACKOFF seconds (doubling, jittered ±50 %).
SAME_ENDPOINT_RETRIES: Final = 1
RETRY_BACKOFF: Final = 0.05
# Upstream calls one request may have in flight at once (batched embeddings fan out).
FAN_OUT: Final = 8
log = logging.getLogger(__name__)

# Upstream response headers worth passing to the caller (rate-limit state helps client back-off):
# OpenAI's, by name, so an upstream cannot fill the caller's response with headers of its choosing.
PASSED_HEADERS: Final = ("x-ratelimit-limit-requests", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-requests",
                         "x-ratelimit-remaining-tokens", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
# A passed header's value is short printable ASCII ("1m30s", "149984"); anything else is dropped.
MAX_PASSED_VALUE: Final = 64
# A read that completed no event past the decoder's plain run.
NO_EVENTS: Final[tuple[SseEvent, ...]] = ()
# What a translator or a body check may raise on an upstream answer of the wrong shape: that
# answer is the upstream's failure (502, may fall back), not the gateway's (500).
MALFORMED: Final = (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError, RecursionError)


@dataclass(frozen=True, slots=True)
class Table:
    """Everything a request reads from the configuration, swapped whole on reload."""

    config: Config
    router: LLMRouter
    catalog: Catalog
    keys: GatewayKeys
    # Unconfigured providers this table has named in the log: once each, not once per request.
    logged: set[str] = field(default_factory=set, compare=False)


@dataclass(slots=True)
class Gateway:
    """Process-wide state: the current table, endpoint health, the upstream session, the state store."""

    table: Table
    health: HealthBook = field(default_factory=HealthBook)
    budget: RetryBudget = field(default_factory=RetryBudget)
    in_flight: int = 0
    metrics: Metrics | None = None
    session: aiohttp.ClientSession | None = None
    ambient: upstream.Ambient = field(default_factory=lambda: upstream.Ambient())
    # Streams past their commit point, so a drain that runs out of time can end them in-band.
    streams: set[asyncio.Task[Any]] = field(default_factory=set)
    ready: bool = False
    # Connections with a request being served (aiohttp serves one at a time per connection), so
    # the drain knows when they are done; `idle` is set once none is left while draining.
    busy: set[object] = field(default_factory=set)
    draining: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    # The state store, opened by the first request that needs it (``store()``).
    state: StateHolder = field(default_factory=StateHolder)
    # The principals' limits, their counters opened beside the state store on first need.
    limits: Limiter = field(default_factory=lambda: Limiter(Opening(None, None, open_limits)))
    ledger: Ledger = field(init=False)

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.metrics, lambda: self.in_flight)

    async def store(self) -> Store:
        """The process's state store, opened on first use; StoreError when it cannot be opened."""
        return await self.state.store()

    def release(self, connection: Any) -> None:
        """A request on ``connection`` is done. While draining the connection closes after it,
        rather than wait idle for another request."""
        self.busy.discard(connection)
        if self.draining:
            connection.close()
            if not self.busy:
                self.idle.set()


# The request's record for the access log and the metrics, made by the HTTP layer.
RECORD: Final = web.RequestKey("record", RequestRecord)
# Who is calling (auth.GatewayKeys.admit), set by the HTTP layer; None with gateway keys off.
PRINCIPAL: Final[web.RequestKey[Principal | None]] = web.RequestKey("principal")
# The response a request committed to, so the HTTP layer never starts a second one after it.
COMMITTED: Final = web.RequestKey("committed", web.StreamResponse)
# The cancel message that tells a committed stream the gateway is shutting down.
DRAINING: Final = "tensorwall-proxy draining"


def end_streams(gateway: Gateway) -> int:
    """End every committed stream with an in-band error (the drain ran out of time); returns how many."""
    streams = list(gateway.streams)
    for task in streams:
        task.cancel(DRAINING)
    return len(streams)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One endpoint of the plan with the provider behind it and the credential it will carry."""

    endpoint: RouteEndpoint
    provider: ProviderConfig
    credential: Credential
    health_key: HealthKey
    cooldown_seconds: float  # after a 429 without Retry-After, from the request's table

    @property
    def model(self) -> str:
        # The router fills every endpoint's model in; a RouteEndpoint without one never gets here.
        return self.endpoint.model or ""


Req = TypeVar("Req", ChatRequest, EmbeddingsRequest)
Call = TypeVar("Call")  # what one attempt sends: an UpstreamCall, or several for batched embeddings


class Pin(NamedTuple):
    """The one endpoint a request may be served by, and the error when its route has none such."""

    provider: str
    model: str
    elsewhere: GatewayError


class Flow(Generic[Req, Call]):
    """One request on its way through the relay, made once when it arrives (mitmproxy's HTTPFlow is
    the model): what was asked, the table it is served by, the plan and where the attempts are in
    it, what the caller has been sent, and the record. The functions below take it in place of a
    request's loose state, and its two kinds (chat, embeddings) say how an attempt is translated
    and executed in place of closures made per request."""

    __slots__ = ("attempt", "attempts", "caller", "client", "gateway", "impl", "pinned", "principal", "rate_headers",
                 "record", "req", "request", "request_id", "route", "table", "timeouts")

    # The current attempt and its provider type's translator: set by run_attempts before a send.
    attempt: Attempt
    impl: Provider

    def __init__(self, gateway: Gateway, request: web.Request, req: Req, caller: Secret | None,
                 request_id: str) -> None:
        table = gateway.table  # requests in flight keep the table they started with
        principal = request.get(PRINCIPAL)
        if principal is not None and principal.models is not None:
            check_model(principal, str(req.body["model"]))  # 403 before the name is even resolved
        route = table.router.resolve(req.body["model"])
        self.gateway = gateway
        self.table = table
        self.principal = principal
        # The principal's rate-limit headers (DESIGN §13), on every answer when it has limits.
        self.rate_headers: dict[str, str] | None = None
        self.request = request
        self.req: Req = req
        self.caller = caller
        self.request_id = request_id
        self.record = request[RECORD]
        self.route = route
        self.timeouts: Timeouts = route.timeouts or table.config.timeouts
        self.attempts: list[Attempt] = []
        # The response the caller was committed to (a stream past its commit point), else None.
        self.client: web.StreamResponse | None = None
        # The one endpoint that may serve (provider, upstream model), with the error when the route
        # has no such endpoint: a follow-up to an answer only that provider holds (DESIGN §14).
        self.pinned: Pin | None = None

    def build(self, credential: Credential) -> Call:
        """The current attempt's upstream call(s), translated from the request; raises
        UnsupportedField for what the attempt's provider type cannot express."""
        raise NotImplementedError

    async def execute(self, call: Call) -> web.StreamResponse:
        """Send the current attempt and answer the caller from it; raises UpstreamError before
        the commit point."""
        raise NotImplementedError


# Work that must be done before the caller receives the end of an answer: a stored response is
# written before its JSON body or its stream's terminal event goes out (DESIGN §14). Given the flow
# (which attempt answered, natively or not) and the caller's whole body, or the stream's decoder
# once it is done; it never raises.
Finish = Callable[["ChatFlow", bytes | StreamDecoder], Awaitable[None]]


class ChatFlow(Flow[ChatRequest, UpstreamCall]):
    """A request in the pivot (``/v1/chat/completions`` and the dialects on it), streamed or not;
    ``dialect`` (the one it came in) makes what the caller receives, answers, events and errors
    past the commit point alike.

    Native per attempt (DESIGN §12): when the dialect made a native body (``req.native``) and the
    attempt's provider speaks the dialect itself (``Provider.native``), that attempt sends the
    caller's body with only ``model`` rewritten and relays the provider's answer as it came;
    otherwise it translates through the pivot. A route may mix both: each attempt decides, and
    fallback between them is the same loop. ``upstream_id`` is the provider's id for the answer a
    native attempt relayed, known before its first byte reaches the caller (``relayed``).
    """

    __slots__ = ("dialect", "finish", "native", "upstream_id")

    def __init__(self, gateway: Gateway, request: web.Request, req: ChatRequest, dialect: Dialect,
                 caller: Secret | None, request_id: str, finish: Finish | None = None) -> None:
        super().__init__(gateway, request, req, caller, request_id)
        self.dialect = dialect
        self.finish = finish
        self.native = False  # the current attempt passes the caller's body through
        self.upstream_id: str | None = None

    def build(self, credential: Credential) -> UpstreamCall:
        attempt, req, name = self.attempt, self.req, self.dialect.name
        self.native = req.native is not None and self.impl.native(name, attempt.provider, attempt.model)
        if self.native:
            call = self.impl.build_native_request(name, req, attempt.provider, attempt.model, credential)
        else:
            call = self.impl.build_request(req, attempt.provider, attempt.model, credential)
            # No chat translator keeps cache breakpoints yet: each one the caller marked is dropped.
            self.record.cache_markers_dropped = req.cache_markers
        self.record.betas_stripped = tuple(beta_label(beta) for beta in call.stripped)
        if call.stripped:
            log.debug("request %s: betas not passed to provider %s: %s", self.request_id, attempt.provider.name,
                      ", ".join(call.stripped))
        return call

    def relayed(self, upstream_id: str | None) -> None:
        """A native attempt is committed to an answer the provider knows by ``upstream_id`` (a
        Response's id, read from ``response.created`` or the body): called once, before the
        caller receives its first byte, so what must be recorded of it (Responses' affinity:
        DESIGN §14) is recorded first."""
        self.upstream_id = upstream_id

    async def execute(self, call: UpstreamCall) -> web.StreamResponse:
        if self.req.stream:
            return await _stream(self, call)
        return await _answer(self, call)


class EmbeddingsFlow(Flow[EmbeddingsRequest, list[UpstreamCall]]):
    """A ``/v1/embeddings`` request: one or several calls per attempt, never streamed."""

    __slots__ = ()

    def build(self, credential: Credential) -> list[UpstreamCall]:
        attempt = self.attempt
        return self.impl.build_embeddings_request(self.req, attempt.provider, attempt.model, credential)

    async def execute(self, call: list[UpstreamCall]) -> web.StreamResponse:
        bodies, headers = await _unary_all(self, call)
        name = self.attempt.provider.name
        try:
            out = self.impl.parse_embeddings_response(self.req, self.attempt.provider, bodies)
        except MALFORMED as exc:
            raise _malformed(name, "an answer", exc) from None
        self.record.count(_usage_of(out, "data", name))
        self.record.committed()
        return web.Response(body=out, headers=_response_headers(self.request_id, name, headers, JSON,
                                                                rate=self.rate_headers))


async def chat(gateway: Gateway, request: web.Request, req: ChatRequest, dialect: Dialect, caller: Secret | None,
               request_id: str, finish: Finish | None = None, pinned: Pin | None = None) -> web.StreamResponse:
    """Serve one request in the pivot, streamed or not, in ``dialect``; ``finish`` runs before the
    end of the answer reaches the caller; ``pinned`` names the one endpoint that may serve it."""
    request[RECORD].stream = req.stream
    flow = ChatFlow(gateway, request, req, dialect, caller, request_id, finish)
    flow.pinned = pinned
    return await limited(flow, dialect, output=True)


async def embeddings(gateway: Gateway, request: web.Request, req: EmbeddingsRequest, caller: Secret | None,
                     request_id: str, dialect: Dialect) -> web.StreamResponse:
    """Serve one ``/v1/embeddings`` request (``dialect``: the door's, for its rate-limit headers)."""
    return await limited(EmbeddingsFlow(gateway, request, req, caller, request_id), dialect, output=False)


async def limited(flow: Flow[Any, Any], dialect: Dialect, *, output: bool) -> web.StreamResponse:
    """``run_attempts`` under the principal's limits (DESIGN §13): checked before the first attempt
    (429 ``gateway_rate_limited`` costs no upstream call), and when the request ends, however it
    ends, its tokens corrected to the provider's usage and its lease released. A principal without
    limits touches no store. ``output`` is whether the request reserves output tokens."""
    principal = flow.principal
    if principal is None or principal.limits is None:
        return await run_attempts(flow)
    limits, table = principal.limits, flow.table
    tokens = 0
    if limits.counts_tokens:
        route = table.config.routes.get(flow.route.name)
        tokens = reservation(flow.req.body, route.max_output_tokens if route is not None else None,
                             table.config.limits.default_output_reservation, output=output)
    admitted = await flow.gateway.limits.admit(principal, limits, tokens)
    if isinstance(admitted, Verdict):
        raise RateLimited(admitted, dialect.rate_limit_headers(admitted))
    flow.rate_headers = dialect.rate_limit_headers(admitted.verdict)
    limiter = flow.gateway.limits
    if isinstance(flow, ChatFlow):
        # Released before the end of the answer goes out, so a caller that sends its next request
        # the moment this one ends finds its lease free and its tokens corrected.
        flow.finish = _released_first(flow.finish, limiter, admitted)
    try:
        return await run_attempts(flow)
    finally:
        record = flow.record
        used: int | None = record.prompt_tokens + record.completion_tokens
        if not used:
            # No usage: nothing reached the caller (refunded whole), or an answer whose usage never
            # came (a disconnect, a stream cut short): the reservation stands.
            used = None if record.first_byte is not None else 0
        await limiter.finish(admitted, used)  # once: a no-op when the answer's end released it


def _released_first(finish: Finish | None, limiter: Limiter, admission: Admission) -> Finish:
    """``finish`` (a stored response's write), then the admission released with the answer's usage."""

    async def done(flow: ChatFlow, answer: bytes | StreamDecoder) -> None:
        if finish is not None:
            await finish(flow, answer)
        if isinstance(answer, bytes):
            used = flow.record.prompt_tokens + flow.record.completion_tokens
        else:
            usage = answer.usage
            used = count_of(usage, "prompt_tokens") + count_of(usage, "completion_tokens") if usage else 0
        await limiter.finish(admission, used or None)

    return done


def plan(flow: Flow[Any, Any]) -> list[Attempt]:
    """The attempts for one request in order, before the attempt cap and the one-key-scope rule.

    Endpoints that cannot be tried at all (provider not configured, no credential) are left out;
    when that leaves none, the reason is the error. Unhealthy endpoints are skipped while any is
    healthy; when none is, DESIGN §5 decides (429 at once, or the first ejection to end).
    """
    table, route, caller = flow.table, flow.route, flow.caller
    usable: list[Attempt] = []
    reason: GatewayError | None = None
    endpoints = route.endpoints
    if flow.pinned is not None:
        pin = flow.pinned
        endpoints = tuple(e for e in endpoints if e.provider == pin.provider and (e.model or route.name) == pin.model)
        if not endpoints:
            raise pin.elsewhere
    for endpoint in endpoints:
        provider = table.config.providers[endpoint.provider]
        credential = credential_for(provider, endpoint.api_key, caller)
        # A provider without its required setting may still get it from its ambient credentials
        # (a Google identity names its project).
        if provider.unconfigured is not None and not (
                provider.kind.ambient_fills_required and credential is not None and credential.kind == "ambient"):
            reason = reason or _not_configured(table, provider.name, provider.unconfigured)
            continue
        if credential is None:
            reason = reason or missing_provider_key(provider, caller)
            continue
        key: HealthKey = (provider.name, endpoint.model or route.name, credential.health_digest)
        usable.append(Attempt(endpoint, provider, credential, key, table.config.retries.cooldown_seconds))
    if not usable:
        assert reason is not None
        raise reason
    health = flow.gateway.health
    blocks = [health.block(a.health_key) for a in usable]
    if blocks.count(None) == len(blocks):
        if len(usable) == 1:
            return usable  # the common case: one endpoint, healthy
        healthy = [True] * len(usable)
    else:
        healthy = [b is None for b in blocks]
        if not any(healthy):
            index, until = when_all_blocked([b for b in blocks if b is not None])
            if index is None:
                wait = max(until - health.now(), 1.0)
                raise GatewayError(429, f"Every endpoint of '{route.name}' is rate limited; retry after "
                                        f"{wait:.0f}s.", code="rate_limit_exceeded", retry_after=wait)
            return [usable[index]]
    sub = Route(route.name, route.label, tuple(a.endpoint for a in usable), route.strategy, route.timeouts)
    return [usable[i] for i in table.router.order(sub, healthy)]


async def run_attempts(flow: Flow[Any, Any]) -> web.StreamResponse:
    """The one retry loop: try the plan's attempts until one answers or a failure forbids fallback."""
    gateway, record, route = flow.gateway, flow.record, flow.route
    record.route = route.label
    attempts = flow.attempts = plan(flow)
    cap = flow.table.config.retries.attempts
    gateway.budget.deposit()
    made = 0
    caller_scope: str | None = None
    failure: GatewayError | None = None  # the last upstream failure: what the caller gets
    skipped: GatewayError | None = None  # why an endpoint could not express the request
    position = 0
    same = 0  # retries of the current endpoint
    while position < len(attempts) and made < cap:
        attempt = attempts[position]
        # The caller's key reaches one key scope per request (DESIGN §6, §14). Loading refuses routes
        # that would break this; here it holds for any route, however it was made.
        if attempt.credential.kind == "caller" and caller_scope not in (None, attempt.provider.scope):
            position += 1
            continue
        if made and not gateway.budget.spend():
            break  # the retry budget is spent: in an outage, retries would only multiply the load
        flow.attempt = attempt
        try:
            flow.impl = provider_for(attempt.provider.type)
            credential = attempt.credential
            if credential.kind == "ambient":
                credential = await gateway.ambient.resolve(attempt.provider)
            call = flow.build(credential)
        except (UnsupportedField, ProviderNotConfigured) as exc:
            skipped = skipped or detach(exc)  # another endpoint may still serve the request
            position += 1
            continue
        except UpstreamError as exc:
            # Minting ambient credentials failed: nothing reached the upstream, so the endpoint's
            # health is untouched, but another endpoint may still serve the request.
            exc.provider = attempt.provider.name
            failure = detach(exc)  # kept past the handler: no frames, no reference cycle
            position += 1
            continue
        if attempt.credential.kind == "caller":
            caller_scope = attempt.provider.scope
        made += 1
        record.provider = attempt.provider.name
        record.model = attempt.model
        record.model_label = attempt.model if attempt.model in attempt.provider.models else "other"
        started = time.perf_counter()
        try:
            response = await flow.execute(call)
        except UpstreamError as exc:
            exc.provider = attempt.provider.name
            _scrub(exc, attempt, credential)
            record.attempt(attempt.provider.name, outcome_of(exc.status, exc.kind), exc.status, started)
            _record_failure(gateway, attempt, exc)
            failure = detach(exc)  # kept past the handler: no frames, no reference cycle
            if not exc.falls_back:
                break
            if not exc.reached_upstream and same < SAME_ENDPOINT_RETRIES:
                # Refused, DNS, TLS or pool wait: the request never left, so trying the same
                # endpoint again cannot charge twice. A jittered pause lets a restart finish.
                same += 1
                await asyncio.sleep(min(RETRY_BACKOFF * 2 ** (same - 1), 1.0) * random.uniform(0.5, 1.5))
                continue
            position += 1
            same = 0
            continue
        record.attempt(attempt.provider.name, "ok", response.status, started)
        return response
    raise detach(failure or skipped or missing_provider_key(route.endpoints[0].provider))


# A counter's answer is a few bytes of JSON; more is not one.
COUNT_BODY_BYTES: Final = 64 * 1024


async def count_tokens(gateway: Gateway, request: web.Request, req: ChatRequest, dialect: Dialect,
                       caller: Secret | None, request_id: str) -> int | None:
    """``req``'s input tokens by a provider's own counter (DESIGN §12): the route's endpoints in the
    plan's order, the first whose provider has a counter for its model and answers; None when none
    does (the caller then gets the estimate). The caller's key goes to one key scope, as for any
    request; a counter that fails leaves the next endpoint, and in the end the estimate."""
    flow = ChatFlow(gateway, request, req, dialect, caller, request_id)
    try:
        attempts = plan(flow)
    except GatewayError:
        return None  # no endpoint can be called (no key, not configured): nothing to ask
    caller_scope: str | None = None
    for attempt in attempts[:flow.table.config.retries.attempts]:
        if attempt.credential.kind == "caller" and caller_scope not in (None, attempt.provider.scope):
            continue
        flow.attempt = attempt
        flow.impl = provider_for(attempt.provider.type)
        try:
            credential = attempt.credential
            if credential.kind == "ambient":
                credential = await gateway.ambient.resolve(attempt.provider)
            call = flow.impl.build_count_tokens_request(req, attempt.provider, attempt.model, credential)
            if call is None:
                continue
            if attempt.credential.kind == "caller":
                caller_scope = attempt.provider.scope
            flow.record.provider = attempt.provider.name
            body, _ = await _unary(flow, call, COUNT_BODY_BYTES)
            return flow.impl.read_count_tokens(attempt.provider, body)
        except (GatewayError, *MALFORMED) as exc:
            # Never the exception itself: an upstream's text may carry what it was sent.
            log.debug("request %s: provider %s could not count tokens (%s)", request_id, attempt.provider.name,
                      type(exc).__name__)
    return None


async def native_lookup(gateway: Gateway, provider_name: str, dialect: str, method: str, path: str,
                        caller: Secret | None, request_id: str) -> web.Response:
    """``method`` on what a native answer left at the provider that made it (a stored Response),
    with the credential the caller's requests carry there (DESIGN §12 "State"): its answer relayed
    as it came; an error classified like any upstream error."""
    table = gateway.table
    provider = table.config.providers.get(provider_name)
    if provider is None:  # the provider that made it left the configuration since
        raise GatewayError(404, f"The provider that stored this response ('{provider_name}') is no longer "
                                "configured.", code="not_found")
    if provider.unconfigured is not None:
        raise _not_configured(table, provider.name, provider.unconfigured)
    credential = credential_for(provider, None, caller)
    if credential is None:
        raise missing_provider_key(provider, caller)
    if credential.kind == "ambient":
        credential = await gateway.ambient.resolve(provider)
    impl = provider_for(provider.type)
    call = impl.build_native_lookup(dialect, provider, method, path, credential)
    timeouts = table.config.timeouts
    assert gateway.session is not None
    response = await upstream.send(gateway.session, call, timeouts.connect, timeouts.total, provider=provider.name)
    try:
        body = await (response.read(table.config.server.max_upstream_body_bytes) if response.status == 200
                      else response.read_error())
    except TimeoutError:
        response.close()
        raise UpstreamError("timeout", 504, f"Upstream '{provider.name}' did not answer within "
                                            f"{timeouts.total:g}s.", provider=provider.name) from None
    except BaseException:
        response.close()
        raise
    response.release()
    if response.status != 200:
        error = impl.classify_error(provider, response.status, response.headers, body) if response.status >= 400 \
            else _not_an_answer(provider.name, response.status)
        error.provider = provider.name
        error.redact(credential.secret.reveal() if credential.secret is not None else None)
        raise error
    return web.Response(body=body, headers=_response_headers(request_id, provider.name, None, JSON))


def native_endpoints(table: Table, model: str, dialect: str) -> list[tuple[str, str]]:
    """The endpoints of ``model``'s route whose provider speaks ``dialect`` itself, as (provider,
    upstream model); raises the router's 404 for a model the gateway does not serve."""
    route = table.router.resolve(model)
    providers = table.config.providers
    out = []
    for endpoint in route.endpoints:
        provider = providers[endpoint.provider]
        upstream_model = endpoint.model or route.name
        if provider_for(provider.type).native(dialect, provider, upstream_model):
            out.append((provider.name, upstream_model))
    return out


def _scrub(exc: UpstreamError, attempt: Attempt, credential: Credential | None = None) -> None:
    """Upstream text loses the attempt's credential (``credential``: the one it carried, ambient
    ones resolved) and anything key-shaped (DESIGN §6); a 401/403 to the operator's own credential
    tells the caller nothing of the upstream's reasons."""
    secret = (credential or attempt.credential).secret
    exc.redact(secret.reveal() if secret is not None else None)
    if exc.kind == "auth" and attempt.credential.kind in ("server", "ambient"):
        exc.message = (f"Upstream '{attempt.provider.name}' refused the gateway's configured credential "
                       f"(HTTP {exc.status}); the gateway's operator must check it.")
        exc.args = (exc.message,)
        exc.param = exc.code = None


def _record_failure(gateway: Gateway, attempt: Attempt, exc: UpstreamError) -> None:
    if exc.kind == "rate_limited":
        wait = exc.retry_after if exc.retry_after is not None else attempt.cooldown_seconds
        applied = gateway.health.cool(attempt.health_key, wait)
        if exc.retry_after is None:
            exc.retry_after = applied  # a 429 always tells the caller how long: here, our cooldown
    elif exc.falls_back:
        gateway.health.failed(attempt.health_key)


def _not_configured(table: Table, provider: str, detail: str) -> ProviderNotConfigured:
    """The 503 for an unconfigured provider; its missing setting goes to the log (once per loaded
    configuration, so a flood of requests is not a flood of lines), never to the caller."""
    if provider not in table.logged:
        table.logged.add(provider)  # bounded: the names are the configuration's providers
        log.warning("%s", detail)
    return ProviderNotConfigured(provider, detail)


def _response_headers(request_id: str, provider: str, upstream_headers: Mapping[str, str] | None,
                      content_type: str, id_headers: tuple[str, ...] = (),
                      rate: Mapping[str, str] | None = None) -> dict[str, str]:
    """An answer's headers: ours, the upstream's rate-limit headers worth passing, and the
    principal's own rate-limit headers (``rate``), which replace the upstream's of the same name."""
    headers = {"Content-Type": content_type, "x-request-id": request_id, "x-tensorwall-provider": provider}
    for name in id_headers:  # the dialect's own names for the request id
        headers[name] = request_id
    if upstream_headers is not None:
        get = upstream_headers.get
        for name in PASSED_HEADERS:
            value = get(name)
            if value is not None and len(value) <= MAX_PASSED_VALUE and value.isascii() and value.isprintable():
                headers[name] = value
    if rate:
        headers.update(rate)
    return headers


def _not_an_answer(provider: str, status: int) -> UpstreamError:
    """A status below 400 other than 200 (a redirect, 204, 304): no answer, and no error to relay."""
    return UpstreamError("server", 502, f"Upstream '{provider}' answered HTTP {status} instead of an answer.",
                         provider=provider)


def _malformed(provider: str, what: str, exc: BaseException) -> UpstreamError:
    THROTTLE.warning(log, ("malformed", provider), "upstream %r sent %s the gateway cannot read (%s)", provider, what,
                     type(exc).__name__)
    return UpstreamError("server", 502, f"Upstream '{provider}' sent {what} that is not in its API's shape.",
                         provider=provider)


async def _unary(flow: Flow[Any, Any], call: UpstreamCall, limit: int) -> tuple[bytes, Mapping[str, str]]:
    """Send a non-streamed call of the current attempt and read the whole answer (at most ``limit``
    bytes) within ``total``; errors classified."""
    gateway, attempt, timeouts = flow.gateway, flow.attempt, flow.timeouts
    assert gateway.session is not None
    provider = attempt.provider
    response: upstream.UpstreamResponse | None = None
    try:
        # aiohttp's timer, not asyncio.timeout: one clock instead of two for each call.
        response = await upstream.send(gateway.session, call, timeouts.connect, timeouts.total,
                                       provider=provider.name)
        body = await (response.read(limit) if response.status == 200 else response.read_error())
    except TimeoutError:
        if response is not None:
            response.close()
        raise UpstreamError("timeout", 504, f"Upstream '{provider.name}' did not answer within "
                                            f"{timeouts.total:g}s.") from None
    except BaseException:
        if response is not None:
            response.close()
        raise
    response.release()
    if response.status != 200:
        if response.status < 400:
            raise _not_an_answer(provider.name, response.status)
        raise flow.impl.classify_error(provider, response.status, response.headers, body)
    gateway.health.succeeded(attempt.health_key)
    return body, response.headers


async def _unary_all(flow: EmbeddingsFlow, calls: list[UpstreamCall]) -> tuple[list[bytes], Mapping[str, str]]:
    """Several calls of one attempt (embeddings), concurrently but bounded; the first failure
    cancels the rest. Each answer may be up to EMBEDDINGS_MAX_BODY_BYTES (DESIGN §14)."""
    size = upstream.EMBEDDINGS_MAX_BODY_BYTES
    if len(calls) == 1:
        body, headers = await _unary(flow, calls[0], size)
        return [body], headers
    limit = asyncio.Semaphore(FAN_OUT)

    async def one(call: UpstreamCall) -> tuple[bytes, Mapping[str, str]]:
        async with limit:
            return await _unary(flow, call, size)

    tasks = [asyncio.ensure_future(one(call)) for call in calls]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()  # the rest, on a failure or when the caller went away
    # Read every finished task's exception (so none is reported as never retrieved); raise the first.
    failures = [task.exception() for task in tasks if task.done() and not task.cancelled()]
    first = next((exc for exc in failures if exc is not None), None)
    if first is not None:
        raise first
    results = [task.result() for task in tasks]
    return [body for body, _ in results], results[-1][1]


async def _answer(flow: ChatFlow, call: UpstreamCall) -> web.StreamResponse:
    """A non-streamed attempt: the whole upstream body, translated, is the commit. The translator
    makes the pivot's answer (its usage is counted there); the dialect, when it is not the pivot's,
    makes the caller's body from it."""
    provider = flow.attempt.provider
    body, headers = await _unary(flow, call, flow.table.config.server.max_upstream_body_bytes)
    name = provider.name
    if flow.native:
        # The provider's own answer, as it came: read for its usage and id, never re-encoded.
        try:
            answer = flow.impl.read_native_answer(flow.dialect.name, provider, body)
        except MALFORMED as exc:
            raise _malformed(name, "an answer", exc) from None
        flow.record.count(answer.usage)
        flow.relayed(answer.response_id)
        if flow.finish is not None:
            await _finish(flow, body)
        flow.record.committed()
        return web.Response(body=body, headers=_response_headers(flow.request_id, name, headers, JSON,
                                                                flow.dialect.request_id_headers, flow.rate_headers))
    try:
        out = flow.impl.parse_response(flow.req, provider, body)
    except MALFORMED as exc:
        raise _malformed(name, "an answer", exc) from None
    flow.record.count(_usage_of(out, "choices", name))
    dialect = flow.dialect
    if not dialect.is_pivot:
        try:
            out = dialect.encode_answer(flow.req, out)
        except MALFORMED as exc:
            raise _malformed(name, "an answer", exc) from None
    if flow.finish is not None:
        await _finish(flow, out)
    flow.record.committed()
    return web.Response(body=out, headers=_response_headers(flow.request_id, name, headers, JSON,
                                                            dialect.request_id_headers, flow.rate_headers))


async def _stream(flow: ChatFlow, call: UpstreamCall) -> web.StreamResponse:
    """One streamed attempt: hold until the commit point, then relay event by event.

    One loop for every provider type; the decoder makes the difference. Each upstream read is
    offered to ``decoder.split_plain`` first: a passthrough's decoder hands back its leading
    content events whole, the upstream's own bytes, neither framed nor parsed; a translator's
    hands back nothing. The framer cuts the rest into events for ``decoder.feed``. What one read
    produced goes to the client in one write.

    Clocks: ``first_byte`` runs from sending until the first upstream event, then ``idle``
    between events, on one ``SilenceClock``, paused while we write to the client so a slow
    reader is never mistaken for a silent upstream. A client that takes nothing for a whole
    ``idle`` is ended as one that left, so it cannot hold the upstream connection.

    Before the commit point at most ``server.max_held_bytes`` of upstream bytes are read (and
    held): past them the attempt fails (502) and the next endpoint may serve.
    """
    gateway, dialect, timeouts = flow.gateway, flow.dialect, flow.timeouts
    assert gateway.session is not None
    provider = flow.attempt.provider
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    decoder: StreamDecoder
    if flow.native:
        native = flow.impl.native_decoder(dialect.name, flow.req, provider)  # the provider's events, as they came
        decoder = native
    else:
        native = None
        decoder = flow.impl.stream_decoder(flow.req, provider)
        if not dialect.is_pivot:
            decoder = dialect.encode_stream(flow.req, decoder)  # the pivot's chunks, as the caller's dialect's events
    events = flow.impl.framer()
    # Events decoded but not yet written: everything before the commit point, and after it what
    # one upstream read produced, sent in one write (fewer syscalls than one write per event).
    pending: list[bytes] = []
    response: upstream.UpstreamResponse | None = None
    finished = False
    clock = SilenceClock(loop, task, timeouts.first_byte)
    heard = False  # any upstream event yet: the clock's phase
    max_held = flow.table.config.server.max_held_bytes
    held = 0  # upstream bytes read; compared with max_held only before the commit point
    try:
        response = await upstream.send(gateway.session, call, timeouts.connect, provider=provider.name)
        if response.status != 200:
            if response.status < 400:
                raise _not_an_answer(provider.name, response.status)
            body = await response.read_error()
            raise flow.impl.classify_error(provider, response.status, response.headers, body)
        headers = response.headers
        client: web.StreamResponse | None = None  # flow.client, kept in a local for the loop
        batch: Sequence[SseEvent]
        while not decoder.done:
            if client is None and held > max_held:
                raise UpstreamError("server", 502, f"Upstream '{provider.name}' sent more than {max_held} bytes "
                                                   "before any content.")
            data = await response.read_chunk()
            held += len(data)
            clock.paused = True
            # One read: first the decoder's plain run, whole events that go out as the upstream sent
            # them, neither framed nor parsed (a passthrough's content; a translator's run is empty),
            # then the events the framer completes from the rest, each fed to the decoder.
            if data and events.idle:
                plain, rest = decoder.split_plain(data)
            else:
                plain, rest = b"", data
            if plain:
                pending.append(plain)
                if decoder.done and flow.finish is not None:
                    await _finish(flow, decoder)
                if client is None and decoder.visible:
                    client = await _commit(flow, task, headers, pending, native)  # before the rest: it may fail
            if rest or not data:
                batch = events.feed(rest) if rest else events.flush()
                # Event by event, so the commit happens at the first visible event even when
                # a failure arrives in the same read: what the client saw decides fallback.
                for event in batch:
                    pending.extend(decoder.feed(event))
                    if decoder.done and flow.finish is not None:
                        await _finish(flow, decoder)
                    if client is None and decoder.visible:
                        client = await _commit(flow, task, headers, pending, native)
                    if decoder.done:
                        break
                if not data:
                    pending.extend(decoder.close())  # raises when the upstream stopped short
                    if decoder.done and flow.finish is not None:
                        await _finish(flow, decoder)
                    if client is None:
                        client = await _commit(flow, task, headers, pending, native)
            else:
                batch = NO_EVENTS  # the read was all plain
            if client is not None and pending:
                # One write per read, inline: a coroutine per read for _flush is measurable here.
                if len(pending) == 1:
                    await client.write(pending.pop())  # the common read: one plain run, or one event
                else:
                    await client.write(b"".join(pending))
                    pending.clear()
            clock.paused = False
            if plain or batch:  # whole events, not bytes: a trickle that never completes one is silence
                heard = _heard(clock, heard, timeouts)  # the silence starts after the write
            if not data:
                break
        finished = True
    except asyncio.CancelledError as exc:
        clock.stop()
        if clock.stalled:
            # The client took nothing for a whole idle period: end it as a client that left (no
            # in-band error: it would not be read either). The upstream call is closed below.
            task.uncancel()
            log.info("request %s: the client read nothing for %gs; stream ended", flow.request_id, clock.limit)
            transport = flow.request.transport
            if transport is not None:
                transport.abort()
            raise ConnectionResetError("the client stopped reading") from None
        if clock.expired:
            task.uncancel()
            phase, limit = ("idle", timeouts.idle) if heard else ("first_byte", timeouts.first_byte)
            # Passed, not kept in a local: raised from here, it would hold this frame and be held by it.
            return await _fail_stream(flow, decoder, pending, UpstreamError(
                "timeout", 504, f"Upstream '{provider.name}' sent nothing for {limit:g}s ({phase} timeout).",
                provider=provider.name))
        if flow.client is None or exc.args != (DRAINING,):
            raise  # the client went away, or a cancel that is not ours: nothing to tell anyone
        task.uncancel()
        pending.append(dialect.error_event(GatewayError(503, "The gateway is shutting down; the stream was cut short.",
                                                        type="server_error", code="shutting_down"), decoder))
        await _flush(flow.client, pending)
        return flow.client
    except (UpstreamError, SseError) as exc:
        clock.stop()
        if isinstance(exc, SseError):
            return await _fail_stream(flow, decoder, pending, UpstreamError(
                "server", 502, f"Upstream '{provider.name}' broke the event stream: {exc}", provider=provider.name))
        exc.provider = provider.name
        return await _fail_stream(flow, decoder, pending, detach(exc))
    except MALFORMED as exc:
        # A decoder met an event of the wrong shape (a hostile number, an object where a list was).
        clock.stop()
        return await _fail_stream(flow, decoder, pending, _malformed(provider.name, "an event", exc))
    finally:
        clock.stop()
        gateway.streams.discard(task)
        if response is not None:
            if finished:
                response.release()
            else:
                response.close()
    assert flow.client is not None
    gateway.health.succeeded(flow.attempt.health_key)
    flow.record.count(decoder.usage)
    return flow.client


async def _finish(flow: ChatFlow, answer: bytes | StreamDecoder) -> None:
    """The answer is whole (a stream: done) and its end not yet sent: the flow's finishing work, once."""
    finish, flow.finish = flow.finish, None
    if finish is not None:
        await finish(flow, answer)


def _heard(clock: SilenceClock, heard: bool, timeouts: Timeouts) -> bool:
    """An upstream event arrived: the first one ends the first_byte phase, every one resets idle."""
    if heard:
        clock.heard()
    else:
        clock.change(timeouts.idle)
    return True


async def _commit(flow: ChatFlow, task: asyncio.Task[Any], upstream_headers: Mapping[str, str],
                  held: list[bytes], native: NativeStream | None) -> web.StreamResponse:
    """The commit point: send the status, the headers and everything held so far; from here the
    flow's ``client`` is set, and a drain that runs out of time ends the stream in-band. A native
    stream has named its answer by now (``response.created`` is held with the commit point)."""
    if native is not None:
        flow.relayed(native.response_id)
    client = web.StreamResponse(headers=_response_headers(flow.request_id, flow.attempt.provider.name,
                                                          upstream_headers, "text/event-stream",
                                                          flow.dialect.request_id_headers, flow.rate_headers))
    client.headers["Cache-Control"] = "no-cache"
    flow.request[COMMITTED] = client
    flow.record.committed()
    await client.prepare(flow.request)
    await _flush(client, held)
    flow.client = client  # once the caller has it all: a failure during the sending is still before
    flow.gateway.streams.add(task)
    return client


async def _flush(client: web.StreamResponse, pending: list[bytes]) -> None:
    if pending:
        await client.write(pending[0] if len(pending) == 1 else b"".join(pending))
        pending.clear()


async def _fail_stream(flow: ChatFlow, decoder: StreamDecoder, pending: list[bytes],
                       error: UpstreamError) -> web.StreamResponse:
    """Before the commit point: raise, so the relay may fall back. After it: one in-band error event."""
    client = flow.client
    if client is None:
        raise error  # detached by the relay loop that catches it
    attempt = flow.attempt
    _scrub(error, attempt)
    _record_failure(flow.gateway, attempt, error)
    pending.append(flow.dialect.error_event(error, decoder))
    await _flush(client, pending)
    return client


def _usage_of(body: bytes, items: str, provider: str) -> Mapping[str, Any] | None:
    """The usage of an OpenAI-shaped body, for token accounting (parsed once, here, after the answer).

    A body that is not a JSON object with a list under ``items`` (an empty or non-JSON 200 from
    a passthrough upstream) is no answer: 502, and the next endpoint may serve.
    """
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _malformed(provider, "an answer", exc) from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get(items), list):
        raise UpstreamError("server", 502, f"Upstream '{provider}' sent an answer that is not in its API's shape.",
                            provider=provider)
    usage = parsed.get("usage")
    return usage if isinstance(usage, dict) else None
