"""The chat dialect module from data, without an event loop: parsing into the pivot, the legacy
completions encoders, the model catalog."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorwall_proxy.dialects import catalog
from tensorwall_proxy.dialects.chat import (
    CHAT,
    COMPLETIONS,
    MAX_EMBEDDING_INPUTS,
    CompletionStream,
    completion_answer,
    model_body,
    models_body,
    parse_chat,
    parse_completions,
    parse_embeddings,
)
from tensorwall_proxy.errors import GatewayError
from tensorwall_proxy.providers import ChatRequest
from tensorwall_proxy.sse import DONE_EVENT, SseEvent, encode


def _refused(call: Any, *args: Any) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        call(*args)
    assert caught.value.status == 400
    return caught.value


# --- chat: the pivot as it comes ---------------------------------------------------------------


def test_chat_body_is_the_pivot_itself_not_a_copy() -> None:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                            "stream_options": {"include_usage": True}, "x-unknown": 1}
    req = parse_chat(body, {"OpenAI-Organization": "org-1", "Cookie": "c"})
    assert req.body is body and req.stream and req.wants_usage
    assert req.headers == {"OpenAI-Organization": "org-1"}
    # The chat dialect's parse is the function itself (no extra call on the hot path); its
    # encoders are the identity and never called by the relay (is_pivot).
    assert CHAT.parse is parse_chat and CHAT.is_pivot and not COMPLETIONS.is_pivot
    assert CHAT.encode_answer(req, b"x") == b"x"


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "m" * 257, "messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": ["x"]}, "messages[0]"),
    ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user"}], "stream": "yes"}, "stream"),
    ({"model": "m", "messages": [{"role": "user"}], "n": True}, "n"),
    ({"model": "m", "messages": [{"role": "user"}], "n": 0}, "n"),
    ({"model": "m", "messages": [{"role": "user"}], "stream_options": {}}, "stream_options"),
])
def test_chat_bodies_the_gateway_cannot_rely_on_are_400(body: dict[str, Any], param: str) -> None:
    assert _refused(parse_chat, body, {}).param == param


def test_embeddings_take_at_most_2048_inputs_and_any_token_array() -> None:
    assert MAX_EMBEDDING_INPUTS == 2048  # OpenAI's own limit
    assert len(parse_embeddings({"model": "m", "input": ["x"] * 2048}).body["input"]) == 2048
    parse_embeddings({"model": "m", "input": list(range(10_000))})  # one token array, however long
    for value in (["x"] * 2049, [[1, 2]] * 2049, [1] * 2048 + ["x"]):
        assert _refused(parse_embeddings, {"model": "m", "input": value}).param == "input"


def test_embeddings_encoding_and_dimensions() -> None:
    assert parse_embeddings({"model": "m", "input": "x", "encoding_format": "base64"}).base64
    assert not parse_embeddings({"model": "m", "input": "x"}).base64
    assert _refused(parse_embeddings, {"model": "m", "input": "x", "encoding_format": "hex"}).param == "encoding_format"
    assert _refused(parse_embeddings, {"model": "m", "input": "x", "dimensions": "8"}).param == "dimensions"


# --- legacy completions: into the pivot --------------------------------------------------------


@pytest.mark.parametrize("prompt", ["Say hi", ["Say hi"], ""])
def test_a_prompt_becomes_one_user_message(prompt: Any) -> None:
    req = parse_completions({"model": "m", "prompt": prompt, "max_tokens": 7, "stop": ["\n"], "temperature": 0,
                             "stream": True, "stream_options": {"include_usage": True}, "vendor_knob": 3}, {})
    text = prompt[0] if isinstance(prompt, list) else prompt
    assert req.body == {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 7,
                        "stop": ["\n"], "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
                        "vendor_knob": 3}
    assert req.stream and req.wants_usage


def test_the_prompt_wins_over_a_messages_field() -> None:
    req = parse_completions({"model": "m", "prompt": "mine", "messages": [{"role": "system", "content": "x"}]}, {})
    assert req.body["messages"] == [{"role": "user", "content": "mine"}]


@pytest.mark.parametrize(("fields", "param"), [
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[1, 2]]}, "prompt"),
    ({"prompt": [1, 2]}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"echo": True}, "echo"),
    ({"best_of": 2}, "best_of"),
    ({"best_of": 0}, "best_of"),
    ({"logprobs": 0}, "logprobs"),
    ({"logprobs": 5}, "logprobs"),
    ({"suffix": "}"}, "suffix"),
    ({"suffix": 5}, "suffix"),
    ({"echo": "yes"}, "echo"),
    ({"best_of": True}, "best_of"),
    ({"model": ""}, "model"),
    ({"stream": "true"}, "stream"),
])
def test_completions_fields_that_change_the_result_are_400_naming_them(fields: dict[str, Any], param: str) -> None:
    assert _refused(parse_completions, {"model": "m", "prompt": "p", **fields}, {}).param == param


def test_completions_fields_at_their_default_are_dropped() -> None:
    req = parse_completions({"model": "m", "prompt": "p", "echo": False, "best_of": 1, "logprobs": None,
                             "suffix": None}, {})
    assert set(req.body) == {"model", "messages"}
    assert set(parse_completions({"model": "m", "prompt": "p", "suffix": ""}, {}).body) == {"model", "messages"}


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.text(max_size=3),
                     lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
                     max_leaves=4)
_COMPLETIONS_FIELDS = ("prompt", "suffix", "echo", "best_of", "logprobs", "n", "max_tokens", "stream",
                       "stream_options", "stop", "temperature", "messages", "model")


@pytest.mark.slow
@settings(max_examples=500, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(_COMPLETIONS_FIELDS), _JSON, max_size=4))
def test_any_completions_body_is_a_pivot_or_a_400(fields: dict[str, Any]) -> None:
    body = {"model": "m", "prompt": "p", **fields}
    try:
        req = parse_completions(body, {})
    except GatewayError as exc:
        assert exc.status == 400 and exc.param is not None
        return
    assert req.body["messages"] == [{"role": "user", "content": body["prompt"] if isinstance(body["prompt"], str)
                                     else body["prompt"][0]}]
    assert not {"prompt", "suffix", "echo", "best_of", "logprobs"} & set(req.body)


# --- legacy completions: out of the pivot ------------------------------------------------------


def test_a_chat_completion_becomes_a_text_completion() -> None:
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 5, "model": "gpt", "system_fingerprint": "fp",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"},
                          {"index": 1, "message": {"role": "assistant", "content": None}, "finish_reason": "length"}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
    out = orjson.loads(completion_answer(orjson.dumps(answer)))
    assert out == {"id": "chatcmpl-1", "object": "text_completion", "created": 5, "model": "gpt",
                   "system_fingerprint": "fp",
                   "choices": [{"text": "Hi", "index": 0, "logprobs": None, "finish_reason": "stop"},
                               {"text": "", "index": 1, "logprobs": None, "finish_reason": "length"}],
                   "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
    assert COMPLETIONS.encode_answer(ChatRequest({}), orjson.dumps(answer)) == completion_answer(orjson.dumps(answer))


class _Pivot:
    """A pivot stream decoder that answers each event with the chunks scripted for it."""

    def __init__(self, script: list[list[bytes]]) -> None:
        self.script = script
        self.visible = False
        self.done = False
        self.usage: dict[str, int] | None = None

    def feed(self, event: SseEvent) -> list[bytes]:
        out = self.script.pop(0)
        self.visible = True
        if DONE_EVENT in out:
            self.done = True
            self.usage = {"total_tokens": 3}
        return out

    def close(self) -> list[bytes]:
        return []

    def split_plain(self, chunk: bytes) -> tuple[bytes, bytes]:
        return chunk, b""  # a passthrough would send it all plain: the wrapper must not


def _chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
    return encode(orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "gpt",
                                "choices": choices, **extra}))


def test_a_pivot_stream_becomes_text_completion_chunks() -> None:
    error = encode(b'{"error":{"message":"x","type":"server_error","param":null,"code":null}}')
    pivot = _Pivot([
        [_chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])],
        [_chunk([{"index": 0, "delta": {"content": "He"}, "finish_reason": None}]),
         _chunk([{"index": 0, "delta": {"content": "llo"}, "finish_reason": None}])],
        [_chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])],
        [_chunk([], usage={"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}), DONE_EVENT],
        [error],
    ])
    stream = COMPLETIONS.encode_stream(ChatRequest({}), pivot)
    assert isinstance(stream, CompletionStream)
    assert stream.split_plain(b"data: {}\n\n") == (b"", b"data: {}\n\n")  # every event is rewritten
    event = SseEvent(None, b"{}")
    assert stream.feed(event) == []  # the role chunk has no counterpart
    assert stream.visible  # the pivot decoder's commit point is the wrapper's
    texts = [orjson.loads(e[6:]) for e in stream.feed(event)]
    assert [t["choices"] for t in texts] == [[{"text": "He", "index": 0, "logprobs": None, "finish_reason": None}],
                                             [{"text": "llo", "index": 0, "logprobs": None, "finish_reason": None}]]
    assert all(t["object"] == "text_completion" and t["id"] == "c1" and "usage" not in t for t in texts)
    (finish,) = stream.feed(event)
    assert orjson.loads(finish[6:])["choices"][0]["finish_reason"] == "stop"
    usage, done = stream.feed(event)
    assert orjson.loads(usage[6:]) == {"id": "c1", "object": "text_completion", "created": 5, "model": "gpt",
                                       "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2,
                                                                "total_tokens": 3}}
    assert done == DONE_EVENT and stream.done and stream.usage == {"total_tokens": 3}
    assert stream.feed(event) == [error]  # OpenAI's error shape is this dialect's own
    assert stream.close() == []


# --- models --------------------------------------------------------------------------------------


def test_the_catalog_lists_routes_first_and_a_route_name_wins() -> None:
    listed = catalog({"smart": "anthropic", "openai/gpt-4o": "azure"}, {"openai": ("gpt-4o", "o1"), "groq": ()}, 42)
    assert list(listed.owners.items()) == [("smart", "anthropic"), ("openai/gpt-4o", "azure"), ("openai/o1", "openai")]
    assert orjson.loads(models_body(listed)) == {"object": "list", "data": [
        {"id": "smart", "object": "model", "created": 42, "owned_by": "anthropic"},
        {"id": "openai/gpt-4o", "object": "model", "created": 42, "owned_by": "azure"},
        {"id": "openai/o1", "object": "model", "created": 42, "owned_by": "openai"}]}
    assert orjson.loads(model_body(listed, "openai/o1")) == orjson.loads(models_body(listed))["data"][2]
    with pytest.raises(GatewayError) as caught:
        model_body(listed, "openai/o3")
    assert caught.value.status == 404 and caught.value.code == "model_not_found"
