"""The Vertex (Gemini) translators: golden pairs, every request body checked by google-genai's types, hypothesis."""

from __future__ import annotations

import base64
import itertools
import json
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest
from google.genai import types
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorwall_proxy.auth import Credential
from tensorwall_proxy.config import ProviderConfig, Secret
from tensorwall_proxy.errors import GatewayError, ProviderNotConfigured, UnsupportedField, UpstreamError
from tensorwall_proxy.providers import ChatRequest, EmbeddingsRequest
from tensorwall_proxy.providers.ids import detach
from tensorwall_proxy.providers.vertex import (
    PREDICT_BATCH,
    Vertex,
    VertexStream,
    batches,
    classify,
    decode_signature,
    reduce_schema,
    translate_request,
    translate_response,
)
from tensorwall_proxy.sse import SseEvent

GOLDEN = Path(__file__).parent / "golden" / "vertex"
PROVIDER = ProviderConfig(name="vertex", type="vertex", project="p", location="us-central1",
                          base_url="http://h/vertex")
TOKEN = Credential("caller", Secret("ya29.token"))


def check_with_genai(body: dict[str, Any]) -> None:
    """Load a generateContent body into google-genai's own types (extra keys forbidden)."""
    assert set(body) <= {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig"}
    for content in body["contents"]:
        types.Content.model_validate(content)
    if "systemInstruction" in body:
        types.Content.model_validate(body["systemInstruction"])
    for tool in body.get("tools", []):
        types.Tool.model_validate(tool)
    if "toolConfig" in body:
        types.ToolConfig.model_validate(body["toolConfig"])
    if "generationConfig" in body:
        types.GenerationConfig.model_validate(body["generationConfig"])


def test_golden_request_bodies_are_valid_for_genai() -> None:
    paths = sorted(GOLDEN.glob("request_*.json"))
    assert paths
    for path in paths:
        case = json.loads(path.read_text())
        if "body" in case["expect"]:
            check_with_genai(case["expect"]["body"])


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("response_*.json")), ids=lambda p: p.stem)
def test_response_golden(path: Path) -> None:
    case = json.loads(path.read_text())
    types.GenerateContentResponse.model_validate(case["upstream"])  # the fixture itself is a real shape
    assert orjson.loads(translate_response(case["upstream"], case["model"], created=0)) == case["expect"]


def test_function_calls_get_ids_and_carry_the_thought_signature() -> None:
    response = {"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": "c2lnbmF0dXJl"},
        {"functionCall": {"name": "g", "args": {}}}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1}}
    message = orjson.loads(translate_response(response, "gemini-3-pro"))["choices"][0]
    assert message["finish_reason"] == "tool_calls"
    first, second = message["message"]["tool_calls"]
    assert first["function"] == {"name": "f", "arguments": '{"a":1}'}
    assert decode_signature(detach(first["id"])[1]) == "c2lnbmF0dXJl"
    assert detach(second["id"])[1] is None and first["id"] != second["id"]
    # The next turn puts the signature back on the same functionCall part, and names the results.
    body = translate_request(ChatRequest({"model": "m", "messages": [
        {"role": "user", "content": "x"}, message["message"],
        {"role": "tool", "tool_call_id": first["id"], "content": "1"},
        {"role": "tool", "tool_call_id": second["id"], "content": "2"}]}))
    parts = body["contents"][1]["parts"]
    assert parts[0] == {"functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": "c2lnbmF0dXJl"}
    assert "thoughtSignature" not in parts[1]
    assert [p["functionResponse"]["name"] for p in body["contents"][2]["parts"]] == ["f", "g"]
    assert body["contents"][2]["parts"][0]["functionResponse"]["response"] == {"content": "1"}
    check_with_genai(body)


def _stream(events: list[dict[str, Any]], wants_usage: bool) -> list[Any]:
    decoder = VertexStream("vertex", "gemini-2.5-flash", wants_usage)
    out: list[bytes] = []
    for event in events:
        out += decoder.feed(SseEvent(None, orjson.dumps(event)))
    out += decoder.close()
    return ["[DONE]" if raw == b"data: [DONE]\n\n" else orjson.loads(raw[6:]) for raw in out]


def test_stream_text_then_usage() -> None:
    chunks = _stream([
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}], "modelVersion": "gemini-2.5-flash-001"},
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "lo"}]}}]},
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "!"}]}, "finishReason": "STOP"}],
         "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5}},
    ], wants_usage=True)
    deltas = [c["choices"][0]["delta"] for c in chunks[:-2]]
    assert deltas == [{"role": "assistant", "content": ""}, {"content": "Hel"}, {"content": "lo"}, {"content": "!"}, {}]
    assert chunks[-3]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-2]["choices"] == [] and chunks[-2]["usage"]["total_tokens"] == 5
    assert chunks[-1] == "[DONE]"
    assert len({c["id"] for c in chunks[:-1]}) == 1


def test_stream_function_call_arrives_whole_and_two_candidates_interleave() -> None:
    chunks = _stream([
        {"candidates": [{"index": 0, "content": {"parts": [{"functionCall": {"name": "f", "args": {"x": 1}}}]}},
                        {"index": 1, "content": {"parts": [{"text": "b"}]}}]},
        {"candidates": [{"index": 0, "content": {"parts": []}, "finishReason": "STOP"},
                        {"index": 1, "content": {"parts": []}, "finishReason": "STOP"}]},
    ], wants_usage=False)
    by_choice: dict[int, list[Any]] = {}
    for chunk in chunks[:-1]:
        (choice,) = chunk["choices"]
        by_choice.setdefault(choice["index"], []).append(choice)
    call = by_choice[0][1]["delta"]["tool_calls"][0]
    assert call["index"] == 0 and call["function"] == {"name": "f", "arguments": '{"x":1}'} and call["id"]
    assert by_choice[0][-1]["finish_reason"] == "tool_calls"
    assert by_choice[1][1]["delta"] == {"content": "b"} and by_choice[1][-1]["finish_reason"] == "stop"


def test_stream_cut_before_finish_raises_and_errors_are_classified() -> None:
    decoder = VertexStream("vertex", "m", False)
    decoder.feed(SseEvent(None, b'{"candidates":[{"content":{"parts":[{"text":"a"}]}}]}'))
    with pytest.raises(UpstreamError):
        decoder.close()
    with pytest.raises(UpstreamError) as caught:
        decoder.feed(SseEvent(None, b'{"error":{"code":503,"message":"busy","status":"UNAVAILABLE"}}'))
    assert caught.value.kind == "overloaded" and caught.value.status == 503


@pytest.mark.parametrize(("status", "google", "kind", "caller"), [
    (429, "RESOURCE_EXHAUSTED", "rate_limited", 429), (503, "UNAVAILABLE", "overloaded", 503),
    (403, "PERMISSION_DENIED", "auth", 403), (400, "INVALID_ARGUMENT", "bad_request", 400),
    (401, "UNAUTHENTICATED", "auth", 401), (500, "INTERNAL", "server", 502), (504, "DEADLINE_EXCEEDED", "timeout", 504),
    (404, "NOT_FOUND", "bad_request", 404),
])
def test_classify_google_errors(status: int, google: str, kind: str, caller: int) -> None:
    body = orjson.dumps({"error": {"code": status, "message": "m", "status": google}})
    error = classify(PROVIDER, status, {"retry-after": "3"}, body)
    assert (error.kind, error.status, error.code, error.message) == (kind, caller, google, "m")
    assert error.retry_after == 3


def test_reduce_schema_keeps_only_what_gemini_accepts() -> None:
    schema = {"$schema": "x", "type": "object", "additionalProperties": False, "title": "T",
              "properties": {"tags": {"type": "array", "items": {"$ref": "#/definitions/Tag"}},
                             "n": {"type": ["number", "null"], "exclusiveMinimum": 0},
                             "mode": {"const": "fast"}, "both": {"allOf": [{"type": "string"}]}},
              "definitions": {"Tag": {"type": "string", "pattern": "^[a-z]+$", "examples": ["a"]}},
              "patternProperties": {"^x": {}}}
    assert reduce_schema(schema) == {
        "type": "object", "title": "T",
        "properties": {"tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}},
                       "n": {"nullable": True, "type": "number"}, "mode": {"enum": ["fast"]}, "both": {}}}
    types.Schema.model_validate(reduce_schema(schema))


def test_without_a_project_the_provider_is_not_configured() -> None:
    provider = ProviderConfig(name="vertex", type="vertex", unconfigured="set GOOGLE_CLOUD_PROJECT")
    with pytest.raises(ProviderNotConfigured):
        Vertex().build_request(ChatRequest({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
                               provider, "gemini", TOKEN)
    call = Vertex().build_request(ChatRequest({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
                                  provider, "gemini", Credential("ambient", Secret("t"), project="from-adc"))
    assert "/projects/from-adc/" in str(call.url)


def test_tool_result_without_its_call_moves_on() -> None:
    with pytest.raises(UnsupportedField) as caught:
        translate_request(ChatRequest({"model": "m", "messages": [
            {"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "nope", "content": "1"}]}))
    assert caught.value.param == "messages[1].tool_call_id"


def test_embeddings_batches_and_fan_out() -> None:
    texts = [f"text {i}" for i in range(PREDICT_BATCH * 2 + 10)]
    predict = Vertex().build_embeddings_request(EmbeddingsRequest({"model": "m", "input": texts, "dimensions": 8}),
                                                PROVIDER, "text-embedding-005", TOKEN)
    assert [len(orjson.loads(c.body)["instances"]) for c in predict] == [250, 250, 10]
    assert str(predict[0].url).endswith("/models/text-embedding-005:predict")
    assert orjson.loads(predict[0].body)["parameters"] == {"outputDimensionality": 8}
    gemini = Vertex().build_embeddings_request(EmbeddingsRequest({"model": "m", "input": ["a", "b", "c"]}),
                                               PROVIDER, "gemini-embedding-001", TOKEN)
    assert len(gemini) == 3 and str(gemini[0].url).endswith(":embedContent")
    assert orjson.loads(gemini[1].body) == {"content": {"parts": [{"text": "b"}]}}
    assert [len(b) for b in batches(["x" * 100_000, "y", "z"])] == [1, 2]  # the token bound splits too
    with pytest.raises(UnsupportedField):
        Vertex().build_embeddings_request(EmbeddingsRequest({"model": "m", "input": [[1, 2]]}), PROVIDER, "t", TOKEN)


def test_embeddings_responses_join_in_order_and_pack_base64() -> None:
    bodies = [orjson.dumps({"predictions": [{"embeddings": {"values": [0.5, 1.0], "statistics": {"token_count": 2}}},
                                            {"embeddings": {"values": [0.25, -1.0], "statistics": {"token_count": 3}}}]}),
              orjson.dumps({"embedding": {"values": [2.0, 4.0]}, "usageMetadata": {"promptTokenCount": 1}})]
    out = orjson.loads(Vertex().parse_embeddings_response(
        EmbeddingsRequest({"model": "vertex/text-embedding-005", "input": ["a", "b", "c"]}, base64=True),
        PROVIDER, bodies))
    assert [d["index"] for d in out["data"]] == [0, 1, 2]
    assert struct.unpack("<2f", base64.b64decode(out["data"][1]["embedding"])) == (0.25, -1.0)
    assert out["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    assert out["model"] == "vertex/text-embedding-005"


# --- hypothesis -----------------------------------------------------------------------------------

_text = st.text(max_size=12)
_call = st.fixed_dictionaries({"id": st.sampled_from(["c1", "c2", "c3"]), "type": st.just("function"),
                               "function": st.fixed_dictionaries({"name": st.sampled_from(["f", "g"]),
                                                                  "arguments": st.sampled_from(["{}", '{"a":1}', "x"])})})
_message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user"]),
                           "content": st.one_of(_text, st.lists(st.one_of(
                               st.fixed_dictionaries({"type": st.just("text"), "text": _text}),
                               st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.fixed_dictionaries(
                                   {"url": st.sampled_from(["data:image/png;base64,AAAA", "gs://b/o.jpg",
                                                            "https://x/y.webp"])})})), max_size=3))}),
    st.fixed_dictionaries({"role": st.just("assistant"), "content": st.one_of(st.none(), _text)},
                          optional={"tool_calls": st.lists(_call, min_size=1, max_size=2)}),
)
_body = st.fixed_dictionaries(
    {"model": st.just("m"), "messages": st.lists(_message, min_size=1, max_size=6)},
    optional={"temperature": st.floats(0, 2), "top_p": st.floats(0, 1), "max_tokens": st.integers(1, 8192),
              "n": st.integers(1, 4), "seed": st.integers(0, 2**31), "stop": st.one_of(_text, st.lists(_text, max_size=4)),
              "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2),
              "reasoning_effort": st.sampled_from(["none", "low", "medium", "high"]),
              "tool_choice": st.sampled_from(["auto", "none", "required"]),
              "tools": st.just([{"type": "function", "function": {"name": "f", "parameters": {
                  "type": "object", "properties": {"a": {"type": ["integer", "null"]}}, "additionalProperties": False}}}]),
              "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"},
                                                  {"type": "json_schema", "json_schema": {"name": "x", "schema": {
                                                      "type": "object", "properties": {"k": {"type": "string"}},
                                                      "additionalProperties": False}}}])},
)


@settings(max_examples=200, deadline=None)
@given(body=_body)
def test_any_valid_request_gives_a_body_genai_accepts(body: dict[str, Any]) -> None:
    try:
        out = translate_request(ChatRequest(body))
    except UnsupportedField as exc:
        assert exc.param == "messages"  # only "nothing to send"
        return
    check_with_genai(out)
    roles = [c["role"] for c in out["contents"]]
    assert all(r in ("user", "model") for r in roles)
    assert all(a != b for a, b in itertools.pairwise(roles))


_LOOKUP = [{"type": "function", "function": {"name": "2fa_lookup", "parameters": {
    "type": "object", "properties": {"user": {"type": "string"}}}}}]


def test_function_names_gemini_refuses_are_sent_prefixed_everywhere_and_come_back_as_they_were() -> None:
    body = translate_request(ChatRequest({"model": "m", "tools": [*_LOOKUP, {"type": "function", "function": {
        "name": "tw.own"}}], "tool_choice": {"type": "function", "function": {"name": "2fa_lookup"}}, "messages": [
        {"role": "user", "content": "Code?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "2fa_lookup", "arguments": "{}"}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "123456"},
        {"role": "tool", "tool_call_id": "call_2", "content": "sunny"}]}))
    check_with_genai(body)
    assert [d["name"] for d in body["tools"][0]["functionDeclarations"]] == ["tw.2fa_lookup", "tw.tw.own"]
    assert body["toolConfig"]["functionCallingConfig"]["allowedFunctionNames"] == ["tw.2fa_lookup"]
    calls = [p["functionCall"]["name"] for p in body["contents"][1]["parts"]]
    results = [p["functionResponse"]["name"] for p in body["contents"][2]["parts"]]
    assert calls == results == ["tw.2fa_lookup", "get_weather"]

    answer = {"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "tw.2fa_lookup", "args": {}}}, {"functionCall": {"name": "tw.tw.own", "args": {}}},
        {"functionCall": {"name": "get_weather", "args": {}}}]}, "finishReason": "STOP"}]}
    message = orjson.loads(translate_response(answer, "m"))["choices"][0]["message"]
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["2fa_lookup", "tw.own", "get_weather"]
    stream = VertexStream("vertex", "m", False)
    chunks = stream.feed(SseEvent("", orjson.dumps(answer)))
    names = [c["function"]["name"] for raw in chunks for choice in orjson.loads(raw[6:])["choices"]
             for c in choice["delta"].get("tool_calls", [])]
    assert names == ["2fa_lookup", "tw.own", "get_weather"]


@pytest.mark.parametrize("name", ["9" * 62, "has space", "naïve"])
def test_a_function_name_gemini_cannot_take_in_any_form_is_a_400_naming_the_tool(name: str) -> None:
    with pytest.raises(GatewayError) as caught:
        translate_request(ChatRequest({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                       "tools": [{"type": "function", "function": {"name": name}}]}))
    assert caught.value.status == 400 and caught.value.param == "tools[0].function.name"


def test_streamed_usage_is_the_whole_answers_when_the_last_event_carries_part_of_it() -> None:
    counts = {"promptTokenCount": 4, "candidatesTokenCount": 2, "thoughtsTokenCount": 3, "cachedContentTokenCount": 1}
    text = {"content": {"role": "model", "parts": [{"text": "Hi"}]}}
    whole = orjson.loads(translate_response({"candidates": [{**text, "finishReason": "STOP"}],
                                             "usageMetadata": counts}, "m"))["usage"]
    stream = VertexStream("vertex", "m", True)
    stream.feed(SseEvent("", orjson.dumps({"candidates": [text], "usageMetadata": counts})))
    stream.feed(SseEvent("", orjson.dumps({"candidates": [{"finishReason": "STOP"}],
                                           "usageMetadata": {"trafficType": "ON_DEMAND"}})))
    end = stream.close()
    assert orjson.loads(end[0][6:])["usage"] == whole == stream.usage
    assert whole["prompt_tokens_details"] == {"cached_tokens": 1} and "cache_creation_input_tokens" not in whole
