"""The helpers the translators share: the chunk encoder's bytes are orjson's bytes of the whole chunk."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorwall_proxy.providers.shapes import ChunkEncoder
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
