"""The helpers the translators share: the chunk encoder's bytes are orjson's bytes of the whole chunk."""

from __future__ import annotations

import zlib
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorwall_proxy.config import ProviderConfig
from tensorwall_proxy.errors import GatewayError
from tensorwall_proxy.providers import ChatRequest, bedrock, vertex
from tensorwall_proxy.providers import anthropic_wire as anthropic
from tensorwall_proxy.providers.shapes import (
    MAX_REQUEST_STATE_BYTES,
    ChunkEncoder,
    StateBudget,
    data_url,
    pack_state,
    unpack_state,
)
from tensorwall_proxy.sse import encode

_TEXT = st.text(max_size=20)
_DELTAS = st.one_of(
    st.just({}),
    st.builds(lambda text: {"content": text}, _TEXT),
    st.builds(lambda text: {"role": "assistant", "content": text}, _TEXT),
    st.builds(lambda name, args: {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                  "function": {"name": name, "arguments": args}}]}, _TEXT, _TEXT),
)


@settings(max_examples=200, deadline=None)
@given(wants_usage=st.booleans(), ids=st.lists(_TEXT, min_size=1, max_size=3), models=st.lists(_TEXT, min_size=1, max_size=3),
       created=st.integers(min_value=0, max_value=2**40), index=st.integers(min_value=0, max_value=20),
       delta=_DELTAS, finish=st.one_of(st.none(), st.sampled_from(["stop", "length", "tool_calls"])))
def test_chunks_are_orjson_of_the_whole_chunk(wants_usage: bool, ids: list[str], models: list[str], created: int,
                                              index: int, delta: dict[str, Any], finish: str | None) -> None:
    encoder = ChunkEncoder(wants_usage, created)
    for chunk_id, model in zip(ids, models, strict=False):  # the id and model may change mid-stream (Vertex)
        encoder.id, encoder.model = chunk_id, model
        whole: dict[str, Any] = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
                                 "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if wants_usage:
            whole["usage"] = None
        assert encoder.chunk(delta, finish, index=index) == encode(orjson.dumps(whole))
        if set(delta) == {"content"} and finish is None:
            assert encoder.content(delta["content"], index=index) == encode(orjson.dumps(whole))


# --- packed state: inflated under bounds -----------------------------------------------------------


def _bomb(tag: bytes, inflated: int) -> bytes:
    """State under ``tag`` that inflates to ``inflated`` bytes of one repeated byte, made in 1 MiB steps."""
    packer = zlib.compressobj(1)
    chunk = b" " * (1 << 20)
    parts = [packer.compress(chunk) for _ in range(inflated >> 20)]
    return tag + b"".join(parts) + packer.flush()


def test_state_that_inflates_past_4_mib_is_a_400_naming_the_tool_call() -> None:
    with pytest.raises(GatewayError) as caught:
        unpack_state(b"A1", _bomb(b"A1", 8 << 20), "messages[1].tool_calls[0].id")
    assert caught.value.status == 400 and caught.value.param == "messages[1].tool_calls[0].id"
    assert "4 MiB" in caught.value.message


def test_state_within_the_bound_still_unpacks() -> None:
    blocks = [{"type": "thinking", "thinking": "t" * 200_000, "signature": "s"}]
    assert unpack_state(b"A1", pack_state(b"A1", blocks)) == blocks
    assert unpack_state(b"A1", b"A1" + zlib.compress(b"[{}]")[:-3]) is None  # truncated: damaged, not a bomb


def test_the_packed_state_of_one_request_is_bounded_as_a_whole() -> None:
    budget = StateBudget()
    state = _bomb(b"A1", 3 << 20)  # under the bound for one id, not JSON: damaged, ignored
    for _ in range(MAX_REQUEST_STATE_BYTES // (3 << 20)):
        assert unpack_state(b"A1", state, "x", budget) is None
    with pytest.raises(GatewayError) as caught:
        unpack_state(b"A1", state, "messages[9].tool_calls[0].id", budget)
    assert caught.value.status == 400 and caught.value.param == "messages[9].tool_calls[0].id"


# --- data: URLs, read in one place ------------------------------------------------------------------


def test_data_urls_name_their_media_type_as_the_providers_spell_it() -> None:
    assert data_url("data:image/jpg;base64,AAAA") == ("image/jpeg", "AAAA")
    assert data_url("data:Image/PNG;base64,AA==") == ("image/png", "AA==")
    assert data_url("data:application/pdf;name=a.pdf;base64,JVBE") == ("application/pdf", "JVBE")
    for url in ("data:image/png,AAAA", "data:;base64,AAAA", "data:image/png;base64", "https://x/a.png"):
        assert data_url(url) is None


def _image_request(url: str) -> ChatRequest:
    return ChatRequest({"model": "m", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]})


def test_an_image_jpg_data_url_reaches_every_translator_as_image_jpeg() -> None:
    req = _image_request("data:image/jpg;base64,/9j/AAAA")
    anthropic_body = anthropic.translate_request(req, ProviderConfig(name="anthropic", type="anthropic"), "claude")
    assert anthropic_body["messages"][0]["content"][0]["source"] == {
        "type": "base64", "media_type": "image/jpeg", "data": "/9j/AAAA"}
    vertex_body = vertex.translate_request(req)
    assert vertex_body["contents"][0]["parts"][0] == {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/AAAA"}}
    bedrock_body = bedrock.translate_request(req, ProviderConfig(name="bedrock", type="bedrock"), "amazon.nova-pro-v1:0")
    assert bedrock_body["messages"][0]["content"][0] == {"image": {"format": "jpeg", "source": {"bytes": "/9j/AAAA"}}}
