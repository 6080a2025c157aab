"""Anthropic's Messages API as a provider type: the chat translators of ``anthropic_wire`` on
Anthropic's own URL and headers, and the Messages dialect passed through natively.

Pure: no I/O, no aiohttp.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

import orjson

from ..errors import GatewayError, UnsupportedField, UpstreamError
from ..sse import SseDecoder
from .anthropic_wire import (
    DEFAULT_VERSION,
    AnthropicStream,
    Betas,
    auth_header,
    native_messages,
    passed_betas,
    translate_request,
    translate_response,
)
from .contract import ChatRequest, EmbeddingsRequest, UpstreamCall, read_input_tokens
from .messages_wire import NativeMessages
from .openai_wire import USER_AGENT, classify_openai_error, upstream_url
from .shapes import load_object

if TYPE_CHECKING:
    from ..auth import Credential
    from ..config import ProviderConfig


def _headers(provider: ProviderConfig, credential: Credential, version: str, betas: Betas) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "anthropic-version": version}
    if credential.secret is not None:
        name, value = auth_header(credential.secret.reveal())
        headers[name] = value
    if betas.kept:
        headers["anthropic-beta"] = ",".join(betas.kept)
    return headers


class Anthropic(NativeMessages):
    """The Provider for Anthropic's Messages API: chat translated, Messages passed through."""

    type = "anthropic"

    def framer(self) -> SseDecoder:
        return SseDecoder()

    def build_request(self, req: ChatRequest, provider: ProviderConfig, model: str,
                      credential: Credential) -> UpstreamCall:
        body = translate_request(req, provider, model)
        betas = passed_betas(req.headers.get("anthropic-beta") or "", provider, credential)
        headers = _headers(provider, credential, provider.version or DEFAULT_VERSION, betas)
        return UpstreamCall("POST", upstream_url(provider.base_url, "/messages"), headers, orjson.dumps(body),
                            req.stream, betas.stripped)

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

    def native(self, dialect: str, provider: ProviderConfig, model: str) -> bool:
        return dialect == "messages" and dialect in provider.speaks

    def build_native_request(self, dialect: str, req: ChatRequest, provider: ProviderConfig, model: str,
                             credential: Credential) -> UpstreamCall:
        """The caller's body with ``model`` set; the caller's ``anthropic-version`` and ``?beta=true``
        kept, its betas as ``split_betas`` says."""
        return self._native_call(req, provider, model, credential, "/messages")

    def _native_call(self, req: ChatRequest, provider: ProviderConfig, model: str, credential: Credential,
                     path: str) -> UpstreamCall:
        body, betas = native_messages(req, provider, credential)
        body["model"] = model
        version = req.headers.get("anthropic-version") or provider.version or DEFAULT_VERSION
        url = upstream_url(provider.base_url, path)
        if parse_qs(req.native_query).get("beta") == ["true"]:
            url = url.with_query(beta="true")
        return UpstreamCall("POST", url, _headers(provider, credential, version, betas), orjson.dumps(body),
                            req.stream, betas.stripped)

    def build_count_tokens_request(self, req: ChatRequest, provider: ProviderConfig, model: str,
                                   credential: Credential) -> UpstreamCall | None:
        if req.native is None or "messages" not in provider.speaks:
            return None
        return self._native_call(req, provider, model, credential, "/messages/count_tokens")

    def read_count_tokens(self, provider: ProviderConfig, body: bytes) -> int:
        return read_input_tokens(body, "input_tokens")
