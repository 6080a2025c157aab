"""The HTTP surface: /v1/chat/completions, /v1/embeddings, /v1/models, /healthz, /readyz.

Owns what a caller sees before the relay takes over: the request id, the gateway key, reading
the body as JSON whatever its Content-Type says (``curl -d`` sends form encoding), validating the
fields the gateway itself depends on, and turning every error into OpenAI's error shape. It never
talks to an upstream: that is relay.py's job.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import orjson
from aiohttp import web

from . import relay
from .auth import FORWARDED_HEADERS, caller_key
from .bodies import MAX_DEPTH, Body, BodyBudget, read_body, too_deep
from .errors import GatewayError, UpstreamError, bad_request
from .hosts import HostGuard
from .observability import THROTTLE, RequestRecord, new_request_id
from .providers import ChatRequest, EmbeddingsRequest
from .sse import encode

log = logging.getLogger("tensorwall_proxy")

GATEWAY: Final = web.AppKey("gateway", relay.Gateway)
BUDGET: Final = web.AppKey("body_budget", BodyBudget)
HOSTS: Final = web.AppKey("hosts", HostGuard)

REQUEST_ID: Final = web.RequestKey("request_id", str)
# The request body as read by ``served``, until read_json parses it (and drops it).
BODY: Final[web.RequestKey[Body]] = web.RequestKey("body")
JSON: Final = "application/json"
_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_FORWARDED: Final = tuple({name for names in FORWARDED_HEADERS.values() for name in names})
MAX_MODEL_NAME: Final = 256
# Inputs in one embeddings request: OpenAI's own limit. Some providers take one input per upstream
# call (Bedrock Titan, Gemini embeddings), so this also bounds one request's upstream calls.
MAX_EMBEDDING_INPUTS: Final = 2048


def error_response(error: GatewayError, request_id: str) -> web.Response:
    """The OpenAI-shaped response for an error, with the headers DESIGN §7 asks for."""
    headers = error.headers()
    headers["Content-Type"] = JSON
    headers["x-request-id"] = request_id
    if isinstance(error, UpstreamError) and error.provider:
        headers["x-tensorwall-provider"] = error.provider
    return web.Response(status=error.status, body=error.body(), headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def served(endpoint: Handler, *, accounted: bool = True, any_host: bool = False) -> Handler:
    """An endpoint with what every request gets: the request id, the Host/Origin rule when auth is
    off, the gateway key, the body read whole (within its bounds) before the in-flight bound, OpenAI's
    error shape for whatever fails, the connection tracked for the drain, and the request accounted
    (access log, metrics) once it is done.

    A wrapper per route rather than aiohttp middlewares: on the hot path each middleware layer
    costs a coroutine, a partial and a wrapper of aiohttp's per request; this costs one call.
    ``accounted=False`` is for the open paths (/healthz, /readyz, /metrics): no key, no record.
    ``any_host`` skips the Host/Origin rule: /healthz and /readyz tell a web page nothing, and load
    balancers probe them by address.
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
                response = error_response(refusal, request_id) if refusal is not None else \
                    await _answer(request, endpoint, request_id)
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
            table.keys.check(request.headers.get("X-API-Key"))
            if request.can_read_body:
                # Read whole before the request counts as in flight: a caller that trickles its body
                # holds its own connection, not a slot everyone else needs.
                try:
                    request[BODY], reserved = await read_body(request, app[BUDGET], table.config.server)
                except GatewayError as exc:
                    response = error_response(exc, request_id)
                    response.force_close()  # the rest of the body is not worth reading
                    return response
            if gateway.in_flight >= table.config.server.max_in_flight:
                # Fast and honest: a queue here would only turn overload into timeouts.
                raise GatewayError(503, "The gateway is at its limit of requests in flight; retry shortly.",
                                   type="server_error", code="overloaded", retry_after=1)
            gateway.in_flight += 1
            counted = True
            gateway.ledger.touch()
            response = await _answer(request, endpoint, request_id)
            return response
        except GatewayError as exc:
            response = error_response(exc, request_id)
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


async def _answer(request: web.Request, endpoint: Handler, request_id: str) -> web.StreamResponse:
    """The endpoint's response, or OpenAI's error shape for what it raised."""
    try:
        return await endpoint(request)
    except GatewayError as exc:
        return error_response(exc, request_id)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[GATEWAY].table.config.server.max_body_bytes
        return error_response(GatewayError(413, f"Request body is larger than {limit} bytes.",
                                           code="request_too_large"), request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(GatewayError(exc.status, exc.reason), request_id)
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
            return error_response(error, request_id)
        # Past the commit point a second response would corrupt the stream: end it in-band instead.
        with contextlib.suppress(ConnectionError):
            await committed.write(encode(error.body()))
        return committed


async def unknown_path(request: web.Request) -> web.StreamResponse:
    """Any path or method the gateway does not serve: 404, or 405 with Allow for a known path."""
    allowed = _METHODS.get(request.path)
    if allowed is None:
        raise GatewayError(404, f"Unknown path {request.path!r}.", code="not_found")
    response = error_response(GatewayError(405, f"Method {request.method} is not allowed on {request.path!r}."),
                              request[REQUEST_ID])
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




def _check_model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a non-empty string.", param="model")
    if len(model) > MAX_MODEL_NAME or not model.isprintable():
        raise bad_request(f"'model' must be at most {MAX_MODEL_NAME} printable characters.", param="model",
                          code="invalid_model")
    return model


def _check_type(body: Mapping[str, Any], name: str, types: type | tuple[type, ...], what: str) -> None:
    value = body.get(name)
    if value is None:
        return
    # JSON true is a Python int too: a boolean passes only where a boolean is asked for.
    ok = isinstance(value, bool) if types is bool else isinstance(value, types) and not isinstance(value, bool)
    if not ok:
        raise bad_request(f"'{name}' must be {what}.", param=name)


# The fields of a chat body whose type the gateway itself relies on: (types, what the error says).
_CHAT_TYPED: Final[dict[str, tuple[type | tuple[type, ...], str]]] = {
    "stream": (bool, "a boolean"),
    "stream_options": (dict, "an object"),
    "tools": (list, "an array"),
    "n": (int, "an integer"),
    "max_tokens": (int, "an integer"),
    "max_completion_tokens": (int, "an integer"),
    "temperature": ((int, float), "a number"),
    "top_p": ((int, float), "a number"),
}


def parse_chat(body: dict[str, Any], headers: Mapping[str, str]) -> ChatRequest:
    """Validate what the gateway itself relies on; the upstream validates the rest."""
    _check_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' is required and must be a non-empty array.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"'messages[{i}]' must be an object.", param=f"messages[{i}]")
        role = message.get("role")
        if role not in _ROLES:
            raise bad_request(f"'messages[{i}].role' must be one of {', '.join(sorted(_ROLES))}.",
                              param=f"messages[{i}].role")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise bad_request(f"'messages[{i}].content' must be a string or an array of parts.",
                              param=f"messages[{i}].content")
    for name, (types, what) in _CHAT_TYPED.items():
        if name in body:
            _check_type(body, name, types, what)
    n = body.get("n")
    if n is not None and n < 1:
        raise bad_request("'n' must be at least 1.", param="n")
    stream = body.get("stream") is True
    options = body.get("stream_options")
    if options is not None and not stream:
        raise bad_request("'stream_options' is only allowed when 'stream' is true.", param="stream_options")
    wants_usage = bool(options and options.get("include_usage") is True)
    forwarded = {name: headers[name] for name in _FORWARDED if name in headers}
    return ChatRequest(body, stream, wants_usage, forwarded)


def parse_embeddings(body: dict[str, Any]) -> EmbeddingsRequest:
    """Validate an embeddings body: model, input, encoding_format."""
    _check_model(body)
    value = body.get("input")
    if value is None or value == "" or value == []:
        raise bad_request("'input' is required: a string, an array of strings or of token arrays.", param="input")
    if not isinstance(value, str | list):
        raise bad_request("'input' must be a string or an array.", param="input")
    # A list of integers is one input (a token array), however long.
    if len(value) > MAX_EMBEDDING_INPUTS and isinstance(value, list) and not all(type(v) is int for v in value):
        raise bad_request(f"'input' holds {len(value)} inputs; at most {MAX_EMBEDDING_INPUTS} are allowed per request.",
                          param="input", code="too_many_inputs")
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in ("float", "base64"):
        raise bad_request("'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
    _check_type(body, "dimensions", int, "an integer")
    return EmbeddingsRequest(body, encoding == "base64")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions"""
    gateway = request.app[GATEWAY]
    req = parse_chat(await read_json(request), request.headers)
    return await relay.chat(gateway, request, req, caller_key(request.headers.get("Authorization")),
                            request[REQUEST_ID])


async def create_embeddings(request: web.Request) -> web.StreamResponse:
    """POST /v1/embeddings"""
    gateway = request.app[GATEWAY]
    req = parse_embeddings(await read_json(request))
    return await relay.embeddings(gateway, request, req, caller_key(request.headers.get("Authorization")),
                                  request[REQUEST_ID])


async def list_models(request: web.Request) -> web.StreamResponse:
    """GET /v1/models: route names, then <provider>/<model> for every provider's `models:`."""
    body = request.app[GATEWAY].table.models_body
    return web.Response(body=body, headers={"Content-Type": JSON, "x-request-id": request[REQUEST_ID]})


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


async def readyz(request: web.Request) -> web.StreamResponse:
    """GET /readyz: configuration loaded and not draining."""
    if request.app[GATEWAY].ready:
        return web.Response(body=b'{"status":"ready"}', headers={"Content-Type": JSON})
    return web.Response(status=503, body=b'{"status":"not ready"}', headers={"Content-Type": JSON})


def models_body(table_routes: Mapping[str, tuple[str, ...]], provider_models: Mapping[str, tuple[str, ...]],
                created: int) -> bytes:
    """The /v1/models list, built once per table: ``{route: (first provider,)}`` and provider model lists."""
    data = [{"id": name, "object": "model", "created": created, "owned_by": owners[0]}
            for name, owners in table_routes.items()]
    seen = {item["id"] for item in data}
    for provider, models in provider_models.items():
        for model in models:
            model_id = f"{provider}/{model}"
            if model_id not in seen:
                seen.add(model_id)
                data.append({"id": model_id, "object": "model", "created": created, "owned_by": provider})
    return orjson.dumps({"object": "list", "data": data})


def add_routes(app: web.Application) -> None:
    """Register the HTTP surface on an application, every endpoint wrapped by ``served``."""
    for method, path, endpoint, accounted in _ROUTES:
        app.router.add_route(method, path, served(endpoint, accounted=accounted, any_host=path in _ANY_HOST))
    # Last, so it sees only what nothing else matched: OpenAI's error shape for a wrong path or method.
    app.router.add_route("*", "/{tail:.*}", served(unknown_path))


_ROUTES: Final = (
    ("POST", "/v1/chat/completions", chat_completions, True),
    ("POST", "/v1/embeddings", create_embeddings, True),
    ("GET", "/v1/models", list_models, True),
    ("GET", "/healthz", healthz, False),
    ("GET", "/readyz", readyz, False),
    ("GET", "/metrics", metrics, False),
)
# Paths open whatever the Host or Origin (see served).
_ANY_HOST: Final = frozenset({"/healthz", "/readyz"})
# The methods each path answers, for a 405's Allow header (aiohttp adds HEAD to every GET).
_METHODS: Final = {path: "GET, HEAD" if method == "GET" else method for method, path, _, _ in _ROUTES}
