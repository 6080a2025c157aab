"""The HTTP surface: every dialect's paths (DESIGN §12), /healthz, /readyz, /metrics.

Owns what a caller sees before the relay takes over: the request id, the gateway key, reading
the body as JSON whatever its Content-Type says (``curl -d`` sends form encoding), wiring each
dialect's paths, and turning every error into the error shape of the dialect the path belongs to.
What a body means is the dialect's business (``dialects/``); talking to an upstream is relay.py's.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Final
from urllib.parse import urlencode

import orjson
from aiohttp import web

from . import relay, stored
from .auth import check_model, may_use
from .bodies import MAX_DEPTH, Body, BodyBudget, read_body, too_deep
from .config import Secret
from .dialects import (
    Catalog,
    Dialect,
    Operation,
    PathTable,
    chat,
    conversations,
    messages,
    reasoning,
    responses,
)
from .dialects.conversations import Affinity, Chain, Owner, Turn
from .errors import GatewayError, UpstreamError, bad_request, detach
from .hosts import HostGuard
from .observability import THROTTLE, RequestRecord, new_request_id
from .providers.contract import path_segment
from .state import Store, StoreError

log = logging.getLogger("tensorwall_proxy")

GATEWAY: Final = web.AppKey("gateway", relay.Gateway)
BUDGET: Final = web.AppKey("body_budget", BodyBudget)
HOSTS: Final = web.AppKey("hosts", HostGuard)

REQUEST_ID: Final = web.RequestKey("request_id", str)
# The caller's provider key, as ``served`` read it with the gateway key (auth.GatewayKeys.admit).
CALLER: Final[web.RequestKey[Secret | None]] = web.RequestKey("caller")
# The request body as read by ``served``, until read_json parses it (and drops it).
BODY: Final[web.RequestKey[Body]] = web.RequestKey("body")
JSON: Final = "application/json"
# The dialects the gateway serves, each a module-level singleton; a new one is one line here.
DIALECTS: Final[tuple[Dialect, ...]] = (chat.CHAT, chat.COMPLETIONS, responses.RESPONSES, messages.MESSAGES)
# Which dialect's error shape a path gets when no route matched it; OpenAI's is the default.
PATHS: Final = PathTable(DIALECTS, default=chat.CHAT)


def error_response(error: GatewayError, request_id: str, dialect: Dialect = chat.CHAT) -> web.Response:
    """The response for an error in ``dialect``'s shape, with the headers DESIGN §7 asks for."""
    headers = error.headers()
    headers["Content-Type"] = JSON
    _name_request(headers, request_id, dialect)
    if isinstance(error, UpstreamError) and error.provider:
        headers["x-tensorwall-provider"] = error.provider
    return web.Response(status=dialect.error_status(error), body=dialect.error_body(error), headers=headers)


def _name_request(headers: dict[str, str], request_id: str, dialect: Dialect) -> None:
    """The request id under ``x-request-id`` and the dialect's own names for it (Anthropic's ``request-id``)."""
    headers["x-request-id"] = request_id
    for name in dialect.request_id_headers:
        headers[name] = request_id


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def served(endpoint: Handler, *, dialect: Dialect = chat.CHAT, accounted: bool = True, any_host: bool = False,
           keyed: bool = True) -> Handler:
    """An endpoint with what every request gets: the request id, the Host/Origin rule when auth is
    off, the gateway key, the body read whole (within its bounds) before the in-flight bound,
    ``dialect``'s error shape for whatever fails, the connection tracked for the drain, and the
    request accounted (access log, metrics) once it is done.

    A wrapper per route rather than aiohttp middlewares: on the hot path each middleware layer
    costs a coroutine, a partial and a wrapper of aiohttp's per request; this costs one call.
    ``accounted=False`` is for the open paths (/healthz, /readyz, /metrics): no key, no record.
    ``any_host`` skips the Host/Origin rule: /healthz and /readyz tell a web page nothing, and load
    balancers probe them by address. ``keyed=False`` (the unknown path) neither asks for the gateway
    key nor reads the body: the endpoint asks for the key itself where the path is a known one.
    """

    async def handle(request: web.Request) -> web.StreamResponse:
        app = request.app
        gateway = app[GATEWAY]
        connection = request.protocol
        gateway.busy.add(connection)
        request_id = new_request_id(request.headers.get("x-request-id"))
        request[REQUEST_ID] = request_id
        response: web.StreamResponse | None = None
        table = gateway.table
        rule = None if any_host else app[HOSTS].rule(table.config)
        if not accounted:
            try:
                refusal = rule.refusal(request.headers) if rule is not None else None
                response = error_response(refusal, request_id, dialect) if refusal is not None else \
                    await _answer(request, endpoint, request_id, dialect)
                return response
            finally:
                gateway.release(connection)
        record = RequestRecord(request_id, request.method, request.path)
        request[relay.RECORD] = record
        counted = False
        reserved = 0
        try:
            if rule is not None and (refusal := rule.refusal(request.headers)) is not None:
                raise refusal
            if keyed:
                principal, request[CALLER] = table.keys.admit(request.headers)
                request[relay.PRINCIPAL] = principal
                record.principal = principal.id if principal is not None else None
            if keyed and request.can_read_body:
                # Read whole before the request counts as in flight: a caller that trickles its body
                # holds its own connection, not a slot everyone else needs.
                try:
                    request[BODY], reserved = await read_body(request, app[BUDGET], table.config.server)
                except GatewayError as exc:
                    response = error_response(detach(exc), request_id, dialect)
                    response.force_close()  # the rest of the body is not worth reading
                    return response
            if gateway.in_flight >= table.config.server.max_in_flight:
                # Fast and honest: a queue here would only turn overload into timeouts.
                raise GatewayError(503, "The gateway is at its limit of requests in flight; retry shortly.",
                                   type="server_error", code="overloaded", retry_after=1)
            gateway.in_flight += 1
            counted = True
            gateway.ledger.touch()
            response = await _answer(request, endpoint, request_id, dialect)
            return response
        except GatewayError as exc:
            response = error_response(detach(exc), request_id, dialect)
            return response
        finally:
            if counted:
                gateway.in_flight -= 1
            if reserved:
                app[BUDGET].give(reserved)
            gateway.release(connection)
            # aiohttp writes the response after this returns; the ledger accounts for it a moment later.
            gateway.ledger.add(record, response.status if response is not None else 499)

    return handle


async def _answer(request: web.Request, endpoint: Handler, request_id: str, dialect: Dialect) -> web.StreamResponse:
    """The endpoint's response, or ``dialect``'s error shape for what it raised."""
    try:
        return await endpoint(request)
    except GatewayError as exc:
        return error_response(detach(exc), request_id, dialect)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[GATEWAY].table.config.server.max_body_bytes
        return error_response(GatewayError(413, f"Request body is larger than {limit} bytes.",
                                           code="request_too_large"), request_id, dialect)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(GatewayError(exc.status, exc.reason), request_id, dialect)
    except ConnectionError:
        # The client went away mid-write: nobody to answer, nothing to log. aiohttp finishes the
        # response it is handed quietly on a closed connection.
        gone: web.StreamResponse | None = request.get(relay.COMMITTED)
        return gone or web.Response(status=499, reason="Client Closed Request")
    except Exception as exc:
        # A bug of ours. The traceback holds no keys: credentials travel only in Secret.
        THROTTLE.error(log, exc, "unhandled error serving %s %s (request %s)", request.method, request.path, request_id)
        error = GatewayError(500, "Internal gateway error.", type="server_error", code="internal_error")
        committed: web.StreamResponse | None = request.get(relay.COMMITTED)
        if committed is None:
            return error_response(error, request_id, dialect)
        # Past the commit point a second response would corrupt the stream: end it in-band instead.
        with contextlib.suppress(ConnectionError):
            await committed.write(dialect.error_event(error, None))
        return committed


async def unknown_path(request: web.Request) -> web.StreamResponse:
    """Any path or method the gateway does not serve, in the error shape of the dialect the path
    belongs to: 404 for an unknown path, key or no key (a wrong base URL is the caller's real
    mistake, and a 401 would hide it); for a known path, 401 without a valid key (as on the path
    itself), else 405 with Allow."""
    path = request.path
    dialect = PATHS.dialect(path)
    allowed = PATHS.allowed(path) or _OPEN_METHODS.get(path)
    try:
        if allowed is None:
            raise GatewayError(404, f"Unknown path {path!r}.", code="not_found")
        request.app[GATEWAY].table.keys.admit(request.headers)
    except GatewayError as exc:
        return error_response(detach(exc), request[REQUEST_ID], dialect)
    response = error_response(GatewayError(405, f"Method {request.method} is not allowed on {path!r}."),
                              request[REQUEST_ID], dialect)
    response.headers["Allow"] = allowed
    return response


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, whatever Content-Type says; 400 for anything else.

    The bytes ``served`` read are dropped here once parsed: from now on the parsed body is the copy.
    """
    raw: Body | None = request.pop(BODY, None)
    if raw is None:
        raw = await request.read()
    if not raw:
        raise bad_request("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    if too_deep(raw, body):
        raise bad_request(f"The request body nests deeper than {MAX_DEPTH} levels.", code="invalid_json")
    return body


def _pivot(dialect: Dialect) -> Handler:
    """A dialect's path whose body is parsed into the pivot and relayed like any chat request."""
    parse = dialect.parse  # bound once: the hot path pays the dialect's parse and nothing more

    async def endpoint(request: web.Request) -> web.StreamResponse:
        gateway = request.app[GATEWAY]
        req = parse(await read_json(request), request.headers)
        if req.native is not None and request.query_string:
            req = replace(req, native_query=request.query_string)  # Messages' `?beta=true`, kept natively
        return await relay.chat(gateway, request, req, dialect, request[CALLER],
                                request[REQUEST_ID])

    return endpoint


# The name of the secret reasoning state is sealed with (state.secret, or the store's own).
REASONING_SECRET: Final = "reasoning"


async def _reasoning_key(gateway: relay.Gateway, body: dict[str, Any]) -> bytes | None:
    """The key that seals and unseals reasoning state (DESIGN §14). When the store cannot give it, a
    body that sends state back is 503 (it cannot be verified); one that only asks for state is
    served without it (the store counted its failure)."""
    try:
        return await gateway.state.secret(REASONING_SECRET)
    except StoreError:
        if reasoning.carries_state(body):
            raise GatewayError(503, "The state store is unavailable, so the reasoning items sent back cannot be "
                                    "verified; retry later.", code="state_unavailable") from None
        return None


def _count(dialect: Dialect) -> Handler:
    """Anthropic's count_tokens: the body parsed as a Messages body, its model resolved (404 as on
    /v1/messages), and the input counted by the provider's own counter where the route's provider
    has one (Anthropic, Bedrock and Vertex), else estimated and marked as an estimate."""

    async def endpoint(request: web.Request) -> web.StreamResponse:
        gateway = request.app[GATEWAY]
        req = messages.parse_messages(await read_json(request), request.headers, counting=True)
        check_model(request.get(relay.PRINCIPAL), str(req.body["model"]))
        if request.query_string:
            req = replace(req, native_query=request.query_string)
        gateway.table.router.resolve(req.body["model"])
        counted = await relay.count_tokens(gateway, request, req, dialect, request[CALLER], request[REQUEST_ID])
        headers = {"Content-Type": JSON}
        if counted is None:
            headers["x-tensorwall-estimate"] = "true"
        _name_request(headers, request[REQUEST_ID], dialect)
        return web.Response(body=messages.count_tokens_body(req, counted), headers=headers)

    return endpoint


def _embeddings(dialect: Dialect) -> Handler:
    """OpenAI's embeddings: the body parsed as OpenAI's, relayed as embeddings."""

    async def endpoint(request: web.Request) -> web.StreamResponse:
        gateway = request.app[GATEWAY]
        req = chat.parse_embeddings(await read_json(request))
        return await relay.embeddings(gateway, request, req, request[CALLER],
                                      request[REQUEST_ID], dialect)

    return endpoint


def _models(dialect: Dialect) -> Handler:
    """GET /v1/models: route names, then <provider>/<model> for every provider's `models:`."""

    async def endpoint(request: web.Request) -> web.StreamResponse:
        body = chat.models_body(_visible(request))
        return web.Response(body=body, headers={"Content-Type": JSON, "x-request-id": request[REQUEST_ID]})

    return endpoint


def _model(dialect: Dialect) -> Handler:
    """GET /v1/models/{id}: one model of the list, by id; 404 ``model_not_found`` for any other.
    ``<provider>/<model>`` ids hold a slash, which the openai SDK sends as %2F and curl as it is:
    aiohttp's match_info has both decoded alike."""

    async def endpoint(request: web.Request) -> web.StreamResponse:
        body = chat.model_body(_visible(request), request.match_info["model"])
        return web.Response(body=body, headers={"Content-Type": JSON, "x-request-id": request[REQUEST_ID]})

    return endpoint


def _visible(request: web.Request) -> Catalog:
    """The catalog as the request's principal sees it: only the models it may use (DESIGN §13), so
    one it may not use is as unknown as one that does not exist."""
    catalog = request.app[GATEWAY].table.catalog
    principal = request.get(relay.PRINCIPAL)
    if principal is None or principal.models is None:
        return catalog
    return Catalog({model: owner for model, owner in catalog.owners.items() if may_use(principal, model)},
                   catalog.created)


def _upgrade(dialect: Dialect) -> Handler:
    """GET on a path that streams over WebSocket elsewhere: an upgrade is refused with 426 and the
    connection closed, so a client such as Codex falls back to HTTP at once (no retries); any other
    GET is a 405."""

    async def endpoint(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            response = error_response(GatewayError(405, f"Method GET is not allowed on {request.path!r}."),
                                      request[REQUEST_ID], dialect)
            response.headers["Allow"] = "POST"
            return response
        response = error_response(responses.upgrade_refused(), request[REQUEST_ID], dialect)
        response.headers["Connection"] = "close"
        response.force_close()
        return response

    return endpoint


def _owner(request: web.Request, caller: Secret | None) -> Owner:
    """Who a stored response belongs to: the principal and the caller key's digest (DESIGN §14)."""
    return request[relay.RECORD].principal, caller.digest() if caller is not None else None


def _respond(dialect: Dialect) -> Handler:
    """POST /v1/responses: as a pivot path, with stored conversations. A follow-up's conversation
    is read from the store and put in front of its input before the parse; a response to keep is
    written by the relay before its end reaches the caller. The store is touched only by a
    request that continues or keeps one (``store: false`` and ``state.responses: off`` keep none)."""

    async def endpoint(request: web.Request) -> web.StreamResponse:
        gateway = request.app[GATEWAY]
        body = await read_json(request)
        caller = request[CALLER]
        state = gateway.state.config
        keeping = state.responses
        ttl = state.responses_ttl_seconds
        keep = keeping and body.get("store") is not False
        previous = body.get("previous_response_id")
        if previous is not None and not isinstance(previous, str):
            raise bad_request("'previous_response_id' must be a string.", param="previous_response_id")
        items = stored.new_items(body.get("input")) if keep else []
        owner = _owner(request, caller)
        store = None
        found = None
        if previous is not None:
            if keeping:
                store = await stored.store_of(gateway)
                found = await stored.previous(store, previous, owner, ttl)
            if isinstance(found, Chain):
                body = conversations.continued(body, found.items())
        key = await _reasoning_key(gateway, body) if reasoning.needs_key(body) else None
        req = responses.parse_responses(body, request.headers, key, previous=previous, stored=keep)
        check_model(request.get(relay.PRINCIPAL), str(req.body["model"]))
        pinned = None
        if previous is not None and not isinstance(found, Chain):
            pinned = _pin(gateway, previous, str(req.body["model"]), found, keeping)
        if keep and store is None:
            store = await stored.store_for_keeping(gateway)
            if store is None:  # the store is down: served, said so, not kept (and counted)
                req = replace(req, echo={**req.echo, "store": False})
        finish = stored.keeper(store, owner, previous, items, ttl) if keep and store is not None else None
        return await relay.chat(gateway, request, req, dialect, caller, request[REQUEST_ID], finish, pinned)

    return endpoint


def _pin(gateway: relay.Gateway, previous: str, model: str, found: Affinity | None, keeping: bool) -> relay.Pin:
    """The one endpoint a follow-up to a response a provider stored may go to (DESIGN §14): the one
    its affinity record names, or without a record the one native endpoint of the model's route;
    400 ``previous_response_not_found`` when there is none."""
    if found is not None:
        return relay.Pin(found.provider, found.model, conversations.made_elsewhere(previous, found.provider, model))
    natives = relay.native_endpoints(gateway.table, model, "responses")
    if len(natives) != 1:
        raise conversations.not_found(previous, "" if keeping else " (this gateway keeps no responses)")
    provider, upstream_model = natives[0]
    return relay.Pin(provider, upstream_model, conversations.not_found(previous))


def _stored(dialect: Dialect) -> Handler:
    """GET /v1/responses/{id}: a stored response, to its owner; from the provider that stored it
    when a native attempt made it; 404 for any other id."""

    async def endpoint(request: web.Request) -> web.StreamResponse:
        _, found = await _located(request)
        if isinstance(found, Affinity):
            return await _at_provider(request, found, "GET", "")
        return _json(request, orjson.dumps(found.response))

    return endpoint


def _forget(dialect: Dialect) -> Handler:
    """DELETE /v1/responses/{id}: a stored response removed, by its owner (at the provider that
    stored it, for a native one, and then its affinity record)."""

    async def endpoint(request: web.Request) -> web.StreamResponse:
        store, found = await _located(request)
        response_id = request.match_info["id"]
        if isinstance(found, Affinity):
            response = await _at_provider(request, found, "DELETE", "")
            await stored.forget(store, conversations.affinity_key(response_id))
            return response
        await stored.forget(store, conversations.key(response_id))
        return _json(request, conversations.deleted(response_id))

    return endpoint


def _stored_input(dialect: Dialect) -> Handler:
    """GET /v1/responses/{id}/input_items: the input a stored response was made from, one page."""

    async def endpoint(request: web.Request) -> web.StreamResponse:
        store, found = await _located(request)
        if isinstance(found, Affinity):
            return await _at_provider(request, found, "GET", "/input_items")
        return _json(request, await stored.input_page(store, found, request.query))

    return endpoint


async def _located(request: web.Request) -> tuple[Store, Turn | Affinity]:
    """The store and where the caller's response of the path's {id} is (404 for any other id)."""
    gateway = request.app[GATEWAY]
    response_id = request.match_info["id"]
    if not gateway.state.config.responses:
        raise conversations.stored_missing(response_id)  # none is kept
    store = await stored.store_of(gateway)
    return store, await stored.locate(store, response_id, _owner(request, request[CALLER]))


def _json(request: web.Request, body: bytes) -> web.Response:
    return web.Response(body=body, headers={"Content-Type": JSON, "x-request-id": request[REQUEST_ID]})


# What a caller may ask of a stored Response's input items at a provider, passed on as given.
_LOOKUP_QUERY: Final = ("limit", "order", "after", "include[]", "include")


async def _at_provider(request: web.Request, found: Affinity, method: str, tail: str) -> web.StreamResponse:
    """A stored Response a provider keeps: the same call at that provider, with the caller's credential there."""
    query = [(name, value) for name, value in request.query.items() if name in _LOOKUP_QUERY]
    path = "/" + path_segment(request.match_info["id"], "response id") + tail
    if query:
        path += "?" + urlencode(query)
    return await relay.native_lookup(request.app[GATEWAY], found.provider, "responses", method, path,
                                     request[CALLER], request[REQUEST_ID])


# What serves each operation a dialect's path names (dialects.Operation).
_OPERATIONS: Final[dict[Operation, Callable[[Dialect], Handler]]] = {
    "pivot": _pivot,
    "respond": _respond,
    "embeddings": _embeddings,
    "models": _models,
    "model": _model,
    "upgrade": _upgrade,
    "stored": _stored,
    "forget": _forget,
    "stored_input": _stored_input,
    "count": _count,
}


# True on the API app when /metrics has a listener of its own (server.metrics_port): the API port
# then answers /metrics like any unknown path.
METRICS_ELSEWHERE: Final = web.AppKey("metrics_elsewhere", bool)


async def metrics(request: web.Request) -> web.StreamResponse:
    """GET /metrics: Prometheus exposition (every worker's together under --workers N)."""
    gateway = request.app[GATEWAY]
    if gateway.metrics is None or request.app.get(METRICS_ELSEWHERE):
        raise GatewayError(404, f"Unknown path {request.path!r}.", code="not_found")
    try:
        gateway.ledger.flush()  # what finished a moment ago counts too
        providers = gateway.table.config.providers
        # Only the server's own credentials: callers' digests are unbounded and never labels.
        gateway.metrics.report_health(
            (provider, model if provider in providers and model in providers[provider].models else "other", state)
            for (provider, model, _), state in gateway.health.server_states())
        body, content_type = gateway.metrics.render()
    except Exception:
        # Once per failing spell, not once per scrape: a scraper retries every few seconds.
        if not gateway.metrics.failing:
            log.exception("cannot render /metrics; answering 500 until it works again")
        gateway.metrics.failing = True
        raise GatewayError(500, "The metrics could not be rendered; the gateway's log says why.",
                           type="server_error", code="internal_error") from None
    gateway.metrics.failing = False
    return web.Response(body=body, headers={"Content-Type": content_type})


async def metrics_port_path(request: web.Request) -> web.StreamResponse:
    """Anything but GET /metrics on the metrics listener: 404, or 405 with Allow for /metrics."""
    if request.path != "/metrics":
        raise GatewayError(404, f"Unknown path {request.path!r}.", code="not_found")
    response = error_response(GatewayError(405, f"Method {request.method} is not allowed on {request.path!r}."),
                              request[REQUEST_ID])
    response.headers["Allow"] = "GET, HEAD"
    return response


def add_metrics_routes(app: web.Application) -> None:
    """The metrics listener's surface (server.metrics_port): /metrics and nothing else, open."""
    app.router.add_route("GET", "/metrics", served(metrics, accounted=False))
    app.router.add_route("*", "/{tail:.*}", served(metrics_port_path, accounted=False))


async def healthz(request: web.Request) -> web.StreamResponse:
    """GET /healthz: the process serves requests."""
    return web.Response(body=b'{"status":"ok"}', headers={"Content-Type": JSON})


async def probe(request: web.Request) -> web.StreamResponse:
    """HEAD /: 200, for clients that probe the base URL before their first request (Claude Code)."""
    return web.Response()


async def readyz(request: web.Request) -> web.StreamResponse:
    """GET /readyz: configuration loaded and not draining."""
    if request.app[GATEWAY].ready:
        return web.Response(body=b'{"status":"ready"}', headers={"Content-Type": JSON})
    return web.Response(status=503, body=b'{"status":"not ready"}', headers={"Content-Type": JSON})


def add_routes(app: web.Application) -> None:
    """Register the HTTP surface on an application: every dialect's paths, then the open paths,
    each endpoint wrapped by ``served``."""
    for dialect in DIALECTS:
        for method, path, operation in dialect.paths:
            app.router.add_route(method, path, served(_OPERATIONS[operation](dialect), dialect=dialect))
    for method, path, endpoint in _OPEN_ROUTES:
        app.router.add_route(method, path, served(endpoint, accounted=False, any_host=path in _ANY_HOST))
    # Last, so it sees only what nothing else matched: 404 or 405 in the path's dialect's shape.
    app.router.add_route("*", "/{tail:.*}", served(unknown_path, keyed=False))


# Paths outside every dialect: open (no key, no record).
_OPEN_ROUTES: Final = (
    ("GET", "/healthz", healthz),
    ("GET", "/readyz", readyz),
    ("GET", "/metrics", metrics),
    ("HEAD", "/", probe),
)
# Paths open whatever the Host or Origin (see served).
_ANY_HOST: Final = frozenset({"/healthz", "/readyz"})
# The methods each open GET path answers, for a 405's Allow header (aiohttp adds HEAD to every GET).
# The probe is not among them: any other method on / is an unknown path's 404, as before it.
_OPEN_METHODS: Final = {path: "GET, HEAD" for method, path, _ in _OPEN_ROUTES if method == "GET"}
