"""The only client I/O: the pooled aiohttp session, sending one call, reading its answer, and the
ambient credentials (google-auth tokens) that some providers sign with.

Every aiohttp client exception is mapped here, at one boundary, to ``errors.UpstreamError``; the
raw exception is never logged or shown, since aiohttp's exceptions can carry request details.
Phase timeouts (first byte, idle, total) are clocks the relay runs around these calls; this
module applies only the connect timeout, which includes waiting for a pooled connection.

google-auth is synchronous (its transport is ``requests``): tokens are minted in a thread, one
refresh at a time per provider, and the library is imported only when a provider first needs it.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
import time
from collections.abc import Mapping
from typing import Any, Final

import aiohttp

from .auth import Credential
from .calls import UpstreamCall
from .config import ProviderConfig, Secret
from .errors import ProviderNotConfigured, UpstreamError
from .observability import THROTTLE

CLOUD_PLATFORM_SCOPE: Final = "https://www.googleapis.com/auth/cloud-platform"
# A token is renewed this long before it expires (or at a quarter of its life, if that is sooner),
# so a request never leaves with a token that dies on the way.
TOKEN_MARGIN_SECONDS: Final = 300.0

log = logging.getLogger(__name__)

# Bounded so a burst cannot open unbounded sockets; waiting for a free one counts as connecting.
POOL_LIMIT = 1024
# An embeddings answer larger than this is a broken upstream (DESIGN §14); chat answers have
# server.max_upstream_body_bytes, far less.
EMBEDDINGS_MAX_BODY_BYTES = 256 * 1024 * 1024
# Of an error answer only this much is read: its message is in its first bytes, and a 4xx/5xx
# with a huge body is not worth the memory.
ERROR_BODY_BYTES = 64 * 1024


def create_session() -> aiohttp.ClientSession:
    """One session per process, shared by every request (keep-alive pools per upstream host).

    No total timeout (aiohttp's default 300 s must never apply: the relay times phases itself),
    no cookies kept between callers, no proxy variables, no redirects (set per request).
    """
    connector = aiohttp.TCPConnector(limit=POOL_LIMIT, limit_per_host=0, ttl_dns_cache=300,
                                     keepalive_timeout=30)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_connect=None, sock_read=None),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        auto_decompress=True,
        raise_for_status=False,
    )


class UpstreamResponse:
    """An upstream answer whose status and headers have arrived; the body is read on demand."""

    __slots__ = ("_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self, limit: int) -> bytes:
        """The whole body (non-streamed answers); 502 once it passes ``limit`` bytes.

        The bytes are counted as they arrive, after decompression: neither a Content-Length that
        lies, nor a chunked or close-delimited body, nor a gzip bomb gets past the limit (aiohttp
        inflates a compressed body a bounded piece at a time, and stops reading the socket while
        its buffer is full, so no more than the limit and one piece is ever held).
        """
        try:
            length = self._response.content_length
            if length is not None and length > limit:
                raise _too_large(limit)
            content = self._response.content
            chunks: list[bytes] = []
            size = 0
            while chunk := await content.readany():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        except aiohttp.ClientError as exc:
            raise _broken(exc) from None

    async def read_error(self) -> bytes:
        """The first ``ERROR_BODY_BYTES`` of an error answer; the rest is never read (the caller
        then closes the connection rather than release it half-read)."""
        content = self._response.content
        chunks: list[bytes] = []
        size = 0
        try:
            while size < ERROR_BODY_BYTES and (chunk := await content.read(ERROR_BODY_BYTES - size)):
                chunks.append(chunk)
                size += len(chunk)
            return b"".join(chunks)
        except aiohttp.ClientError as exc:
            raise _broken(exc) from None

    async def read_chunk(self) -> bytes:
        """The next bytes of the body as they arrive; ``b""`` at the end."""
        try:
            return await self._response.content.readany()
        except aiohttp.ClientError as exc:
            raise _broken(exc) from None

    def release(self) -> None:
        """Done with a complete answer: the connection may go back to the pool."""
        self._response.release()

    def close(self) -> None:
        """Abandon the answer: the connection is closed, never returned to the pool half-read."""
        self._response.close()


def _where(call: UpstreamCall) -> str:
    # For the log only: host and port (a path or query could carry a model id we were asked not
    # to echo). The caller is told the provider's name, never where it lives.
    return f"{call.url.host}:{call.url.port}"


def _reason(exc: aiohttp.ClientConnectorError) -> str:
    # The OS error's text ("Connection refused", "Name or service not known") names no request detail.
    error = exc.os_error
    return (error.strerror if error is not None else None) or type(exc).__name__


def _broken(exc: BaseException) -> UpstreamError:
    return UpstreamError("server", 502, f"Upstream connection broke while reading the answer ({type(exc).__name__}).")


def _too_large(limit: int) -> UpstreamError:
    return UpstreamError("server", 502, f"Upstream answer is larger than {limit} bytes.")


@functools.lru_cache(maxsize=64)
def _client_timeout(connect: float, total: float | None) -> aiohttp.ClientTimeout:
    # Made once per distinct configuration, not per request; the configured values are few.
    return aiohttp.ClientTimeout(total=total, connect=connect, sock_connect=connect)


async def send(session: aiohttp.ClientSession, call: UpstreamCall, connect_timeout: float,
               total: float | None = None, *, provider: str = "") -> UpstreamResponse:
    """Send one call and wait for the status line and headers.

    ``total`` bounds the whole exchange, body included, when the answer is read whole: aiohttp's
    own timer then raises ``TimeoutError`` from ``send`` or ``read``. Streams pass None and time
    their phases themselves. Failures name ``provider`` to the caller; the host and port, and the
    operating system's reason, go to the log.
    """
    try:
        response = await session.request(
            call.method, call.url, data=call.body, headers=call.headers,
            timeout=_client_timeout(connect_timeout, total),
            allow_redirects=False,
        )
        return UpstreamResponse(response)
    # Each failure is raised inside its handler: aiohttp's exception hangs from its __context__
    # (suppressed from display), and the detach of whoever keeps ours drops its frames too.
    except aiohttp.ClientConnectorError as exc:
        # Refused, DNS, TLS: the request provably never reached the upstream.
        THROTTLE.warning(log, ("connect", provider), "upstream %r: could not connect to %s (%s)", provider,
                         _where(call), _reason(exc))
        raise UpstreamError("connect", 502, f"Could not connect to upstream '{provider}'.",
                            reached_upstream=False) from None
    except aiohttp.ConnectionTimeoutError:
        THROTTLE.warning(log, ("connect timeout", provider), "upstream %r: connecting to %s took longer than %gs",
                         provider, _where(call), connect_timeout)
        raise UpstreamError("connect", 504, f"Connecting to upstream '{provider}' took longer than "
                                            f"{connect_timeout:g}s.", reached_upstream=False) from None
    except aiohttp.ClientError as exc:
        THROTTLE.warning(log, ("connection", provider), "upstream %r: the connection to %s failed (%s)", provider,
                         _where(call), type(exc).__name__)
        raise UpstreamError("connect", 502, f"The connection to upstream '{provider}' failed.") from None


class GoogleTokens:
    """OAuth access tokens from google-auth's application default credentials, cached.

    ``GOOGLE_APPLICATION_CREDENTIALS`` (a service-account JSON), the gcloud ADC file, or the
    metadata server, in google-auth's order. The token is kept until shortly before it expires;
    concurrent requests that find it stale wait for one refresh, made in a thread.
    """

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self.warned: str | None = None  # what the log was last told is missing
        self._credentials: Any = None
        self._project: str | None = None
        self._token: Secret | None = None
        self._renew_at = 0.0
        self._generation = 0
        self._lock = asyncio.Lock()

    async def get(self) -> tuple[Secret, str | None]:
        """A valid token and the project the credentials belong to."""
        if self._token is not None and time.monotonic() < self._renew_at:
            return self._token, self._project
        generation = self._generation
        async with self._lock:
            # Someone else refreshed while we waited: theirs is as fresh as ours would be.
            if self._generation == generation or self._token is None:
                await asyncio.to_thread(self._refresh)
                self._generation += 1
        assert self._token is not None
        return self._token, self._project

    def _refresh(self) -> None:
        """Blocking: load the credentials once, then mint a token (runs in a worker thread)."""
        import google.auth
        import google.auth.exceptions
        import google.auth.transport.requests
        import requests

        try:
            if self._credentials is None:
                self._credentials, self._project = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
            session = requests.Session()
            session.trust_env = False  # no proxy variables, as for every upstream call
            self._credentials.refresh(google.auth.transport.requests.Request(session=session))
        except google.auth.exceptions.DefaultCredentialsError:
            raise _not_configured(self, self._provider, (
                "no Google application default credentials: set GOOGLE_APPLICATION_CREDENTIALS to a "
                "service-account file, or have callers send an OAuth token as the Bearer key")) from None
        except (google.auth.exceptions.GoogleAuthError, requests.RequestException) as exc:
            # The exception's text can name the token endpoint: the log gets its type only.
            log.warning("provider %r: could not mint a Google access token (%s)", self._provider, type(exc).__name__)
            raise UpstreamError("connect", 502, f"Could not get an access token for provider '{self._provider}'.",
                                reached_upstream=False) from None
        token = self._credentials.token
        expiry = self._credentials.expiry  # naive UTC, or None for tokens without an expiry
        lifetime = 3600.0
        if expiry is not None:
            now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
            lifetime = max((expiry - now).total_seconds(), 0.0)
        self._token = Secret(token)
        self._renew_at = time.monotonic() + lifetime - min(TOKEN_MARGIN_SECONDS, lifetime / 4)


def sign_sigv4(credentials: Any, region: str, call: UpstreamCall) -> UpstreamCall:
    """The call with botocore's SigV4 headers (service ``bedrock``) over its exact URL and body bytes."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    # The URL is already percent-encoded (model ids with %3A); botocore signs that path encoded
    # once more, as AWS expects, and the same bytes go on the wire.
    request = AWSRequest(method=call.method, url=str(call.url), data=call.body,
                         headers={"Content-Type": call.headers.get("Content-Type", "application/json")})
    SigV4Auth(credentials, "bedrock", region).add_auth(request)
    headers = {k: v for k, v in call.headers.items() if k.lower() != "authorization"}
    for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
        value = request.headers.get(name)
        if value:
            headers[name] = value
    return UpstreamCall(call.method, call.url, headers, call.body, call.stream)


class AwsCredentials:
    """The AWS credentials a bedrock provider signs with: its YAML keys, or aiobotocore's chain.

    The chain (environment, shared profile, container and instance roles) is resolved once,
    without blocking the event loop; refreshable credentials are frozen afresh for every request,
    so a rotated role is picked up.
    """

    def __init__(self, provider: ProviderConfig) -> None:
        self._provider = provider
        self.warned: str | None = None  # what the log was last told is missing
        self._source: Any = None
        self._lock = asyncio.Lock()

    async def frozen(self) -> Any:
        """Credentials to sign one request with (access key, secret, token)."""
        from botocore.exceptions import BotoCoreError, ProfileNotFound

        try:
            if self._source is None:
                async with self._lock:
                    if self._source is None:
                        self._source = await self._resolve()
            if hasattr(self._source, "get_frozen_credentials"):
                frozen = self._source.get_frozen_credentials()
                return await frozen if asyncio.iscoroutine(frozen) else frozen
            return self._source
        except ProfileNotFound:
            raise _not_configured(self, self._provider.name, f"AWS profile '{self._provider.profile}' does not "
                                                       "exist") from None
        except BotoCoreError as exc:
            # Refreshing role credentials failed: nothing reached Bedrock; another endpoint may serve.
            log.warning("provider %r: could not get AWS credentials (%s)", self._provider.name, type(exc).__name__)
            raise UpstreamError("connect", 502, f"Could not get AWS credentials for provider "
                                                f"'{self._provider.name}'.", reached_upstream=False) from None

    async def _resolve(self) -> Any:
        provider = self._provider
        if provider.aws_access_key_id is not None and provider.aws_secret_access_key is not None:
            from botocore.credentials import Credentials

            return Credentials(provider.aws_access_key_id.reveal(), provider.aws_secret_access_key.reveal(),
                               provider.aws_session_token.reveal() if provider.aws_session_token else None)
        from aiobotocore.session import AioSession

        session = AioSession(profile=provider.profile or None)
        credentials = await session.get_credentials()
        if credentials is None:
            raise _not_configured(self, provider.name, (
                "no AWS credentials: set aws_access_key_id and aws_secret_access_key (or profile) in the YAML, "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment, or have callers send a Bedrock API "
                "key as the Bearer key"))
        return credentials


class Ambient:
    """Ambient credentials per provider: what ``auth: ambient`` (and a forward without a key) signs with."""

    def __init__(self) -> None:
        self._google: dict[str, GoogleTokens] = {}
        self._aws: dict[str, AwsCredentials] = {}

    async def resolve(self, provider: ProviderConfig) -> Credential:
        """The credential for one attempt on ``provider``."""
        ambient = provider.kind.ambient
        if ambient == "google":
            tokens = self._google.get(provider.name)
            if tokens is None:
                tokens = self._google[provider.name] = GoogleTokens(provider.name)
            token, project = await tokens.get()
            return Credential("ambient", token, project)
        if ambient == "aws":
            aws = self._aws.get(provider.name)
            if aws is None:
                aws = self._aws[provider.name] = AwsCredentials(provider)
            frozen = await aws.frozen()
            region = provider.region or str(provider.kind.default("region"))
            return Credential("ambient", sign=functools.partial(sign_sigv4, frozen, region))
        raise _not_configured(None, provider.name, f"provider type '{provider.type}' has no ambient credentials in this "
                                             "version")


def _not_configured(source: GoogleTokens | AwsCredentials | None, provider: str, detail: str) -> ProviderNotConfigured:
    """The caller learns the provider is not configured; the log learns why (``detail`` holds no
    key), once per credential source and reason rather than once per request."""
    if source is None or source.warned != detail:
        if source is not None:
            source.warned = detail
        log.warning("provider %r is not configured: %s", provider, detail)
    return ProviderNotConfigured(provider, detail)
