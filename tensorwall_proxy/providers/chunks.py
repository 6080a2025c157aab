"""OpenAI's response shapes, built for the translating providers (anthropic, vertex, bedrock).

A translated answer must look exactly like OpenAI's: a ``chat.completion`` object, or a stream of
``chat.completion.chunk`` events that share one id, ``created`` and ``model``, carry ``"usage":
null`` while the caller asked for usage, end with exactly one ``choices: []`` usage chunk when it
did, and then ``[DONE]``. This module owns those rules so each translator only says what happened.

Pure: no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from ..sse import DONE_EVENT, encode


def usage(prompt: int, completion: int, *, cached: int | None = None, cache_creation: int | None = None,
          reasoning: int | None = None) -> dict[str, Any]:
    """OpenAI's usage object; ``prompt`` already includes cached tokens (OpenAI counts them in)."""
    result: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                              "total_tokens": prompt + completion}
    if cached is not None or cache_creation is not None:
        details: dict[str, int] = {"cached_tokens": cached or 0}
        if cache_creation:
            details["cache_creation_tokens"] = cache_creation
        result["prompt_tokens_details"] = details
    if reasoning is not None:
        result["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return result


def completion(completion_id: str, model: str, message: dict[str, Any], finish_reason: str,
               usage_: Mapping[str, Any] | None, created: int | None = None) -> bytes:
    """A whole ``chat.completion`` body with one choice."""
    return orjson.dumps({
        "id": completion_id, "object": "chat.completion",
        "created": int(time.time()) if created is None else created, "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage_,
    })


class ChunkEncoder:
    """Encodes the chunks of one translated stream with the fields every chunk must share."""

    __slots__ = ("created", "id", "model", "wants_usage")

    def __init__(self, wants_usage: bool, created: int | None = None) -> None:
        self.wants_usage = wants_usage
        self.created = int(time.time()) if created is None else created
        self.id = ""
        self.model = ""

    def chunk(self, delta: Mapping[str, Any], finish_reason: str | None = None, index: int = 0) -> bytes:
        """One ``chat.completion.chunk`` event for one choice."""
        body: dict[str, Any] = {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.wants_usage:
            body["usage"] = None  # as OpenAI: null on every chunk but the last
        return encode(orjson.dumps(body))

    def end(self, usage_: Mapping[str, Any] | None) -> list[bytes]:
        """The closing events: the usage chunk when the caller asked for it, then ``[DONE]``."""
        if not self.wants_usage:
            return [DONE_EVENT]
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [], "usage": usage_}
        return [encode(orjson.dumps(body)), DONE_EVENT]
