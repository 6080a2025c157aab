"""Anthropic's Messages API as a provider type: the chat translators of ``anthropic_wire`` on
Anthropic's own URL and headers, and the Messages dialect passed through natively.

Pure: no I/O, no aiohttp.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import orjson

from ..errors import GatewayError, UnsupportedField, UpstreamError
from ..sse import SseDecoder
from .anthropic_wire import (
    DEFAULT_VERSION,
    AnthropicStream,
    auth_header,
    passed_betas,
    translate_request,
    translate_response,
)
from .contract import ChatRequest, EmbeddingsRequest, Translated, UpstreamCall
from .openai_wire import USER_AGENT, classify_openai_error, upstream_url
from .shapes import load_object

if TYPE_CHECKING:
    from ..auth import Credential
    from ..config import ProviderConfig


def _headers(provider: ProviderConfig, credential: Credential, req_headers: Mapping[str, str]) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               "anthropic-version": provider.version or DEFAULT_VERSION}
    if credential.secret is not None:
        name, value = auth_header(credential.secret.reveal())
        headers[name] = value
    beta = req_headers.get("anthropic-beta")
    if beta:
        passed = passed_betas(beta, provider, credential)
        if passed:
            headers["anthropic-beta"] = passed
    return headers



class Anthropic(Translated):
    """The Provider for Anthropic's Messages API."""

    type = "anthropic"

    def framer(self) -> SseDecoder:
        return SseDecoder()

    def build_request(self, req: ChatRequest, provider: ProviderConfig, model: str,
                      credential: Credential) -> UpstreamCall:
        body = translate_request(req, provider, model)
        return UpstreamCall("POST", upstream_url(provider.base_url, "/messages"),
                            _headers(provider, credential, req.headers), orjson.dumps(body), req.stream)

    def parse_response(self, req: ChatRequest, provider: ProviderConfig, body: bytes) -> bytes:
        return translate_response(load_object(body, provider.name), keep_state=req.wants_reasoning_state)

    def stream_decoder(self, req: ChatRequest, provider: ProviderConfig) -> AnthropicStream:
        return AnthropicStream(provider.name, req.wants_usage, req.wants_reasoning_state)

    def classify_error(self, provider: ProviderConfig, status: int, headers: Mapping[str, str],
                       body: bytes) -> UpstreamError:
        # Anthropic nests its error like OpenAI: {"type": "error", "error": {"type", "message"}}.
        return classify_openai_error(provider, status, headers, body)

    def build_embeddings_request(self, req: EmbeddingsRequest, provider: ProviderConfig, model: str,
                                 credential: Credential) -> list[UpstreamCall]:
        raise UnsupportedField("model", "Provider type 'anthropic' has no embeddings.")

    def parse_embeddings_response(self, req: EmbeddingsRequest, provider: ProviderConfig,
                                  bodies: list[bytes]) -> bytes:
        raise GatewayError(500, "Anthropic has no embeddings.")  # never called: no request is built
