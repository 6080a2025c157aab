"""Azure OpenAI: the deployment URL, the ``api-key`` header and the ``api-version`` rules.

Azure speaks OpenAI's wire format at ``{endpoint}/openai/deployments/{deployment}/...?api-version=``,
where the deployment is the endpoint's upstream model id (percent-encoded, never trusted as URL
material). The body keeps the caller's ``model`` (Azure routes by deployment and ignores it).
``stream_options`` exists only from api-version 2024-10-21: with an older configured version it is
removed, and usage cannot be asked for. The filter-only first chunk of an Azure stream holds no
content, so the passthrough decoder holds it with the commit point.

Responses are passed through natively on Azure's v1 API: ``POST {endpoint}/openai/v1/responses``,
the same ``api-key`` header, no ``api-version`` (the v1 API takes none), and ``model`` in the body
set to the deployment name, since the v1 path names no deployment (wire-formats-dialects A.10).

Pure: no I/O, no aiohttp.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

import orjson
from yarl import URL

from ..errors import UpstreamError
from ..sse import SseDecoder
from .catalog import TYPES
from .contract import ChatRequest, EmbeddingsRequest, Uncounted, UpstreamCall, path_segment
from .openai_wire import (
    USER_AGENT,
    NativeReading,
    PassthroughStream,
    adapt_chat_body,
    classify_openai_error,
    native_body,
    upstream_url,
)

if TYPE_CHECKING:
    from ..auth import Credential
    from ..config import ProviderConfig

# The first GA api-version that accepts stream_options (and seed); see wire-formats §3.
STREAM_OPTIONS_SINCE: Final = "2024-10-21"
# The dialects Azure passes through, on its v1 API (no deployment segment, no api-version).
V1_PATHS: Final = {"responses": "/openai/v1/responses"}


def accepts_stream_options(api_version: str) -> bool:
    """Whether an api-version takes ``stream_options`` (versions are dates, compared as text)."""
    return api_version[:10] >= STREAM_OPTIONS_SINCE


def _headers(credential: Credential) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if credential.secret is not None:
        headers["api-key"] = credential.secret.reveal()
    return headers


class Azure(NativeReading, Uncounted):
    """The Provider for Azure OpenAI deployments."""

    type = "azure"

    def _url(self, provider: ProviderConfig, deployment: str, operation: str) -> str:
        segment = path_segment(deployment, "Azure deployment name")
        return f"/openai/deployments/{segment}/{operation}?api-version={provider.api_version}"

    def framer(self) -> SseDecoder:
        return SseDecoder()

    def build_request(self, req: ChatRequest, provider: ProviderConfig, model: str,
                      credential: Credential) -> UpstreamCall:
        body = adapt_chat_body(req, TYPES["azure"].policy, "openai",
                               asks_usage=accepts_stream_options(provider.api_version))
        url = upstream_url(provider.endpoint, self._url(provider, model, "chat/completions"))
        return UpstreamCall("POST", url, _headers(credential), orjson.dumps(body), req.stream)

    def parse_response(self, req: ChatRequest, provider: ProviderConfig, body: bytes) -> bytes:
        return body

    def stream_decoder(self, req: ChatRequest, provider: ProviderConfig) -> PassthroughStream:
        asks = accepts_stream_options(provider.api_version)
        return PassthroughStream(provider.name, hide_usage=asks and not req.wants_usage, split_usage=False)

    def classify_error(self, provider: ProviderConfig, status: int, headers: Mapping[str, str],
                       body: bytes) -> UpstreamError:
        return classify_openai_error(provider, status, headers, body)

    def build_embeddings_request(self, req: EmbeddingsRequest, provider: ProviderConfig, model: str,
                                 credential: Credential) -> list[UpstreamCall]:
        url = upstream_url(provider.endpoint, self._url(provider, model, "embeddings"))
        return [UpstreamCall("POST", url, _headers(credential), orjson.dumps(dict(req.body)))]

    def parse_embeddings_response(self, req: EmbeddingsRequest, provider: ProviderConfig,
                                  bodies: list[bytes]) -> bytes:
        return bodies[0]

    def native(self, dialect: str, provider: ProviderConfig, model: str) -> bool:
        return dialect in provider.speaks and dialect in V1_PATHS

    def build_native_request(self, dialect: str, req: ChatRequest, provider: ProviderConfig, model: str,
                             credential: Credential) -> UpstreamCall:
        url = upstream_url(provider.endpoint, V1_PATHS[dialect])
        return UpstreamCall("POST", url, _headers(credential), native_body(req, model), req.stream)

    def build_native_lookup(self, dialect: str, provider: ProviderConfig, method: str, path: str,
                            credential: Credential) -> UpstreamCall:
        url = URL(provider.endpoint + V1_PATHS[dialect] + path, encoded=True)
        return UpstreamCall(method, url, _headers(credential), b"")
