"""Every translator's request side, and the OpenAI-style types' streams, from golden JSON fixtures.

One battery over every type: ``golden/<type>/request_*.json`` (caller body in → upstream call out)
and ``golden/<type>/stream_*.json`` (upstream events in → client events out), plus hypothesis for
"never raises on a valid OpenAI request, always sends valid JSON". Pure: no server, no loop.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorwall_proxy.auth import Credential
from tensorwall_proxy.config import ProviderConfig, Secret
from tensorwall_proxy.errors import UnsupportedField, UpstreamError
from tensorwall_proxy.providers import PROVIDERS, ChatRequest, EmbeddingsRequest, path_segment, provider_for
from tensorwall_proxy.providers.shapes import floats_to_base64
from tensorwall_proxy.sse import SseEvent

GOLDEN = Path(__file__).parent / "golden"
CALLER = Credential("caller", Secret("sk-test"))


OPENAI_STYLE = ("openai", "groq", "mistral", "lmstudio", "ollama", "azure")


def _fixtures(prefix: str, types: tuple[str, ...] | None = None) -> list[Path]:
    return sorted(p for p in GOLDEN.glob(f"*/{prefix}_*.json") if types is None or p.parent.name in types)


def _provider(settings: dict[str, Any]) -> ProviderConfig:
    return ProviderConfig(**settings)


def _request(body: dict[str, Any]) -> ChatRequest:
    options = body.get("stream_options") or {}
    return ChatRequest(body, stream=body.get("stream") is True, wants_usage=options.get("include_usage") is True)


def _tool_ids(body: dict[str, Any]) -> list[str]:
    ids = []
    for message in body["messages"]:
        ids += [call["id"] for call in message.get("tool_calls") or []]
        if message.get("tool_call_id"):
            ids.append(message["tool_call_id"])
    return ids


@pytest.mark.parametrize("path", _fixtures("request"), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_request_golden(path: Path) -> None:
    case = json.loads(path.read_text())
    provider = _provider(case["provider"])
    credential = Credential("none") if case.get("credential") == "none" else CALLER
    impl = provider_for(provider.type)
    original = json.loads(json.dumps(case["request"]))
    expect = case["expect"]
    if "unsupported" in expect:
        with pytest.raises(UnsupportedField) as caught:
            impl.build_request(_request(case["request"]), provider, case["model"], credential)
        assert caught.value.param == expect["unsupported"]
        assert caught.value.status == 400
        return
    call = impl.build_request(_request(case["request"]), provider, case["model"], credential)
    assert case["request"] == original, "a translator must not mutate the caller's body"
    assert str(call.url) == expect["url"]
    assert call.method == "POST"
    assert call.headers.get("Authorization") == expect.get("authorization")
    if "api-key" in expect:
        assert call.headers.get("api-key") == expect["api-key"]
    for name, value in expect.get("headers", {}).items():
        assert call.headers.get(name) == value, name
    body = orjson.loads(call.body)
    if "body" in expect:
        assert body == expect["body"]
    if expect.get("same_tool_ids"):
        ids = _tool_ids(body)
        assert len(set(ids)) == 1 and ids[0] != _tool_ids(case["request"])[0]
        if "max_tool_id_length" in expect:
            assert len(ids[0]) <= expect["max_tool_id_length"]
        if "tool_id_regex" in expect:
            assert re.fullmatch(expect["tool_id_regex"], ids[0])


def _encode_event(event: Any) -> bytes:
    return event.encode() if isinstance(event, str) else orjson.dumps(event)


@pytest.mark.parametrize("path", _fixtures("stream", OPENAI_STYLE), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_stream_golden(path: Path) -> None:
    case = json.loads(path.read_text())
    impl = PROVIDERS[case["type"]]
    provider = _provider({"name": case["type"], "type": case["type"], "api_version": "2024-10-21"})
    request = ChatRequest({"model": "m", "messages": [], "stream": True}, stream=True, wants_usage=case["wants_usage"])
    decoder = impl.stream_decoder(request, provider)
    events = [_encode_event(e) for e in case["events"]]
    out: list[bytes] = []
    visible_at = None
    for i, data in enumerate(events):
        out += decoder.feed(SseEvent(None, data))
        if decoder.visible and visible_at is None:
            visible_at = i
    out += decoder.close()
    assert decoder.done
    assert visible_at == case["expect"]["visible_after"]
    expected: list[bytes] = []
    for item in case["expect"]["out"]:
        if item == "[DONE]":
            expected.append(b"data: [DONE]\n\n")
        elif isinstance(item, int):
            expected.append(b"data: " + events[item] + b"\n\n")  # relayed as the upstream's own bytes
        elif "replace" in item:
            chunk = json.loads(events[item["replace"]])
            chunk["usage"] = item["usage"]
            expected.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
        else:
            last = json.loads(events[-2])
            usage_chunk = {"id": last["id"], "object": "chat.completion.chunk", "created": last["created"],
                           "model": last["model"], "choices": [], "usage": item["usage_chunk"]}
            expected.append(b"data: " + orjson.dumps(usage_chunk) + b"\n\n")
    assert out == expected
    assert decoder.usage == case["expect"]["usage"]


def _relayed(case: dict[str, Any], reads: list[bytes], *, plain_path: bool) -> tuple[bytes, Any, bool, bool]:
    """What the relay's stream loop sends for these reads: the plain split first (as the relay
    does when the framer holds nothing), the framer and feed() for the rest; or feed() alone."""
    impl = PROVIDERS[case["type"]]
    provider = _provider({"name": case["type"], "type": case["type"], "api_version": "2024-10-21"})
    decoder = impl.stream_decoder(ChatRequest({"model": "m", "messages": [], "stream": True}, stream=True,
                                              wants_usage=case["wants_usage"]), provider)
    framer = impl.framer()
    out: list[bytes] = []
    visible_before_done = False
    for chunk in reads:
        if plain_path and framer.idle:
            plain, chunk = decoder.split_plain(chunk)
            out.append(plain)
            visible_before_done = visible_before_done or decoder.visible
            if not chunk:
                continue
        for event in framer.feed(chunk):
            out += decoder.feed(event)
            visible_before_done = visible_before_done or (decoder.visible and not decoder.done)
            if decoder.done:
                break
        if decoder.done:
            break
    return b"".join(out), decoder.usage, decoder.done, visible_before_done


@pytest.mark.parametrize("path", _fixtures("stream", OPENAI_STYLE), ids=lambda p: f"{p.parent.name}/{p.stem}")
@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_plain_events_pass_unchanged_however_the_reads_fall(path: Path, cuts: list[int]) -> None:
    """The plain split sends exactly the bytes event-by-event relaying sends, counts the same usage,
    and commits as visibly, for any way the upstream's bytes are cut into reads."""
    case = json.loads(path.read_text())
    body = b"".join(b"data: " + _encode_event(e) + b"\n\n" for e in case["events"])
    edges = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    reads = [body[a:b] for a, b in itertools.pairwise(edges) if b > a]
    assert _relayed(case, reads, plain_path=True) == _relayed(case, reads, plain_path=False)


def test_content_past_the_commit_point_is_split_off_whole() -> None:
    decoder = PROVIDERS["openai"].stream_decoder(ChatRequest({}, stream=True), _provider({"name": "p", "type": "openai"}))
    role = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"usage":null}\n\n'
    text = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}\n\n'
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n'
    assert decoder.split_plain(role) == (role, b"")
    assert not decoder.visible  # a role alone is not the commit point
    assert decoder.split_plain(text + text + usage + b"data: [DONE]\n\n") == (text + text, usage + b"data: [DONE]\n\n")
    assert decoder.visible
    assert decoder.split_plain(text + text[:10]) == (text, text[:10])  # a partial event stays for the framer
    for odd in (b": keep-alive\n\n" + text, b"event: x\n" + text, text.replace(b"\n\n", b"\r\n\r\n"),
                b'data: {"error":{"message":"boom"}}\n\n'):
        assert decoder.split_plain(odd) == (b"", odd)


@pytest.mark.parametrize("provider_type", ["openai", "groq", "mistral", "lmstudio", "ollama", "azure"])
def test_stream_cut_before_done_raises(provider_type: str) -> None:
    decoder = PROVIDERS[provider_type].stream_decoder(ChatRequest({}, stream=True),
                                                     _provider({"name": "p", "type": provider_type}))
    decoder.feed(SseEvent(None, b'{"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}'))
    with pytest.raises(UpstreamError) as caught:
        decoder.close()
    assert caught.value.kind == "server" and caught.value.falls_back


@pytest.mark.parametrize("data", [b"not json", b"[1]", b'{"error": {"message": "boom", "type": "server_error"}}'])
def test_stream_bad_or_error_events_raise(data: bytes) -> None:
    decoder = PROVIDERS["openai"].stream_decoder(ChatRequest({}, stream=True),
                                                 _provider({"name": "openai", "type": "openai"}))
    with pytest.raises(UpstreamError) as caught:
        decoder.feed(SseEvent(None, data))
    assert caught.value.status == 502
    if b"boom" in data:
        assert caught.value.message == "boom"


@pytest.mark.parametrize(("status", "headers", "body", "kind", "caller_status", "message"), [
    (429, {"retry-after": "7"}, b'{"error":{"message":"slow down","type":"rate_limit_exceeded","code":"rate_limit_exceeded"}}',
     "rate_limited", 429, "slow down"),
    (500, {}, b'{"error":{"message":"oops","type":"server_error"}}', "server", 502, "oops"),
    (503, {}, b"<html>busy</html>", "overloaded", 503, "Upstream 'p' answered HTTP 503: <html>busy</html>"),
    (400, {}, b'{"object":"error","message":"Tool call id was x","type":"invalid_request_error","code":"3280"}',
     "bad_request", 400, "Tool call id was x"),
    (422, {}, b'{"detail":[{"loc":["body","stream_options"],"msg":"Extra inputs are not permitted"}]}',
     "bad_request", 422, "Extra inputs are not permitted: stream_options"),
    (401, {}, b'{"error":{"message":"bad key","type":"invalid_request_error","code":"invalid_api_key"}}',
     "auth", 401, "bad key"),
    (408, {}, b"", "timeout", 504, "Upstream 'p' answered HTTP 408."),
    (404, {}, b'{"error":"model \\"x\\" not found"}', "bad_request", 404, 'model "x" not found'),
])
def test_classify_error(status: int, headers: dict[str, str], body: bytes, kind: str, caller_status: int,
                        message: str) -> None:
    error = PROVIDERS["openai"].classify_error(_provider({"name": "p", "type": "openai"}), status, headers, body)
    assert error.kind == kind
    assert error.status == caller_status
    assert error.message == message
    assert error.falls_back == (kind in ("rate_limited", "server", "overloaded", "timeout"))
    if status == 429:
        assert error.retry_after == 7


def test_embeddings_floats_become_base64_little_endian_float32() -> None:
    values = [0.5, -1.0, 0.25, 3.0]
    packed = base64.b64decode(floats_to_base64(values))
    assert list(struct.unpack("<4f", packed)) == values
    impl = PROVIDERS["ollama"]
    provider = _provider({"name": "ollama", "type": "ollama", "base_url": "http://h:11434"})
    req = EmbeddingsRequest({"model": "e", "input": "x", "encoding_format": "base64"}, base64=True)
    (call,) = impl.build_embeddings_request(req, provider, "nomic", Credential("none"))
    assert "encoding_format" not in orjson.loads(call.body)
    assert str(call.url) == "http://h:11434/v1/embeddings"
    body = orjson.dumps({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": values}]})
    out = orjson.loads(impl.parse_embeddings_response(req, provider, [body]))
    assert out["data"][0]["embedding"] == floats_to_base64(values)


def test_mistral_embeddings_take_output_dimension() -> None:
    provider = _provider({"name": "mistral", "type": "mistral", "base_url": "https://api.mistral.ai/v1"})
    req = EmbeddingsRequest({"model": "mistral-embed", "input": ["a"], "dimensions": 256, "user": "u"})
    (call,) = PROVIDERS["mistral"].build_embeddings_request(req, provider, "mistral-embed", CALLER)
    body = orjson.loads(call.body)
    assert body == {"model": "mistral-embed", "input": ["a"], "output_dimension": 256}


@pytest.mark.parametrize(("value", "expected"), [
    ("gpt-4o", "gpt-4o"), ("a/b", "a%2Fb"), ("x?y#z", "x%3Fy%23z"), ("a b", "a%20b"), ("ü", "%C3%BC"),
    ("model:v1", "model%3Av1"), ("%2e%2e", "%252e%252e"),
])
def test_path_segment_encodes_one_segment(value: str, expected: str) -> None:
    assert path_segment(value, "model id") == expected


@pytest.mark.parametrize("value", ["", ".", "..", "a\r\nb", "a\x00", "x" * 513])
def test_path_segment_refuses(value: str) -> None:
    with pytest.raises(Exception) as caught:
        path_segment(value, "model id")
    assert getattr(caught.value, "status", None) == 400


# --- hypothesis: any valid OpenAI request ---------------------------------------------------------

_text = st.text(max_size=20)
_content = st.one_of(_text, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": _text}), max_size=3),
                     st.lists(st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.fixed_dictionaries(
                         {"url": st.sampled_from(["https://x/y.png", "data:image/png;base64,AAAA"])})}), max_size=2))
_tool_call = st.fixed_dictionaries({"id": _text.filter(bool), "type": st.just("function"),
                                    "function": st.fixed_dictionaries({"name": st.just("f"), "arguments": st.just("{}")})})
_message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user"]), "content": _content},
                          optional={"name": _text}),
    st.fixed_dictionaries({"role": st.just("assistant"), "content": st.one_of(st.none(), _text)},
                          optional={"tool_calls": st.lists(_tool_call, min_size=1, max_size=3)}),
    st.fixed_dictionaries({"role": st.just("tool"), "tool_call_id": _text.filter(bool), "content": _text}),
)
_request_body = st.fixed_dictionaries(
    {"model": st.just("m"), "messages": st.lists(_message, min_size=1, max_size=6)},
    optional={
        "stream": st.booleans(), "n": st.integers(1, 3), "temperature": st.floats(0, 2),
        "max_tokens": st.integers(1, 4096), "max_completion_tokens": st.integers(1, 4096),
        "seed": st.integers(0, 2**31), "user": _text, "logprobs": st.booleans(), "top_logprobs": st.integers(0, 5),
        "logit_bias": st.just({"50256": -100}), "stop": st.one_of(_text, st.lists(_text, max_size=4)),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "parallel_tool_calls": st.booleans(), "store": st.booleans(), "metadata": st.just({"k": "v"}),
        "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}]),
    },
)
_ID_RULES = {"openai": r"[A-Za-z0-9_-]{1,40}", "mistral": r"[A-Za-z0-9]{9}"}


@settings(max_examples=150, deadline=None)
@given(body=_request_body, provider_type=st.sampled_from(["openai", "groq", "mistral", "lmstudio", "ollama", "azure"]))
def test_never_raises_on_a_valid_request_and_sends_valid_json(body: dict[str, Any], provider_type: str) -> None:
    if body.get("stream") is not True:
        body.pop("stream_options", None)
    provider = _provider({"name": provider_type, "type": provider_type, "base_url": "http://h/v1",
                          "endpoint": "http://h", "api_version": "2024-10-21"})
    try:
        call = PROVIDERS[provider_type].build_request(_request(body), provider, "upstream-model", CALLER)
    except UnsupportedField as exc:
        assert exc.param in ("n", "logprobs", "top_logprobs")
        return
    sent = orjson.loads(call.body)
    assert isinstance(sent["messages"], list) and len(sent["messages"]) == len(body["messages"])
    if provider_type == "mistral":
        assert "stream_options" not in sent
        rule = _ID_RULES["mistral"]
    else:
        rule = _ID_RULES["openai"]
        if body.get("stream") is True:
            assert sent["stream_options"]["include_usage"] is True
    for tool_id in _tool_ids(sent):
        assert re.fullmatch(rule, tool_id), tool_id


# --- the native half: where each dialect goes, the body as the caller sent it -------------------------

NATIVE_BODY = {"model": "public", "input": [{"role": "user", "content": "hi"}], "x_unknown": {"a": [1, 2.5]},
               "stream": True}


@pytest.mark.parametrize(("settings", "dialect", "url"), [
    ({"name": "openai", "type": "openai", "base_url": "https://api.openai.com/v1"}, "responses",
     "https://api.openai.com/v1/responses"),
    ({"name": "g", "type": "groq", "base_url": "https://api.groq.com/openai/v1", "dialects": ("chat", "responses")},
     "responses", "https://api.groq.com/openai/v1/responses"),
    ({"name": "o", "type": "ollama", "base_url": "http://localhost:11434", "dialects": ("chat", "completions")},
     "completions", "http://localhost:11434/v1/completions"),
    ({"name": "az", "type": "azure", "endpoint": "https://res.openai.azure.com", "api_version": "2024-10-21"},
     "responses", "https://res.openai.azure.com/openai/v1/responses"),
])
def test_a_native_call_is_the_callers_body_at_the_dialects_path(settings: dict[str, Any], dialect: str,
                                                                url: str) -> None:
    provider = _provider(settings)
    impl = provider_for(provider.type)
    assert impl.native(dialect, provider, "upstream-model")
    req = ChatRequest({"model": "public", "messages": []}, stream=True, native=NATIVE_BODY)
    call = impl.build_native_request(dialect, req, provider, "upstream-model", CALLER)
    assert str(call.url) == url and call.stream and call.method == "POST"
    assert orjson.loads(call.body) == {**NATIVE_BODY, "model": "upstream-model"}
    if provider.type == "azure":
        assert call.headers["api-key"] == "sk-test" and "Authorization" not in call.headers
    else:
        assert call.headers["Authorization"] == "Bearer sk-test"


@pytest.mark.parametrize(("settings", "dialect"), [
    ({"name": "g", "type": "groq", "base_url": "https://g/v1"}, "responses"),  # not declared
    ({"name": "openai", "type": "openai", "base_url": "https://o/v1"}, "completions"),  # not by default
    ({"name": "openai", "type": "openai", "base_url": "https://o/v1", "dialects": ("chat",)}, "responses"),
    ({"name": "az", "type": "azure", "endpoint": "https://a"}, "messages"),
    ({"name": "an", "type": "anthropic", "base_url": "https://a/v1"}, "responses"),
])
def test_a_dialect_the_provider_does_not_speak_is_translated(settings: dict[str, Any], dialect: str) -> None:
    provider = _provider(settings)
    assert not provider_for(provider.type).native(dialect, provider, "m")
    if provider.type == "anthropic":  # it speaks Messages, and nothing else natively
        assert provider_for("anthropic").native("messages", provider, "m")


def test_a_native_legacy_completion_answer_gives_its_usage_and_id() -> None:
    provider = _provider({"name": "o", "type": "ollama", "base_url": "http://x"})
    answer = provider_for("ollama").read_native_answer("completions", provider, orjson.dumps(
        {"id": "cmpl-1", "object": "text_completion", "choices": [{"text": "hi"}],
         "usage": {"prompt_tokens": 1, "completion_tokens": 2}}))
    assert answer.response_id == "cmpl-1" and answer.usage == {"prompt_tokens": 1, "completion_tokens": 2}
    with pytest.raises(ValueError):
        provider_for("ollama").read_native_answer("completions", provider, b'{"id": 1}')
    decoder = provider_for("ollama").native_decoder("completions", ChatRequest({}), provider)
    decoder.feed(SseEvent(None, b'{"choices":[{"text":"","index":0,"finish_reason":null}]}'))
    assert not decoder.visible
    decoder.feed(SseEvent(None, b'{"choices":[{"text":"Hi","index":0,"finish_reason":null}]}'))
    assert decoder.visible
