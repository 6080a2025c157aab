"""The fake upstream: one real aiohttp server that speaks the providers' wire formats.

It owns the provider side of every integration test: it answers on 127.0.0.1 the way the real
services answer (wire-formats.md sections 1, 2, 3, 4, 6, 7.2, 7.3 and 8), records every request
it gets, and misbehaves on demand when a fault word appears in the model name (TensorZero's dummy
provider does the same). Each provider is a "flavor", named by the first path segment; the rest of
the path is the provider's real path, so `/groq/openai/v1/chat/completions` is Groq's chat endpoint.

It must not import `tensorwall_proxy`: it is the gateway's opponent, and sharing code would let a
bug in the gateway hide behind the same bug in the fake. Everything here is deterministic (reply
text, usage, embeddings) except ids, so tests can assert exact values.

What a chat request gets back: `"[<flavor>] <text of the last user message>"` (or
`"[<flavor>] tool said: <content>"` after a tool message); one call to the first tool (or the
named one) with `TOOL_ARGUMENTS` when `tools` is set, `tool_choice` is not "none" and the last
message is not a tool result; usage counted in words; `max_tokens` / `max_completion_tokens`
below the reply's word count truncates it to that many words with finish_reason "length"; a
`stop` sequence in the reply cuts it before the earliest one (finish_reason "stop").

Order of play for every request: record it, check auth (and Azure's api-version), validate the
body as the real provider would, then `FakeUpstream.script`, then the fault words, then the normal
answer. Fault words, found anywhere in the model name or Azure deployment:

    fail-500, fail-503, fail-400, fail-401   that status, in the flavor's error shape
    fail-429          429 rate_limit_exceeded with `retry-after: 7` and `retry-after-ms: 7000`
    slow-first-byte   wait `delay` seconds, then answer normally
    slow-stream       stream, waiting `delay` seconds after the first content chunk
                      (not streamed: the whole answer is `delay` late)
    cut-mid-stream    role chunk + two content chunks, then an abrupt close; not streamed: an
                      honest content-length, half the body, then the close
    error-mid-stream  role chunk + one content chunk, then `data: {"error": ...}` and a clean end
                      (not streamed: a 500)
    hang              never answer; only the caller leaving ends it (`disconnected_at`)
    fail-529, error-before-content    the anthropic flavor only (`ANTHROPIC_FAULT_WORDS`)
    fail-403, blocked, safety         the vertex flavor only (`VERTEX_FAULT_WORDS`)
    gzip-bomb         the OpenAI-style flavors only: a chat completion sent with `Content-Encoding:
                      gzip` that inflates to `gzip_bomb_mib` MiB (a thousandth of that on the wire)

Every OpenAI-style flavor, and Azure on its v1 path (`/azure/openai/v1/responses`), also speaks
OpenAI's Responses API: `POST …/responses` (JSON or SSE in its event grammar), stored responses for
`previous_response_id`, `GET` / `DELETE …/responses/{id}` and `GET …/input_items`, and two more fault
words (`RESPONSES_FAULT_WORDS`); the "OpenAI Responses" section says what it answers. They also
serve legacy completions (`POST …/completions`, "Legacy completions" below).

The `anthropic` flavor speaks Anthropic's Messages API instead (`POST /anthropic/v1/messages`,
wire-formats §2): its own validation, named SSE events, error envelope and two more fault words;
the "Anthropic Messages" section near the end of this module says what it answers. It also counts
tokens (`POST /anthropic/v1/messages/count_tokens`) and opens beta-gated body fields only with their
`anthropic-beta` (`ANTHROPIC_BETA_FIELDS`). Claude on Bedrock (InvokeModel with a Messages body,
`invoke-with-response-stream`, `count-tokens`) and on Vertex (`publishers/anthropic/models/…:rawPredict`,
`:streamRawPredict`, `count-tokens:rawPredict`) refuse betas those services do not know; the "Claude on
Bedrock and Vertex" section says what they answer. Vertex's Gemini models also answer `:countTokens`.

The `vertex` flavor speaks Vertex AI's native Gemini API (wire-formats §4): generateContent,
streamGenerateContent (`alt=sse`, CRLF-separated events), predict and embedContent under
`/vertex/{v1|v1beta1}/projects/…/publishers/google/models/{model}:{method}`, with Google's error
envelope, camelCase or snake_case request keys, Gemini 3 thought signatures and its own fault
words (`VERTEX_FAULT_WORDS`). `POST /oauth2/token` is Google's OAuth token endpoint for
service-account credentials, so google-auth can mint tokens against the fake. The "Vertex AI" and
"Google OAuth" sections at the end say what they answer.

The `bedrock` flavor speaks AWS Bedrock Runtime (wire-formats §5): Converse, ConverseStream (the
binary AWS event stream, encoded by `tests.fakes.eventstream`) and InvokeModel for embeddings under
`/bedrock/model/{percent-encoded model id}/{converse|converse-stream|invoke}`, authenticated by a
SigV4 signature the fake recomputes with botocore (or a Bedrock API key as Bearer), with AWS's error
shapes and its own fault words (`BEDROCK_FAULT_WORDS`). The "AWS Bedrock Runtime" section says what
it answers.

Adding a flavor: give it a `Flavor` entry in `FLAVORS`, register its routes in
`FakeUpstream._add_routes`, and, for quirks, add small functions to the `_CHAT_CHECKS`,
`_COMPLETION_DECORATORS` or `_STREAM_DECORATORS` tables keyed by the flavor name. A flavor with a
different wire format (anthropic, vertex, bedrock) brings its own handler functions taking a `_Call`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import datetime
import functools
import hashlib
import hmac
import itertools
import json
import random
import re
import string
import struct
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, unquote

import orjson
from aiohttp import web
from multidict import CIMultiDict

from tests.fakes.eventstream import corrupt_message_crc, encode_event, encode_exception

Json = dict[str, Any]
"""A decoded JSON object: the fake works on plain dicts, as the wire does."""

FAULT_WORDS: Final[tuple[str, ...]] = (
    "fail-500",
    "fail-503",
    "fail-429",
    "fail-400",
    "fail-401",
    "slow-first-byte",
    "slow-stream",
    "cut-mid-stream",
    "error-mid-stream",
    "hang",
)
"""Words that, found anywhere in the model name (or Azure deployment), make the fake misbehave."""

GZIP_BOMB: Final = "gzip-bomb"
"""The OpenAI-style flavors' decompression-bomb fault word (not in FAULT_WORDS: the other wire
formats do not answer it)."""

HANG_SECONDS: Final = 3600.0
"""How long `hang` waits: far longer than any test, so only the caller leaving ends it."""

AZURE_MODEL: Final = "gpt-4o-2024-08-06"
"""Azure reports the deployment's underlying model, never the deployment name (wire-formats §3)."""

AZURE_EMBEDDING_MODEL: Final = "text-embedding-3-small"

AZURE_STREAM_OPTIONS_SINCE: Final = "2024-10-21"
"""The first Azure api-version that accepts `stream_options` (wire-formats §3, pitfall 9.3)."""

EMBEDDING_SIZE: Final = 8

_ALNUM: Final = string.ascii_letters + string.digits
_MISTRAL_TOOL_ID: Final = re.compile(r"[a-zA-Z0-9]{9}")
_BEARER: Final = re.compile(r"Bearer\s+\S+", re.IGNORECASE)
_FORBIDDEN: Final = re.compile(r"\bforbidden\b", re.IGNORECASE)
# A piece is a word with the whitespace around it, so the pieces of a stream concatenate back to
# exactly the non-streamed text.
_WORD_PIECE: Final = re.compile(r"\s*\S+\s*|\s+")
_MODELS_CREATED: Final = 1715367049


# --------------------------------------------------------------------------------------------------
# What was received


@dataclass(slots=True)
class Recorded:
    """One request as the fake received it, appended before any check or fault runs.

    `raw_path` is the request target exactly as on the wire (`request.raw_path`: still
    percent-encoded, query string included); `path` is the decoded path. `headers` is a
    case-insensitive copy. `path_model` is the model named in a Vertex URL
    (`…/models/{model}:{method}`) or a Bedrock one (`/bedrock/model/{model id}/…`), percent-decoded:
    those bodies carry no model, so `model` falls back to it. `auth_scheme` says how a Bedrock request
    authenticated (`"sigv4"` or `"bearer"`; None when it sent no scheme the fake knows, and for the
    other flavors), and `aws_credential` is the `Credential=` value of its SigV4 header
    (`<access key>/<date>/<region>/bedrock/aws4_request`). The three timestamps are `time.monotonic()` values: `finished_at` is set when the
    handler completed its script (an abrupt `cut-mid-stream` included), `disconnected_at` when the
    caller went away before that.
    """

    flavor: str
    method: str
    path: str
    raw_path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    body: bytes
    json: Any
    started_at: float
    deployment: str | None = None
    path_model: str | None = None
    auth_scheme: str | None = None
    aws_credential: str | None = None
    finished_at: float | None = None
    disconnected_at: float | None = None

    @property
    def model(self) -> str | None:
        """The body's `model`; else the model of a Vertex URL; else None."""
        if isinstance(self.json, dict) and isinstance(self.json.get("model"), str):
            return str(self.json["model"])
        return self.path_model

    def header(self, name: str) -> str | None:
        """The first value of header `name`, looked up case-insensitively."""
        return self.headers.get(name)


# --------------------------------------------------------------------------------------------------
# Flavors


def _alnum(length: int) -> str:
    return "".join(random.choices(_ALNUM, k=length))


def _openai_tool_call_id() -> str:
    return "call_" + _alnum(24)


def _mistral_tool_call_id() -> str:
    return _alnum(9)


def _anthropic_tool_use_id() -> str:
    return "toolu_" + _alnum(24)


def _bedrock_tool_use_id() -> str:
    return "tooluse_" + _alnum(22)


@dataclass(frozen=True, slots=True)
class Flavor:
    """What distinguishes one OpenAI-style provider from another, as data.

    Behaviour that does not fit a field (a provider's own validation, extra keys on its chunks)
    lives in the per-flavor function tables below, keyed by `name`.
    """

    name: str
    auth: Literal["bearer", "none", "azure", "anthropic", "google", "aws"]
    error_shape: Literal["openai", "mistral", "anthropic", "google", "aws"]
    models: tuple[str, ...]
    owned_by: str
    tool_call_id: Callable[[], str] = _openai_tool_call_id
    honours_n: bool = True
    embeddings_base64: bool = False
    embeddings_dimensions: Literal["truncate", "reject", "ignore"] = "ignore"
    # Mistral has no stream_options: usage always rides on the finish chunk instead.
    stream_usage: Literal["on_request", "on_finish_chunk"] = "on_request"


FLAVORS: Final[Mapping[str, Flavor]] = {
    flavor.name: flavor
    for flavor in (
        Flavor(
            "openai",
            auth="bearer",
            error_shape="openai",
            models=("gpt-4o", "gpt-4o-mini", "text-embedding-3-small"),
            owned_by="system",
            embeddings_base64=True,
            embeddings_dimensions="truncate",
        ),
        Flavor(
            "groq",
            auth="bearer",
            error_shape="openai",
            models=("llama-3.3-70b-versatile", "llama-3.1-8b-instant"),
            owned_by="Meta",
            honours_n=False,
        ),
        Flavor(
            "mistral",
            auth="bearer",
            error_shape="mistral",
            models=("mistral-large-latest", "mistral-small-latest", "mistral-embed"),
            owned_by="mistralai",
            tool_call_id=_mistral_tool_call_id,
            embeddings_dimensions="reject",
            stream_usage="on_finish_chunk",
        ),
        Flavor(
            "lmstudio",
            auth="none",
            error_shape="openai",
            models=("qwen2.5-7b-instruct", "text-embedding-nomic-embed-text-v1.5"),
            owned_by="organization_owner",
            honours_n=False,
        ),
        Flavor(
            "ollama",
            auth="none",
            error_shape="openai",
            models=("llama3.2:latest", "nomic-embed-text:latest"),
            owned_by="library",
            honours_n=False,
        ),
        Flavor(
            "azure",
            auth="azure",
            error_shape="openai",
            models=("gpt-4o", "text-embedding-3-small"),
            owned_by="system",
            embeddings_base64=True,
            embeddings_dimensions="truncate",
        ),
        Flavor(
            "anthropic",
            auth="anthropic",
            error_shape="anthropic",
            models=("claude-sonnet-4-6", "claude-haiku-4-5"),
            owned_by="anthropic",
            tool_call_id=_anthropic_tool_use_id,
            honours_n=False,
        ),
        Flavor(
            "vertex",
            auth="google",
            error_shape="google",
            models=("gemini-2.5-flash", "gemini-3-pro-preview", "text-embedding-005", "gemini-embedding-001"),
            owned_by="google",
        ),
        Flavor(
            "bedrock",
            auth="aws",
            error_shape="aws",
            models=(
                "anthropic.claude-3-5-sonnet-20240620-v1:0",
                "amazon.nova-lite-v1:0",
                "amazon.titan-embed-text-v2:0",
                "cohere.embed-english-v3",
            ),
            owned_by="aws",
            tool_call_id=_bedrock_tool_use_id,
            honours_n=False,
        ),
    )
}
"""Every flavor the fake speaks, by the path prefix that selects it."""

_OPENAI_STYLE_ROOTS: Final[tuple[tuple[str, str], ...]] = (
    ("openai", "/openai/v1"),
    ("openai", "/v1"),  # no flavor segment: the benchmark calls the fake as if it were OpenAI
    ("groq", "/groq/openai/v1"),
    ("mistral", "/mistral/v1"),
    ("lmstudio", "/lmstudio/v1"),
    ("ollama", "/ollama/v1"),
)
"""Flavor and API root of every provider whose paths are OpenAI's (Groq has no embeddings)."""

_NO_EMBEDDINGS: Final = frozenset({"groq"})


# --------------------------------------------------------------------------------------------------
# Errors, in each flavor's shape


def _json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _error(
    flavor: Flavor,
    status: int,
    message: str,
    *,
    type_: str | None = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An error in the flavor's envelope: OpenAI's nested one, Mistral's flat one, or Anthropic's.

    Anthropic's `error.type` follows from the status (wire-formats §2.5), so `type_`, `param` and
    `code` do not apply to it.
    """
    if flavor.error_shape == "anthropic":
        return _anthropic_error(status, message, headers=headers)
    if flavor.error_shape == "google":
        return _google_error(status, message, headers=headers)
    if flavor.error_shape == "aws":
        return _aws_error(
            status, _AWS_ERROR_TYPES.get(status, "InternalServerException"), message, headers=headers
        )
    error = {"message": message, "type": type_, "param": param, "code": code}
    body: Json = {"object": "error", **error} if flavor.error_shape == "mistral" else {"error": error}
    return _json_response(body, status, headers)


def _extra_forbidden(name: str) -> web.Response:
    """Mistral's pydantic validation error (HTTP 422) for a key its API does not define."""
    detail = {"loc": ["body", name], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}
    return _json_response({"detail": [detail]}, 422)


def _server_error_body() -> Json:
    """The `error` object OpenAI sends for its own failures, also used inside streams."""
    return {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    }


# --------------------------------------------------------------------------------------------------
# One call: the request, its record and the flavor, passed to every behaviour


@dataclass(slots=True)
class _Call:
    flavor: Flavor
    request: web.Request
    rec: Recorded
    delay: float
    script: Mapping[str, Scripted]
    # Vertex under `FakeUpstream.strict_tokens`: the tokens the OAuth endpoint issued, with their
    # expiry (monotonic). None accepts any Bearer token.
    issued_tokens: Mapping[str, float] | None = None
    # Bedrock's SigV4 check: access key → (secret key, session token or None), and the largest
    # clock skew accepted between X-Amz-Date and now (None: any).
    aws_credentials: Mapping[str, tuple[str, str | None]] | None = None
    aws_max_skew: float | None = None
    gzip_bomb_mib: int = 1
    # The Responses store (`FakeUpstream.responses`): stored Response id → what it answered.
    responses: dict[str, Json] | None = None

    @property
    def body(self) -> Json:
        """The JSON body as an object ({} when absent or not an object: checks then reject it)."""
        return self.rec.json if isinstance(self.rec.json, dict) else {}

    @property
    def model_names(self) -> tuple[str, ...]:
        """The names faults are chosen by: the body (or Vertex URL) model, and Azure's deployment."""
        return tuple(name for name in (self.rec.model, self.rec.deployment) if name)

    def has_fault(self, word: str) -> bool:
        return any(word in name for name in self.model_names)


Scripted = (
    tuple[int, Mapping[str, str], bytes | str | Json]
    | Callable[[web.Request, Recorded], Awaitable[web.StreamResponse]]
)
"""A test's override for one model name: a canned (status, headers, body), or a handler."""

_Handler = Callable[[_Call], Awaitable[web.StreamResponse]]


class _CallerGone(Exception):
    """Raised by a write that found the connection closed, carrying the prepared response."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("the caller went away")
        self.response = response


# --------------------------------------------------------------------------------------------------
# The server


class FakeUpstream:
    """A real HTTP server speaking six providers' OpenAI-style wire formats, Anthropic's Messages
    API, Vertex AI's Gemini API (with Google's OAuth token endpoint) and AWS Bedrock Runtime,
    recording everything.

    Use it as `async with FakeUpstream() as fake:` or with `await fake.start()` and
    `await fake.stop()`. `fake.url(flavor)` gives a flavor's root, `fake.requests` what arrived.
    `delay` is how long the `slow-first-byte` and `slow-stream` faults wait, `gzip_bomb_mib` what
    the `gzip-bomb` fault's answer inflates to. `in_flight` counts the handlers still running.

    Google OAuth (`POST /oauth2/token`, see "Google OAuth" below): `token_requests` records each
    call to it (not in `requests`), `issued_tokens` the access tokens it gave out, in order;
    `token_lifetime` is the `expires_in` it answers, `token_delay` how long it waits first, and
    `token_failure`, when set, the status it answers instead. `strict_tokens` makes the Vertex
    endpoints accept only issued, unexpired tokens. `vertex_tokens` lists the Bearer token of every
    Vertex request in order (`vertex_tokens_seen` as a set). `write_service_account(path)` writes a
    service-account key file whose `token_uri` is this fake.

    AWS (the bedrock flavor): `aws_credentials` maps each access key the fake knows to its secret
    key and session token (None for long-term keys); it starts with `BEDROCK_ACCESS_KEY` /
    `BEDROCK_SECRET_KEY`, and tests add more. `aws_max_skew` is how far (seconds) a request's
    X-Amz-Date may be from now, as AWS allows five minutes; None turns that check off.
    """

    def __init__(
        self, *, delay: float = 2.0, access_log: bool = False, shutdown_timeout: float = 0.5
    ) -> None:
        self.delay = delay
        self.gzip_bomb_mib = 16
        self.requests: list[Recorded] = []
        self.script: dict[str, Scripted] = {}
        # Big enough for the image and long-context bodies gateway tests send (aiohttp's default is 1 MiB).
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self._access_log = access_log
        # Short, because a `hang` handler never finishes by itself: stop() should not wait 60 s.
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._stopping = False
        self._in_flight: set[asyncio.Task[Any]] = set()
        # Google OAuth and Vertex's Bearer tokens.
        self.token_requests: list[Recorded] = []
        self.issued_tokens: list[str] = []
        self.token_lifetime: int = GOOGLE_TOKEN_LIFETIME
        self.token_delay: float = 0.0
        self.token_failure: int | None = None
        self.strict_tokens = False
        self.vertex_tokens: list[str] = []
        self._token_expiry: dict[str, float] = {}
        self.aws_credentials: dict[str, tuple[str, str | None]] = {
            BEDROCK_ACCESS_KEY: (BEDROCK_SECRET_KEY, None)
        }
        self.aws_max_skew: float | None = BEDROCK_MAX_CLOCK_SKEW
        # OpenAI Responses stored by id, oldest first (bounded by RESPONSES_STORED).
        self.responses: dict[str, Json] = {}
        self._add_routes()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 picks a free port) and return the base URL `http://host:port`."""
        if self._runner is not None:
            raise RuntimeError("the fake upstream is already running")
        # Without an access log by default: the benchmark calls the fake directly.
        log_options: dict[str, Any] = {} if self._access_log else {"access_log": None}
        runner = web.AppRunner(
            self.app,
            # A caller that disconnects must cancel the handler: that is how `hang` and the
            # streaming faults learn, and record, that the gateway gave up on them.
            handler_cancellation=True,
            shutdown_timeout=self._shutdown_timeout,
            **log_options,
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self._base_url = f"http://{bound_host}:{bound_port}"
        self._stopping = False
        return self._base_url

    async def stop(self) -> None:
        """Close the listener and cancel handlers still running (a `hang`, a `slow-stream`)."""
        if self._runner is None:
            return
        # Handlers cancelled by our own shutdown did not lose their caller: do not record it.
        self._stopping = True
        runner, self._runner = self._runner, None
        # aiohttp would wait for them twice over its shutdown timeout; nothing will end a `hang`.
        in_flight = list(self._in_flight)
        for task in in_flight:
            task.cancel()
        if in_flight:
            await asyncio.wait(in_flight, timeout=self._shutdown_timeout)
        await runner.cleanup()

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`; only valid after `start()`."""
        if self._base_url is None:
            raise RuntimeError("the fake upstream is not running: await start() first")
        return self._base_url

    def url(self, flavor: str) -> str:
        """The root of a flavor's paths, e.g. `http://127.0.0.1:PORT/groq` (for Vertex, the
        gateway's `base_url`: it appends `/v1/projects/…`)."""
        if flavor not in FLAVORS:
            raise KeyError(f"unknown flavor {flavor!r}; known: {', '.join(FLAVORS)}")
        return f"{self.base_url}/{flavor}"

    @property
    def in_flight(self) -> int:
        """Handlers still running: a `hang` or a stalled stream whose caller has not gone away."""
        return len(self._in_flight)

    # -- what was received -------------------------------------------------------------------------

    def clear(self) -> None:
        """Forget every recorded request, token requests and Vertex tokens included.

        The script stays, and so do the tokens already issued (`issued_tokens`: they remain valid
        under `strict_tokens`) and the token settings (`token_lifetime`, `token_delay`,
        `token_failure`, `strict_tokens`): a test that changes those sets them back.
        """
        self.requests.clear()
        self.token_requests.clear()
        self.vertex_tokens.clear()

    def last(self, flavor: str | None = None) -> Recorded:
        """The latest request, of one flavor if given; AssertionError when there is none."""
        for rec in reversed(self.requests):
            if flavor is None or rec.flavor == flavor:
                return rec
        raise AssertionError(f"the fake upstream received no request{f' for {flavor}' if flavor else ''}")

    def for_model(self, name: str) -> list[Recorded]:
        """Every request whose model (body or Vertex URL), or Azure deployment, is exactly `name`."""
        return [rec for rec in self.requests if name in (rec.model, rec.deployment)]

    def for_flavor(self, flavor: str) -> list[Recorded]:
        """Every request that reached one flavor, oldest first."""
        return [rec for rec in self.requests if rec.flavor == flavor]

    @property
    def vertex_tokens_seen(self) -> set[str]:
        """The distinct Bearer tokens the Vertex endpoints received."""
        return set(self.vertex_tokens)

    # -- Google OAuth ------------------------------------------------------------------------------

    @property
    def token_uri(self) -> str:
        """`http://127.0.0.1:PORT/oauth2/token`: the `token_uri` of the service accounts below."""
        return f"{self.base_url}/oauth2/token"

    def service_account_info(self) -> Json:
        """A service-account key (the JSON Google issues) whose `token_uri` is this fake."""
        return {
            "type": "service_account",
            "project_id": VERTEX_PROJECT,
            "private_key_id": "k1",
            "private_key": service_account_private_key(),
            "client_email": VERTEX_SERVICE_ACCOUNT,
            "client_id": "1",
            "token_uri": self.token_uri,
        }

    def write_service_account(self, path: str | Path) -> Path:
        """Write `service_account_info()` to `path` (a directory gets `service-account.json`)."""
        target = Path(path)
        if target.is_dir():
            target = target / "service-account.json"
        target.write_text(json.dumps(self.service_account_info(), indent=2))
        return target

    async def _oauth_token(self, request: web.Request) -> web.StreamResponse:
        """POST /oauth2/token: Google's JWT-bearer grant, the signature left unchecked."""
        rec = await self._make_record("oauth2", request)
        self.token_requests.append(rec)
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            response = await self._token_answer(rec)
        except asyncio.CancelledError:
            if not self._stopping:
                rec.disconnected_at = time.monotonic()
            raise
        finally:
            self._in_flight.discard(task)
        rec.finished_at = time.monotonic()
        return response

    async def _token_answer(self, rec: Recorded) -> web.Response:
        if self.token_delay:
            await asyncio.sleep(self.token_delay)
        if self.token_failure is not None:
            # google-auth retries a 5xx (`internal_failure`) a few times with back-off, not a 4xx.
            if self.token_failure >= 500:
                return _oauth_error(
                    self.token_failure, "internal_failure", "Internal failure (token_failure)."
                )
            return _oauth_error(self.token_failure, "invalid_grant", "Invalid grant: account not found")
        refusal = _check_token_request(rec.body, self.token_uri)
        if refusal is not None:
            return refusal
        token = f"ya29.fake-{len(self.issued_tokens) + 1}"
        self.issued_tokens.append(token)
        lifetime = self.token_lifetime
        self._token_expiry[token] = time.monotonic() + lifetime
        return _json_response({"access_token": token, "expires_in": lifetime, "token_type": "Bearer"})

    # -- routing and recording ---------------------------------------------------------------------

    def _add_routes(self) -> None:
        router = self.app.router
        for flavor, root in _OPENAI_STYLE_ROOTS:
            router.add_post(f"{root}/chat/completions", self._endpoint(flavor, _chat_completions))
            if flavor not in _NO_EMBEDDINGS:
                router.add_post(f"{root}/embeddings", self._endpoint(flavor, _embeddings))
            router.add_get(f"{root}/models", self._endpoint(flavor, _models))
            router.add_post(f"{root}/completions", self._endpoint(flavor, _legacy_completions))
            for method, path, handle in _RESPONSES_ROUTES:
                router.add_route(method, root + path, self._endpoint(flavor, handle))
        # Azure: the classic deployment paths (api-version required) and the v1 API (none).
        # aiohttp matches `{deployment}` against the path with %2F kept encoded and then decodes
        # the value, so `gpt%2F4` arrives as `gpt/4` while the record keeps the raw target.
        deployments = "/azure/openai/deployments/{deployment}"
        router.add_post(f"{deployments}/chat/completions", self._endpoint("azure", _chat_completions))
        router.add_post(f"{deployments}/embeddings", self._endpoint("azure", _embeddings))
        router.add_post("/azure/openai/v1/chat/completions", self._endpoint("azure", _chat_completions))
        router.add_post("/azure/openai/v1/embeddings", self._endpoint("azure", _embeddings))
        router.add_get("/azure/openai/v1/models", self._endpoint("azure", _models))
        router.add_get("/azure/openai/models", self._endpoint("azure", _models))
        for method, path, handle in _RESPONSES_ROUTES:
            router.add_route(method, "/azure/openai/v1" + path, self._endpoint("azure", handle))
        router.add_post("/anthropic/v1/messages", self._endpoint("anthropic", _anthropic_messages))
        router.add_post("/anthropic/v1/messages/count_tokens", self._endpoint("anthropic", _anthropic_count_tokens))
        router.add_get("/anthropic/v1/models", self._endpoint("anthropic", _anthropic_models))
        # Vertex: `{target}` is `{model}:{method}`, one path segment (aiohttp decodes it).
        for version in VERTEX_API_VERSIONS:
            router.add_post(
                f"/vertex/{version}/projects/{{project}}/locations/{{location}}/publishers/google/models/{{target}}",
                self._endpoint("vertex", _vertex),
            )
            router.add_post(
                f"/vertex/{version}/projects/{{project}}/locations/{{location}}/publishers/anthropic/models/{{target}}",
                self._endpoint("vertex", _vertex_claude),
            )
        router.add_post("/oauth2/token", self._oauth_token)
        # Bedrock: the model id is percent-encoded, `/` as %2F included, so the handler reads the
        # model and the action from the raw path itself (`_bedrock_target`) rather than trusting
        # how a given aiohttp version decodes %2F before matching.
        router.add_post("/bedrock/model/{bedrock_target:.+}", self._endpoint("bedrock", _bedrock))
        # Everything else is a recorded 404, so a gateway that builds a wrong URL shows up in
        # `requests` instead of vanishing into aiohttp's default 404.
        router.add_route("*", "/{tail:.*}", self._unknown_url)

    def _endpoint(
        self, flavor: str, handle: _Handler
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """Wrap a behaviour: record first, then run it, then note how it ended."""
        profile = FLAVORS[flavor]

        async def endpoint(request: web.Request) -> web.StreamResponse:
            rec = await self._record(flavor, request)
            if flavor == "vertex":
                token = _bearer_token(request)
                if token is not None:
                    self.vertex_tokens.append(token)
            issued = self._token_expiry if self.strict_tokens else None
            call = _Call(
                profile,
                request,
                rec,
                self.delay,
                self.script,
                issued,
                aws_credentials=self.aws_credentials,
                aws_max_skew=self.aws_max_skew,
                gzip_bomb_mib=self.gzip_bomb_mib,
                responses=self.responses,
            )
            task = asyncio.current_task()
            if task is not None:
                self._in_flight.add(task)
            try:
                response = await handle(call)
            except asyncio.CancelledError:
                if not self._stopping and rec.finished_at is None:
                    rec.disconnected_at = time.monotonic()
                raise
            except _CallerGone as gone:
                # The write failed before aiohttp noticed the disconnect; returning the prepared
                # response lets aiohttp end the exchange quietly instead of logging a traceback.
                rec.disconnected_at = time.monotonic()
                return gone.response
            finally:
                self._in_flight.discard(task)
            if rec.finished_at is None:
                rec.finished_at = time.monotonic()
            return response

        return endpoint

    async def _record(self, flavor: str, request: web.Request) -> Recorded:
        rec = await self._make_record(flavor, request)
        self.requests.append(rec)
        return rec

    async def _make_record(self, flavor: str, request: web.Request) -> Recorded:
        started_at = time.monotonic()
        body = await request.read()
        target = request.match_info.get("target")
        path_model = (target.rpartition(":")[0] or target) if target is not None else None
        if flavor == "bedrock":
            bedrock_target = _bedrock_target(request.raw_path)
            path_model = bedrock_target[0] if bedrock_target is not None else None
        return Recorded(
            flavor=flavor,
            method=request.method,
            path=request.path,
            raw_path=request.raw_path,
            query=dict(request.query),
            headers=CIMultiDict(request.headers),
            body=body,
            json=_parse_json(body),
            started_at=started_at,
            deployment=request.match_info.get("deployment"),
            path_model=path_model,
        )

    async def _unknown_url(self, request: web.Request) -> web.StreamResponse:
        segment = request.path.split("/")[1]
        flavor = segment if segment in FLAVORS else ""
        rec = await self._record(flavor, request)
        rec.finished_at = time.monotonic()
        # Groq answers exactly this for its missing embeddings endpoint.
        return _error(
            FLAVORS.get(flavor, FLAVORS["openai"]),
            404,
            f"Unknown request URL: {request.method} {request.path}. Please check the URL for typos.",
            code="unknown_url",
        )


def _parse_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


# --------------------------------------------------------------------------------------------------
# Checks every endpoint runs first: auth, and the faults chosen by model name


def _check_access(call: _Call) -> web.Response | None:
    """Refuse what the real service refuses before looking at the body: auth, Azure's api-version,
    Anthropic's anthropic-version."""
    headers = call.request.headers
    has_bearer = bool(_BEARER.fullmatch(headers.get("Authorization", "").strip()))
    if call.flavor.auth == "google":
        return _google_access(call, has_bearer)
    if call.flavor.auth == "anthropic":
        # Either scheme (wire-formats §2, pitfall 9.13): the 2.x SDK sends Bearer, 1.x x-api-key.
        if not (headers.get("x-api-key", "").strip() or has_bearer):
            return _anthropic_error(401, "x-api-key header is required")
        if not headers.get("anthropic-version", "").strip():
            return _anthropic_error(400, "anthropic-version: header is required")
    if call.flavor.auth == "bearer" and not has_bearer:
        return _error(
            call.flavor,
            401,
            "You didn't provide a valid API key. Send it as 'Authorization: Bearer <key>'.",
            code="invalid_api_key",
        )
    if call.flavor.auth == "azure":
        if not (headers.get("api-key", "").strip() or has_bearer):
            return _error(
                call.flavor,
                401,
                "Access denied due to invalid subscription key or wrong API endpoint.",
                code="401",
            )
        if call.rec.deployment is not None and not call.request.query.get("api-version"):
            return _error(
                call.flavor,
                400,
                "Missing required query parameter: api-version",
                param="api-version",
                code="MissingApiVersionParameter",
            )
    return None


async def _pre_response_fault(call: _Call) -> web.StreamResponse | None:
    """The faults that happen before any byte is sent; None lets the normal answer go ahead.

    The test's script wins over faults, which win over normal behaviour.
    """
    scripted = _scripted(call)
    if scripted is not None:
        return await scripted
    if call.has_fault("hang"):
        # Only the caller going away ends this: the cancellation lands in _endpoint.
        await asyncio.sleep(HANG_SECONDS)
    for word, status, type_, message in (
        ("fail-500", 500, "server_error", "The server had an error while processing your request."),
        ("fail-503", 503, "server_error", "The engine is currently overloaded, please try again later."),
        ("fail-400", 400, "invalid_request_error", "Invalid request (fail-400 fault)."),
        ("fail-401", 401, "invalid_request_error", "Incorrect API key provided (fail-401 fault)."),
    ):
        if call.has_fault(word):
            return _error(call.flavor, status, message, type_=type_, code=None)
    if call.has_fault("fail-429"):
        # Both headers: the openai SDK honours retry-after-ms first, then retry-after.
        return _error(
            call.flavor,
            429,
            "Rate limit reached for requests. Please try again in 7s.",
            type_="rate_limit_exceeded",
            code="rate_limit_exceeded",
            headers={"retry-after": "7", "retry-after-ms": "7000"},
        )
    if call.has_fault(GZIP_BOMB):
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        return web.Response(body=_gzip_bomb(call.gzip_bomb_mib), headers=headers)
    if call.has_fault("slow-first-byte"):
        await asyncio.sleep(call.delay)
    return None


@functools.lru_cache(maxsize=2)
def _gzip_bomb(inflated_mib: int) -> bytes:
    """A chat completion whose content is `inflated_mib` MiB of one letter, gzip-compressed, made a
    MiB at a time so the fake never holds it inflated; cached, since making it costs a second."""
    head, tail = orjson.dumps(
        {"id": "chatcmpl-gzip-bomb", "object": "chat.completion", "created": _MODELS_CREATED,
         "model": GZIP_BOMB, "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": "@"}}]}
    ).split(b"@")
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    block = b"a" * (1024 * 1024)
    parts = [packer.compress(head), *(packer.compress(block) for _ in range(inflated_mib))]
    return b"".join([*parts, packer.compress(tail), packer.flush()])


def _scripted(call: _Call) -> Awaitable[web.StreamResponse] | None:
    for name in call.model_names:
        entry = call.script.get(name)
        if entry is None:
            continue
        if callable(entry):
            return entry(call.request, call.rec)
        status, headers, body = entry
        return _canned(status, headers, body)
    return None


async def _canned(status: int, headers: Mapping[str, str], body: bytes | str | Json) -> web.StreamResponse:
    if isinstance(body, dict):
        return _json_response(body, status, headers)
    return web.Response(status=status, headers=headers, body=body.encode() if isinstance(body, str) else body)


# --------------------------------------------------------------------------------------------------
# Writing to the wire: separate writes, faults that cut the connection


async def _prepare(response: web.StreamResponse, request: web.Request) -> None:
    try:
        await response.prepare(request)
    except ConnectionResetError as exc:
        raise _CallerGone(response) from exc


async def _send(response: web.StreamResponse, data: bytes) -> None:
    """Write one piece on its own, so the consumer sees real incremental delivery."""
    try:
        await response.write(data)
    except ConnectionResetError as exc:
        raise _CallerGone(response) from exc


def _cut(call: _Call) -> None:
    """Drop the connection abruptly (RST, no chunk terminator), as a crashing upstream would."""
    call.rec.finished_at = time.monotonic()
    transport = call.request.transport
    if transport is not None:
        transport.abort()


async def _answer(
    call: _Call, body: Json, headers: Mapping[str, str] | None = None, *, indent: bool = False
) -> web.StreamResponse:
    """Send a JSON body, or, under `cut-mid-stream`, its first half after an honest content-length.

    `indent` pretty-prints it, as Google's servers do.
    """
    data = orjson.dumps(body, option=orjson.OPT_INDENT_2 if indent else None)
    if not call.has_fault("cut-mid-stream"):
        return web.Response(body=data, content_type="application/json", headers=headers)
    response = web.StreamResponse(headers=headers)
    response.content_type = "application/json"
    response.content_length = len(data)
    await _prepare(response, call.request)
    await _send(response, data[: len(data) // 2])
    _cut(call)
    return response


# --------------------------------------------------------------------------------------------------
# Chat completions


@dataclass(frozen=True, slots=True)
class _ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class _Choice:
    text: str | None
    tool_call: _ToolCall | None
    finish_reason: str


@dataclass(frozen=True, slots=True)
class _Reply:
    """What the fake "generated", before it is rendered as one JSON body or as chunks."""

    id: str
    created: int
    model: str
    choices: tuple[_Choice, ...]
    usage: Json


TOOL_ARGUMENTS: Final = '{"location": "Paris"}'
"""The arguments of every tool call the fake makes, as the JSON string OpenAI sends."""


async def _chat_completions(call: _Call) -> web.StreamResponse:
    """POST .../chat/completions: checks, faults, then the deterministic echo (or a tool call)."""
    refusal = _check_access(call) or _check_chat_body(call)
    if refusal is not None:
        return refusal
    for check in _CHAT_CHECKS.get(call.flavor.name, ()):
        refusal = check(call)
        if refusal is not None:
            return refusal
    faulted = await _pre_response_fault(call)
    if faulted is not None:
        return faulted
    reply = _generate(call)
    if call.body.get("stream") is True:
        return await _stream_reply(call, reply)
    if call.has_fault("error-mid-stream"):
        # Without a stream to break, the generation error surfaces as a plain 500.
        return _error(call.flavor, 500, _server_error_body()["message"], type_="server_error")
    if call.has_fault("slow-stream"):
        # A slow generation delays a non-streamed answer as a whole.
        await asyncio.sleep(call.delay)
    return await _answer(call, _completion_body(call, reply))


def _check_chat_body(call: _Call) -> web.Response | None:
    body = call.body
    if not isinstance(call.rec.json, dict):
        return _error(call.flavor, 400, "The request body is not a JSON object.")
    # On an Azure deployment path the deployment names the model; everywhere else it is required.
    if call.rec.deployment is None and not isinstance(body.get("model"), str):
        return _error(call.flavor, 400, "you must provide a model parameter", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return _error(call.flavor, 400, "'messages' must be a non-empty array of objects.", param="messages")
    n = body.get("n", 1)
    if n is not None and (not isinstance(n, int) or n < 1 or n > 8):
        return _error(call.flavor, 400, "'n' must be an integer between 1 and 8.", param="n")
    return None


def _text_of(content: Any) -> str:
    """A message's text: the string, or the text parts of a list joined by a space."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _words(text: str) -> int:
    return len(text.split())


def _reply_text(flavor: Flavor, messages: list[Json]) -> str:
    last = messages[-1]
    if last.get("role") == "tool":
        return f"[{flavor.name}] tool said: {_text_of(last.get('content'))}"
    return f"[{flavor.name}] {_text_of(_last_user(messages).get('content'))}"


def _last_user(messages: list[Json]) -> Json:
    return next((m for m in reversed(messages) if m.get("role") == "user"), {})


def _token_limit(body: Json) -> int | None:
    limits = [v for v in (body.get("max_tokens"), body.get("max_completion_tokens")) if isinstance(v, int)]
    return min(limits) if limits else None


def _forced_tool(body: Json) -> str | None:
    """The function the model "calls", or None when the request does not call for a tool."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    last = body["messages"][-1]
    if not isinstance(tools, list) or not tools or choice == "none" or last.get("role") == "tool":
        return None
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return str(choice["function"].get("name", ""))
    function = tools[0].get("function") if isinstance(tools[0], dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    return str(name or "tool")


def _cut_at_stop(text: str, stop: Any) -> str:
    """The text before the earliest `stop` sequence in it (a string or a list), as OpenAI stops."""
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    hits = [text.find(s) for s in stops if isinstance(s, str) and s and s in text]
    return text[: min(hits)] if hits else text


def _generate(call: _Call) -> _Reply:
    """The deterministic answer: echo the last user message, call a tool, or stop at the limit."""
    body = call.body
    messages: list[Json] = body["messages"]
    n = (body.get("n") or 1) if call.flavor.honours_n else 1
    tool = _forced_tool(body)
    limit = _token_limit(body)
    choices: list[_Choice] = []
    for _ in range(n):
        if tool is not None:
            choices.append(
                _Choice(None, _ToolCall(call.flavor.tool_call_id(), tool, TOOL_ARGUMENTS), "tool_calls")
            )
            continue
        text = _cut_at_stop(_reply_text(call.flavor, messages), body.get("stop"))
        if limit is not None and limit < _words(text):
            # Truncated to `limit` words: a limit of 1 leaves just "[flavor]".
            choices.append(_Choice(" ".join(text.split()[: max(limit, 0)]), None, "length"))
        else:
            choices.append(_Choice(text, None, "stop"))
    prompt_tokens = sum(_words(_text_of(m.get("content"))) for m in messages)
    completion_tokens = sum(
        _words(c.text) if c.text is not None else _words(c.tool_call.arguments if c.tool_call else "")
        for c in choices
    )
    model = AZURE_MODEL if call.flavor.name == "azure" else str(body.get("model"))
    return _Reply(
        id="chatcmpl-" + _alnum(29),
        created=int(time.time()),
        model=model,
        choices=tuple(choices),
        usage={
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    )


def _message(choice: _Choice) -> Json:
    message: Json = {"role": "assistant", "content": choice.text, "refusal": None}
    if choice.tool_call is not None:
        message["tool_calls"] = [
            {
                "id": choice.tool_call.id,
                "type": "function",
                "function": {"name": choice.tool_call.name, "arguments": choice.tool_call.arguments},
            }
        ]
    return message


def _completion_body(call: _Call, reply: _Reply) -> Json:
    body: Json = {
        "id": reply.id,
        "object": "chat.completion",
        "created": reply.created,
        "model": reply.model,
        "choices": [
            {"index": i, "message": _message(c), "logprobs": None, "finish_reason": c.finish_reason}
            for i, c in enumerate(reply.choices)
        ],
        "usage": dict(reply.usage),
        "system_fingerprint": "fp_fake0001",
    }
    decorate = _COMPLETION_DECORATORS.get(call.flavor.name)
    if decorate is not None:
        decorate(body)
    return body


# -- streaming -------------------------------------------------------------------------------------

_EventKind = Literal["filter", "role", "content", "finish", "usage"]
_Event = tuple[_EventKind, Json]


def _word_pieces(text: str) -> list[str]:
    return _WORD_PIECE.findall(text) or [text]


def _argument_pieces(arguments: str) -> list[str]:
    """Split a JSON string in three, the way providers stream tool arguments in fragments."""
    third = max(len(arguments) // 3, 1)
    return [p for p in (arguments[:third], arguments[third : 2 * third], arguments[2 * third :]) if p]


def _stream_events(call: _Call, reply: _Reply, include_usage: bool) -> list[_Event]:
    """Every chunk of the stream, in order, before the flavor adds its own keys."""
    base: Json = {
        "id": reply.id,
        "object": "chat.completion.chunk",
        "created": reply.created,
        "model": reply.model,
        "system_fingerprint": "fp_fake0001",
    }

    def chunk(index: int, delta: Json, finish_reason: str | None = None) -> Json:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**base, "choices": [choice]}

    events: list[_Event] = []
    for index, choice in enumerate(reply.choices):
        events.append(("role", chunk(index, {"role": "assistant", "content": ""})))
        if choice.tool_call is not None:
            tc = choice.tool_call
            head = {
                "index": 0,
                "id": tc.id,
                "type": "function",
                "function": {"name": tc.name, "arguments": ""},
            }
            events.append(("content", chunk(index, {"tool_calls": [head]})))
            for piece in _argument_pieces(tc.arguments):
                fragment = {"index": 0, "function": {"arguments": piece}}
                events.append(("content", chunk(index, {"tool_calls": [fragment]})))
        else:
            for piece in _word_pieces(choice.text or ""):
                events.append(("content", chunk(index, {"content": piece})))
        events.append(("finish", chunk(index, {}, choice.finish_reason)))
    if include_usage:
        for _, event in events:
            event["usage"] = None
        events.append(("usage", {**base, "choices": [], "usage": dict(reply.usage)}))
    decorate = _STREAM_DECORATORS.get(call.flavor.name)
    if decorate is not None:
        decorate(events, reply)
    return events


def _sse(data: Json) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


async def _stream_reply(call: _Call, reply: _Reply) -> web.StreamResponse:
    """Write the chunks one by one, applying the streaming faults at their points."""
    options = call.body.get("stream_options")
    include_usage = (
        call.flavor.stream_usage == "on_request"
        and isinstance(options, dict)
        and options.get("include_usage") is True
    )
    events = _stream_events(call, reply, include_usage)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await _prepare(response, call.request)
    cut = call.has_fault("cut-mid-stream")
    contents = 0
    for kind, event in events:
        if cut and kind in ("finish", "usage"):
            # A reply too short for two content chunks is still cut before it can finish.
            _cut(call)
            return response
        await _send(response, _sse(event))
        if kind != "content":
            continue
        contents += 1
        if contents == 1 and call.has_fault("error-mid-stream"):
            await _send(response, _sse({"error": _server_error_body()}))
            return response
        if contents == 1 and call.has_fault("slow-stream"):
            await asyncio.sleep(call.delay)
        if contents == 2 and cut:
            _cut(call)
            return response
    await _send(response, b"data: [DONE]\n\n")
    return response


# --------------------------------------------------------------------------------------------------
# Flavor quirks: chat request checks


def _groq_unsupported(call: _Call) -> web.Response | None:
    """Groq answers 400 for parameters it does not implement (wire-formats §6.1)."""
    body = call.body
    n = body.get("n")
    if n is not None and n != 1:
        return _error(call.flavor, 400, "'n' : number must be at most 1", param="n")
    for name in ("logprobs", "top_logprobs", "logit_bias"):
        if body.get(name) is not None:
            return _error(call.flavor, 400, f"'{name}' : property '{name}' is unsupported", param=name)
    for i, message in enumerate(body["messages"]):
        if "name" in message:
            param = f"messages[{i}].name"
            return _error(call.flavor, 400, f"'{param}' : property 'name' is unsupported", param=param)
    return None


def _mistral_extra_inputs(call: _Call) -> web.Response | None:
    """Mistral's request model forbids keys it does not define, with a 422 (wire-formats §6.2)."""
    for name in ("stream_options", "max_completion_tokens"):
        if name in call.body:
            return _extra_forbidden(name)
    return None


def _tool_call_ids(messages: list[Json]) -> list[tuple[str, str]]:
    """Every tool call id sent back in the messages, with its OpenAI parameter path."""
    found: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            for j, tc in enumerate(calls):
                if isinstance(tc, dict) and "id" in tc:
                    found.append((f"messages[{i}].tool_calls[{j}].id", str(tc["id"])))
        if "tool_call_id" in message:
            found.append((f"messages[{i}].tool_call_id", str(message["tool_call_id"])))
    return found


def _mistral_tool_call_id_format(call: _Call) -> web.Response | None:
    """Mistral accepts only ids of exactly 9 characters from [a-zA-Z0-9] (wire-formats §0.4)."""
    for _, tool_call_id in _tool_call_ids(call.body["messages"]):
        if not _MISTRAL_TOOL_ID.fullmatch(tool_call_id):
            message = f"Tool call id was {tool_call_id} but must be a-z, A-Z, 0-9, with a length of 9."
            return _error(call.flavor, 400, message, code="3280")
    return None


def _openai_tool_call_id_length(call: _Call) -> web.Response | None:
    """OpenAI (and Azure) refuse tool call ids longer than 40 characters."""
    for param, tool_call_id in _tool_call_ids(call.body["messages"]):
        if len(tool_call_id) > 40:
            message = (
                f"Invalid '{param}': string too long. Expected a string with maximum length 40, "
                f"but got a string with length {len(tool_call_id)} instead."
            )
            return _error(call.flavor, 400, message, param=param, code="string_above_max_length")
    return None


def _azure_stream_options_version(call: _Call) -> web.Response | None:
    """Before 2024-10-21 Azure does not know `stream_options` (wire-formats §3)."""
    version = call.request.query.get("api-version", "")
    if (
        call.rec.deployment is not None
        and version[:10] < AZURE_STREAM_OPTIONS_SINCE
        and "stream_options" in call.body
    ):
        return _error(call.flavor, 400, "Unrecognized request argument supplied: stream_options")
    return None


def _azure_content_filter(call: _Call) -> web.Response | None:
    """A prompt whose last user message says `forbidden` is filtered: Azure's 400 (wire-formats §3)."""
    if not _FORBIDDEN.search(_text_of(_last_user(call.body["messages"]).get("content"))):
        return None
    results = _azure_filter_results()
    results["violence"] = {"filtered": True, "severity": "high"}
    error = {
        "message": (
            "The response was filtered due to the prompt triggering Azure OpenAI's content management "
            "policy. Please modify your prompt and retry."
        ),
        "type": None,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": results},
    }
    return _json_response({"error": error}, 400)


_CHAT_CHECKS: Final[Mapping[str, tuple[Callable[[_Call], web.Response | None], ...]]] = {
    "openai": (_openai_tool_call_id_length,),
    "azure": (_azure_stream_options_version, _openai_tool_call_id_length, _azure_content_filter),
    "groq": (_groq_unsupported,),
    "mistral": (_mistral_extra_inputs, _mistral_tool_call_id_format),
}
"""The provider's own request validation, run in order after auth; the first refusal wins."""


# --------------------------------------------------------------------------------------------------
# Flavor quirks: extra keys on responses and chunks


def _azure_filter_results() -> Json:
    safe = {"filtered": False, "severity": "safe"}
    return {"hate": dict(safe), "self_harm": dict(safe), "sexual": dict(safe), "violence": dict(safe)}


def _azure_prompt_filter_results() -> list[Json]:
    results = _azure_filter_results()
    results["jailbreak"] = {"filtered": False, "detected": False}
    return [{"prompt_index": 0, "content_filter_results": results}]


def _azure_completion(body: Json) -> None:
    body["prompt_filter_results"] = _azure_prompt_filter_results()
    for choice in body["choices"]:
        choice["content_filter_results"] = _azure_filter_results()


def _azure_stream(events: list[_Event], reply: _Reply) -> None:
    """Azure opens with a chunk holding only the prompt filter results, and filters every choice."""
    for _, event in events:
        for choice in event["choices"]:
            choice["content_filter_results"] = _azure_filter_results()
    first: Json = {
        "choices": [],
        "created": 0,
        "id": "",
        "model": "",
        "object": "",
        "prompt_filter_results": _azure_prompt_filter_results(),
    }
    events.insert(0, ("filter", first))


def _groq_stream(events: list[_Event], reply: _Reply) -> None:
    """Groq adds `x_groq`: its request id on the first chunk, and the usage on the finish chunk."""
    request_id = "req_" + _alnum(26)
    events[0][1]["x_groq"] = {"id": request_id}
    last_finish = max(i for i, (kind, _) in enumerate(events) if kind == "finish")
    events[last_finish][1]["x_groq"] = {"id": request_id, "usage": dict(reply.usage)}


def _mistral_stream(events: list[_Event], reply: _Reply) -> None:
    """Mistral never sends a usage chunk: the usage rides on the chunk with the finish_reason."""
    last_finish = max(i for i, (kind, _) in enumerate(events) if kind == "finish")
    events[last_finish][1]["usage"] = dict(reply.usage)


_COMPLETION_DECORATORS: Final[Mapping[str, Callable[[Json], None]]] = {"azure": _azure_completion}
_STREAM_DECORATORS: Final[Mapping[str, Callable[[list[_Event], _Reply], None]]] = {
    "azure": _azure_stream,
    "groq": _groq_stream,
    "mistral": _mistral_stream,
}


# --------------------------------------------------------------------------------------------------
# Embeddings


def _embedding_inputs(value: Any) -> list[str | list[int]] | None:
    """OpenAI's four input forms as a list of items: str, [str], [int] (one input), [[int]]."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(v, str) for v in value):
        return list(value)
    if all(isinstance(v, int) for v in value):
        return [list(value)]
    if all(isinstance(v, list) and v and all(isinstance(t, int) for t in v) for v in value):
        return [list(v) for v in value]
    return None


def embedding_vector(item: str | list[int]) -> list[float]:
    """The fake's vector for one input: 8 values in [-1, 1) from a SHA-256 of the input.

    Each value is a multiple of 1/128, so it is exact in float32: a base64 round trip (pack as
    float32, decode) gives back exactly these floats, and tests can compare with ==.
    """
    digest = hashlib.sha256(orjson.dumps(item)).digest()
    return [(byte - 128) / 128 for byte in digest[:EMBEDDING_SIZE]]


def _base64_floats(vector: list[float]) -> str:
    """Little-endian float32, base64: what the openai SDK decodes when it asked for base64."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


async def _embeddings(call: _Call) -> web.StreamResponse:
    """POST .../embeddings: one deterministic vector per input, in order."""
    refusal = _check_access(call)
    if refusal is not None:
        return refusal
    body = call.body
    if not isinstance(call.rec.json, dict):
        return _error(call.flavor, 400, "The request body is not a JSON object.")
    if call.flavor.embeddings_dimensions == "reject" and "dimensions" in body:
        return _extra_forbidden("dimensions")
    if call.rec.deployment is None and not isinstance(body.get("model"), str):
        return _error(call.flavor, 400, "you must provide a model parameter", param="model")
    inputs = _embedding_inputs(body.get("input"))
    if inputs is None:
        return _error(call.flavor, 400, "'input' must be a string, or a non-empty array.", param="input")
    size = _embedding_size(call)
    if isinstance(size, web.Response):
        return size
    faulted = await _pre_response_fault(call)
    if faulted is not None:
        return faulted
    as_base64 = call.flavor.embeddings_base64 and body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(inputs):
        vector = embedding_vector(item)[:size]
        embedding: list[float] | str = _base64_floats(vector) if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(_words(item) if isinstance(item, str) else len(item) for item in inputs)
    model = AZURE_EMBEDDING_MODEL if call.flavor.name == "azure" else str(body.get("model"))
    response = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return await _answer(call, response)


def _embedding_size(call: _Call) -> int | web.Response:
    """How many values to return: `dimensions` (OpenAI, Azure) or `output_dimension` (Mistral)."""
    key = {"truncate": "dimensions", "reject": "output_dimension"}.get(call.flavor.embeddings_dimensions)
    requested = call.body.get(key) if key else None
    if requested is None:
        return EMBEDDING_SIZE
    if not isinstance(requested, int) or not 1 <= requested <= EMBEDDING_SIZE:
        return _error(call.flavor, 400, f"'{key}' must be between 1 and {EMBEDDING_SIZE}.", param=key)
    return requested


# --------------------------------------------------------------------------------------------------
# Models


async def _models(call: _Call) -> web.StreamResponse:
    """GET .../models: the flavor's few model ids, in OpenAI's list shape."""
    refusal = _check_access(call)
    if refusal is not None:
        return refusal
    data = [
        {"id": model, "object": "model", "created": _MODELS_CREATED, "owned_by": call.flavor.owned_by}
        for model in call.flavor.models
    ]
    return _json_response({"object": "list", "data": data})


# --------------------------------------------------------------------------------------------------
# Anthropic Messages (wire-formats §2)
#
# `POST /anthropic/v1/messages`. Order of play as for the other flavors: record, auth (`x-api-key`
# or Bearer) and `anthropic-version`, the body checks below (each refusal a 400 in Anthropic's
# envelope), the script, the fault words, then the answer:
#
# - text: `"[anthropic] " + the last user turn's text` (text blocks joined by a space, an image
#   counted as `<image>`), or `"[anthropic] tool said: <first tool_result's content>"` when that
#   turn starts with tool results; upper-cased when the system prompt holds the word `shout`;
#   `{"answer": <text>}` as compact JSON under `output_config.format` json_schema.
# - tool use: with `tools`, a `tool_choice` other than none and no tool result to read, one
#   `tool_use` (`ANTHROPIC_TOOL_INPUT`) of the first tool or the named one; under `auto` (or no
#   tool_choice) it comes after a `ANTHROPIC_TOOL_PREAMBLE` text block, as Claude often does,
#   while a forced choice (`any`, `tool`) gets the tool_use alone, as the real API prefills it.
# - thinking (`enabled` or `adaptive`): a first `thinking` block "Thinking about: <text>" signed
#   with `anthropic_signature`; the API checks that signature whenever the block comes back.
# - `stop_sequences` cut before the earliest hit; more words than `max_tokens` cut to that many.
# - usage in words; a model name holding `cache` adds cache_read 7 and cache_creation 3.
#
# Consecutive turns of one role are merged before the conversation rules are checked, as the API
# itself does; refusal messages still point at the original `messages.N.content.M`.

ANTHROPIC_FAULT_WORDS: Final[tuple[str, ...]] = (*FAULT_WORDS, "fail-529", "error-before-content")
"""The fault words of the anthropic flavor: the common ones, in Anthropic's shapes, and two more.

`fail-529` answers 529 `overloaded_error`; `error-before-content` streams `message_start` and
`ping`, then `event: error` (overloaded) before any content block. The common words keep their
meaning: `fail-500` is 500 `api_error`, `fail-503` a 503 with an `overloaded_error` body, `fail-429`
429 `rate_limit_error` with `retry-after: 7` only; `error-mid-stream` sends `event: error`
(overloaded) right after the first `text_delta` (after the first delta of any kind when the answer
has no text); `slow-stream` waits after the first `content_block_delta`; `cut-mid-stream` drops the
connection after the second one. Not streamed, `error-mid-stream` and `error-before-content` both
answer 529 `overloaded_error`.
"""

ANTHROPIC_TOOL_INPUT: Final[Json] = {"location": "Paris"}
"""The `input` of every `tool_use` the fake makes (streamed as `TOOL_ARGUMENTS` in fragments)."""

ANTHROPIC_TOOL_PREAMBLE: Final = "Let me check."
"""The text block before a `tool_use` chosen under `tool_choice` auto (or none given)."""

ANTHROPIC_CACHE_READ_TOKENS: Final = 7
ANTHROPIC_CACHE_CREATION_TOKENS: Final = 3

ANTHROPIC_THINKING_PREFIX: Final = "Thinking about: "

ANTHROPIC_BETA_FIELDS: Final[tuple[tuple[str, str], ...]] = (
    ("context-management-", "context_management"),
    ("mcp-client-", "mcp_servers"),
)
"""A beta (by prefix) and the body field it opens: without the beta the field is an extra input."""

BEDROCK_BETAS: Final[tuple[str, ...]] = (
    "computer-use-", "context-1m-", "context-management-", "compact-", "effort-", "fine-grained-tool-streaming-",
    "tool-search-tool-", "thinking-binding-controls-", "thinking-display-updates-",
    "mid-conversation-output-config-", "mid-conversation-tool-changes-", "dangerous-tool-use-",
)
"""The `anthropic_beta` values (by prefix) the fake's InvokeModel accepts; any other is 400 `invalid beta
flag`, as Bedrock answers (wire-formats-dialects C.4, C.6)."""

VERTEX_BETAS: Final[tuple[str, ...]] = (
    "computer-use-", "context-1m-", "context-management-", "interleaved-thinking-", "compact-",
    "tool-search-tool-", "web-search-", "per-turn-control-", "thinking-binding-controls-",
    "thinking-display-updates-", "dangerous-tool-use-",
)
"""The `anthropic-beta` values (by prefix) the fake's rawPredict accepts; any other is 400 naming it
(wire-formats-dialects D.4)."""
"""The fake's thinking text is this prefix and the reply text it is about to give."""

_ANTHROPIC_DOCS: Final = "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
_ANTHROPIC_ID: Final = re.compile(r"[a-zA-Z0-9_-]+")
_ANTHROPIC_TOOL_NAME: Final = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_SHOUT: Final = re.compile(r"\bshout\b", re.IGNORECASE)
_ANTHROPIC_KEYS: Final = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "stop_sequences",
        "stream",
        "tools",
        "tool_choice",
        "metadata",
        "thinking",
        "output_config",
        "temperature",
        "top_p",
        "top_k",
        "service_tier",
    }
)
_ANTHROPIC_BLOCK_KEYS: Final[Mapping[str, frozenset[str]]] = {
    "text": frozenset({"type", "text", "cache_control", "citations"}),
    "image": frozenset({"type", "source", "cache_control"}),
    "tool_use": frozenset({"type", "id", "name", "input", "cache_control"}),
    "tool_result": frozenset({"type", "tool_use_id", "content", "is_error", "cache_control"}),
    "thinking": frozenset({"type", "thinking", "signature"}),
    "redacted_thinking": frozenset({"type", "data"}),
    "document": frozenset({"type", "source", "title", "context", "citations", "cache_control"}),
}
_ANTHROPIC_ROLE_OF_BLOCK: Final[Mapping[str, str]] = {
    "tool_use": "assistant",
    "thinking": "assistant",
    "redacted_thinking": "assistant",
    "tool_result": "user",
}
_ANTHROPIC_MEDIA_TYPES: Final = ("image/jpeg", "image/png", "image/gif", "image/webp")
_ANTHROPIC_ERROR_TYPES: Final[Mapping[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_OVERLOADED: Final[Json] = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
_ANTHROPIC_MODELS_CREATED: Final = "2025-02-19T00:00:00Z"


def anthropic_signature(thinking: str) -> str:
    """The `signature` the fake gives a thinking block with this text, and demands back."""
    return "sig_" + hashlib.sha256(thinking.encode()).hexdigest()[:32]


def anthropic_thinking_block(thinking: str) -> Json:
    """A `thinking` block the fake accepts back: the text, signed with `anthropic_signature`."""
    return {"type": "thinking", "thinking": thinking, "signature": anthropic_signature(thinking)}


def _anthropic_error(
    status: int, message: str, *, type_: str | None = None, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Anthropic's envelope; `error.type` from the status unless given (wire-formats §2.5)."""
    error = {"type": type_ or _ANTHROPIC_ERROR_TYPES.get(status, "api_error"), "message": message}
    return _json_response(
        {"type": "error", "error": error}, status, {**_anthropic_headers(), **(headers or {})}
    )


def _anthropic_headers() -> dict[str, str]:
    return {"request-id": "req_" + _alnum(24)}


class _Refused(Exception):
    """A 400 found while checking a body: Anthropic's `invalid_request_error`, Google's
    INVALID_ARGUMENT."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise _Refused(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _no_extra(where: str, value: Json, allowed: frozenset[str]) -> None:
    for key in value:
        _require(key in allowed, f"{where}{'.' if where else ''}{key}: Extra inputs are not permitted")


@dataclass(slots=True)
class _Turn:
    """Consecutive messages of one role, merged as the API merges them, with each block's path."""

    role: str
    index: int
    blocks: list[tuple[str, Json]]

    def of_type(self, *types: str) -> list[tuple[str, Json]]:
        return [(path, block) for path, block in self.blocks if block.get("type") in types]


def _turns(messages: list[Json]) -> list[_Turn]:
    turns: list[_Turn] = []
    for i, message in enumerate(messages):
        content = message["content"]
        blocks = (
            [(f"messages.{i}.content", {"type": "text", "text": content})]
            if isinstance(content, str)
            else [(f"messages.{i}.content.{j}", block) for j, block in enumerate(content)]
        )
        if message["role"] == "system":
            continue
        if turns and turns[-1].role == message["role"]:
            turns[-1].blocks.extend(blocks)
        else:
            turns.append(_Turn(message["role"], i, blocks))
    return turns


# -- checking the body -----------------------------------------------------------------------------


def _check_anthropic_body(body: Any, betas: tuple[str, ...] = ()) -> None:
    """Raise `_Refused` for what the real Messages API refuses with a 400; `betas` (as sent) open the
    body fields they enable (`ANTHROPIC_BETA_FIELDS`)."""
    _require(isinstance(body, dict), "The request body is not a valid JSON object.")
    opened = {name for prefix, name in ANTHROPIC_BETA_FIELDS if any(b.startswith(prefix) for b in betas)}
    _no_extra("", body, _ANTHROPIC_KEYS | opened)
    model = body.get("model")
    _require("model" in body, "model: Field required")
    _require(isinstance(model, str) and bool(model), "model: Input should be a non-empty string")
    _require("max_tokens" in body, "max_tokens: Field required")
    max_tokens = body["max_tokens"]
    _require(_is_int(max_tokens), "max_tokens: Input should be a valid integer")
    _require(max_tokens >= 1, "max_tokens: Input should be greater than or equal to 1")
    _require("messages" in body, "messages: Field required")
    messages = body["messages"]
    _require(isinstance(messages, list), "messages: Input should be a valid list")
    _require(bool(messages), "messages: at least one message is required")
    for i, message in enumerate(messages):
        _check_message(i, message, final=i == len(messages) - 1)
    _check_system(body.get("system"))
    tool_names = _check_tools(body.get("tools"))
    _check_tool_choice(body.get("tool_choice"), tool_names)
    _check_thinking_config(body.get("thinking"), max_tokens)
    _check_sampling(body)
    _check_output_config(body.get("output_config"))
    _check_small_fields(body)
    turns = _turns(messages)
    _check_tool_pairing(turns, has_tools=bool(tool_names))
    _check_thinking_turns(body, turns)


def _check_message(i: int, message: Any, *, final: bool) -> None:
    where = f"messages.{i}"
    _require(isinstance(message, dict), f"{where}: Input should be a valid dictionary")
    _no_extra(where, message, frozenset({"role", "content"}))
    role = message.get("role")
    _require(role in ("user", "assistant", "system"), f"{where}.role: Input should be 'user', 'assistant' or 'system'")
    if role == "system":  # an instruction mid-conversation: text only, not part of the turns
        content = message.get("content")
        _require((isinstance(content, str) and bool(content.strip())) or isinstance(content, list),
                 f"{where}.content: a system message takes text")
        return
    _require("content" in message, f"{where}.content: Field required")
    content = message["content"]
    prefill = final and role == "assistant"
    empty = (
        f"{where}: all messages must have non-empty content except for the optional final assistant message"
    )
    if isinstance(content, str):
        _require(bool(content) or prefill, empty)
        _require(
            not content or bool(content.strip()),
            f"{where}.content: text content blocks must contain non-whitespace text",
        )
        last_text = content
    else:
        _require(isinstance(content, list), f"{where}.content: Input should be a valid string or list")
        _require(bool(content) or prefill, empty)
        for j, block in enumerate(content):
            _check_block(f"{where}.content.{j}", block, role)
        texts = [b["text"] for b in content if b.get("type") == "text"]
        last_text = texts[-1] if texts and content[-1].get("type") == "text" else ""
    if prefill:
        _require(
            last_text == last_text.rstrip(),
            "messages: final assistant content cannot end with trailing whitespace",
        )


def _check_block(where: str, block: Any, role: str) -> None:
    _require(isinstance(block, dict), f"{where}: Input should be a valid dictionary")
    type_ = block.get("type")
    if type_ not in _ANTHROPIC_BLOCK_KEYS:
        tags = ", ".join(f"'{t}'" for t in _ANTHROPIC_BLOCK_KEYS)
        raise _Refused(
            f"{where}: Input tag '{type_}' found using 'type' does not match any of the expected tags: {tags}"
        )
    _no_extra(f"{where}.{type_}", block, _ANTHROPIC_BLOCK_KEYS[type_])
    needed_role = _ANTHROPIC_ROLE_OF_BLOCK.get(type_)
    _require(
        needed_role is None or role == needed_role,
        f"{where}: `{type_}` blocks can only be in `{needed_role}` messages",
    )
    if type_ == "text":
        _check_text_block(where, block)
    elif type_ == "image":
        _check_image_block(where, block)
    elif type_ == "tool_use":
        tool_id = block.get("id")
        _require(
            isinstance(tool_id, str) and bool(_ANTHROPIC_ID.fullmatch(tool_id)),
            f"{where}.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'",
        )
        name = block.get("name")
        _require(isinstance(name, str) and bool(name), f"{where}.tool_use.name: Field required")
        _require(
            isinstance(block.get("input"), dict),
            f"{where}.tool_use.input: Input should be a valid dictionary",
        )
    elif type_ == "tool_result":
        _check_tool_result_block(where, block)
    elif type_ == "thinking":
        thinking, signature = block.get("thinking"), block.get("signature")
        _require(isinstance(thinking, str), f"{where}.thinking.thinking: Input should be a valid string")
        _require(isinstance(signature, str), f"{where}.thinking.signature: Field required")
        _require(
            signature == anthropic_signature(str(thinking)),
            f"{where}: Invalid `signature` in `thinking` block",
        )
    elif type_ == "redacted_thinking":
        data = block.get("data")
        _require(isinstance(data, str) and bool(data), f"{where}.redacted_thinking.data: Field required")
    else:  # document: its many source kinds are not the gateway's business
        _require(isinstance(block.get("source"), dict), f"{where}.document.source: Field required")


def _check_text_block(where: str, block: Json) -> None:
    text = block.get("text")
    _require(isinstance(text, str), f"{where}.text.text: Input should be a valid string")
    _require(bool(text), f"{where}: text content blocks must be non-empty")
    _require(bool(str(text).strip()), f"{where}: text content blocks must contain non-whitespace text")


def _check_image_block(where: str, block: Json) -> None:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _Refused(f"{where}.image.source: Field required")
    kind = source.get("type")
    if kind == "base64":
        _no_extra(f"{where}.image.source.base64", source, frozenset({"type", "media_type", "data"}))
        _require(
            source.get("media_type") in _ANTHROPIC_MEDIA_TYPES,
            f"{where}.image.source.base64.media_type: Input should be 'image/jpeg', 'image/png', "
            "'image/gif' or 'image/webp'",
        )
        data = source.get("data")
        try:
            valid = isinstance(data, str) and bool(data) and bool(base64.b64decode(data, validate=True))
        except (binascii.Error, ValueError):
            valid = False
        _require(valid, f"{where}.image.source.base64.data: invalid base64 data")
    elif kind == "url":
        _no_extra(f"{where}.image.source.url", source, frozenset({"type", "url"}))
        url = source.get("url")
        _require(
            isinstance(url, str) and url.startswith("https://") and len(url) > len("https://"),
            f"{where}.image.source.url.url: only https URLs are supported",
        )
    else:
        raise _Refused(
            f"{where}.image.source: Input tag '{kind}' found using 'type' does not match any of the "
            "expected tags: 'base64', 'url'"
        )


def _check_tool_result_block(where: str, block: Json) -> None:
    tool_use_id = block.get("tool_use_id")
    _require(
        isinstance(tool_use_id, str) and bool(_ANTHROPIC_ID.fullmatch(tool_use_id)),
        f"{where}.tool_result.tool_use_id: String should match pattern '^[a-zA-Z0-9_-]+$'",
    )
    _require(
        isinstance(block.get("is_error", False), bool),
        f"{where}.tool_result.is_error: Input should be a valid boolean",
    )
    content = block.get("content", "")
    if isinstance(content, str):
        return
    _require(
        isinstance(content, list), f"{where}.tool_result.content: Input should be a valid string or list"
    )
    for k, inner in enumerate(content):
        inner_where = f"{where}.tool_result.content.{k}"
        _require(
            isinstance(inner, dict) and inner.get("type") in ("text", "image"),
            f"{inner_where}: Input tag found using 'type' does not match any of the expected tags: "
            "'text', 'image'",
        )
        _no_extra(f"{inner_where}.{inner['type']}", inner, _ANTHROPIC_BLOCK_KEYS[inner["type"]])
        if inner["type"] == "text":
            _check_text_block(inner_where, inner)
        else:
            _check_image_block(inner_where, inner)


def _check_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    _require(isinstance(system, list), "system: Input should be a valid string or list of text blocks")
    for k, block in enumerate(system):
        where = f"system.{k}"
        _require(
            isinstance(block, dict) and block.get("type") == "text",
            f"{where}: Input should be a text block",
        )
        _no_extra(f"{where}.text", block, _ANTHROPIC_BLOCK_KEYS["text"])
        _check_text_block(where, block)


def _check_tools(tools: Any) -> list[str]:
    """Check `tools` and return the names it defines, in order."""
    if tools is None:
        return []
    _require(isinstance(tools, list), "tools: Input should be a valid list")
    names: list[str] = []
    for k, tool in enumerate(tools):
        where = f"tools.{k}"
        _require(isinstance(tool, dict), f"{where}: Input should be a valid dictionary")
        _require(tool.get("type", "custom") == "custom", f"{where}.type: Input should be 'custom'")
        where = f"{where}.custom"
        _no_extra(
            where, tool, frozenset({"type", "name", "description", "input_schema", "cache_control", "strict"})
        )
        name = tool.get("name")
        _require(
            isinstance(name, str) and bool(_ANTHROPIC_TOOL_NAME.fullmatch(name)),
            f"{where}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'",
        )
        _require(
            isinstance(tool.get("description", ""), str),
            f"{where}.description: Input should be a valid string",
        )
        schema = tool.get("input_schema")
        _require(isinstance(schema, dict), f"{where}.input_schema: Field required")
        _require(schema.get("type") == "object", f"{where}.input_schema.type: Input should be 'object'")
        names.append(str(name))
    _require(len(set(names)) == len(names), "tools: Tool names must be unique.")
    return names


def _check_tool_choice(choice: Any, tool_names: list[str]) -> None:
    if choice is None:
        return
    _require(isinstance(choice, dict), "tool_choice: Input should be a valid dictionary")
    kind = choice.get("type")
    allowed = {
        "auto": {"type", "disable_parallel_tool_use"},
        "any": {"type", "disable_parallel_tool_use"},
        "tool": {"type", "name", "disable_parallel_tool_use"},
        "none": {"type"},
    }
    _require(
        kind in allowed,
        f"tool_choice: Input tag '{kind}' found using 'type' does not match any of the expected tags: "
        "'auto', 'any', 'tool', 'none'",
    )
    _no_extra(f"tool_choice.{kind}", choice, frozenset(allowed[kind]))
    _require(
        isinstance(choice.get("disable_parallel_tool_use", False), bool),
        f"tool_choice.{kind}.disable_parallel_tool_use: Input should be a valid boolean",
    )
    if kind == "tool":
        name = choice.get("name")
        _require(isinstance(name, str) and bool(name), "tool_choice.tool.name: Field required")
        _require(name in tool_names, f"tool_choice.tool.name: Tool '{name}' not found in `tools`")


def _check_thinking_config(thinking: Any, max_tokens: int) -> None:
    if thinking is None:
        return
    _require(isinstance(thinking, dict), "thinking: Input should be a valid dictionary")
    kind = thinking.get("type")
    allowed = {
        "enabled": {"type", "budget_tokens", "display"},
        "adaptive": {"type", "display"},
        "disabled": {"type"},
    }
    _require(
        kind in allowed,
        f"thinking: Input tag '{kind}' found using 'type' does not match any of the expected tags: "
        "'enabled', 'adaptive', 'disabled'",
    )
    _no_extra(f"thinking.{kind}", thinking, frozenset(allowed[kind]))
    if kind != "enabled":
        return
    budget = thinking.get("budget_tokens")
    _require("budget_tokens" in thinking, "thinking.enabled.budget_tokens: Field required")
    _require(_is_int(budget), "thinking.enabled.budget_tokens: Input should be a valid integer")
    _require(budget >= 1024, "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
    _require(
        budget < max_tokens,
        "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
        f"documentation at {_ANTHROPIC_DOCS}#max-tokens-and-context-window-size",
    )


def _thinking_on(body: Json) -> bool:
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def _check_sampling(body: Json) -> None:
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is None:
            continue
        _require(_is_number(value), f"{name}: Input should be a valid number")
        _require(value >= 0, f"{name}: Input should be greater than or equal to 0")
        _require(value <= 1, f"{name}: Input should be less than or equal to 1")
    top_k = body.get("top_k")
    if top_k is not None:
        _require(_is_int(top_k) and top_k >= 0, "top_k: Input should be a non-negative integer")
    if _thinking_on(body):
        _require(
            body.get("temperature") in (None, 1),
            "`temperature` may only be set to 1 when thinking is enabled. Please consult our "
            f"documentation at {_ANTHROPIC_DOCS}#feature-compatibility",
        )
        _require(
            top_k is None,
            "`top_k` must be unset when thinking is enabled. Please consult our documentation at "
            f"{_ANTHROPIC_DOCS}#feature-compatibility",
        )
        choice = body.get("tool_choice")
        _require(
            not (isinstance(choice, dict) and choice.get("type") in ("any", "tool")),
            "Thinking may not be enabled when tool_choice forces tool use.",
        )


def _check_output_config(config: Any) -> None:
    if config is None:
        return
    _require(isinstance(config, dict), "output_config: Input should be a valid dictionary")
    _no_extra("output_config", config, frozenset({"format", "effort"}))
    effort = config.get("effort")
    _require(
        effort in (None, "low", "medium", "high", "xhigh", "max"),
        "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'",
    )
    fmt = config.get("format")
    if fmt is None:
        return
    _require(
        isinstance(fmt, dict) and fmt.get("type") == "json_schema",
        "output_config.format.type: Input should be 'json_schema'",
    )
    _no_extra("output_config.format", fmt, frozenset({"type", "schema"}))
    _require(isinstance(fmt.get("schema"), dict), "output_config.format.schema: Field required")


def _check_small_fields(body: Json) -> None:
    metadata = body.get("metadata")
    if metadata is not None:
        _require(isinstance(metadata, dict), "metadata: Input should be a valid dictionary")
        _no_extra("metadata", metadata, frozenset({"user_id"}))
        _require(
            isinstance(metadata.get("user_id", ""), str | None),
            "metadata.user_id: Input should be a valid string",
        )
    stops = body.get("stop_sequences")
    if stops is not None:
        _require(
            isinstance(stops, list) and all(isinstance(s, str) for s in stops),
            "stop_sequences: Input should be a valid list of strings",
        )
    _require(isinstance(body.get("stream", False), bool), "stream: Input should be a valid boolean")
    _require(
        body.get("service_tier") in (None, "auto", "standard_only"),
        "service_tier: Input should be 'auto' or 'standard_only'",
    )


def _check_tool_pairing(turns: list[_Turn], *, has_tools: bool) -> None:
    """Tool blocks need `tools`; every tool_use is answered first thing in the next user turn."""
    if any(turn.of_type("tool_use", "tool_result") for turn in turns):
        _require(has_tools, "Requests which include `tool_use` or `tool_result` blocks must define tools.")
    seen: set[str] = set()
    for t, turn in enumerate(turns):
        uses = turn.of_type("tool_use")
        for path, block in uses:
            _require(block["id"] not in seen, f"{path}: `tool_use` ids must be unique")
            seen.add(block["id"])
        if turn.role == "user":
            previous = turns[t - 1] if t > 0 else None
            asked = {b["id"] for _, b in previous.of_type("tool_use")} if previous else set()
            other_seen = False
            for path, block in turn.blocks:
                if block.get("type") != "tool_result":
                    other_seen = True
                    continue
                _require(
                    block["tool_use_id"] in asked,
                    f"{path}: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{block['tool_use_id']}. Each `tool_result` block must have a corresponding "
                    "`tool_use` block in the previous message.",
                )
                _require(
                    not other_seen,
                    f"{path}: `tool_result` blocks must come first in the `user` message that answers "
                    "`tool_use` blocks, before any other content.",
                )
        elif uses:
            answer = turns[t + 1] if t + 1 < len(turns) else None
            answered = {b["tool_use_id"] for _, b in answer.of_type("tool_result")} if answer else set()
            missing = [b["id"] for _, b in uses if b["id"] not in answered]
            _require(
                not missing,
                f"messages.{answer.index if answer else turn.index}: `tool_use` ids were found without "
                f"`tool_result` blocks immediately after: {', '.join(missing)}. Each `tool_use` block "
                "must have a corresponding `tool_result` block in the next message.",
            )


def _check_thinking_turns(body: Json, turns: list[_Turn]) -> None:
    """With thinking on, the last assistant turn, if it used tools, starts with its signed thinking."""
    if not _thinking_on(body):
        return
    last = next((turn for turn in reversed(turns) if turn.role == "assistant"), None)
    if last is None or not last.of_type("tool_use"):
        return
    path, first = last.blocks[0]
    found = first.get("type")
    _require(
        found in ("thinking", "redacted_thinking"),
        f"{path}.type: Expected `thinking` or `redacted_thinking`, but found `{found}`. When "
        "`thinking` is enabled, a final `assistant` message must start with a thinking block "
        "(preceeding the lastmost set of `tool_use` and `tool_result` blocks). We recommend you "
        "include thinking blocks from previous turns. To avoid this requirement, disable "
        f"`thinking`. Please consult our documentation at {_ANTHROPIC_DOCS}",
    )


# -- the answer ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _AnthropicReply:
    id: str
    model: str
    content: list[Json]
    stop_reason: str
    stop_sequence: str | None
    usage: Json


def _anthropic_text_of(content: Any) -> str:
    """Text blocks joined by a space, an image counted as `<image>` (a string stays as it is)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts = []
    for block in content:
        if block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif block.get("type") == "image":
            parts.append("<image>")
    return " ".join(parts)


def _anthropic_block_words(block: Json) -> int:
    kind = block.get("type")
    if kind == "text":
        return _words(str(block.get("text", "")))
    if kind == "image":
        return 1
    if kind == "tool_use":
        # Counted as the JSON text streamed for it (`TOOL_ARGUMENTS` style), like the other flavors.
        return _words(json.dumps(block.get("input")))
    if kind == "tool_result":
        return _words(_anthropic_text_of(block.get("content", "")))
    if kind == "thinking":
        return _words(str(block.get("thinking", "")))
    return 0


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return " ".join(str(block.get("text", "")) for block in system)
    return ""


def _anthropic_stop(text: str, body: Json) -> tuple[str, str, str | None]:
    """Apply stop_sequences, then max_tokens: the text kept, stop_reason and stop_sequence."""
    reason, sequence = "end_turn", None
    hits = [(text.find(s), s) for s in body.get("stop_sequences") or [] if s and s in text]
    if hits:
        position, sequence = min(hits)
        text, reason = text[:position], "stop_sequence"
    limit = body["max_tokens"]
    if _words(text) > limit:
        text, reason, sequence = " ".join(text.split()[:limit]), "max_tokens", None
    return text, reason, sequence


def _anthropic_generate(call: _Call, body: Json | None = None, label: str = "anthropic") -> _AnthropicReply:
    """The answer to a Messages body (the call's, or one unwrapped from Bedrock's or Vertex's
    envelope), its text marked with `label`."""
    body = call.body if body is None else body
    turns = _turns(body["messages"])
    last_user = next((turn for turn in reversed(turns) if turn.role == "user"), None)
    blocks = [block for _, block in last_user.blocks] if last_user else []
    answered = bool(blocks) and blocks[0].get("type") == "tool_result"
    if answered:
        reply = f"[{label}] tool said: " + _anthropic_text_of(blocks[0].get("content", ""))
    else:
        reply = f"[{label}] " + _anthropic_text_of(blocks)
    system = _system_text(body.get("system"))
    if _SHOUT.search(system):
        reply = reply.upper()

    content: list[Json] = []
    if _thinking_on(body):
        content.append(anthropic_thinking_block(ANTHROPIC_THINKING_PREFIX + reply))
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {"type": "auto"}
    stop_sequence: str | None = None
    if tools and choice["type"] != "none" and not answered:
        name = choice["name"] if choice["type"] == "tool" else tools[0]["name"]
        if choice["type"] == "auto":
            content.append({"type": "text", "text": ANTHROPIC_TOOL_PREAMBLE})
        content.append(
            {
                "type": "tool_use",
                "id": call.flavor.tool_call_id(),
                "name": name,
                "input": dict(ANTHROPIC_TOOL_INPUT),
            }
        )
        stop_reason = "tool_use"
    else:
        output_format = (body.get("output_config") or {}).get("format")
        text = orjson.dumps({"answer": reply}).decode() if output_format else reply
        text, stop_reason, stop_sequence = _anthropic_stop(text, body)
        if text:
            content.append({"type": "text", "text": text})

    input_tokens = _words(system) + sum(
        _anthropic_block_words(block) for turn in turns for _, block in turn.blocks
    )
    usage: Json = {"input_tokens": input_tokens, "output_tokens": sum(map(_anthropic_block_words, content))}
    if "cache" in str(body["model"]):
        usage["cache_creation_input_tokens"] = ANTHROPIC_CACHE_CREATION_TOKENS
        usage["cache_read_input_tokens"] = ANTHROPIC_CACHE_READ_TOKENS
    return _AnthropicReply(
        id="msg_" + _alnum(24),
        model=str(body["model"]),
        content=content,
        stop_reason=stop_reason,
        stop_sequence=stop_sequence,
        usage=usage,
    )


def _anthropic_message(reply: _AnthropicReply) -> Json:
    return {
        "id": reply.id,
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": reply.content,
        "stop_reason": reply.stop_reason,
        "stop_sequence": reply.stop_sequence,
        "usage": dict(reply.usage),
    }


async def _anthropic_messages(call: _Call) -> web.StreamResponse:
    """POST /anthropic/v1/messages: checks, faults, then the deterministic answer."""
    refusal = _check_access(call)
    if refusal is not None:
        return refusal
    try:
        _check_anthropic_body(call.rec.json, _header_betas(call))
    except _Refused as refused:
        return _anthropic_error(400, refused.message)
    faulted = await _anthropic_fault(call)
    if faulted is not None:
        return faulted
    reply = _anthropic_generate(call)
    if call.body.get("stream") is True:
        return await _anthropic_stream(call, reply)
    if call.has_fault("error-mid-stream") or call.has_fault("error-before-content"):
        # Without a stream to break, the overload surfaces as Anthropic's own 529.
        return _anthropic_error(529, "Overloaded")
    if call.has_fault("slow-stream"):
        await asyncio.sleep(call.delay)
    return await _answer(call, _anthropic_message(reply), _anthropic_headers())


async def _anthropic_fault(call: _Call) -> web.StreamResponse | None:
    """The script, then the faults that happen before any byte, in Anthropic's shapes."""
    scripted = _scripted(call)
    if scripted is not None:
        return await scripted
    if call.has_fault("hang"):
        await asyncio.sleep(HANG_SECONDS)
    for word, status, message in (
        ("fail-500", 500, "Internal server error"),
        ("fail-503", 503, "Service unavailable: overloaded"),
        ("fail-529", 529, "Overloaded"),
        ("fail-400", 400, "Invalid request (fail-400 fault)."),
        ("fail-401", 401, "invalid x-api-key (fail-401 fault)"),
    ):
        if call.has_fault(word):
            return _anthropic_error(status, message)
    if call.has_fault("fail-429"):
        return _anthropic_error(
            429,
            "Number of request tokens has exceeded your per-minute rate limit (fail-429 fault).",
            headers={"retry-after": "7"},
        )
    if call.has_fault("slow-first-byte"):
        await asyncio.sleep(call.delay)
    return None


# -- streaming -------------------------------------------------------------------------------------


def _anthropic_events(reply: _AnthropicReply) -> list[tuple[str, Json]]:
    """Every named event of the stream, in order (wire-formats §2.4)."""
    start_usage = {**reply.usage, "output_tokens": 1}
    message = {**_anthropic_message(reply), "content": [], "stop_reason": None, "stop_sequence": None}
    events: list[tuple[str, Json]] = [
        ("message_start", {"type": "message_start", "message": {**message, "usage": start_usage}}),
        ("ping", {"type": "ping"}),
    ]

    def delta(index: int, payload: Json) -> tuple[str, Json]:
        return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": payload})

    for index, block in enumerate(reply.content):
        kind = block["type"]
        if kind == "thinking":
            head: Json = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [
                delta(index, {"type": "thinking_delta", "thinking": piece})
                for piece in _word_pieces(block["thinking"])
            ]
            deltas.append(delta(index, {"type": "signature_delta", "signature": block["signature"]}))
        elif kind == "text":
            head = {"type": "text", "text": ""}
            deltas = [
                delta(index, {"type": "text_delta", "text": piece}) for piece in _word_pieces(block["text"])
            ]
        else:
            head = {**block, "input": {}}
            pieces = ["", *_argument_pieces(TOOL_ARGUMENTS)]
            deltas = [delta(index, {"type": "input_json_delta", "partial_json": piece}) for piece in pieces]
        events.append(
            ("content_block_start", {"type": "content_block_start", "index": index, "content_block": head})
        )
        events.extend(deltas)
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence},
                "usage": {"output_tokens": reply.usage["output_tokens"]},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _named_sse(name: str, data: Json) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def _anthropic_stream(call: _Call, reply: _AnthropicReply) -> web.StreamResponse:
    """Write the events one by one, applying the streaming faults at their points."""
    events = _anthropic_events(reply)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **_anthropic_headers()}
    )
    await _prepare(response, call.request)
    cut = call.has_fault("cut-mid-stream")
    has_text = any(e.get("delta", {}).get("type") == "text_delta" for _, e in events)
    deltas = 0
    for name, event in events:
        if cut and name == "message_delta":
            # A reply too short for two deltas is still cut before it can finish.
            _cut(call)
            return response
        await _send(response, _named_sse(name, event))
        if name == "ping" and call.has_fault("error-before-content"):
            await _send(response, _named_sse("error", _OVERLOADED))
            return response
        if name != "content_block_delta":
            continue
        deltas += 1
        is_text = event["delta"]["type"] == "text_delta"
        if call.has_fault("error-mid-stream") and (is_text or not has_text):
            await _send(response, _named_sse("error", _OVERLOADED))
            return response
        if deltas == 1 and call.has_fault("slow-stream"):
            await asyncio.sleep(call.delay)
        if deltas == 2 and cut:
            _cut(call)
            return response
    return response


# -- models ----------------------------------------------------------------------------------------


async def _anthropic_models(call: _Call) -> web.StreamResponse:
    """GET /anthropic/v1/models: the flavor's models in Anthropic's paginated list shape."""
    refusal = _check_access(call)
    if refusal is not None:
        return refusal
    data = [
        {"type": "model", "id": model, "display_name": model, "created_at": _ANTHROPIC_MODELS_CREATED}
        for model in call.flavor.models
    ]
    body = {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
    return _json_response(body, headers=_anthropic_headers())


# --------------------------------------------------------------------------------------------------
# Claude on Bedrock and Vertex (wire-formats-dialects C, D)
#
# Bedrock's InvokeModel / InvokeModelWithResponseStream for an `anthropic.` model id, and Vertex's
# rawPredict / streamRawPredict under `publishers/anthropic/models/{model}`: the Messages body without
# `model` (Bedrock: without `stream` too), with `anthropic_version` (`bedrock-2023-05-31`,
# `vertex-2023-10-16`); betas in the body's `anthropic_beta` list (Bedrock) or the `anthropic-beta`
# header (Vertex), each unknown one refused as those services refuse it (`BEDROCK_BETAS`,
# `VERTEX_BETAS`). The body is then checked and answered as the anthropic flavor does, the text marked
# `[bedrock]` / `[vertex]`; Bedrock's stream is its event stream of `chunk` frames, each carrying one
# Anthropic event as base64 `bytes` (the last, `message_stop`, with Bedrock's invocation metrics);
# Vertex's is Anthropic's SSE. Fault words: the flavor's own, and `error-before-content` (an in-band
# overload after `ping`: Bedrock's `serviceUnavailableException` frame, Vertex's `event: error`).
# Count-tokens: Bedrock's `/model/{id}/count-tokens` (`{"input":{"invokeModel":{"body":<base64>}}}` →
# `{"inputTokens"}`) and Vertex's `count-tokens:rawPredict` (the body with `model` → `{"input_tokens"}`).

BEDROCK_ANTHROPIC_VERSION: Final = "bedrock-2023-05-31"
VERTEX_ANTHROPIC_VERSION: Final = "vertex-2023-10-16"


def _header_betas(call: _Call) -> tuple[str, ...]:
    value = call.request.headers.get("anthropic-beta", "")
    return tuple(beta.strip() for beta in value.split(",") if beta.strip())


def _claude_body(body: Json, model: str, version: str, betas: tuple[str, ...]) -> Json:
    """The Messages body inside a Bedrock or Vertex envelope, checked as Anthropic checks it."""
    _require(body.get("anthropic_version") == version, f"anthropic_version: Input should be '{version}'")
    _require("model" not in body, "model: Extra inputs are not permitted")
    inner = {k: v for k, v in body.items() if k not in ("anthropic_version", "anthropic_beta")}
    inner["model"] = model
    _check_anthropic_body(inner, betas)
    return inner


def claude_input_tokens(body: Json) -> int:
    """What the fake's count-tokens endpoints answer: the words of the system prompt and every block."""
    return _words(_system_text(body.get("system"))) + sum(
        _anthropic_block_words(block) for turn in _turns(body.get("messages") or []) for _, block in turn.blocks
    )


def _bedrock_chunk(event: Json) -> bytes:
    return encode_event("chunk", {"bytes": base64.b64encode(orjson.dumps(event)).decode(), "p": "abcdefgh"})


async def _bedrock_claude(call: _Call, model: str, *, streamed: bool) -> web.StreamResponse:
    """InvokeModel(WithResponseStream) with a Messages body for an `anthropic.` model."""
    listed = call.body.get("anthropic_beta", [])
    if not isinstance(listed, list) or not all(isinstance(b, str) and b.startswith(BEDROCK_BETAS) for b in listed):
        return _bedrock_validation("invalid beta flag")
    try:
        _require("stream" not in call.body, "stream: Extra inputs are not permitted")
        inner = _claude_body(call.body, model, BEDROCK_ANTHROPIC_VERSION, tuple(listed))
    except _Refused as refused:
        return _bedrock_validation(refused.message)
    faulted = await _bedrock_fault(call)
    if faulted is not None:
        return faulted
    reply = _anthropic_generate(call, inner, "bedrock")
    reply = dataclasses.replace(reply, id="msg_bdrk_" + _alnum(24))
    if not streamed:
        late = await _bedrock_late_fault(call)
        if late is not None:
            return late
        return await _answer(call, _anthropic_message(reply), _bedrock_headers())
    events = _anthropic_events(reply)
    metrics = {"inputTokenCount": reply.usage["input_tokens"], "outputTokenCount": reply.usage["output_tokens"],
               "invocationLatency": BEDROCK_LATENCY_MS, "firstByteLatency": BEDROCK_LATENCY_MS}
    events[-1] = ("message_stop", {"type": "message_stop", "amazon-bedrock-invocationMetrics": metrics})
    response = web.StreamResponse(
        headers={"Content-Type": "application/vnd.amazon.eventstream", **_bedrock_headers()}
    )
    await _prepare(response, call.request)
    cut = call.has_fault("cut-mid-stream")
    deltas = 0
    for name, event in events:
        if cut and name == "message_delta":
            _cut(call)
            return response
        await _send(response, _bedrock_chunk(event))
        if name == "ping" and call.has_fault("error-before-content"):
            await _send(response, encode_exception("serviceUnavailableException", "Bedrock is unavailable."))
            return response
        if name != "content_block_delta":
            continue
        deltas += 1
        if call.has_fault("error-mid-stream"):
            await _send(response, encode_exception("internalServerException", "The model failed mid-stream."))
            return response
        if deltas == 2 and cut:
            _cut(call)
            return response
    return response


async def _bedrock_invoke_stream(call: _Call, model: str) -> web.StreamResponse:
    return await _bedrock_claude(call, model, streamed=True)


async def _bedrock_count_tokens(call: _Call, model: str) -> web.StreamResponse:
    """POST /bedrock/model/{id}/count-tokens: the wrapped InvokeModel body's input tokens."""
    wrapped = ((call.body.get("input") or {}).get("invokeModel") or {}).get("body")
    try:
        body = orjson.loads(base64.b64decode(wrapped or "", validate=True))
        _require(isinstance(body, dict) and "max_tokens" in body, "max_tokens: Field required")
        _claude_body(body, model, BEDROCK_ANTHROPIC_VERSION, tuple(body.get("anthropic_beta") or ()))
    except (binascii.Error, orjson.JSONDecodeError):
        return _bedrock_validation("input.invokeModel.body must be base64 JSON.")
    except _Refused as refused:
        return _bedrock_validation(refused.message)
    return await _answer(call, {"inputTokens": claude_input_tokens(body)}, _bedrock_headers())


async def _vertex_claude(call: _Call) -> web.StreamResponse:
    """POST /vertex/{version}/projects/…/publishers/anthropic/models/{model}:{rawPredict|streamRawPredict}."""
    target = call.request.match_info["target"]
    model, _, method = target.rpartition(":")
    if not model or method not in ("rawPredict", "streamRawPredict"):
        return _google_error(404, f"Method not found: {target!r} names no method this fake serves.")
    refusal = _check_access(call)
    if refusal is not None:
        return refusal
    betas = _header_betas(call)
    unknown = [beta for beta in betas if not beta.startswith(VERTEX_BETAS)]
    if unknown:
        return _anthropic_error(400, f"Unexpected value(s) `{','.join(unknown)}` for the `anthropic-beta` header. "
                                     "Please consult our documentation at docs.claude.com or try again without the header.")
    try:
        if model == "count-tokens":
            counted = {k: v for k, v in call.body.items() if k != "model"}
            _claude_body({**counted, "max_tokens": 1}, str(call.body.get("model")), VERTEX_ANTHROPIC_VERSION, betas)
            return await _answer(call, {"input_tokens": claude_input_tokens(call.body)}, _anthropic_headers())
        inner = _claude_body(call.body, model, VERTEX_ANTHROPIC_VERSION, betas)
    except _Refused as refused:
        return _anthropic_error(400, refused.message)
    faulted = await _vertex_fault(call, model)
    if faulted is not None:
        return faulted
    reply = _anthropic_generate(call, inner, "vertex")
    if method == "streamRawPredict" and inner.get("stream") is True:
        return await _anthropic_stream(call, reply)
    late = await _vertex_late_fault(call)
    if late is not None:
        return late
    return await _answer(call, _anthropic_message(reply), _anthropic_headers())


async def _anthropic_count_tokens(call: _Call) -> web.StreamResponse:
    """POST /anthropic/v1/messages/count_tokens: the body's input tokens (no `max_tokens`)."""
    refusal = _check_access(call)
    if refusal is not None:
        return refusal
    body = call.body
    try:
        _require("max_tokens" not in body, "max_tokens: Extra inputs are not permitted")
        _check_anthropic_body({**body, "max_tokens": 1}, _header_betas(call))
    except _Refused as refused:
        return _anthropic_error(400, refused.message)
    return await _answer(call, {"input_tokens": claude_input_tokens(body)}, _anthropic_headers())


# --------------------------------------------------------------------------------------------------
# Vertex AI: Gemini's native API (wire-formats §4)
#
# `POST /vertex/{v1|v1beta1}/projects/{p}/locations/{l}/publishers/google/models/{model}:{method}`,
# the model percent-decoded and recorded as `Recorded.path_model`. Methods: `generateContent`,
# `streamGenerateContent` (SSE only with `?alt=sse`: `data: <GenerateContentResponse>` events
# separated by CRLF CRLF as Google's servers send them, no terminator), `predict` (text-embedding
# models) and `embedContent` (gemini-embedding models). Order of play as for the other flavors:
# record, the method, Bearer auth, the body checks (each a 400 INVALID_ARGUMENT in Google's
# envelope), the script, the fault words, then the answer. Errors and non-streamed bodies are
# pretty-printed, as Google's are.
#
# Keys may be camelCase or snake_case, as Google's JSON parser allows (google-genai sends some
# snake_case); the fake turns them into camelCase before checking, and answers in camelCase. A key
# the API does not define is refused with Google's "Unknown name" message, which is also what a
# JSON-Schema keyword Gemini does not accept (`additionalProperties`, `$ref`, `oneOf`, ...) gets in
# a `parameters` or `responseSchema` schema. What generateContent answers:
#
# - text: `"[vertex] " + the last user content's text` (text parts joined by a space, an inlineData
#   part counted as `<image>`, a fileData part as `<file>`), or `"[vertex] tool said: <result>"`
#   when that content holds functionResponse parts: the first one's `response`, which is its string
#   when the response is exactly `{"content": <str>}` and otherwise `json.dumps(response,
#   sort_keys=True)`; upper-cased when the systemInstruction holds the word `shout`;
#   `{"answer": <text>}` as compact JSON under `responseMimeType: application/json`.
# - function calls: with function declarations, a mode other than NONE and no functionResponse to
#   read, a single `functionCall` part `{"name": <first allowed name, else first declared>, "args":
#   VERTEX_TOOL_ARGS}`, no text and no id, finishReason STOP (Gemini says STOP for calls). A model
#   whose name holds `gemini-3` signs the call with a sibling `thoughtSignature`
#   (`vertex_thought_signature`) and demands it back (below); its text answers carry a signature on
#   the last text part (`vertex_text_signature`; streamed: a final empty text part holding it), as
#   Gemini 3 does.
# - `candidateCount` N: N candidates, the text of the second and later suffixed ` (2)`, ` (3)`, ...
#   Candidate 0 has no `index` key: proto3 JSON leaves zero values out, and so does Vertex.
# - `thinkingConfig.includeThoughts`: a first part `{"text": "Thinking about: <text>", "thought": true}`.
# - `stopSequences` cut before the earliest hit (finishReason STOP); more words than
#   `maxOutputTokens` cut to that many (finishReason MAX_TOKENS).
# - usageMetadata counted in words like the other flavors (a function call or response as the JSON
#   text of its object, an inlineData or fileData part as one word), with `thoughtsTokenCount` when
#   thinking, and Vertex's `trafficType` and per-modality details; zero counts are left out.
#   `modelVersion` is the URL's model.
# - streamed: one event per word piece carrying only the new text, a functionCall whole in one
#   event, finishReason on each candidate's last piece, the full usageMetadata on the last event and
#   `{"trafficType": "ON_DEMAND"}` alone on the others (as Vertex does).
#
# Thought signatures: for a `gemini-3` model, the first functionCall part of every model content in
# the current turn (from the last user content that is not only function responses) must carry the
# signature the fake gave that call, compared as bytes (either base64 alphabet), or one of Google's
# documented placeholders (`VERTEX_SKIP_SIGNATURES`). Missing → "Function call is missing a
# thought_signature in functionCall parts..."; different → "Thought signature is not valid...".
# Older turns are not checked: Google validates only the current turn.

VERTEX_API_VERSIONS: Final = ("v1", "v1beta1")
VERTEX_PROJECT: Final = "fake-project"
VERTEX_SERVICE_ACCOUNT: Final = "sa@fake-project.iam.gserviceaccount.com"

VERTEX_FAULT_WORDS: Final[tuple[str, ...]] = (*FAULT_WORDS, "fail-403", "blocked", "safety")
"""The fault words of the vertex flavor: the common ones, in Google's shapes, and three more.

`fail-500` 500 INTERNAL, `fail-503` 503 UNAVAILABLE, `fail-429` 429 RESOURCE_EXHAUSTED with
`retry-after: 7`, `fail-400` 400 INVALID_ARGUMENT, `fail-401` 401 UNAUTHENTICATED, `fail-403` 403
PERMISSION_DENIED. `error-mid-stream` sends `data: {"error": {"code": 500, ..., "status":
"INTERNAL"}}` right after the first event and ends the stream cleanly (not streamed: a 500);
`slow-stream` waits after the first event; `cut-mid-stream` drops the connection after the second
event (before the last one when there are fewer; not streamed: half the body). `blocked` answers
`promptFeedback.blockReason: SAFETY` with no candidates; `safety` answers candidates with
finishReason SAFETY, safetyRatings and no content. The embedding methods know the common words only.
"""

VERTEX_TOOL_ARGS: Final[Json] = {"location": "Paris"}
"""The `args` of every functionCall the fake makes (the same object as `TOOL_ARGUMENTS`)."""

VERTEX_THINKING_PREFIX: Final = "Thinking about: "
"""The fake's thought text is this prefix and the candidate's text (before JSON and cuts)."""

VERTEX_MAX_PREDICT_INSTANCES: Final = 250
"""`:predict` refuses more instances than this, as text-embedding models do."""

VERTEX_SKIP_SIGNATURES: Final = frozenset(
    {"skip_thought_signature_validator", "context_engineering_is_the_way_to_go"}
)
"""The placeholders Google documents for function calls that no Gemini 3 model signed."""

VERTEX_NO_ALT_SSE: Final = "this fake only streams with alt=sse"

VERTEX_TASK_TYPES: Final = frozenset(
    {
        "RETRIEVAL_QUERY",
        "RETRIEVAL_DOCUMENT",
        "SEMANTIC_SIMILARITY",
        "CLASSIFICATION",
        "CLUSTERING",
        "QUESTION_ANSWERING",
        "FACT_VERIFICATION",
        "CODE_RETRIEVAL_QUERY",
    }
)

_VERTEX_DOCS: Final = "https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/inference"
_GOOGLE_AUTH_HELP: Final = (
    "Expected OAuth 2 access token, login cookie or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_GOOGLE_STATUSES: Final[Mapping[int, str]] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_PROTO: Final = "type.googleapis.com/google.cloud.aiplatform.v1"
_STRUCT: Final = "type.googleapis.com/google.protobuf.Struct"
_GEMINI_FUNCTION_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.:-]{0,63}")
_PART_DATA: Final = ("text", "inlineData", "fileData", "functionCall", "functionResponse")
_SCHEMA_TYPES: Final = frozenset(
    {"TYPE_UNSPECIFIED", "STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"}
)
_CALLING_MODES: Final = ("MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED")
_THINKING_LEVELS: Final = ("THINKING_LEVEL_UNSPECIFIED", "MINIMAL", "LOW", "MEDIUM", "HIGH")
_RESPONSE_MIME_TYPES: Final = ("text/plain", "application/json")
_SAFETY_THRESHOLDS: Final = frozenset(
    {
        "HARM_BLOCK_THRESHOLD_UNSPECIFIED",
        "BLOCK_LOW_AND_ABOVE",
        "BLOCK_MEDIUM_AND_ABOVE",
        "BLOCK_ONLY_HIGH",
        "BLOCK_NONE",
        "OFF",
    }
)

# The request messages, field by field (camelCase): "" is a value kept as sent (a scalar, or a
# Struct such as `args` whose keys are the caller's own), "Name" a message, "[Name]" a list of them,
# "{Name}" a map to them. Keys are turned into camelCase only inside messages.
_GEMINI_MESSAGES: Final[Mapping[str, Mapping[str, str]]] = {
    "GenerateContentRequest": {
        "contents": "[Content]",
        "systemInstruction": "Content",
        "tools": "[Tool]",
        "toolConfig": "ToolConfig",
        "generationConfig": "GenerationConfig",
        "safetySettings": "[SafetySetting]",
        "labels": "",
        "cachedContent": "",
    },
    "Content": {"role": "", "parts": "[Part]"},
    "Part": {
        "text": "",
        "inlineData": "Blob",
        "fileData": "FileData",
        "functionCall": "FunctionCall",
        "functionResponse": "FunctionResponse",
        "thought": "",
        "thoughtSignature": "",
        "videoMetadata": "",
        "mediaResolution": "",
    },
    "Blob": {"mimeType": "", "data": "", "displayName": ""},
    "FileData": {"mimeType": "", "fileUri": "", "displayName": ""},
    "FunctionCall": {"id": "", "name": "", "args": ""},
    "FunctionResponse": {"id": "", "name": "", "response": ""},
    "Tool": {
        "functionDeclarations": "[FunctionDeclaration]",
        "googleSearch": "",
        "googleSearchRetrieval": "",
        "codeExecution": "",
        "retrieval": "",
        "urlContext": "",
        "enterpriseWebSearch": "",
        "googleMaps": "",
    },
    "FunctionDeclaration": {
        "name": "",
        "description": "",
        "parameters": "Schema",
        "parametersJsonSchema": "",
        "response": "Schema",
        "responseJsonSchema": "",
        "behavior": "",
    },
    # Google's OpenAPI subset: no additionalProperties, $ref, $defs, oneOf, allOf, const, ...
    "Schema": {
        "type": "",
        "format": "",
        "title": "",
        "description": "",
        "nullable": "",
        "default": "",
        "example": "",
        "items": "Schema",
        "minItems": "",
        "maxItems": "",
        "enum": "",
        "properties": "{Schema}",
        "propertyOrdering": "",
        "required": "",
        "minProperties": "",
        "maxProperties": "",
        "minimum": "",
        "maximum": "",
        "minLength": "",
        "maxLength": "",
        "pattern": "",
        "anyOf": "[Schema]",
    },
    "ToolConfig": {"functionCallingConfig": "FunctionCallingConfig", "retrievalConfig": ""},
    "FunctionCallingConfig": {"mode": "", "allowedFunctionNames": ""},
    "GenerationConfig": {
        "temperature": "",
        "topP": "",
        "topK": "",
        "maxOutputTokens": "",
        "stopSequences": "",
        "candidateCount": "",
        "seed": "",
        "presencePenalty": "",
        "frequencyPenalty": "",
        "responseMimeType": "",
        "responseSchema": "Schema",
        "responseJsonSchema": "",
        "thinkingConfig": "ThinkingConfig",
        "responseLogprobs": "",
        "logprobs": "",
    },
    "ThinkingConfig": {"thinkingBudget": "", "thinkingLevel": "", "includeThoughts": ""},
    "SafetySetting": {"category": "", "threshold": "", "method": ""},
    "EmbedContentRequest": {
        "content": "Content",
        "embedContentConfig": "EmbedContentConfig",
        "taskType": "",
        "title": "",
        "outputDimensionality": "",
        "autoTruncate": "",
    },
    "EmbedContentConfig": {"taskType": "", "title": "", "outputDimensionality": "", "autoTruncate": ""},
}


def vertex_thought_signature(name: str, args: Mapping[str, Any] | None = None) -> str:
    """The `thoughtSignature` the fake gives a functionCall part (gemini-3 models) and demands back.

    Standard base64 of bytes derived from the call, so a client that re-encodes it with the URL-safe
    alphabet (google-genai holds it as bytes) still sends back the same bytes.
    """
    seed = orjson.dumps({"name": name, "args": dict(args or {})}, option=orjson.OPT_SORT_KEYS)
    return base64.b64encode(b"fake-thought:" + hashlib.sha256(seed).digest()[:21]).decode()


def vertex_function_call_part(name: str, args: Mapping[str, Any] | None = None) -> Json:
    """A signed functionCall part, as a gemini-3 model of the fake returns it and accepts it back."""
    arguments = dict(VERTEX_TOOL_ARGS if args is None else args)
    return {
        "functionCall": {"name": name, "args": arguments},
        "thoughtSignature": vertex_thought_signature(name, arguments),
    }


def vertex_text_signature(text: str) -> str:
    """The `thoughtSignature` the fake puts on the last text part of a gemini-3 text answer."""
    return base64.b64encode(b"fake-text:" + hashlib.sha256(text.encode()).digest()[:12]).decode()


def _decode_base64(value: Any) -> bytes | None:
    """Bytes from base64 in either alphabet, padding optional, as proto JSON parsers read it."""
    if not isinstance(value, str):
        return None
    text = value.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


# -- errors and auth -------------------------------------------------------------------------------


def _google_error_body(status: int, message: str) -> Json:
    return {"error": {"code": status, "message": message, "status": _GOOGLE_STATUSES.get(status, "UNKNOWN")}}


def _google_error(status: int, message: str, *, headers: Mapping[str, str] | None = None) -> web.Response:
    """Google's envelope (wire-formats §4.5), pretty-printed as Google's servers send it."""
    return web.Response(
        status=status,
        body=orjson.dumps(_google_error_body(status, message), option=orjson.OPT_INDENT_2),
        content_type="application/json",
        headers=headers,
    )


def _bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "").strip()
    return header.split(None, 1)[1] if _BEARER.fullmatch(header) else None


def _google_access(call: _Call, has_bearer: bool) -> web.Response | None:
    """A Bearer token is required; under `strict_tokens` it must be issued here and unexpired."""
    if not has_bearer:
        return _google_error(
            401, f"Request is missing required authentication credential. {_GOOGLE_AUTH_HELP}"
        )
    if call.issued_tokens is not None:
        expiry = call.issued_tokens.get(_bearer_token(call.request) or "")
        if expiry is None or expiry <= time.monotonic():
            return _google_error(401, f"Request had invalid authentication credentials. {_GOOGLE_AUTH_HELP}")
    return None


def _invalid_value(path: str, type_name: str, value: Any) -> _Refused:
    """Google's message for a value of the wrong type, e.g. a string where a Struct belongs."""
    return _Refused(f"Invalid value at '{path}' ({type_name}), {orjson.dumps(value).decode()}")


def _expect(ok: bool, path: str, type_name: str, value: Any) -> None:
    if not ok:
        raise _invalid_value(path, type_name, value)


# -- camelCase and snake_case ----------------------------------------------------------------------


def _camel(key: str) -> str:
    return re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), key)


def _snake(key: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), key)


def _at(path: str) -> str:
    return f" at '{path}'" if path else ""


def _normalise(value: Any, message: str, path: str) -> Json:
    """A message with its keys in camelCase, checked against `_GEMINI_MESSAGES`; nulls dropped.

    Paths in messages use the proto field names (snake_case), as Google's do.
    """
    if not isinstance(value, dict):
        raise _invalid_value(path, f"{_PROTO}.{message}", value)
    fields = _GEMINI_MESSAGES[message]
    out: Json = {}
    for key, item in value.items():
        name = _camel(key)
        if name not in fields:
            raise _Refused(
                f'Invalid JSON payload received. Unknown name "{key}"{_at(path)}: Cannot find field.'
            )
        where = f"{path}.{_snake(name)}" if path else _snake(name)
        _require(name not in out, f"Invalid JSON payload received. Duplicate field '{where}'.")
        kind = fields[name]
        if item is None:
            continue
        if not kind:
            out[name] = item
        elif kind.startswith("["):
            _expect(isinstance(item, list), where, f"{_PROTO}.{kind[1:-1]}", item)
            out[name] = [_normalise(v, kind[1:-1], f"{where}[{i}]") for i, v in enumerate(item)]
        elif kind.startswith("{"):
            _expect(isinstance(item, dict), where, f"{_PROTO}.{kind[1:-1]}", item)
            out[name] = {
                k: _normalise(v, kind[1:-1], f"{where}[{i}].value") for i, (k, v) in enumerate(item.items())
            }
        else:
            out[name] = _normalise(item, kind, where)
    return out


# -- checking generateContent ----------------------------------------------------------------------


def _check_gemini_request(body: Any, model: str) -> Json:
    """The request in camelCase, or `_Refused` for what Vertex refuses with a 400."""
    _require(isinstance(body, dict), "Invalid JSON payload received. Expected a JSON object.")
    request = _normalise(body, "GenerateContentRequest", "")
    contents: list[Json] = request.get("contents") or []
    _require(
        bool(contents),
        "Unable to submit request because it must include at least one contents field, which "
        f"describes the prompt input. Learn more: {_VERTEX_DOCS}",
    )
    for i, content in enumerate(contents):
        _check_content(f"contents[{i}]", content)
    _check_function_turns(contents)
    _check_system_instruction(request.get("systemInstruction"))
    declared = _check_function_declarations(request.get("tools") or [])
    _check_tool_config(request.get("toolConfig"), declared)
    _check_generation_config(request.get("generationConfig") or {})
    _check_safety_settings(request.get("safetySettings") or [])
    labels = request.get("labels")
    if labels is not None:
        _expect(
            isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values()),
            "labels",
            "type.googleapis.com/google.protobuf.Map",
            labels,
        )
    if "cachedContent" in request:
        _expect(
            isinstance(request["cachedContent"], str),
            "cached_content",
            "TYPE_STRING",
            request["cachedContent"],
        )
    if "gemini-3" in model:
        _check_thought_signatures(contents)
    return request


def _check_content(path: str, content: Json) -> None:
    role = content.get("role")
    _require(role in ("user", "model"), "Please use a valid role: user, model.")
    parts = content.get("parts") or []
    _require(
        bool(parts),
        "Unable to submit request because it must include at least one parts field, which describes "
        f"the prompt input. Learn more: {_VERTEX_DOCS}",
    )
    for j, part in enumerate(parts):
        _check_part(f"{path}.parts[{j}]", part, str(role))


def _check_part(path: str, part: Json, role: str) -> None:
    present = [name for name in _PART_DATA if name in part]
    if len(present) > 1:
        raise _Refused(
            f"Invalid JSON payload received. Oneof field 'data' is already set. Cannot set '{present[1]}'"
        )
    _require(
        bool(present),
        f"Unable to submit request because the part{_at(path)} has no data: set one of text, "
        "inline_data, file_data, function_call or function_response.",
    )
    signature = part.get("thoughtSignature")
    if signature is not None:
        _expect(_decode_base64(signature) is not None, f"{path}.thought_signature", "TYPE_BYTES", signature)
    if "thought" in part:
        _expect(isinstance(part["thought"], bool), f"{path}.thought", "TYPE_BOOL", part["thought"])
    kind = present[0]
    value = part[kind]
    where = f"{path}.{_snake(kind)}"
    if kind == "text":
        _expect(isinstance(value, str), where, "TYPE_STRING", value)
        _require(
            value != "" or signature is not None,
            "Unable to submit request because it has an empty text parameter. Add a value to the "
            f"parameter and try again. Learn more: {_VERTEX_DOCS}",
        )
    elif kind == "inlineData":
        mime_type = value.get("mimeType")
        _require(
            isinstance(mime_type, str) and bool(mime_type),
            f"Unable to submit request because `mime_type` is missing{_at(where)}. Add a MIME type and try again.",
        )
        data = value.get("data")
        _require(
            isinstance(data, str) and bool(data),
            f"Unable to submit request because `data` is missing{_at(where)}. Add the base64 data and try again.",
        )
        _expect(_decode_base64(data) is not None, f"{where}.data", "TYPE_BYTES", data)
    elif kind == "fileData":
        mime_type = value.get("mimeType")
        _require(
            isinstance(mime_type, str) and bool(mime_type),
            f"Unable to submit request because `mime_type` is missing{_at(where)}: file_data needs "
            "the MIME type of the file. Add it and try again.",
        )
        uri = value.get("fileUri")
        _require(
            isinstance(uri, str) and bool(uri),
            f"Unable to submit request because `file_uri` is missing{_at(where)}.",
        )
    elif kind == "functionCall":
        _require(
            role == "model",
            f"Unable to submit request because a function_call{_at(path)} is only allowed in a model turn.",
        )
        name = value.get("name")
        _require(
            isinstance(name, str) and bool(name),
            f"Unable to submit request because the function_call{_at(path)} has an empty name.",
        )
        if "args" in value:
            _expect(isinstance(value["args"], dict), f"{where}.args", _STRUCT, value["args"])
    else:  # functionResponse
        _require(
            role == "user",
            f"Unable to submit request because a function_response{_at(path)} is only allowed in a user turn.",
        )
        name = value.get("name")
        _require(
            isinstance(name, str) and bool(name),
            f"Unable to submit request because the function_response{_at(path)} has an empty name: "
            "function_response.name is required.",
        )
        _require(
            "response" in value,
            f"Unable to submit request because function_response.response is missing{_at(path)}.",
        )
        _expect(isinstance(value["response"], dict), f"{where}.response", _STRUCT, value["response"])


def _calls(content: Json | None) -> list[Json]:
    if content is None or content.get("role") != "model":
        return []
    return [part["functionCall"] for part in content["parts"] if "functionCall" in part]


def _responses(content: Json) -> list[Json]:
    return [part["functionResponse"] for part in content["parts"] if "functionResponse" in part]


def _check_function_turns(contents: list[Json]) -> None:
    """Calls follow a user turn; a function-response turn answers the calls just before it."""
    for i, content in enumerate(contents):
        previous = contents[i - 1] if i else None
        if _calls(content):
            _require(
                previous is not None and previous["role"] == "user",
                "Please ensure that function call turn comes immediately after a user turn or after a "
                "function response turn.",
            )
        responses = _responses(content)
        if not responses:
            continue
        calls = _calls(previous)
        _require(
            bool(calls),
            "Please ensure that function response turn comes immediately after a function call turn.",
        )
        _require(
            len(responses) == len(calls),
            "Please ensure that the number of function response parts is equal to the number of "
            "function call parts of the function call turn.",
        )
        _require(
            sorted(r["name"] for r in responses) == sorted(c["name"] for c in calls),
            "Please ensure that the function response parts answer the function call parts of the "
            "function call turn: their names must match.",
        )


def _check_system_instruction(instruction: Json | None) -> None:
    if instruction is None:
        return
    for j, part in enumerate(instruction.get("parts") or []):
        _require(
            set(part) == {"text"} and isinstance(part["text"], str),
            f"Unable to submit request because system_instruction.parts[{j}] is not a text part: a "
            "system instruction holds text only.",
        )


def _check_function_declarations(tools: list[Json]) -> list[str]:
    """Check every declaration and return the declared names, in order."""
    names: list[str] = []
    for i, tool in enumerate(tools):
        for j, declaration in enumerate(tool.get("functionDeclarations") or []):
            where = f"tools[{i}].function_declarations[{j}]"
            name = declaration.get("name")
            _require(
                isinstance(name, str) and bool(_GEMINI_FUNCTION_NAME.fullmatch(name)),
                f"Invalid function name{_at(where + '.name')}. Must start with a letter or an underscore. "
                "Must be alphameric (a-z, A-Z, 0-9), underscores (_), dots (.), colons (:), or dashes "
                "(-), with a maximum length of 64.",
            )
            if "description" in declaration:
                description = declaration["description"]
                _expect(isinstance(description, str), f"{where}.description", "TYPE_STRING", description)
            for schema, json_schema in (
                ("parameters", "parametersJsonSchema"),
                ("response", "responseJsonSchema"),
            ):
                _require(
                    not (schema in declaration and json_schema in declaration),
                    f"Unable to submit request because {where} sets both `{_snake(schema)}` and "
                    f"`{_snake(json_schema)}`: set only one.",
                )
                if schema in declaration:
                    _check_schema(f"{where}.{schema}", declaration[schema])
                if json_schema in declaration:
                    value = declaration[json_schema]
                    _expect(isinstance(value, dict), f"{where}.{_snake(json_schema)}", _STRUCT, value)
            _require(name not in names, f"Duplicate function declaration found: {name}")
            names.append(str(name))
    return names


def _check_schema(path: str, schema: Json) -> None:
    """The value checks of Google's Schema (unknown keywords were refused while normalising)."""
    kind = schema.get("type")
    if kind is not None:
        _expect(
            isinstance(kind, str) and kind.upper() in _SCHEMA_TYPES, f"{path}.type", f"{_PROTO}.Type", kind
        )
    for key in ("required", "enum", "propertyOrdering"):
        if key in schema:
            value = schema[key]
            _expect(
                isinstance(value, list) and all(isinstance(v, str) for v in value),
                f"{path}.{_snake(key)}",
                "TYPE_STRING",
                value,
            )
    for key in ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties"):
        if key in schema:
            _expect(
                _is_int(schema[key]) and schema[key] >= 0, f"{path}.{_snake(key)}", "TYPE_INT64", schema[key]
            )
    for key in ("minimum", "maximum"):
        if key in schema:
            _expect(_is_number(schema[key]), f"{path}.{key}", "TYPE_DOUBLE", schema[key])
    if "nullable" in schema:
        _expect(isinstance(schema["nullable"], bool), f"{path}.nullable", "TYPE_BOOL", schema["nullable"])
    if "items" in schema:
        _check_schema(f"{path}.items", schema["items"])
    for i, child in enumerate((schema.get("properties") or {}).values()):
        _check_schema(f"{path}.properties[{i}].value", child)
    for i, child in enumerate(schema.get("anyOf") or []):
        _check_schema(f"{path}.any_of[{i}]", child)


def _check_tool_config(config: Json | None, declared: list[str]) -> None:
    calling = (config or {}).get("functionCallingConfig")
    if calling is None:
        return
    mode = calling.get("mode", "MODE_UNSPECIFIED")
    _expect(
        mode in _CALLING_MODES,
        "tool_config.function_calling_config.mode",
        f"{_PROTO}.FunctionCallingConfig.Mode",
        mode,
    )
    allowed = calling.get("allowedFunctionNames")
    if allowed is not None:
        _expect(
            isinstance(allowed, list) and all(isinstance(name, str) for name in allowed),
            "tool_config.function_calling_config.allowed_function_names",
            "TYPE_STRING",
            allowed,
        )
        _require(
            mode == "ANY",
            "Unable to submit request because function_calling_config.allowed_function_names can only "
            "be set when the mode is ANY.",
        )
        for name in allowed:
            _require(
                name in declared,
                f"Unable to submit request because allowed_function_names names `{name}`, which is not "
                "a declared function.",
            )
    _require(
        mode != "ANY" or bool(declared),
        "Unable to submit request because function calling mode ANY needs at least one function declaration.",
    )


def _check_range(config: Json, name: str, low: float, high: float, shown: str) -> None:
    """A number in [low, high): Vertex's message names the range as it does for temperature."""
    value = config.get(name)
    if value is None:
        return
    _expect(_is_number(value), f"generation_config.{_snake(name)}", "TYPE_FLOAT", value)
    _require(
        low <= value < high,
        f"Unable to submit request because it has a {name} value of {value} but the supported range "
        f"is from {low:g} (inclusive) to {shown} (exclusive). Update the value and try again.",
    )


def _check_generation_config(config: Json) -> None:
    _check_range(config, "temperature", 0, 2.0001, "2.0001")
    _check_range(config, "topP", 0, 1.0001, "1.0001")
    _check_range(config, "presencePenalty", -2, 2, "2")
    _check_range(config, "frequencyPenalty", -2, 2, "2")
    top_k = config.get("topK")
    if top_k is not None:
        _expect(_is_number(top_k) and top_k >= 1, "generation_config.top_k", "TYPE_FLOAT", top_k)
    limit = config.get("maxOutputTokens")
    if limit is not None:
        _expect(_is_int(limit), "generation_config.max_output_tokens", "TYPE_INT32", limit)
        _require(
            limit >= 1,
            f"Unable to submit request because it has a maxOutputTokens value of {limit} but the "
            "supported range is from 1 (inclusive) to 65537 (exclusive). Update the value and try again.",
        )
    count = config.get("candidateCount")
    if count is not None:
        _expect(_is_int(count), "generation_config.candidate_count", "TYPE_INT32", count)
        _require(
            1 <= count <= 8,
            f"Unable to submit request because candidateCount is {count}: it must be from 1 to 8.",
        )
    if "seed" in config:
        _expect(_is_int(config["seed"]), "generation_config.seed", "TYPE_INT32", config["seed"])
    stops = config.get("stopSequences")
    if stops is not None:
        _expect(
            isinstance(stops, list) and all(isinstance(s, str) for s in stops),
            "generation_config.stop_sequences",
            "TYPE_STRING",
            stops,
        )
        _require(
            len(stops) <= 5,
            f"Unable to submit request because it has {len(stops)} stop sequences: at most 5 are supported.",
        )
    mime_type = config.get("responseMimeType")
    if mime_type is not None:
        _require(
            mime_type in _RESPONSE_MIME_TYPES,
            f"Unable to submit request because response_mime_type `{mime_type}` is not supported: "
            f"allowed mimetypes are {', '.join(_RESPONSE_MIME_TYPES)}.",
        )
    has_schema = "responseSchema" in config
    has_json_schema = "responseJsonSchema" in config
    _require(
        not (has_schema and has_json_schema),
        "Unable to submit request because response_schema and response_json_schema are both set: set only one.",
    )
    if has_schema:
        _check_schema("generation_config.response_schema", config["responseSchema"])
    if has_json_schema:
        value = config["responseJsonSchema"]
        _expect(isinstance(value, dict | bool), "generation_config.response_json_schema", _STRUCT, value)
    _require(
        not (has_schema or has_json_schema) or mime_type == "application/json",
        "Unable to submit request because a response schema needs response_mime_type application/json.",
    )
    _check_thinking(config.get("thinkingConfig"))
    if "responseLogprobs" in config:
        value = config["responseLogprobs"]
        _expect(isinstance(value, bool), "generation_config.response_logprobs", "TYPE_BOOL", value)
    logprobs = config.get("logprobs")
    if logprobs is not None:
        _expect(_is_int(logprobs), "generation_config.logprobs", "TYPE_INT32", logprobs)
        _require(
            1 <= logprobs <= 20,
            f"Unable to submit request because logprobs is {logprobs}: it must be from 1 to 20.",
        )


def _check_thinking(thinking: Json | None) -> None:
    if thinking is None:
        return
    if "includeThoughts" in thinking:
        value = thinking["includeThoughts"]
        _expect(
            isinstance(value, bool), "generation_config.thinking_config.include_thoughts", "TYPE_BOOL", value
        )
    if "thinkingBudget" in thinking:
        value = thinking["thinkingBudget"]
        _expect(_is_int(value), "generation_config.thinking_config.thinking_budget", "TYPE_INT32", value)
    if "thinkingLevel" in thinking:
        value = thinking["thinkingLevel"]
        _expect(
            value in _THINKING_LEVELS,
            "generation_config.thinking_config.thinking_level",
            f"{_PROTO}.GenerationConfig.ThinkingConfig.ThinkingLevel",
            value,
        )
    _require(
        not ("thinkingBudget" in thinking and "thinkingLevel" in thinking),
        "You can only set only one of thinking budget and thinking level.",
    )


def _check_safety_settings(settings: list[Json]) -> None:
    for i, setting in enumerate(settings):
        category, threshold = setting.get("category"), setting.get("threshold")
        _expect(
            isinstance(category, str) and category.startswith("HARM_CATEGORY_"),
            f"safety_settings[{i}].category",
            f"{_PROTO}.HarmCategory",
            category,
        )
        _expect(
            threshold in _SAFETY_THRESHOLDS,
            f"safety_settings[{i}].threshold",
            f"{_PROTO}.SafetySetting.HarmBlockThreshold",
            threshold,
        )


def _check_thought_signatures(contents: list[Json]) -> None:
    """Gemini 3: in the current turn, each model content's first call carries its signature."""
    start = 0
    for i, content in enumerate(contents):
        if content["role"] == "user" and any("functionResponse" not in part for part in content["parts"]):
            start = i
    for i in range(start, len(contents)):
        parts = contents[i]["parts"]
        first = next((j for j, part in enumerate(parts) if "functionCall" in part), None)
        if contents[i]["role"] != "model" or first is None:
            continue
        call = parts[first]["functionCall"]
        signature = parts[first].get("thoughtSignature")
        _require(
            signature is not None,
            "Function call is missing a thought_signature in functionCall parts. This is required for "
            "tools to work correctly, and missing thought_signature may lead to degraded model "
            f"performance. Additional data, function call `default_api:{call['name']}` , position "
            f"{i + 1}. Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures for more "
            "details.",
        )
        if signature in VERTEX_SKIP_SIGNATURES:
            continue
        _require(
            _decode_base64(signature)
            == _decode_base64(vertex_thought_signature(call["name"], call.get("args"))),
            f"Thought signature is not valid at 'contents[{i}].parts[{first}].thought_signature': send "
            "back the thought_signature of the functionCall part exactly as the model returned it. "
            "Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures for more details.",
        )


# -- the answer ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _GeminiCandidate:
    parts: list[Json]
    finish_reason: str
    safety_ratings: list[Json] | None = None


@dataclass(frozen=True, slots=True)
class _GeminiReply:
    candidates: list[_GeminiCandidate]
    blocked: bool
    usage: Json
    model_version: str
    create_time: str
    response_id: str


def _gemini_text_of(parts: list[Json]) -> str:
    pieces = []
    for part in parts:
        if "text" in part and not part.get("thought"):
            pieces.append(str(part["text"]))
        elif "inlineData" in part:
            pieces.append("<image>")
        elif "fileData" in part:
            pieces.append("<file>")
    return " ".join(pieces)


def _tool_said(response: Json) -> str:
    """What a function response "said": its string when it is `{"content": <str>}`, else its JSON."""
    if set(response) == {"content"} and isinstance(response["content"], str):
        return response["content"]
    return json.dumps(response, sort_keys=True)


def _gemini_part_words(part: Json) -> int:
    if "text" in part:
        return _words(str(part["text"]))
    if "functionCall" in part:
        return _words(json.dumps(part["functionCall"].get("args") or {}))
    if "functionResponse" in part:
        return _words(json.dumps(part["functionResponse"].get("response") or {}))
    return 1  # inlineData, fileData


def _function_to_call(request: Json) -> str | None:
    """The function the model "calls", or None when the request does not call for one."""
    declared = [
        declaration["name"]
        for tool in request.get("tools") or []
        for declaration in tool.get("functionDeclarations") or []
    ]
    calling = (request.get("toolConfig") or {}).get("functionCallingConfig") or {}
    if not declared or calling.get("mode") == "NONE":
        return None
    allowed = calling.get("allowedFunctionNames") or []
    return str(allowed[0] if allowed else declared[0])


def _gemini_stop(text: str, config: Json) -> tuple[str, str]:
    """Apply stopSequences, then maxOutputTokens: the text kept and the finishReason."""
    finish = "STOP"
    hits = [(text.find(s), s) for s in config.get("stopSequences") or [] if s and s in text]
    if hits:
        text = text[: min(hits)[0]]
    limit = config.get("maxOutputTokens")
    if isinstance(limit, int) and _words(text) > limit:
        text, finish = " ".join(text.split()[:limit]), "MAX_TOKENS"
    return text, finish


def _safety_ratings() -> list[Json]:
    return [
        {
            "category": "HARM_CATEGORY_DANGEROUS_CONTENT",
            "probability": "HIGH",
            "probabilityScore": 0.9375,
            "severity": "HARM_SEVERITY_HIGH",
            "severityScore": 0.875,
            "blocked": True,
        }
    ]


def _gemini_candidate(request: Json, text: str, function: str | None, gemini_3: bool) -> _GeminiCandidate:
    config = request.get("generationConfig") or {}
    parts: list[Json] = []
    if (config.get("thinkingConfig") or {}).get("includeThoughts") is True:
        parts.append({"text": VERTEX_THINKING_PREFIX + text, "thought": True})
    if function is not None:
        part: Json = {"functionCall": {"name": function, "args": dict(VERTEX_TOOL_ARGS)}}
        if gemini_3:
            part["thoughtSignature"] = vertex_thought_signature(function, VERTEX_TOOL_ARGS)
        return _GeminiCandidate([*parts, part], "STOP")
    if config.get("responseMimeType") == "application/json":
        text = orjson.dumps({"answer": text}).decode()
    text, finish = _gemini_stop(text, config)
    if text:
        part = {"text": text}
        if gemini_3:
            part["thoughtSignature"] = vertex_text_signature(text)
        parts.append(part)
    return _GeminiCandidate(parts, finish)


def _gemini_generate(call: _Call, request: Json, model: str) -> _GeminiReply:
    contents: list[Json] = request["contents"]
    last_user = next((c for c in reversed(contents) if c["role"] == "user"), None)
    parts = last_user["parts"] if last_user else []
    responses = [part["functionResponse"] for part in parts if "functionResponse" in part]
    if responses:
        reply = "[vertex] tool said: " + _tool_said(responses[0]["response"])
    else:
        reply = "[vertex] " + _gemini_text_of(parts)
    system = " ".join(p["text"] for p in (request.get("systemInstruction") or {}).get("parts") or [])
    if _SHOUT.search(system):
        reply = reply.upper()
    config = request.get("generationConfig") or {}
    count = config.get("candidateCount") or 1
    function = None if responses else _function_to_call(request)
    gemini_3 = "gemini-3" in model

    candidates: list[_GeminiCandidate] = []
    if call.has_fault("safety"):
        candidates = [_GeminiCandidate([], "SAFETY", _safety_ratings()) for _ in range(count)]
    elif not call.has_fault("blocked"):
        for i in range(count):
            text = reply if i == 0 else f"{reply} ({i + 1})"
            candidates.append(_gemini_candidate(request, text, function, gemini_3))

    prompt = _words(system) + sum(_gemini_part_words(part) for c in contents for part in c["parts"])
    answer = sum(_gemini_part_words(p) for c in candidates for p in c.parts if not p.get("thought"))
    thoughts = sum(_words(p["text"]) for c in candidates for p in c.parts if p.get("thought"))
    usage: Json = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": answer,
        "totalTokenCount": prompt + answer + thoughts,
        "trafficType": "ON_DEMAND",
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
        "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": answer}],
        "thoughtsTokenCount": thoughts,
    }
    # proto3 JSON leaves zero values out.
    for key in ("candidatesTokenCount", "thoughtsTokenCount"):
        if not usage[key]:
            del usage[key]
    if not answer:
        del usage["candidatesTokensDetails"]
    now = datetime.datetime.now(datetime.UTC)
    return _GeminiReply(
        candidates=candidates,
        blocked=call.has_fault("blocked"),
        usage=usage,
        model_version=model,
        create_time=now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        response_id=_alnum(23),
    )


def _gemini_candidate_json(index: int, parts: list[Json], candidate: _GeminiCandidate, final: bool) -> Json:
    entry: Json = {}
    if parts:
        entry["content"] = {"role": "model", "parts": parts}
    if final:
        entry["finishReason"] = candidate.finish_reason
        if candidate.safety_ratings:
            entry["safetyRatings"] = candidate.safety_ratings
    if index:
        entry["index"] = index
    return entry


def _gemini_envelope(reply: _GeminiReply, usage: Json) -> Json:
    return {
        "usageMetadata": usage,
        "modelVersion": reply.model_version,
        "createTime": reply.create_time,
        "responseId": reply.response_id,
    }


def _gemini_body(reply: _GeminiReply) -> Json:
    """The non-streamed GenerateContentResponse."""
    if reply.blocked:
        head: Json = {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": _safety_ratings()}}
    else:
        head = {
            "candidates": [
                _gemini_candidate_json(i, c.parts, c, final=True) for i, c in enumerate(reply.candidates)
            ]
        }
    return {**head, **_gemini_envelope(reply, dict(reply.usage))}


def _gemini_pieces(candidate: _GeminiCandidate) -> list[Json]:
    """A candidate's parts as streamed: text a word piece at a time, a function call whole."""
    pieces: list[Json] = []
    for part in candidate.parts:
        if "functionCall" in part:
            pieces.append(part)
            continue
        extra = {"thought": True} if part.get("thought") else {}
        pieces.extend({"text": piece, **extra} for piece in _word_pieces(part["text"]))
        if "thoughtSignature" in part:
            # Gemini 3 streams the signature of a text answer in a last, empty text part.
            pieces.append({"text": "", "thoughtSignature": part["thoughtSignature"]})
    return pieces


def _gemini_chunks(reply: _GeminiReply) -> list[Json]:
    """Every event of the stream: the new pieces of each candidate, then its finishReason."""
    if reply.blocked:
        return [_gemini_body(reply)]
    pieces = [_gemini_pieces(candidate) for candidate in reply.candidates]
    steps = max(max(len(p) for p in pieces), 1)
    chunks: list[Json] = []
    for k in range(steps):
        entries = []
        for i, (candidate, own) in enumerate(zip(reply.candidates, pieces, strict=True)):
            last = max(len(own), 1) - 1
            if k > last:
                continue
            parts = [own[k]] if k < len(own) else []
            entries.append(_gemini_candidate_json(i, parts, candidate, final=k == last))
        usage = dict(reply.usage) if k == steps - 1 else {"trafficType": "ON_DEMAND"}
        chunks.append({"candidates": entries, **_gemini_envelope(reply, usage)})
    return chunks


def _google_sse(data: Json) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\r\n\r\n"


async def _gemini_stream(call: _Call, reply: _GeminiReply) -> web.StreamResponse:
    """Write the events one by one, applying the streaming faults at their points."""
    chunks = _gemini_chunks(reply)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await _prepare(response, call.request)
    cut = call.has_fault("cut-mid-stream")
    for k, chunk in enumerate(chunks):
        if cut and k == len(chunks) - 1:
            # A reply too short for two events is still cut before it can finish.
            _cut(call)
            return response
        await _send(response, _google_sse(chunk))
        if k == 0 and call.has_fault("error-mid-stream"):
            await _send(response, _google_sse(_google_error_body(500, "Internal error encountered.")))
            return response
        if k == 0 and call.has_fault("slow-stream"):
            await asyncio.sleep(call.delay)
        if k == 1 and cut:
            _cut(call)
            return response
    return response


# -- the endpoints ---------------------------------------------------------------------------------


async def _vertex(call: _Call) -> web.StreamResponse:
    """POST /vertex/{version}/projects/…/models/{model}:{method}: the method, auth, then its handler."""
    target = call.request.match_info["target"]
    model, _, method = target.rpartition(":")
    handle = _VERTEX_METHODS.get(method)
    if not model or handle is None:
        return _google_error(404, f"Method not found: {target!r} names no method this fake serves.")
    refusal = _check_access(call)
    if refusal is not None:
        return refusal
    return await handle(call, model)


async def _vertex_fault(call: _Call, model: str) -> web.StreamResponse | None:
    """The script, then the faults that happen before any byte, in Google's shapes."""
    scripted = _scripted(call)
    if scripted is not None:
        return await scripted
    if call.has_fault("hang"):
        await asyncio.sleep(HANG_SECONDS)
    info = call.request.match_info
    resource = (
        f"//aiplatform.googleapis.com/projects/{info['project']}/locations/{info['location']}"
        f"/publishers/google/models/{model}"
    )
    for word, status, message in (
        ("fail-500", 500, "Internal error encountered."),
        ("fail-503", 503, "The service is currently unavailable."),
        ("fail-400", 400, "Request contains an invalid argument. (fail-400 fault)"),
        ("fail-401", 401, f"Request had invalid authentication credentials. {_GOOGLE_AUTH_HELP}"),
        (
            "fail-403",
            403,
            f"Permission 'aiplatform.endpoints.predict' denied on resource '{resource}' (or it may not exist).",
        ),
    ):
        if call.has_fault(word):
            return _google_error(status, message)
    if call.has_fault("fail-429"):
        return _google_error(
            429,
            "Resource exhausted. Please try again later. Please refer to "
            "https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details.",
            headers={"retry-after": "7"},
        )
    if call.has_fault("slow-first-byte"):
        await asyncio.sleep(call.delay)
    return None


async def _vertex_late_fault(call: _Call) -> web.StreamResponse | None:
    """Not streamed: a generation error is a 500, a slow generation a late answer."""
    if call.has_fault("error-mid-stream"):
        return _google_error(500, "Internal error encountered.")
    if call.has_fault("slow-stream"):
        await asyncio.sleep(call.delay)
    return None


async def _vertex_generate(call: _Call, model: str, *, streamed: bool) -> web.StreamResponse:
    if streamed and call.request.query.get("alt") != "sse":
        return _google_error(400, VERTEX_NO_ALT_SSE)
    try:
        request = _check_gemini_request(call.rec.json, model)
    except _Refused as refused:
        return _google_error(400, refused.message)
    faulted = await _vertex_fault(call, model)
    if faulted is not None:
        return faulted
    reply = _gemini_generate(call, request, model)
    if streamed:
        return await _gemini_stream(call, reply)
    late = await _vertex_late_fault(call)
    if late is not None:
        return late
    return await _answer(call, _gemini_body(reply), indent=True)


async def _vertex_generate_content(call: _Call, model: str) -> web.StreamResponse:
    return await _vertex_generate(call, model, streamed=False)


async def _vertex_stream_generate_content(call: _Call, model: str) -> web.StreamResponse:
    return await _vertex_generate(call, model, streamed=True)


# -- embeddings ------------------------------------------------------------------------------------


def _embedding_dimensions(value: Any, where: str) -> int:
    if value is None:
        return EMBEDDING_SIZE
    _expect(_is_int(value), where, "TYPE_INT32", value)
    _require(
        1 <= value <= EMBEDDING_SIZE,
        f"Unable to submit request because outputDimensionality is {value}: this fake's vectors have "
        f"1 to {EMBEDDING_SIZE} values.",
    )
    return int(value)


def _check_task(task_type: Any, title: Any, where: str) -> None:
    if task_type is not None:
        _require(
            task_type in VERTEX_TASK_TYPES,
            f"Unable to submit request because task type `{task_type}`{_at(where)} is not supported: "
            f"use one of {', '.join(sorted(VERTEX_TASK_TYPES))}.",
        )
    if title is not None:
        _expect(isinstance(title, str), f"{where}.title" if where else "title", "TYPE_STRING", title)
        _require(
            task_type == "RETRIEVAL_DOCUMENT",
            "Unable to submit request because a title is only valid with task type RETRIEVAL_DOCUMENT.",
        )


def _check_predict(body: Any) -> tuple[list[str], int]:
    """The texts of a text-embedding `:predict` request and the vector size asked for."""
    _require(isinstance(body, dict), "Invalid JSON payload received. Expected a JSON object.")
    for key in body:
        _require(
            key in ("instances", "parameters"),
            f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.',
        )
    instances = body.get("instances")
    _require(
        isinstance(instances, list) and bool(instances),
        "Unable to submit request because it has no instances: `instances` must be a non-empty list.",
    )
    _require(
        len(instances) <= VERTEX_MAX_PREDICT_INSTANCES,
        f"Unable to submit request because it has {len(instances)} instances: the model accepts at most "
        f"{VERTEX_MAX_PREDICT_INSTANCES} instances per request. Split the request.",
    )
    texts = []
    for i, instance in enumerate(instances):
        where = f"instances[{i}]"
        _require(isinstance(instance, dict), f"Unable to submit request because {where} is not an object.")
        for key in instance:
            _require(
                key in ("content", "task_type", "title"),
                f"Unable to submit request because {where} has the unknown field `{key}`: an instance "
                "holds content, task_type and title.",
            )
        content = instance.get("content")
        _require(
            isinstance(content, str) and bool(content),
            f"Unable to submit request because {where}.content is missing or empty.",
        )
        _check_task(instance.get("task_type"), instance.get("title"), where)
        texts.append(str(content))
    parameters = body.get("parameters") or {}
    _require(isinstance(parameters, dict), "Unable to submit request because `parameters` is not an object.")
    for key in parameters:
        _require(
            key in ("outputDimensionality", "autoTruncate"),
            f"Unable to submit request because parameters has the unknown field `{key}`: it holds "
            "outputDimensionality and autoTruncate.",
        )
    if "autoTruncate" in parameters:
        value = parameters["autoTruncate"]
        _expect(isinstance(value, bool), "parameters.autoTruncate", "TYPE_BOOL", value)
    size = _embedding_dimensions(parameters.get("outputDimensionality"), "parameters.outputDimensionality")
    return texts, size


async def _vertex_predict(call: _Call, model: str) -> web.StreamResponse:
    """`:predict` for text-embedding models: one deterministic vector per instance, in order."""
    try:
        texts, size = _check_predict(call.rec.json)
    except _Refused as refused:
        return _google_error(400, refused.message)
    faulted = await _vertex_fault(call, model) or await _vertex_late_fault(call)
    if faulted is not None:
        return faulted
    predictions = [
        {
            "embeddings": {
                "values": embedding_vector(text)[:size],
                "statistics": {"token_count": _words(text), "truncated": False},
            }
        }
        for text in texts
    ]
    billable = sum(len("".join(text.split())) for text in texts)
    body = {"predictions": predictions, "metadata": {"billableCharacterCount": billable}}
    return await _answer(call, body, indent=True)


def _check_embed_content(body: Any) -> tuple[str, int]:
    """The text of a gemini-embedding `:embedContent` request (one content) and the vector size."""
    _require(isinstance(body, dict), "Invalid JSON payload received. Expected a JSON object.")
    request = _normalise(body, "EmbedContentRequest", "")
    content = request.get("content")
    _require(
        content is not None,
        "Unable to submit request because it has no content: embedContent embeds exactly one content.",
    )
    parts = content.get("parts") or []
    _require(bool(parts), "Unable to submit request because content.parts is empty.")
    texts = []
    for j, part in enumerate(parts):
        text = part.get("text")
        _require(
            set(part) == {"text"} and isinstance(text, str) and bool(text),
            f"Unable to submit request because content.parts[{j}] is not a non-empty text part.",
        )
        texts.append(str(text))
    config = {
        **{
            key: request[key]
            for key in ("taskType", "title", "outputDimensionality", "autoTruncate")
            if key in request
        },
        **(request.get("embedContentConfig") or {}),
    }
    _check_task(config.get("taskType"), config.get("title"), "")
    if "autoTruncate" in config:
        _expect(
            isinstance(config["autoTruncate"], bool), "auto_truncate", "TYPE_BOOL", config["autoTruncate"]
        )
    return " ".join(texts), _embedding_dimensions(config.get("outputDimensionality"), "output_dimensionality")


async def _vertex_embed_content(call: _Call, model: str) -> web.StreamResponse:
    """`:embedContent` for gemini-embedding models: one vector for the one content."""
    try:
        text, size = _check_embed_content(call.rec.json)
    except _Refused as refused:
        return _google_error(400, refused.message)
    faulted = await _vertex_fault(call, model) or await _vertex_late_fault(call)
    if faulted is not None:
        return faulted
    body = {
        "embedding": {"values": embedding_vector(text)[:size]},
        "usageMetadata": {"promptTokenCount": _words(text)},
    }
    return await _answer(call, body, indent=True)


def _texts(value: Any) -> list[str]:
    """Every `text` string anywhere in a JSON value."""
    if isinstance(value, dict):
        own = [value["text"]] if isinstance(value.get("text"), str) else []
        return own + [text for key, item in value.items() if key != "text" for text in _texts(item)]
    if isinstance(value, list):
        return [text for item in value for text in _texts(item)]
    return []


async def _vertex_count_tokens(call: _Call, model: str) -> web.StreamResponse:
    """POST …/models/{model}:countTokens: the words of every text in `contents` and `systemInstruction`."""
    body = call.body
    if not isinstance(body.get("contents"), list) or not body["contents"]:
        return _google_error(400, "contents is not specified")
    words = sum(_words(text) for text in _texts([body["contents"], body.get("systemInstruction")]))
    return await _answer(call, {"totalTokens": words, "totalBillableCharacters": words * 5}, {})


_VERTEX_METHODS: Final[Mapping[str, Callable[[_Call, str], Awaitable[web.StreamResponse]]]] = {
    "countTokens": _vertex_count_tokens,
    "generateContent": _vertex_generate_content,
    "streamGenerateContent": _vertex_stream_generate_content,
    "predict": _vertex_predict,
    "embedContent": _vertex_embed_content,
}


# --------------------------------------------------------------------------------------------------
# Google OAuth: the token endpoint of service accounts (`POST /oauth2/token`)
#
# google-auth's service-account flow posts `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`
# and `assertion=<JWT>`. The fake reads the JWT's claims without checking its signature, refuses
# what Google refuses (wrong grant type, audience, lifetime, missing cloud-platform scope) in
# Google's OAuth error shape (`{"error", "error_description"}`), and answers
# `{"access_token": "ya29.fake-<n>", "expires_in": token_lifetime, "token_type": "Bearer"}`, n
# counting the tokens issued since the fake was made. google-auth sets `aud` to Google's own token
# URI whatever the key file's `token_uri`, so that audience is the one accepted (and, for other
# clients, this fake's own URI).

GOOGLE_TOKEN_AUDIENCE: Final = "https://oauth2.googleapis.com/token"
GOOGLE_CLOUD_PLATFORM_SCOPE: Final = "https://www.googleapis.com/auth/cloud-platform"
GOOGLE_TOKEN_LIFETIME: Final = 3600
_JWT_BEARER_GRANT: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@functools.cache
def service_account_private_key() -> str:
    """An RSA private key (PEM, PKCS#8) made once per process for the fake's service accounts.

    `cryptography` comes with google-auth, which is the only thing that signs with it.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem.decode()


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    return _json_response({"error": error, "error_description": description}, status)


def _jwt_claims(assertion: str) -> Json | None:
    """The payload of a JWT, its signature unchecked; None when it is not a JWT."""
    pieces = assertion.split(".")
    if len(pieces) != 3:
        return None
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(pieces[1] + "=" * (-len(pieces[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def _check_token_request(body: bytes, token_uri: str) -> web.Response | None:
    form = dict(parse_qsl(body.decode("utf-8", "replace")))
    grant_type = form.get("grant_type", "")
    if grant_type != _JWT_BEARER_GRANT:
        return _oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")
    claims = _jwt_claims(form.get("assertion", ""))
    if claims is None:
        return _oauth_error(400, "invalid_grant", "Invalid JWT: the assertion is not a JWT.")
    if claims.get("aud") not in (GOOGLE_TOKEN_AUDIENCE, token_uri):
        return _oauth_error(
            400,
            "invalid_grant",
            f"Invalid JWT: Failed audience check. The right audience is {GOOGLE_TOKEN_AUDIENCE}",
        )
    if not isinstance(claims.get("iss"), str) or not claims["iss"]:
        return _oauth_error(400, "invalid_grant", "Invalid email or User ID")
    issued, expires = claims.get("iat"), claims.get("exp")
    if not (_is_int(issued) and _is_int(expires) and 0 < expires - issued <= 3600 and expires > time.time()):
        return _oauth_error(
            400,
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
            "Check your iat and exp values in the JWT claim.",
        )
    if GOOGLE_CLOUD_PLATFORM_SCOPE not in str(claims.get("scope", "")).split():
        return _oauth_error(400, "invalid_scope", "Invalid OAuth scope or ID token audience provided.")
    return None


# --------------------------------------------------------------------------------------------------
# AWS Bedrock Runtime (wire-formats §5)
#
# `POST /bedrock/model/{model id}/{converse|converse-stream|invoke}`: the gateway's base_url is
# `{fake}/bedrock`. The model id comes percent-encoded (`…v1%3A0`, ARNs with `%3A` and `%2F`); the
# fake decodes it for behaviour and `Recorded.path_model`, and signs over the raw path. A raw `/`
# inside the id leaves a path AWS does not serve: 404 UnknownOperationException, like any other
# action. Order of play: record, the action, auth, the body checks (each a 400 ValidationException),
# the script, the fault words, then the answer.
#
# Auth, as AWS checks it (every refusal a 403 with AWS's `x-amzn-ErrorType`):
# - `Authorization: Bearer <key>`: a Bedrock API key, accepted as it is (`auth_scheme` "bearer").
# - `AWS4-HMAC-SHA256 Credential=<key>/<yyyymmdd>/<region>/bedrock/aws4_request, SignedHeaders=…,
#   Signature=…` (`auth_scheme` "sigv4"): the key must be in `FakeUpstream.aws_credentials`
#   (UnrecognizedClientException otherwise, and when the X-Amz-Security-Token header does not match
#   the key's session token, or comes with a long-term key), the scope's service `bedrock` and its
#   date X-Amz-Date's, X-Amz-Date within `aws_max_skew` of now, `host` signed; then the signature is
#   recomputed with botocore's SigV4 code from the request's own X-Amz-Date, the raw path and query,
#   exactly the headers named in SignedHeaders and the body bytes, and must be equal
#   (InvalidSignatureException, whose message carries the canonical request and string to sign the
#   fake expected, as AWS's does). Any region is accepted (recorded in `aws_credential`).
# - nothing: MissingAuthenticationTokenException; another scheme: IncompleteSignatureException.
#
# What Converse answers (ConverseStream the same, as events):
# - text: `"[bedrock] " + the last user message's text` (text blocks joined by a space, an image
#   counted as `<image>`, a document as `<document>`), or `"[bedrock] tool said: <first toolResult>"`
#   when that message holds tool results (its text items, a `json` item as compact JSON, joined by a
#   space); upper-cased when the system text holds the word `shout`; `{"answer":<text>}` as compact
#   JSON under `outputConfig.textFormat`.
# - tool use: with `toolConfig` and no tool result to read, one toolUse block (`tooluse_` + 22
#   alphanumerics) of the first toolSpec (or `toolChoice.tool.name`) with `BEDROCK_TOOL_INPUT`,
#   stopReason `tool_use`, and no text.
# - reasoning: `additionalModelRequestFields.thinking` enabled on a model id holding
#   `anthropic.claude` puts first a reasoningContent block "Thinking about: <text>" signed with
#   `bedrock_signature`. With thinking on, every reasoningText sent back must carry that signature,
#   and the last assistant message, when it has toolUse blocks, must start with such a block.
# - `stopSequences` cut before the earliest hit (`stop_sequence`); more words than `maxTokens` cut to
#   that many (`max_tokens`); else `end_turn`.
# - usage counted in words (an image or document is one; a toolUse the JSON text of its input; the
#   system text counts), `totalTokens` = input + output + cache tokens; a model id holding `cache`
#   adds cacheReadInputTokens 7 and cacheWriteInputTokens 3. `metrics.latencyMs` is always
#   `BEDROCK_LATENCY_MS`.
# - streamed (`application/vnd.amazon.eventstream`, one frame per write): messageStart; the
#   reasoning block as reasoningContent text deltas, one per word piece, then a signature delta, with
#   no contentBlockStart; a text block as text deltas per word piece, also without
#   contentBlockStart (as Bedrock often sends it); a toolUse block as contentBlockStart
#   {toolUseId, name} then three string fragments of its input JSON; contentBlockStop after each
#   block; messageStop; metadata {usage, metrics} last. Deltas and messageStop carry a `p` padding
#   key, as Bedrock's do.
#
# InvokeModel serves embedding models only, the model told by a substring of the id (so a fault word
# can ride along): `amazon.titan-embed-text-v2` takes `{"inputText", "dimensions"?: 256|512|1024,
# "normalize"?, "embeddingTypes"?: ["float"|"binary"]}` and answers `{"embedding",
# "inputTextTokenCount"}` (+ `embeddingsByType` when asked); `cohere.embed-english-v3` and
# `cohere.embed-multilingual-v3` take `{"texts": [1..96], "input_type", "truncate"?,
# "embedding_types"?}` and answer `{"embeddings", "id", "response_type": "embeddings_floats",
# "texts"}` (`embeddings_by_type` with a dict of the types asked for). Vectors are
# `embedding_vector(text)`: EMBEDDING_SIZE values, so Titan's `dimensions` returns the first
# min(EMBEDDING_SIZE, dimensions) of them; `normalize` is accepted and changes nothing. Refusals
# are ValidationExceptions worded like the models' own "Malformed input request" errors.

BEDROCK_ACCESS_KEY: Final = "AKIDFAKEBEDROCK0001"
"""The access key `FakeUpstream.aws_credentials` knows from the start (a long-term key: no token)."""

BEDROCK_SECRET_KEY: Final = "fake-bedrock-secret-key"
"""The secret key of `BEDROCK_ACCESS_KEY`."""

BEDROCK_SIGNING_NAME: Final = "bedrock"
"""The service in a SigV4 credential scope for Bedrock Runtime (not `bedrock-runtime`)."""

BEDROCK_MAX_CLOCK_SKEW: Final = 300.0
"""AWS refuses a SigV4 request whose X-Amz-Date is more than five minutes from its clock."""

BEDROCK_FAULT_WORDS: Final[tuple[str, ...]] = (
    "fail-400",
    "fail-401",
    "fail-403",
    "fail-404",
    "fail-408",
    "fail-424",
    "fail-429",
    "not-ready",
    "fail-500",
    "fail-503",
    "slow-first-byte",
    "slow-stream",
    "hang",
    "cut-mid-stream",
    "error-mid-stream",
    "stream-throttled",
    "corrupt-crc",
    "split-frames",
)
"""The fault words of the bedrock flavor, found anywhere in the decoded model id.

Before any byte, each an AWS error (`x-amzn-ErrorType` + `{"message"}`): `fail-400`
ValidationException, `fail-401` 403 UnrecognizedClientException (AWS's answer to bad credentials),
`fail-403` AccessDeniedException, `fail-404` ResourceNotFoundException, `fail-408`
ModelTimeoutException, `fail-424` ModelErrorException, `fail-429` ThrottlingException with
`retry-after: 7`, `not-ready` 429 ModelNotReadyException, `fail-500` InternalServerException,
`fail-503` ServiceUnavailableException; `slow-first-byte` waits `delay` first; `hang` never answers.
In a ConverseStream (HTTP 200): `slow-stream` waits `delay` after the first delta; `cut-mid-stream`
sends half of the frame after the second delta and drops the connection; `stream-throttled` sends a
`throttlingException` frame right after messageStart and ends; `error-mid-stream` sends a
`modelStreamErrorException` frame (`originalStatusCode` 500) after the first text delta (the first
delta when there is no text) and ends; `corrupt-crc` sends the frame after that delta with a wrong
message CRC and ends; `split-frames` writes the whole normal stream in `BEDROCK_SPLIT_BYTES`-byte
pieces. Not streamed (Converse, InvokeModel): `error-mid-stream` is a 500 InternalServerException,
`stream-throttled` a 429 ThrottlingException, `slow-stream` a late answer, `cut-mid-stream` half the
body after an honest content-length; `corrupt-crc` and `split-frames` change nothing.
"""

BEDROCK_TOOL_INPUT: Final[Json] = {"location": "Paris"}
"""The `input` of every toolUse the fake makes (streamed as the fragments of its JSON text)."""

BEDROCK_THINKING_PREFIX: Final = "Thinking about: "
BEDROCK_CACHE_READ_TOKENS: Final = 7
BEDROCK_CACHE_WRITE_TOKENS: Final = 3
BEDROCK_LATENCY_MS: Final = 42
"""`metrics.latencyMs` of every answer: fixed, so tests can compare whole bodies."""

BEDROCK_TITAN_EMBED_MODEL: Final = "amazon.titan-embed-text-v2:0"
BEDROCK_COHERE_EMBED_MODELS: Final = ("cohere.embed-english-v3", "cohere.embed-multilingual-v3")
BEDROCK_COHERE_MAX_TEXTS: Final = 96
BEDROCK_COHERE_INPUT_TYPES: Final = ("search_document", "search_query", "classification", "clustering")
BEDROCK_SPLIT_BYTES: Final = 7
"""The piece size of `split-frames`: smaller than a prelude, so every frame is cut across reads."""

BEDROCK_VALIDATION_ERROR_TYPE: Final = (
    "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"
)
"""The `x-amzn-ErrorType` header of a 400 (cut at `:` for the code)."""

BEDROCK_SIGNATURE_MISMATCH: Final = (
    "The request signature we calculated does not match the signature you provided. Check your AWS "
    "Secret Access Key and signing method. Consult the service documentation for details."
)

_CORAL_BEDROCK: Final = "http://internal.amazon.com/coral/com.amazon.bedrock/"
_CORAL_SERVICE: Final = "http://internal.amazon.com/coral/com.amazon.coral.service/"
_AWS_ERROR_TYPES: Final[Mapping[int, str]] = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "UnknownOperationException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
_INVALID_TOKEN: Final = "The security token included in the request is invalid."
_MODEL_ERRORS: Final = "The model returned the following errors: "
_SIGV4_TIMESTAMP: Final = "%Y%m%dT%H%M%SZ"
_BEDROCK_KEYS: Final = frozenset(
    {
        "messages",
        "system",
        "inferenceConfig",
        "toolConfig",
        "guardrailConfig",
        "additionalModelRequestFields",
        "additionalModelResponseFieldPaths",
        "outputConfig",
        "performanceConfig",
        "serviceTier",
        "requestMetadata",
        "promptVariables",
    }
)
_BEDROCK_BLOCKS: Final = (
    "text",
    "image",
    "document",
    "toolUse",
    "toolResult",
    "reasoningContent",
    "cachePoint",
)
_BEDROCK_ROLE_OF_BLOCK: Final[Mapping[str, str]] = {
    "toolUse": "assistant",
    "reasoningContent": "assistant",
    "toolResult": "user",
}
_BEDROCK_CONVERSATION_BLOCKS: Final = frozenset({"text", "image", "document"})
_BEDROCK_TOOL_USE_ID: Final = re.compile(r"[a-zA-Z0-9_.:-]{1,64}")
_BEDROCK_TOOL_NAME: Final = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_BEDROCK_IMAGE_FORMATS: Final = ("png", "jpeg", "gif", "webp")
_BEDROCK_DOCUMENT_FORMATS: Final = ("pdf", "csv", "doc", "docx", "xls", "xlsx", "html", "txt", "md")
_TITAN_DIMENSIONS: Final = (256, 512, 1024)
_TITAN_KEYS: Final = frozenset({"inputText", "dimensions", "normalize", "embeddingTypes"})
_COHERE_KEYS: Final = frozenset({"texts", "input_type", "truncate", "embedding_types"})
_COHERE_TYPES: Final = ("float", "int8", "uint8", "binary", "ubinary")
_PADDING: Final = string.ascii_lowercase + string.ascii_uppercase + string.digits


def bedrock_signature(text: str) -> str:
    """The `signature` the fake gives a reasoningText with this text, and demands back."""
    return base64.b64encode(hashlib.sha256(b"fake-bedrock-reasoning:" + text.encode()).digest()).decode()


def bedrock_reasoning_block(text: str) -> Json:
    """A reasoningContent block the fake accepts back: the text, signed with `bedrock_signature`."""
    return {"reasoningContent": {"reasoningText": {"text": text, "signature": bedrock_signature(text)}}}


def bedrock_sigv4_headers(
    url: str,
    body: bytes,
    *,
    access_key: str = BEDROCK_ACCESS_KEY,
    secret_key: str = BEDROCK_SECRET_KEY,
    session_token: str | None = None,
    region: str = "us-east-1",
    headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Sign a POST to `url` (already percent-encoded, sent as it is) with botocore's own signer, now.

    Returns the headers to send with exactly `body`: the given ones (Content-Type defaults to
    application/json) plus X-Amz-Date, Authorization and, with a session token, X-Amz-Security-Token.
    For tests that talk SigV4 to the fake without an SDK.
    """
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(
        method="POST", url=url, data=body, headers={"Content-Type": "application/json", **(headers or {})}
    )
    SigV4Auth(Credentials(access_key, secret_key, session_token), BEDROCK_SIGNING_NAME, region).add_auth(
        request
    )
    return dict(request.headers.items())


# -- errors and auth -------------------------------------------------------------------------------


def _bedrock_headers() -> dict[str, str]:
    return {"x-amzn-RequestId": str(uuid.uuid4())}


def _aws_error(
    status: int,
    error_type: str,
    message: str,
    *,
    namespace: str = _CORAL_BEDROCK,
    headers: Mapping[str, str] | None = None,
    **fields: Any,
) -> web.Response:
    """AWS's rest-json error: the code in `x-amzn-ErrorType`, `{"message"}` in the body."""
    return _json_response(
        {"message": message, **fields},
        status,
        {**_bedrock_headers(), "x-amzn-ErrorType": f"{error_type}:{namespace}", **(headers or {})},
    )


def _auth_error(error_type: str, message: str) -> web.Response:
    return _aws_error(403, error_type, message, namespace=_CORAL_SERVICE)


def _bedrock_validation(message: str) -> web.Response:
    return _aws_error(400, "ValidationException", message)


def _bedrock_target(raw_path: str) -> tuple[str, str] | None:
    """The decoded model id and the action of a raw `/bedrock/model/{id}/{action}` target.

    None when the target is not of that form, a raw `/` inside the id included (AWS sees more path
    segments than its routes have).
    """
    path = raw_path.split("?", 1)[0]
    prefix = "/bedrock/model/"
    if not path.startswith(prefix):
        return None
    encoded, _, action = path[len(prefix) :].rpartition("/")
    if not encoded or "/" in encoded:
        return None
    return unquote(encoded), action


def _bedrock_access(call: _Call) -> web.Response | None:
    """Bearer (a Bedrock API key) as it is, or a SigV4 signature the fake recomputes."""
    header = call.request.headers.get("Authorization", "").strip()
    if not header:
        return _auth_error("MissingAuthenticationTokenException", "Missing Authentication Token")
    if _BEARER.fullmatch(header):
        call.rec.auth_scheme = "bearer"
        return None
    scheme, _, params = header.partition(" ")
    if scheme != "AWS4-HMAC-SHA256":
        return _auth_error(
            "IncompleteSignatureException",
            f"Authorization header requires 'Credential' parameter. Authorization header requires "
            f"'Signature' parameter. Authorization header requires 'SignedHeaders' parameter. "
            f"Authorization={scheme}",
        )
    call.rec.auth_scheme = "sigv4"
    return _check_sigv4(call, params)


def _check_sigv4(call: _Call, params: str) -> web.Response | None:
    fields: dict[str, str] = {}
    for part in params.split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            fields[name.strip()] = value.strip()
    missing = [name for name in ("Credential", "Signature", "SignedHeaders") if name not in fields]
    if missing:
        return _auth_error(
            "IncompleteSignatureException",
            " ".join(f"Authorization header requires '{name}' parameter." for name in missing),
        )
    call.rec.aws_credential = fields["Credential"]
    scope = fields["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        return _auth_error(
            "IncompleteSignatureException",
            f"Credential should be scoped with a valid terminator: 'aws4_request', not '{scope[-1]}'.",
        )
    access_key, scope_date, region, service, _ = scope
    if service != BEDROCK_SIGNING_NAME:
        return _auth_error(
            "InvalidSignatureException",
            f"Credential should be scoped to correct service: '{BEDROCK_SIGNING_NAME}'. ",
        )
    known = (call.aws_credentials or {}).get(access_key)
    headers = call.request.headers
    if known is None or headers.get("X-Amz-Security-Token") != known[1]:
        return _auth_error("UnrecognizedClientException", _INVALID_TOKEN)
    secret_key, session_token = known
    amz_date = headers.get("X-Amz-Date", "")
    try:
        stamp = datetime.datetime.strptime(amz_date, _SIGV4_TIMESTAMP).replace(tzinfo=datetime.UTC)
    except ValueError:
        return _auth_error(
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        )
    if scope_date != amz_date[:8]:
        return _auth_error(
            "InvalidSignatureException",
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{scope_date}' != '{amz_date[:8]}', from '{amz_date}'.",
        )
    skew = _clock_skew(stamp, call.aws_max_skew)
    if skew is not None:
        return _auth_error("InvalidSignatureException", skew)
    signed = fields["SignedHeaders"].split(";")
    if "host" not in signed:
        return _auth_error(
            "InvalidSignatureException",
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        )
    content_sha256 = headers.get("X-Amz-Content-SHA256")
    if content_sha256 is not None and content_sha256 != hashlib.sha256(call.rec.body).hexdigest():
        return _auth_error(
            "InvalidSignatureException",
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        )
    pairs = [(name, value) for name in signed for value in headers.getall(name, [])]
    expected, canonical, string_to_sign = _sigv4_signature(
        call.request.method,
        call.request.raw_path,
        pairs,
        call.rec.body,
        access_key=access_key,
        secret_key=secret_key,
        session_token=session_token,
        region=region,
        amz_date=amz_date,
    )
    if not hmac.compare_digest(expected, fields["Signature"]):
        return _auth_error(
            "InvalidSignatureException",
            f"{BEDROCK_SIGNATURE_MISMATCH}\n\nThe Canonical String for this request should have been\n"
            f"'{canonical}'\n\nThe String-to-Sign should have been\n'{string_to_sign}'\n",
        )
    return None


def _clock_skew(stamp: datetime.datetime, max_skew: float | None) -> str | None:
    """AWS's refusal of a request signed too long ago or too far ahead; None when it is in time."""
    if max_skew is None:
        return None
    now = datetime.datetime.now(datetime.UTC)
    allowed = datetime.timedelta(seconds=max_skew)
    minutes = f"{max_skew / 60:g} min."
    shown = stamp.strftime(_SIGV4_TIMESTAMP)
    if stamp < now - allowed:
        return (
            f"Signature expired: {shown} is now earlier than {(now - allowed).strftime(_SIGV4_TIMESTAMP)} "
            f"({now.strftime(_SIGV4_TIMESTAMP)} - {minutes})"
        )
    if stamp > now + allowed:
        return (
            f"Signature not yet current: {shown} is still later than {(now + allowed).strftime(_SIGV4_TIMESTAMP)} "
            f"({now.strftime(_SIGV4_TIMESTAMP)} + {minutes})"
        )
    return None


@functools.cache
def _sigv4_checker() -> type:
    """botocore's SigV4 signer, signing exactly the headers the request names in SignedHeaders.

    botocore's own `headers_to_sign` leaves some out (User-Agent, Expect, ...), which is right for
    signing but would make the fake refuse a client that signed one of them. Built on first use so
    that importing the fake does not need botocore.
    """
    from botocore.auth import SigV4Auth
    from botocore.compat import HTTPHeaders

    class SignedHeadersOnly(SigV4Auth):  # type: ignore[misc]
        def headers_to_sign(self, request: Any) -> Any:
            chosen = HTTPHeaders()
            for name, value in request.headers.items():
                chosen[name.lower()] = value
            return chosen

    return SignedHeadersOnly


def _sigv4_signature(
    method: str,
    raw_target: str,
    signed_headers: list[tuple[str, str]],
    body: bytes,
    *,
    access_key: str,
    secret_key: str,
    session_token: str | None,
    region: str,
    amz_date: str,
) -> tuple[str, str, str]:
    """The signature botocore computes for this request at `amz_date`, with the canonical request
    and string to sign it came from. `raw_target` is the path and query exactly as received."""
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    # Plain http: botocore then always hashes the payload, as AWS checks it.
    request = AWSRequest(method=method, url=f"http://fake-bedrock{raw_target}", data=body)
    for name, value in signed_headers:
        request.headers[name] = value
    request.context["timestamp"] = amz_date
    signer = _sigv4_checker()(
        Credentials(access_key, secret_key, session_token), BEDROCK_SIGNING_NAME, region
    )
    canonical = signer.canonical_request(request)
    string_to_sign = signer.string_to_sign(request, canonical)
    return signer.signature(string_to_sign, request), canonical, string_to_sign


# -- checking a Converse body ----------------------------------------------------------------------


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _violation(path: str, value: Any, constraint: str) -> _Refused:
    """AWS's wording for a value that breaks the service model."""
    return _Refused(
        f"1 validation error detected: Value '{_shown(value)}' at '{path}' failed to satisfy constraint: "
        f"{constraint}"
    )


def _ensure(ok: bool, path: str, value: Any, constraint: str) -> None:
    if not ok:
        raise _violation(path, value, constraint)


def _known_keys(path: str, value: Json, allowed: frozenset[str] | tuple[str, ...]) -> None:
    for key in value:
        _require(key in allowed, f"Unknown member '{key}' at '{path or 'the request body'}'.")


def _union(path: str, value: Any, members: tuple[str, ...]) -> str:
    """The one member set in a union object (a content block, a tool, a tool choice, ...)."""
    _ensure(isinstance(value, dict), path, value, "Member must be an object")
    _require(
        len(value) == 1,
        f"Exactly one member must be set at '{path}' (one of: {', '.join(members)}); found {len(value)}.",
    )
    key = next(iter(value))
    _require(key in members, f"Unknown member '{key}' at '{path}': expected one of {', '.join(members)}.")
    return str(key)


def _is_base64(value: Any) -> bool:
    if not isinstance(value, str) or not value:
        return False
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _check_converse_body(body: Any, model: str) -> None:
    """Raise `_Refused` for what Bedrock's Converse refuses with a 400 ValidationException."""
    _require(isinstance(body, dict), "The request body is not a valid JSON object.")
    _known_keys("", body, _BEDROCK_KEYS)
    messages = body.get("messages")
    _ensure(messages is not None, "messages", messages, "Member must not be null")
    _ensure(isinstance(messages, list), "messages", messages, "Member must be a list")
    _require(
        bool(messages),
        "A conversation must start with a user message. Try again with a conversation that starts with "
        "a user message.",
    )
    for i, message in enumerate(messages):
        _check_bedrock_message(i, message)
    _require(
        messages[0]["role"] == "user",
        "A conversation must start with a user message. Try again with a conversation that starts with "
        "a user message.",
    )
    for previous, current in itertools.pairwise(messages):
        _require(
            previous["role"] != current["role"],
            "A conversation must alternate between user and assistant roles. Make sure the conversation "
            "alternates between user and assistant roles and try again.",
        )
    _check_bedrock_system(body.get("system"))
    inference = _check_inference_config(body.get("inferenceConfig"))
    tool_names, choice = _check_bedrock_tool_config(body.get("toolConfig"))
    _check_bedrock_output_config(body.get("outputConfig"))
    thinking = _check_additional_fields(body.get("additionalModelRequestFields"), model, inference, choice)
    _check_tool_turns(messages, has_tools=bool(tool_names))
    if thinking:
        _check_reasoning_turns(messages)


def _check_bedrock_message(i: int, message: Any) -> None:
    where = f"messages.{i}"
    _ensure(isinstance(message, dict), where, message, "Member must be an object")
    _known_keys(where, message, ("role", "content"))
    role = message.get("role")
    _ensure(
        role in ("user", "assistant"),
        f"{where}.member.role",
        role,
        "Member must satisfy enum value set: [user, assistant]",
    )
    content = message.get("content")
    _ensure(content is not None, f"{where}.member.content", content, "Member must not be null")
    _ensure(isinstance(content, list), f"{where}.member.content", content, "Member must be a list")
    _require(
        bool(content),
        f"The content field in the Message object at {where} is empty. Add a ContentBlock object to the "
        "content field and try again.",
    )
    for j, block in enumerate(content):
        _check_bedrock_block(f"{where}.content.{j}", block, role)


def _check_bedrock_block(where: str, block: Any, role: str) -> None:
    kind = _union(where, block, _BEDROCK_BLOCKS)
    needed = _BEDROCK_ROLE_OF_BLOCK.get(kind)
    _require(
        needed is None or role == needed,
        f"The {kind} block at {where} is only allowed in a message whose role is {needed}.",
    )
    value = block[kind]
    if kind == "text":
        _ensure(isinstance(value, str), f"{where}.text", value, "Member must be a string")
        _require(
            bool(value.strip()),
            f"The text field in the ContentBlock object at {where} is blank. Add text to the text field, "
            "and try again.",
        )
    elif kind == "image":
        _check_bedrock_image(f"{where}.image", value)
    elif kind == "document":
        _check_bedrock_document(f"{where}.document", value)
    elif kind == "toolUse":
        _check_tool_use(f"{where}.toolUse", value)
    elif kind == "toolResult":
        _check_tool_result(f"{where}.toolResult", value)
    elif kind == "reasoningContent":
        _check_reasoning_content(f"{where}.reasoningContent", value)
    else:
        _check_cache_point(f"{where}.cachePoint", value)


def _check_bedrock_image(where: str, image: Any) -> None:
    _ensure(isinstance(image, dict), where, image, "Member must be an object")
    _known_keys(where, image, ("format", "source"))
    fmt = image.get("format")
    _ensure(
        fmt in _BEDROCK_IMAGE_FORMATS,
        f"{where}.format",
        fmt,
        "Member must satisfy enum value set: [png, jpeg, gif, webp]",
    )
    source = image.get("source")
    _ensure(source is not None, f"{where}.source", source, "Member must not be null")
    kind = _union(f"{where}.source", source, ("bytes", "s3Location"))
    if kind == "bytes":
        _require(
            _is_base64(source["bytes"]),
            f"Invalid base64 in '{where}.source.bytes': images travel as base64 bytes (or an S3 location), "
            "never as URLs.",
        )
    else:
        location = source["s3Location"]
        _ensure(
            isinstance(location, dict) and str(location.get("uri", "")).startswith("s3://"),
            f"{where}.source.s3Location.uri",
            location,
            "Member must satisfy regular expression pattern: s3://.*",
        )


def _check_bedrock_document(where: str, document: Any) -> None:
    _ensure(isinstance(document, dict), where, document, "Member must be an object")
    _known_keys(where, document, ("format", "name", "source", "context", "citations"))
    fmt = document.get("format")
    _ensure(
        fmt in _BEDROCK_DOCUMENT_FORMATS,
        f"{where}.format",
        fmt,
        f"Member must satisfy enum value set: [{', '.join(_BEDROCK_DOCUMENT_FORMATS)}]",
    )
    name = document.get("name")
    _ensure(
        isinstance(name, str) and bool(name),
        f"{where}.name",
        name,
        "Member must have length greater than or equal to 1",
    )
    source = _union(f"{where}.source", document.get("source"), ("bytes", "s3Location", "text", "content"))
    if source == "bytes":
        _require(_is_base64(document["source"]["bytes"]), f"Invalid base64 in '{where}.source.bytes'.")


def _check_tool_use(where: str, tool_use: Any) -> None:
    _ensure(isinstance(tool_use, dict), where, tool_use, "Member must be an object")
    _known_keys(where, tool_use, ("toolUseId", "name", "input", "type"))
    tool_use_id = tool_use.get("toolUseId")
    _ensure(
        isinstance(tool_use_id, str) and bool(_BEDROCK_TOOL_USE_ID.fullmatch(tool_use_id)),
        f"{where}.toolUseId",
        tool_use_id,
        "Member must satisfy regular expression pattern: [a-zA-Z0-9_.:-]+ and have length between 1 and 64",
    )
    name = tool_use.get("name")
    _ensure(
        isinstance(name, str) and bool(_BEDROCK_TOOL_NAME.fullmatch(name)),
        f"{where}.name",
        name,
        "Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+ and have length between 1 and 64",
    )
    _ensure(
        isinstance(tool_use.get("input"), dict),
        f"{where}.input",
        tool_use.get("input"),
        "Member must be an object",
    )


def _check_tool_result(where: str, result: Any) -> None:
    _ensure(isinstance(result, dict), where, result, "Member must be an object")
    _known_keys(where, result, ("toolUseId", "content", "status", "type"))
    tool_use_id = result.get("toolUseId")
    _ensure(
        isinstance(tool_use_id, str) and bool(_BEDROCK_TOOL_USE_ID.fullmatch(tool_use_id)),
        f"{where}.toolUseId",
        tool_use_id,
        "Member must satisfy regular expression pattern: [a-zA-Z0-9_.:-]+ and have length between 1 and 64",
    )
    content = result.get("content")
    _ensure(isinstance(content, list), f"{where}.content", content, "Member must be a list")
    for k, item in enumerate(content):
        path = f"{where}.content.{k}"
        kind = _union(path, item, ("text", "json", "image"))
        if kind == "text":
            _ensure(isinstance(item["text"], str), f"{path}.text", item["text"], "Member must be a string")
        elif kind == "json":
            _ensure(item["json"] is not None, f"{path}.json", None, "Member must not be null")
        else:
            _check_bedrock_image(f"{path}.image", item["image"])
    status = result.get("status")
    _ensure(
        status in (None, "success", "error"),
        f"{where}.status",
        status,
        "Member must satisfy enum value set: [success, error]",
    )


def _check_reasoning_content(where: str, reasoning: Any) -> None:
    kind = _union(where, reasoning, ("reasoningText", "redactedContent"))
    value = reasoning[kind]
    if kind == "redactedContent":
        _require(_is_base64(value), f"Invalid base64 in '{where}.redactedContent'.")
        return
    _ensure(isinstance(value, dict), f"{where}.reasoningText", value, "Member must be an object")
    _known_keys(f"{where}.reasoningText", value, ("text", "signature"))
    _ensure(
        isinstance(value.get("text"), str),
        f"{where}.reasoningText.text",
        value.get("text"),
        "Member must be a string",
    )
    signature = value.get("signature")
    _ensure(
        signature is None or isinstance(signature, str),
        f"{where}.reasoningText.signature",
        signature,
        "Member must be a string",
    )


def _check_cache_point(where: str, cache_point: Any) -> None:
    _ensure(isinstance(cache_point, dict), where, cache_point, "Member must be an object")
    _known_keys(where, cache_point, ("type", "ttl"))
    _ensure(
        cache_point.get("type") == "default",
        f"{where}.type",
        cache_point.get("type"),
        "Member must satisfy enum value set: [default]",
    )
    ttl = cache_point.get("ttl")
    _ensure(ttl in (None, "5m", "1h"), f"{where}.ttl", ttl, "Member must satisfy enum value set: [5m, 1h]")


def _check_bedrock_system(system: Any) -> None:
    if system is None:
        return
    _ensure(isinstance(system, list), "system", system, "Member must be a list")
    for i, block in enumerate(system):
        where = f"system.{i}"
        kind = _union(where, block, ("text", "cachePoint", "guardContent"))
        if kind == "text":
            text = block["text"]
            _ensure(
                isinstance(text, str) and bool(text.strip()),
                f"{where}.text",
                text,
                "Member must have length greater than or equal to 1",
            )
        elif kind == "cachePoint":
            _check_cache_point(f"{where}.cachePoint", block["cachePoint"])


def _check_inference_config(config: Any) -> Json:
    if config is None:
        return {}
    _ensure(isinstance(config, dict), "inferenceConfig", config, "Member must be an object")
    _known_keys("inferenceConfig", config, ("maxTokens", "temperature", "topP", "stopSequences"))
    max_tokens = config.get("maxTokens")
    if max_tokens is not None:
        _ensure(_is_int(max_tokens), "inferenceConfig.maxTokens", max_tokens, "Member must be an integer")
        _ensure(
            max_tokens >= 1,
            "inferenceConfig.maxTokens",
            max_tokens,
            "Member must have value greater than or equal to 1",
        )
    for name in ("temperature", "topP"):
        value = config.get(name)
        if value is None:
            continue
        path = f"inferenceConfig.{name}"
        _ensure(_is_number(value), path, value, "Member must be a number")
        _ensure(value >= 0, path, value, "Member must have value greater than or equal to 0")
        _ensure(value <= 1, path, value, "Member must have value less than or equal to 1")
    stops = config.get("stopSequences")
    if stops is not None:
        _ensure(isinstance(stops, list), "inferenceConfig.stopSequences", stops, "Member must be a list")
        _ensure(
            len(stops) <= 2500,
            "inferenceConfig.stopSequences",
            stops,
            "Member must have length less than or equal to 2500",
        )
        for i, stop in enumerate(stops):
            _ensure(
                isinstance(stop, str) and bool(stop),
                f"inferenceConfig.stopSequences.{i}",
                stop,
                "Member must have length greater than or equal to 1",
            )
    return config


def _check_bedrock_tool_config(config: Any) -> tuple[list[str], str | None]:
    """The toolSpec names and the toolChoice kind (auto, any, tool; None when not given)."""
    if config is None:
        return [], None
    _ensure(isinstance(config, dict), "toolConfig", config, "Member must be an object")
    _known_keys("toolConfig", config, ("tools", "toolChoice"))
    tools = config.get("tools")
    _ensure(tools is not None, "toolConfig.tools", tools, "Member must not be null")
    _ensure(
        isinstance(tools, list) and bool(tools),
        "toolConfig.tools",
        tools,
        "Member must have length greater than or equal to 1",
    )
    names: list[str] = []
    for i, tool in enumerate(tools):
        where = f"toolConfig.tools.{i}"
        if _union(where, tool, ("toolSpec", "cachePoint")) == "cachePoint":
            _check_cache_point(f"{where}.cachePoint", tool["cachePoint"])
            continue
        spec = tool["toolSpec"]
        where = f"{where}.toolSpec"
        _ensure(isinstance(spec, dict), where, spec, "Member must be an object")
        _known_keys(where, spec, ("name", "description", "inputSchema", "strict"))
        name = spec.get("name")
        _ensure(
            isinstance(name, str) and bool(_BEDROCK_TOOL_NAME.fullmatch(name)),
            f"{where}.name",
            name,
            "Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+ and have length between 1 and 64",
        )
        description = spec.get("description")
        _ensure(
            description is None or (isinstance(description, str) and bool(description)),
            f"{where}.description",
            description,
            "Member must have length greater than or equal to 1",
        )
        schema = spec.get("inputSchema")
        _ensure(schema is not None, f"{where}.inputSchema", schema, "Member must not be null")
        _union(f"{where}.inputSchema", schema, ("json",))
        _ensure(
            isinstance(schema["json"], dict),
            f"{where}.inputSchema.json",
            schema["json"],
            "Member must be an object",
        )
        _require(
            schema["json"].get("type") == "object",
            f"{_MODEL_ERRORS}tools.{i}.custom.input_schema.type: Input should be 'object'",
        )
        _require(name not in names, f"{_MODEL_ERRORS}tools: Tool names must be unique.")
        names.append(name)
    _require(bool(names), "toolConfig.tools must hold at least one toolSpec.")
    choice = config.get("toolChoice")
    if choice is None:
        return names, None
    kind = _union("toolConfig.toolChoice", choice, ("auto", "any", "tool"))
    if kind == "tool":
        chosen = choice["tool"]
        _ensure(isinstance(chosen, dict), "toolConfig.toolChoice.tool", chosen, "Member must be an object")
        _known_keys("toolConfig.toolChoice.tool", chosen, ("name",))
        _require(
            chosen.get("name") in names,
            f"The toolConfig.toolChoice.tool.name '{chosen.get('name')}' names no toolSpec in toolConfig.tools.",
        )
    else:
        _ensure(
            choice[kind] == {},
            f"toolConfig.toolChoice.{kind}",
            choice[kind],
            "Member must be an empty object",
        )
    return names, kind


def _check_bedrock_output_config(config: Any) -> None:
    if config is None:
        return
    _ensure(isinstance(config, dict), "outputConfig", config, "Member must be an object")
    _known_keys("outputConfig", config, ("textFormat", "effort"))
    text_format = config.get("textFormat")
    if text_format is None:
        return
    where = "outputConfig.textFormat"
    _ensure(isinstance(text_format, dict), where, text_format, "Member must be an object")
    _known_keys(where, text_format, ("type", "structure"))
    _ensure(
        text_format.get("type") == "json_schema",
        f"{where}.type",
        text_format.get("type"),
        "Member must satisfy enum value set: [json_schema]",
    )
    structure = text_format.get("structure")
    _ensure(structure is not None, f"{where}.structure", structure, "Member must not be null")
    _union(f"{where}.structure", structure, ("jsonSchema",))
    definition = structure["jsonSchema"]
    where = f"{where}.structure.jsonSchema"
    _ensure(isinstance(definition, dict), where, definition, "Member must be an object")
    _known_keys(where, definition, ("schema", "name", "description"))
    schema = definition.get("schema")
    # The trap of wire-formats §5.2: the schema is a string holding JSON, never an object.
    _ensure(
        isinstance(schema, str), f"{where}.schema", schema, "Member must be a string containing a JSON schema"
    )
    parsed = _parse_json(schema.encode())
    _require(isinstance(parsed, dict), f"The JSON schema at '{where}.schema' is not a valid JSON object.")


def _check_additional_fields(fields: Any, model: str, inference: Json, choice: str | None) -> bool:
    """Check `additionalModelRequestFields`; True when extended thinking is on (Claude models)."""
    if fields is None:
        return False
    _ensure(isinstance(fields, dict), "additionalModelRequestFields", fields, "Member must be an object")
    if "thinking" not in fields:
        return False
    _require(
        "anthropic.claude" in model,
        f"{_MODEL_ERRORS}Malformed input request: extraneous key [thinking] is not permitted, please "
        "reformat your input and try again.",
    )
    thinking = fields["thinking"]
    _require(isinstance(thinking, dict), f"{_MODEL_ERRORS}thinking: Input should be a valid dictionary")
    kind = thinking.get("type")
    _require(
        kind in ("enabled", "disabled"),
        f"{_MODEL_ERRORS}thinking: Input tag '{kind}' found using 'type' does not match any of the "
        "expected tags: 'enabled', 'disabled'",
    )
    if kind == "disabled":
        return False
    budget = thinking.get("budget_tokens")
    _require(
        _is_int(budget), f"{_MODEL_ERRORS}thinking.enabled.budget_tokens: Input should be a valid integer"
    )
    _require(
        budget >= 1024,
        f"{_MODEL_ERRORS}thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
    )
    max_tokens = inference.get("maxTokens")
    _require(
        max_tokens is not None and budget < max_tokens,
        f"{_MODEL_ERRORS}`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
        f"documentation at {_ANTHROPIC_DOCS}#max-tokens-and-context-window-size",
    )
    _require(
        inference.get("temperature") in (None, 1),
        f"{_MODEL_ERRORS}`temperature` may only be set to 1 when thinking is enabled. Please consult our "
        f"documentation at {_ANTHROPIC_DOCS}#feature-compatibility",
    )
    _require(
        fields.get("top_k") is None,
        f"{_MODEL_ERRORS}`top_k` must be unset when thinking is enabled. Please consult our documentation "
        f"at {_ANTHROPIC_DOCS}#feature-compatibility",
    )
    _require(
        choice not in ("any", "tool"),
        f"{_MODEL_ERRORS}Thinking may not be enabled when tool_choice forces tool use.",
    )
    return True


def _blocks_of(message: Json, kind: str) -> list[tuple[int, Json]]:
    return [(j, block[kind]) for j, block in enumerate(message["content"]) if kind in block]


def _check_tool_turns(messages: list[Json], *, has_tools: bool) -> None:
    """Tool blocks need toolConfig; each toolUse is answered by the next user message, and only it."""
    if any(_blocks_of(m, "toolUse") or _blocks_of(m, "toolResult") for m in messages):
        _require(
            has_tools,
            "The toolConfig field must be defined when using toolUse and toolResult content blocks.",
        )
    # Tool results first, then unanswered calls: a result naming an unknown id is the clearer error.
    for i, message in enumerate(messages):
        results = _blocks_of(message, "toolResult")
        if message["role"] != "user" or not results:
            continue
        _require(
            not any(next(iter(block)) in _BEDROCK_CONVERSATION_BLOCKS for block in message["content"]),
            "Conversation blocks and tool result blocks cannot be provided in the same turn.",
        )
        asked = {use["toolUseId"] for _, use in _blocks_of(messages[i - 1], "toolUse")} if i else set()
        _require(
            len(results) <= len(asked),
            f"The number of toolResult blocks at messages.{i}.content exceeds the number of toolUse "
            "blocks of previous turn.",
        )
        for j, result in results:
            _require(
                result["toolUseId"] in asked,
                f"The toolResult block at messages.{i}.content.{j} answers the toolUseId "
                f"'{result['toolUseId']}', which no toolUse block of the previous turn has.",
            )
    for i, message in enumerate(messages):
        uses = [use["toolUseId"] for _, use in _blocks_of(message, "toolUse")]
        _require(len(set(uses)) == len(uses), f"The toolUse ids at messages.{i}.content must be unique.")
        following = messages[i + 1] if i + 1 < len(messages) else None
        answered = {r["toolUseId"] for _, r in _blocks_of(following, "toolResult")} if following else set()
        missing = [tool_use_id for tool_use_id in uses if tool_use_id not in answered]
        _require(
            not missing,
            f"Expected toolResult blocks at messages.{i + 1}.content for the following Ids: {', '.join(missing)}",
        )


def _check_reasoning_turns(messages: list[Json]) -> None:
    """With thinking on: signed reasoning only, and a last assistant message that used tools starts
    with it (Anthropic's rule, relayed by Bedrock)."""
    for i, message in enumerate(messages):
        for j, reasoning in _blocks_of(message, "reasoningContent"):
            text = reasoning.get("reasoningText")
            if text is None:
                continue
            _require(
                text.get("signature") == bedrock_signature(text["text"]),
                f"{_MODEL_ERRORS}messages.{i}.content.{j}: Invalid `signature` in `thinking` block",
            )
    last = next((i for i in reversed(range(len(messages))) if messages[i]["role"] == "assistant"), None)
    if last is None or not _blocks_of(messages[last], "toolUse"):
        return
    first = messages[last]["content"][0]
    found = next(iter(first))
    _require(
        found == "reasoningContent" and "reasoningText" in first["reasoningContent"],
        f"{_MODEL_ERRORS}messages.{last}.content.0.type: Expected `thinking` or `redacted_thinking`, but "
        f"found `{found}`. When `thinking` is enabled, a final `assistant` message must start with a "
        "thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). We recommend "
        "you include thinking blocks from previous turns. To avoid this requirement, disable `thinking`. "
        f"Please consult our documentation at {_ANTHROPIC_DOCS}",
    )


# -- the answer ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _BedrockReply:
    content: list[Json]
    stop_reason: str
    usage: Json


def _bedrock_text_of(blocks: list[Json]) -> str:
    """Text blocks joined by a space, an image counted as `<image>`, a document as `<document>`."""
    parts = []
    for block in blocks:
        if "text" in block:
            parts.append(str(block["text"]))
        elif "image" in block:
            parts.append("<image>")
        elif "document" in block:
            parts.append("<document>")
    return " ".join(parts)


def _tool_result_text(result: Json) -> str:
    """A toolResult's text items, a json item as compact JSON and an image as `<image>`, by a space."""
    parts = []
    for item in result.get("content", []):
        if "text" in item:
            parts.append(str(item["text"]))
        elif "json" in item:
            parts.append(orjson.dumps(item["json"]).decode())
        else:
            parts.append("<image>")
    return " ".join(parts)


def _bedrock_block_words(block: Json) -> int:
    if "text" in block:
        return _words(str(block["text"]))
    if "image" in block or "document" in block:
        return 1
    if "toolUse" in block:
        return _words(json.dumps(block["toolUse"].get("input")))
    if "toolResult" in block:
        return _words(_tool_result_text(block["toolResult"]))
    if "reasoningContent" in block:
        return _words(str(block["reasoningContent"].get("reasoningText", {}).get("text", "")))
    return 0


def _bedrock_stop(text: str, inference: Json) -> tuple[str, str]:
    """Apply stopSequences, then maxTokens: the text kept and the stopReason."""
    reason = "end_turn"
    hits = [text.find(s) for s in inference.get("stopSequences") or [] if s in text]
    if hits:
        text, reason = text[: min(hits)], "stop_sequence"
    limit = inference.get("maxTokens")
    if limit is not None and _words(text) > limit:
        text, reason = " ".join(text.split()[:limit]), "max_tokens"
    return text, reason


def _bedrock_thinking_on(body: Json) -> bool:
    thinking = (body.get("additionalModelRequestFields") or {}).get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") == "enabled"


def _bedrock_generate(call: _Call, model: str) -> _BedrockReply:
    body = call.body
    messages: list[Json] = body["messages"]
    last_user = next(m for m in reversed(messages) if m["role"] == "user")
    results = [block["toolResult"] for block in last_user["content"] if "toolResult" in block]
    if results:
        reply = "[bedrock] tool said: " + _tool_result_text(results[0])
    else:
        reply = "[bedrock] " + _bedrock_text_of(last_user["content"])
    system = " ".join(str(block["text"]) for block in body.get("system") or [] if "text" in block)
    if _SHOUT.search(system):
        reply = reply.upper()

    content: list[Json] = []
    if _bedrock_thinking_on(body):
        content.append(bedrock_reasoning_block(BEDROCK_THINKING_PREFIX + reply))
    tool_config = body.get("toolConfig")
    if tool_config is not None and not results:
        choice = tool_config.get("toolChoice") or {}
        first = next(tool["toolSpec"]["name"] for tool in tool_config["tools"] if "toolSpec" in tool)
        name = choice["tool"]["name"] if "tool" in choice else first
        tool_use = {"toolUseId": call.flavor.tool_call_id(), "name": name, "input": dict(BEDROCK_TOOL_INPUT)}
        content.append({"toolUse": tool_use})
        stop_reason = "tool_use"
    else:
        text = (
            orjson.dumps({"answer": reply}).decode()
            if body.get("outputConfig", {}).get("textFormat")
            else reply
        )
        text, stop_reason = _bedrock_stop(text, body.get("inferenceConfig") or {})
        if text:
            content.append({"text": text})

    input_tokens = _words(system) + sum(_bedrock_block_words(b) for m in messages for b in m["content"])
    output_tokens = sum(map(_bedrock_block_words, content))
    usage: Json = {"inputTokens": input_tokens, "outputTokens": output_tokens}
    cached = "cache" in model
    if cached:
        usage["cacheReadInputTokens"] = BEDROCK_CACHE_READ_TOKENS
        usage["cacheWriteInputTokens"] = BEDROCK_CACHE_WRITE_TOKENS
    usage["totalTokens"] = (
        input_tokens
        + output_tokens
        + (BEDROCK_CACHE_READ_TOKENS + BEDROCK_CACHE_WRITE_TOKENS if cached else 0)
    )
    return _BedrockReply(content=content, stop_reason=stop_reason, usage=usage)


def _converse_body(reply: _BedrockReply) -> Json:
    return {
        "output": {"message": {"role": "assistant", "content": reply.content}},
        "stopReason": reply.stop_reason,
        "usage": dict(reply.usage),
        "metrics": {"latencyMs": BEDROCK_LATENCY_MS},
    }


async def _bedrock(call: _Call) -> web.StreamResponse:
    """POST /bedrock/model/{id}/{action}: the action, auth, then its handler."""
    target = _bedrock_target(call.request.raw_path)
    handle = _BEDROCK_ACTIONS.get(target[1]) if target is not None else None
    if target is None or handle is None:
        return _aws_error(404, "UnknownOperationException", "Unknown operation.", namespace=_CORAL_SERVICE)
    refusal = _bedrock_access(call)
    if refusal is not None:
        return refusal
    return await handle(call, target[0])


async def _bedrock_fault(call: _Call) -> web.StreamResponse | None:
    """The script, then the faults that happen before any byte, in AWS's shapes."""
    scripted = _scripted(call)
    if scripted is not None:
        return await scripted
    if call.has_fault("hang"):
        await asyncio.sleep(HANG_SECONDS)
    if call.has_fault("fail-401"):
        return _auth_error("UnrecognizedClientException", _INVALID_TOKEN)
    faults: tuple[tuple[str, int, str, str, Json], ...] = (
        ("fail-400", 400, "ValidationException", "Invalid request (fail-400 fault).", {}),
        (
            "fail-403",
            403,
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID.",
            {},
        ),
        ("fail-404", 404, "ResourceNotFoundException", "The provided model identifier is invalid.", {}),
        (
            "fail-408",
            408,
            "ModelTimeoutException",
            "Model has timed out in processing the request. Try your request again.",
            {},
        ),
        (
            "fail-424",
            424,
            "ModelErrorException",
            "The system encountered an unexpected error during processing. Try your request again.",
            {"originalStatusCode": 500, "resourceName": "fake-bedrock"},
        ),
        (
            "not-ready",
            429,
            "ModelNotReadyException",
            "Model is not ready for inference. Wait and try your request again.",
            {},
        ),
        (
            "fail-500",
            500,
            "InternalServerException",
            "The server encountered an internal error while processing the request.",
            {},
        ),
        ("fail-503", 503, "ServiceUnavailableException", "Bedrock is unable to process your request.", {}),
    )
    for word, status, error_type, message, extra in faults:
        if call.has_fault(word):
            return _aws_error(status, error_type, message, **extra)
    if call.has_fault("fail-429"):
        return _aws_error(
            429,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
            headers={"retry-after": "7"},
        )
    if call.has_fault("slow-first-byte"):
        await asyncio.sleep(call.delay)
    return None


async def _bedrock_late_fault(call: _Call) -> web.StreamResponse | None:
    """Not streamed: a generation error is a 500, a throttled stream a 429, a slow one a late answer."""
    if call.has_fault("error-mid-stream"):
        return _aws_error(500, "InternalServerException", "The model encountered an error while generating.")
    if call.has_fault("stream-throttled"):
        return _aws_error(429, "ThrottlingException", "Too many requests, please wait before trying again.")
    if call.has_fault("slow-stream"):
        await asyncio.sleep(call.delay)
    return None


async def _bedrock_converse(call: _Call, model: str, *, streamed: bool) -> web.StreamResponse:
    try:
        _check_converse_body(call.rec.json, model)
    except _Refused as refused:
        return _bedrock_validation(refused.message)
    faulted = await _bedrock_fault(call)
    if faulted is not None:
        return faulted
    reply = _bedrock_generate(call, model)
    if streamed:
        return await _bedrock_stream(call, reply)
    late = await _bedrock_late_fault(call)
    if late is not None:
        return late
    return await _answer(call, _converse_body(reply), _bedrock_headers())


async def _bedrock_converse_once(call: _Call, model: str) -> web.StreamResponse:
    return await _bedrock_converse(call, model, streamed=False)


async def _bedrock_converse_stream(call: _Call, model: str) -> web.StreamResponse:
    return await _bedrock_converse(call, model, streamed=True)


# -- streaming -------------------------------------------------------------------------------------

_FrameKind = Literal["start", "text", "delta", "block", "stop", "metadata"]


def _padded(payload: Json, n: int) -> Json:
    """Bedrock pads event payloads with a `p` key of varying length; decoders must ignore it."""
    return {**payload, "p": _PADDING[: 1 + (n * 7) % len(_PADDING)]}


def _bedrock_frames(reply: _BedrockReply) -> list[tuple[_FrameKind, bytes]]:
    """Every frame of the ConverseStream answer, in order (wire-formats §5.4)."""
    frames: list[tuple[_FrameKind, bytes]] = [("start", encode_event("messageStart", {"role": "assistant"}))]

    def delta(index: int, payload: Json) -> bytes:
        return encode_event(
            "contentBlockDelta", _padded({"contentBlockIndex": index, "delta": payload}, len(frames))
        )

    for index, block in enumerate(reply.content):
        if "reasoningContent" in block:
            reasoning = block["reasoningContent"]["reasoningText"]
            for piece in _word_pieces(reasoning["text"]):
                frames.append(("delta", delta(index, {"reasoningContent": {"text": piece}})))
            frames.append(
                ("delta", delta(index, {"reasoningContent": {"signature": reasoning["signature"]}}))
            )
        elif "text" in block:
            # No contentBlockStart for text, as Bedrock often sends it.
            for piece in _word_pieces(block["text"]):
                frames.append(("text", delta(index, {"text": piece})))
        else:
            tool_use = block["toolUse"]
            start = {"toolUse": {"toolUseId": tool_use["toolUseId"], "name": tool_use["name"]}}
            frames.append(
                ("block", encode_event("contentBlockStart", {"contentBlockIndex": index, "start": start}))
            )
            for piece in _argument_pieces(json.dumps(tool_use["input"])):
                frames.append(("delta", delta(index, {"toolUse": {"input": piece}})))
        frames.append(("block", encode_event("contentBlockStop", {"contentBlockIndex": index})))
    frames.append(
        ("stop", encode_event("messageStop", _padded({"stopReason": reply.stop_reason}, len(frames))))
    )
    metadata = {"usage": dict(reply.usage), "metrics": {"latencyMs": BEDROCK_LATENCY_MS}}
    frames.append(("metadata", encode_event("metadata", metadata)))
    return frames


async def _bedrock_stream(call: _Call, reply: _BedrockReply) -> web.StreamResponse:
    """Write the frames one by one, applying the streaming faults at their points."""
    frames = _bedrock_frames(reply)
    response = web.StreamResponse(
        headers={"Content-Type": "application/vnd.amazon.eventstream", **_bedrock_headers()}
    )
    await _prepare(response, call.request)
    if call.has_fault("split-frames"):
        data = b"".join(frame for _, frame in frames)
        for start in range(0, len(data), BEDROCK_SPLIT_BYTES):
            await _send(response, data[start : start + BEDROCK_SPLIT_BYTES])
            await asyncio.sleep(0.001)
        return response
    cut = call.has_fault("cut-mid-stream")
    has_text = any(kind == "text" for kind, _ in frames)
    deltas = 0
    struck = False
    for position, (kind, frame) in enumerate(frames):
        if cut and (deltas >= 2 or kind == "stop"):
            # Half a frame, then the connection drops: a reply too short for two deltas is still cut
            # before its messageStop.
            await _send(response, frame[: len(frame) // 2])
            _cut(call)
            return response
        await _send(response, frame)
        if kind == "start" and call.has_fault("stream-throttled"):
            await _send(
                response,
                encode_exception(
                    "throttlingException", "Too many requests, please wait before trying again."
                ),
            )
            return response
        if kind not in ("text", "delta"):
            continue
        deltas += 1
        if deltas == 1 and call.has_fault("slow-stream"):
            await asyncio.sleep(call.delay)
        if struck or not (kind == "text" or not has_text):
            continue
        struck = True
        if call.has_fault("error-mid-stream"):
            await _send(
                response,
                encode_exception(
                    "modelStreamErrorException",
                    "The model encountered an error while streaming its answer.",
                    originalStatusCode=500,
                    originalMessage="Internal server error",
                ),
            )
            return response
        if call.has_fault("corrupt-crc"):
            await _send(response, corrupt_message_crc(frames[position + 1][1]))
            return response
    return response


# -- embeddings (InvokeModel) ----------------------------------------------------------------------


def _malformed(problem: str) -> _Refused:
    """The models' own wording for a body they refuse, relayed as a ValidationException."""
    return _Refused(f"Malformed input request: {problem}, please reformat your input and try again.")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, int | float):
        return "Number"
    return {str: "String", list: "JSONArray", dict: "JSONObject"}.get(type(value), "Null")


def _check_native_keys(body: Any, allowed: frozenset[str]) -> Json:
    if not isinstance(body, dict):
        raise _malformed(f"#: expected type: JSONObject, found: {_json_type(body)}")
    for key in body:
        if key not in allowed:
            raise _malformed(f"extraneous key [{key}] is not permitted")
    return body


def _titan_embedding(body: Any) -> tuple[Json, int]:
    request = _check_native_keys(body, _TITAN_KEYS)
    text = request.get("inputText")
    if text is None:
        raise _malformed("#: required key [inputText] not found")
    if not isinstance(text, str):
        # One text per call: an OpenAI input list must be fanned out.
        raise _malformed(f"#/inputText: expected type: String, found: {_json_type(text)}")
    if not text:
        raise _malformed("#/inputText: expected minLength: 1, actual: 0")
    dimensions = request.get("dimensions", 1024)
    if dimensions not in _TITAN_DIMENSIONS or isinstance(dimensions, bool):
        raise _malformed(f"#/dimensions: {_shown(dimensions)} is not a valid enum value")
    if not isinstance(request.get("normalize", True), bool):
        raise _malformed(f"#/normalize: expected type: Boolean, found: {_json_type(request['normalize'])}")
    types = request.get("embeddingTypes")
    if types is not None and (
        not isinstance(types, list) or not types or any(t not in ("float", "binary") for t in types)
    ):
        raise _malformed(f"#/embeddingTypes: {_shown(types)} is not a valid list of [float, binary]")
    vector = embedding_vector(text)[: min(EMBEDDING_SIZE, dimensions)]
    tokens = _words(text)
    answer: Json = {"embedding": vector, "inputTextTokenCount": tokens}
    if types:
        answer["embeddingsByType"] = {
            kind: vector if kind == "float" else [1 if v > 0 else 0 for v in vector] for kind in types
        }
    return answer, tokens


def _cohere_typed(vectors: list[list[float]], kind: str) -> list[list[float]] | list[list[int]]:
    if kind == "float":
        return vectors
    if kind in ("int8", "uint8"):
        offset = 128 if kind == "uint8" else 0
        return [[round(v * 127) + offset for v in vector] for vector in vectors]
    # binary, ubinary: the signs packed 8 to a byte.
    packed = [sum(1 << (7 - i) for i, v in enumerate(vector[:8]) if v > 0) for vector in vectors]
    return [[byte - 128 if kind == "binary" else byte] for byte in packed]


def _cohere_embedding(body: Any) -> tuple[Json, int]:
    request = _check_native_keys(body, _COHERE_KEYS)
    texts = request.get("texts")
    if texts is None:
        raise _malformed("#: required key [texts] not found")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise _malformed("#/texts: expected type: JSONArray of String")
    if not texts:
        raise _malformed("#/texts: expected minimum item count: 1, found: 0")
    if len(texts) > BEDROCK_COHERE_MAX_TEXTS:
        raise _malformed(
            f"#/texts: expected maximum item count: {BEDROCK_COHERE_MAX_TEXTS}, found: {len(texts)}"
        )
    input_type = request.get("input_type")
    if input_type is None:
        raise _malformed("#: required key [input_type] not found")
    if input_type not in BEDROCK_COHERE_INPUT_TYPES:
        raise _malformed(f"#/input_type: {_shown(input_type)} is not a valid enum value")
    if request.get("truncate", "NONE") not in ("NONE", "START", "END"):
        raise _malformed(f"#/truncate: {_shown(request['truncate'])} is not a valid enum value")
    types = request.get("embedding_types")
    if types is not None and (
        not isinstance(types, list) or not types or any(t not in _COHERE_TYPES for t in types)
    ):
        raise _malformed(
            f"#/embedding_types: {_shown(types)} is not a valid list of [{', '.join(_COHERE_TYPES)}]"
        )
    vectors = [embedding_vector(text) for text in texts]
    answer: Json = {"id": str(uuid.uuid4()), "texts": list(texts)}
    if types:
        answer["embeddings"] = {kind: _cohere_typed(vectors, kind) for kind in types}
        answer["response_type"] = "embeddings_by_type"
    else:
        answer["embeddings"] = vectors
        answer["response_type"] = "embeddings_floats"
    return answer, sum(_words(text) for text in texts)


async def _bedrock_invoke(call: _Call, model: str) -> web.StreamResponse:
    """POST /bedrock/model/{id}/invoke: the embedding models' native bodies (wire-formats §5.7), and
    Claude's Messages body for an `anthropic.` model (wire-formats-dialects C)."""
    if "anthropic." in model:
        return await _bedrock_claude(call, model, streamed=False)
    if "amazon.titan-embed-text-v2" in model:
        embed = _titan_embedding
    elif any(name in model for name in BEDROCK_COHERE_EMBED_MODELS):
        embed = _cohere_embedding
    else:
        return _bedrock_validation(
            f"The fake serves InvokeModel for {BEDROCK_TITAN_EMBED_MODEL} and "
            f"{', '.join(BEDROCK_COHERE_EMBED_MODELS)} only, not for '{model}'."
        )
    try:
        answer, tokens = embed(call.rec.json)
    except _Refused as refused:
        return _bedrock_validation(refused.message)
    faulted = await _bedrock_fault(call) or await _bedrock_late_fault(call)
    if faulted is not None:
        return faulted
    headers = {
        **_bedrock_headers(),
        "X-Amzn-Bedrock-Input-Token-Count": str(tokens),
        "X-Amzn-Bedrock-Invocation-Latency": str(BEDROCK_LATENCY_MS),
    }
    return await _answer(call, answer, headers)


_BEDROCK_ACTIONS: Final[Mapping[str, Callable[[_Call, str], Awaitable[web.StreamResponse]]]] = {
    "converse": _bedrock_converse_once,
    "converse-stream": _bedrock_converse_stream,
    "invoke": _bedrock_invoke,
    "invoke-with-response-stream": _bedrock_invoke_stream,
    "count-tokens": _bedrock_count_tokens,
}


# --------------------------------------------------------------------------------------------------
# Legacy completions (POST …/completions): what vLLM, LM Studio, Ollama and OpenAI's instruct models
# still serve. The reply is `"[<flavor>] <prompt>"` (a string, or a list of one string), cut to
# `max_tokens` words (finish_reason "length"); streamed as `text_completion` chunks, a usage chunk
# when `stream_options.include_usage` asks for one, then `[DONE]`. Fields the fake does not know
# are accepted (the gateway passes the caller's body through).


async def _legacy_completions(call: _Call) -> web.StreamResponse:
    refusal = _check_access(call)
    if refusal is not None:
        return refusal
    body = call.body
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(body.get("model"), str) or not isinstance(prompt, str):
        return _error(call.flavor, 400, "'model' and a string 'prompt' are required.", param="prompt")
    faulted = await _pre_response_fault(call)
    if faulted is not None:
        return faulted
    text, finish = f"[{call.flavor.name}] {prompt}", "stop"
    limit = body.get("max_tokens")
    if isinstance(limit, int) and limit < _words(text):
        text, finish = " ".join(text.split()[: max(limit, 0)]), "length"
    usage = {"prompt_tokens": _words(prompt), "completion_tokens": _words(text),
             "total_tokens": _words(prompt) + _words(text)}
    base: Json = {"id": "cmpl-" + _alnum(29), "object": "text_completion", "created": int(time.time()),
                  "model": body["model"]}
    if body.get("stream") is not True:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        return await _answer(call, {**base, "choices": [choice], "usage": usage})
    options = body.get("stream_options")
    with_usage = isinstance(options, dict) and options.get("include_usage") is True
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await _prepare(response, call.request)
    pieces = [*(_word_pieces(text)), ""]
    for i, piece in enumerate(pieces):
        choice = {"text": piece, "index": 0, "logprobs": None, "finish_reason": finish if i == len(pieces) - 1 else None}
        await _send(response, _sse({**base, "choices": [choice], **({"usage": None} if with_usage else {})}))
        if i == 1 and call.has_fault("cut-mid-stream"):
            _cut(call)
            return response
    if with_usage:
        await _send(response, _sse({**base, "choices": [], "usage": usage}))
    await _send(response, b"data: [DONE]\n\n")
    return response


# --------------------------------------------------------------------------------------------------
# OpenAI Responses (wire-formats-dialects A): POST /v1/responses, JSON or SSE, and the stored ones
#
# Served on every OpenAI-style root (`/openai/v1/responses`, `/groq/openai/v1/responses`, …) and on
# Azure's v1 API (`/azure/openai/v1/responses`, no api-version). What a request gets back mirrors
# the chat reply: `"[<flavor>] <text parts of the last user message, joined by a space>"`, or
# `"[<flavor>] tool said: <output>"` when the last input item is a function_call_output; with tools
# offered (and `tool_choice` not "none") one call to the first one the fake can call: a function
# (with `TOOL_ARGUMENTS`), a namespace's first function (the call carries `namespace`), or a custom
# tool (a `custom_tool_call` with `RESPONSES_CUSTOM_INPUT`); hosted tools are skipped. Usage counts
# words, `max_output_tokens` below the reply's words cuts it (`incomplete`, `max_output_tokens`).
#
# Responses are stored (unless `store: false`), at most `RESPONSES_STORED` of them, oldest dropped:
# `previous_response_id` continues one (400 `previous_response_not_found` otherwise), and `GET` /
# `DELETE /v1/responses/{id}` and `GET …/input_items` answer from the store. Streams follow A.6's
# grammar with an `event:` line and a `sequence_number` on every event. Besides `FAULT_WORDS`:
#
#     error-before-content    created, in_progress, then an `error` event (code server_error), no more
#     failed-before-content   created, in_progress, then `response.failed` (code rate_limit_exceeded)

RESPONSES_FAULT_WORDS: Final[tuple[str, ...]] = (*FAULT_WORDS, "error-before-content", "failed-before-content")
RESPONSES_STORED: Final = 256
RESPONSES_CUSTOM_INPUT: Final = "*** Begin Patch\n*** End Patch"


def _responses_text(content: Any) -> str:
    """An input message's text: the string, or its text parts joined by a space."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content
                        if isinstance(part, dict) and part.get("type") in ("input_text", "output_text"))
    return ""


def _responses_items(value: Any) -> list[Json]:
    """`input` as a list of items, each with the `type` it stands for, and a message's text as parts
    (as OpenAI lists them back)."""
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    if not isinstance(value, list):
        return []
    items = [{"type": "message", **item} for item in value if isinstance(item, dict)]  # copies: the body is recorded
    for item in items:
        if item["type"] == "message" and isinstance(item.get("content"), str):
            part = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": part, "text": item["content"]}]
    return items


def _responses_tool(tools: Any, choice: Any) -> Json | None:
    """The call the fake makes: the forced function, else the first function, namespaced function or
    custom tool offered; None when there is nothing to call."""
    if not isinstance(tools, list) or choice == "none":
        return None
    forced = choice.get("name") if isinstance(choice, dict) else None
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        kind = tool.get("type")
        if kind == "namespace" and isinstance(tool.get("tools"), list) and tool["tools"]:
            inner = tool["tools"][0]
            if forced is None or forced == inner.get("name"):
                return {"type": "function_call", "name": inner.get("name"), "namespace": tool.get("name")}
        elif kind in ("function", "custom") and (forced is None or forced == tool.get("name")):
            return {"type": "function_call" if kind == "function" else "custom_tool_call", "name": tool.get("name")}
    return None


def _responses_error(call: _Call, status: int, message: str, *, param: str | None = None,
                     code: str | None = None) -> web.Response:
    return _error(call.flavor, status, message, param=param, code=code)


def _responses_stored(call: _Call) -> dict[str, Json]:
    assert call.responses is not None, "the Responses endpoints are given the store"
    return call.responses


async def _responses_create(call: _Call) -> web.StreamResponse:
    """POST …/responses: checks, faults, then the deterministic answer, stored unless `store: false`."""
    refusal = _check_access(call)
    if refusal is not None:
        return refusal
    body = call.body
    if not isinstance(call.rec.json, dict):
        return _responses_error(call, 400, "The request body is not a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        return _responses_error(call, 400, "Missing required parameter: 'model'.", param="model",
                                code="missing_required_parameter")
    items = _responses_items(body.get("input"))
    if not items:
        return _responses_error(call, 400, "Missing required parameter: 'input'.", param="input",
                                code="missing_required_parameter")
    stored = _responses_stored(call)
    previous_id = body.get("previous_response_id")
    context: list[Json] = []
    if previous_id is not None:
        previous = stored.get(str(previous_id))
        if previous is None:
            return _responses_error(call, 400, f"Previous response with id '{previous_id}' not found.",
                                    param="previous_response_id", code="previous_response_not_found")
        context = [*previous["context"], *previous["input"], *previous["response"]["output"]]
    faulted = await _pre_response_fault(call)
    if faulted is not None:
        return faulted
    response = _responses_generate(call, body, items, context)
    if body.get("store") is not False:
        stored[response["id"]] = {"response": response, "context": context,
                                  "input": [{"id": "item_" + _alnum(24), **item} for item in items]}
        while len(stored) > RESPONSES_STORED:
            stored.pop(next(iter(stored)))
    if body.get("stream") is True:
        return await _responses_stream(call, response)
    if call.has_fault("error-mid-stream"):
        return _error(call.flavor, 500, _server_error_body()["message"], type_="server_error")
    if call.has_fault("slow-stream"):
        await asyncio.sleep(call.delay)
    return await _answer(call, response)


def _responses_generate(call: _Call, body: Json, items: list[Json], context: list[Json]) -> Json:
    last = items[-1]
    tool = None if last.get("type") == "function_call_output" else _responses_tool(body.get("tools"),
                                                                                  body.get("tool_choice"))
    status, incomplete = "completed", None
    output: list[Json] = []
    if tool is not None:
        item: Json = {"id": ("fc_" if tool["type"] == "function_call" else "ctc_") + _alnum(24),
                      "type": tool["type"], "status": "completed", "call_id": "call_" + _alnum(24),
                      "name": tool["name"]}
        if tool["type"] == "function_call":
            item["arguments"] = TOOL_ARGUMENTS
        else:
            item["input"] = RESPONSES_CUSTOM_INPUT
        if tool.get("namespace") is not None:
            item["namespace"] = tool["namespace"]
        output.append(item)
        produced = item.get("arguments") or item.get("input") or ""
    else:
        if last.get("type") == "function_call_output":
            text = f"[{call.flavor.name}] tool said: {_responses_text(last.get('output'))}"
        else:
            user = next((i for i in reversed(items) if i.get("type") == "message" and i.get("role") == "user"), {})
            text = f"[{call.flavor.name}] {_responses_text(user.get('content'))}"
        limit = body.get("max_output_tokens")
        if isinstance(limit, int) and limit < _words(text):
            text = " ".join(text.split()[: max(limit, 0)])
            status, incomplete = "incomplete", {"reason": "max_output_tokens"}
        output.append({"id": "msg_" + _alnum(24), "type": "message", "status": status, "role": "assistant",
                       "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
        produced = text
    words_in = sum(_words(_responses_text(i.get("content") or i.get("output"))) for i in [*context, *items])
    if isinstance(body.get("instructions"), str):
        words_in += _words(body["instructions"])
    words_out = _words(produced)
    tools = [{"parameters": None, "strict": None, **t} if isinstance(t, dict) and t.get("type") == "function" else t
             for t in body.get("tools") or []]
    now = int(time.time())
    return {
        "id": "resp_" + uuid.uuid4().hex + uuid.uuid4().hex[:16], "object": "response", "created_at": now,
        "status": status, "completed_at": now if status == "completed" else None, "error": None,
        "incomplete_details": incomplete, "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": AZURE_MODEL if call.flavor.name == "azure" else body["model"], "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "store": body.get("store", True), "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}}, "tool_choice": body.get("tool_choice", "auto"),
        "tools": tools, "top_p": body.get("top_p", 1.0), "truncation": body.get("truncation", "disabled"),
        "metadata": body.get("metadata") or {}, "user": body.get("user"), "service_tier": "default",
        "usage": {"input_tokens": words_in, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                  "output_tokens": words_out, "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": words_in + words_out},
    }


def _responses_events(response: Json) -> list[_Event]:
    """Every event of the stream in A.6's order, without sequence numbers (added as they are sent);
    `content` marks the deltas, `finish` the terminal event."""
    opening = {**response, "status": "in_progress", "completed_at": None, "incomplete_details": None,
               "output": [], "usage": None}
    events: list[_Event] = [("role", {"type": "response.created", "response": opening}),
                            ("role", {"type": "response.in_progress", "response": opening})]
    for index, item in enumerate(response["output"]):
        at = {"item_id": item["id"], "output_index": index}
        if item["type"] == "message":
            text = item["content"][0]["text"]
            empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events.append(("role", {"type": "response.output_item.added", "output_index": index,
                                    "item": {**item, "status": "in_progress", "content": []}}))
            events.append(("role", {"type": "response.content_part.added", **at, "content_index": 0, "part": empty}))
            events.extend(("content", {"type": "response.output_text.delta", **at, "content_index": 0,
                                       "delta": piece, "logprobs": []}) for piece in _word_pieces(text))
            events.append(("content", {"type": "response.output_text.done", **at, "content_index": 0, "text": text,
                                       "logprobs": []}))
            events.append(("content", {"type": "response.content_part.done", **at, "content_index": 0,
                                       "part": item["content"][0]}))
        else:
            field, kind = ("arguments", "function_call_arguments") if item["type"] == "function_call" else \
                ("input", "custom_tool_call_input")
            events.append(("content", {"type": "response.output_item.added", "output_index": index,
                                       "item": {**item, "status": "in_progress", field: ""}}))
            events.extend(("content", {"type": f"response.{kind}.delta", **at, "delta": piece})
                          for piece in _argument_pieces(item[field]))
            done: Json = {"type": f"response.{kind}.done", **at, field: item[field]}
            if field == "arguments":
                done["name"] = item["name"]
            events.append(("content", done))
        events.append(("content", {"type": "response.output_item.done", "output_index": index, "item": item}))
    terminal = "response.completed" if response["status"] == "completed" else "response.incomplete"
    events.append(("finish", {"type": terminal, "response": response}))
    return events


def _responses_sse(event: Json) -> bytes:
    return f"event: {event['type']}\n".encode() + b"data: " + orjson.dumps(event) + b"\n\n"


async def _responses_stream(call: _Call, response: Json) -> web.StreamResponse:
    """Write the events one by one, with the streaming faults at their points."""
    events = _responses_events(response)
    stream = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await _prepare(stream, call.request)
    cut = call.has_fault("cut-mid-stream")
    deltas = 0
    sequence = itertools.count()

    async def send(event: Json) -> None:
        await _send(stream, _responses_sse({**event, "sequence_number": next(sequence)}))

    for kind, event in events:
        if kind == "content" and deltas == 0:
            if call.has_fault("error-before-content"):
                await send({"type": "error", "code": "server_error", "message": _server_error_body()["message"],
                            "param": None})
                return stream
            if call.has_fault("failed-before-content"):
                failed = {**events[0][1]["response"], "status": "failed",
                          "error": {"code": "rate_limit_exceeded", "message": "Rate limit reached. Try again in 7s."}}
                await send({"type": "response.failed", "response": failed})
                return stream
        if cut and kind == "finish":
            _cut(call)
            return stream
        await send(event)
        if not event["type"].endswith(".delta"):
            continue
        deltas += 1
        if deltas == 1 and call.has_fault("error-mid-stream"):
            await send({"type": "error", "code": "server_error", "message": _server_error_body()["message"],
                        "param": None})
            return stream
        if deltas == 1 and call.has_fault("slow-stream"):
            await asyncio.sleep(call.delay)
        if deltas == 2 and cut:
            _cut(call)
            return stream
    return stream


async def _responses_by_id(call: _Call) -> web.StreamResponse:
    """GET …/responses/{id} (the stored Response), DELETE (forget it), GET …/input_items (the items
    its request gave, newest first unless `order=asc`); 404 for an id not stored."""
    refusal = _check_access(call)
    if refusal is not None:
        return refusal
    response_id = call.request.match_info["response_id"]
    stored = _responses_stored(call)
    entry = stored.get(response_id)
    if entry is None:
        return _responses_error(call, 404, f"Response with id '{response_id}' not found.")
    if call.request.method == "DELETE":
        del stored[response_id]
        return _json_response({"id": response_id, "object": "response.deleted", "deleted": True})
    if not call.request.path.endswith("/input_items"):
        return _json_response(entry["response"])
    items = list(entry["input"])
    if call.request.query.get("order", "desc") == "desc":
        items.reverse()
    return _json_response({"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
                           "last_id": items[-1]["id"] if items else None, "has_more": False})


_RESPONSES_ROUTES: Final[tuple[tuple[str, str, _Handler], ...]] = (
    ("POST", "/responses", _responses_create),
    ("GET", "/responses/{response_id}", _responses_by_id),
    ("DELETE", "/responses/{response_id}", _responses_by_id),
    ("GET", "/responses/{response_id}/input_items", _responses_by_id),
)


__all__ = [
    "ANTHROPIC_CACHE_CREATION_TOKENS",
    "ANTHROPIC_CACHE_READ_TOKENS",
    "ANTHROPIC_FAULT_WORDS",
    "ANTHROPIC_THINKING_PREFIX",
    "ANTHROPIC_TOOL_INPUT",
    "ANTHROPIC_TOOL_PREAMBLE",
    "AZURE_MODEL",
    "BEDROCK_ACCESS_KEY",
    "BEDROCK_CACHE_READ_TOKENS",
    "BEDROCK_CACHE_WRITE_TOKENS",
    "BEDROCK_COHERE_EMBED_MODELS",
    "BEDROCK_COHERE_INPUT_TYPES",
    "BEDROCK_COHERE_MAX_TEXTS",
    "BEDROCK_FAULT_WORDS",
    "BEDROCK_LATENCY_MS",
    "BEDROCK_MAX_CLOCK_SKEW",
    "BEDROCK_SECRET_KEY",
    "BEDROCK_SIGNATURE_MISMATCH",
    "BEDROCK_SIGNING_NAME",
    "BEDROCK_SPLIT_BYTES",
    "BEDROCK_THINKING_PREFIX",
    "BEDROCK_TITAN_EMBED_MODEL",
    "BEDROCK_TOOL_INPUT",
    "BEDROCK_VALIDATION_ERROR_TYPE",
    "EMBEDDING_SIZE",
    "FAULT_WORDS",
    "FLAVORS",
    "GOOGLE_CLOUD_PLATFORM_SCOPE",
    "GOOGLE_TOKEN_AUDIENCE",
    "GOOGLE_TOKEN_LIFETIME",
    "GZIP_BOMB",
    "RESPONSES_CUSTOM_INPUT",
    "RESPONSES_FAULT_WORDS",
    "RESPONSES_STORED",
    "TOOL_ARGUMENTS",
    "VERTEX_API_VERSIONS",
    "VERTEX_FAULT_WORDS",
    "VERTEX_MAX_PREDICT_INSTANCES",
    "VERTEX_NO_ALT_SSE",
    "VERTEX_PROJECT",
    "VERTEX_SERVICE_ACCOUNT",
    "VERTEX_SKIP_SIGNATURES",
    "VERTEX_TASK_TYPES",
    "VERTEX_THINKING_PREFIX",
    "VERTEX_TOOL_ARGS",
    "FakeUpstream",
    "Flavor",
    "Recorded",
    "Scripted",
    "anthropic_signature",
    "anthropic_thinking_block",
    "bedrock_reasoning_block",
    "bedrock_signature",
    "bedrock_sigv4_headers",
    "embedding_vector",
    "service_account_private_key",
    "vertex_function_call_part",
    "vertex_text_signature",
    "vertex_thought_signature",
]
