"""The Bedrock translators: Converse bodies checked by botocore's ParamValidator, responses, stream events."""

from __future__ import annotations

import base64
import copy
import zlib
from typing import Any

import botocore.session
import orjson
import pytest
from botocore.validate import ParamValidator
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorwall_proxy.auth import Credential
from tensorwall_proxy.config import ProviderConfig, Secret
from tensorwall_proxy.errors import GatewayError, UnsupportedField, UpstreamError
from tensorwall_proxy.providers import ChatRequest, EmbeddingsRequest, UpstreamCall
from tensorwall_proxy.providers.bedrock import (
    Bedrock,
    BedrockStream,
    classify,
    decode_reasoning,
    translate_request,
    translate_response,
)
from tensorwall_proxy.providers.ids import attach, detach
from tensorwall_proxy.sse import SseEvent

PROVIDER = ProviderConfig(name="bedrock", type="bedrock", region="us-east-1")
CLAUDE = "anthropic.claude-3-7-sonnet-20250219-v1:0"
API_KEY = Credential("caller", Secret("bedrock-api-key"))
_SERVICE = botocore.session.get_session().get_service_model("bedrock-runtime")


def check_with_botocore(body: dict[str, Any], operation: str = "Converse") -> None:
    """Validate a Converse body against the bedrock-runtime service model, as botocore would."""
    params = copy.deepcopy(body)
    params["modelId"] = CLAUDE
    for message in params["messages"]:
        for block in message["content"]:
            image = block.get("image")
            if image:  # JSON carries blobs as base64; botocore's shapes take raw bytes
                image["source"]["bytes"] = base64.b64decode(image["source"]["bytes"])
    report = ParamValidator().validate(params, _SERVICE.operation_model(operation).input_shape)
    assert not report.has_errors(), report.generate_report()


def _request(body: dict[str, Any], model: str = CLAUDE) -> dict[str, Any]:
    return translate_request(ChatRequest(body, stream=body.get("stream") is True), PROVIDER, model)


def test_basic_request() -> None:
    body = _request({"model": "bedrock/x", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
        {"role": "user", "content": [{"type": "text", "text": "there"}]}],
        "temperature": 1.6, "top_p": 0.9, "max_tokens": 300, "stop": "END", "top_k": 40, "seed": 3, "user": "u"})
    assert body == {
        "messages": [{"role": "user", "content": [{"text": "Hello"}, {"text": "there"}]}],
        "system": [{"text": "Be brief."}],
        "inferenceConfig": {"maxTokens": 300, "temperature": 1.0, "topP": 0.9, "stopSequences": ["END"]},
        "additionalModelRequestFields": {"top_k": 40},
    }
    check_with_botocore(body)


def test_tools_images_and_results() -> None:
    body = _request({"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "what and where?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abc~weird id!", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_abc~weird id!", "content": "18 C"},
        {"role": "user", "content": "and tomorrow?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}], "tool_choice": "required"})
    messages = body["messages"]
    assert messages[0]["content"][1] == {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}
    tool_use = messages[1]["content"][0]["toolUse"]
    assert tool_use["input"] == {"city": "Paris"}
    result = messages[2]["content"][0]["toolResult"]
    assert result["toolUseId"] == tool_use["toolUseId"] and len(tool_use["toolUseId"]) <= 64
    # Bedrock refuses text beside tool results: the follow-up rides in the result's content.
    assert result["content"] == [{"text": "18 C"}, {"text": "and tomorrow?"}]
    assert len(messages) == 3
    assert body["toolConfig"]["toolChoice"] == {"any": {}}
    assert body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["properties"] == {"city": {"type": "string"}}
    check_with_botocore(body)


def test_tool_choice_none_without_tool_history_drops_the_tools() -> None:
    body = _request({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "none",
                     "tools": [{"type": "function", "function": {"name": "f"}}]})
    assert "toolConfig" not in body


def test_https_images_are_refused_clearly() -> None:
    with pytest.raises(UnsupportedField) as caught:
        _request({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]})
    assert "bytes" in caught.value.message and caught.value.status == 400


def test_json_schema_is_a_string_in_output_config() -> None:
    body = _request({"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {
        "type": "json_schema", "json_schema": {"name": "city", "schema": {"type": "object"}}}})
    schema = body["outputConfig"]["textFormat"]["structure"]["jsonSchema"]
    assert schema == {"schema": '{"type":"object"}', "name": "city"}
    check_with_botocore(body)


def test_reasoning_for_claude_only_and_carried_back() -> None:
    assert _request({"model": "m", "reasoning_effort": "high", "messages": [{"role": "user", "content": "x"}]},
                    model="amazon.nova-pro-v1:0").get("additionalModelRequestFields") is None
    body = _request({"model": "m", "reasoning_effort": "low", "max_tokens": 500, "temperature": 0.3,
                     "messages": [{"role": "user", "content": "x"}]})
    assert body["additionalModelRequestFields"] == {"thinking": {"type": "enabled", "budget_tokens": 1024}}
    assert body["inferenceConfig"] == {"maxTokens": 1524}
    response = {"output": {"message": {"role": "assistant", "content": [
        {"reasoningContent": {"reasoningText": {"text": "Need weather.", "signature": "sig-1"}}},
        {"toolUse": {"toolUseId": "tooluse_A", "name": "f", "input": {"a": 1}}}]}},
        "stopReason": "tool_use", "usage": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7}, "metrics": {"latencyMs": 5}}
    message = orjson.loads(translate_response(response, "bedrock/x"))["choices"][0]["message"]
    assert message["reasoning_content"] == "Need weather."
    call = message["tool_calls"][0]
    assert detach(call["id"])[0] == "tooluse_A"
    assert decode_reasoning(detach(call["id"])[1]) == [{"reasoningText": {"text": "Need weather.", "signature": "sig-1"}}]
    follow_up = _request({"model": "m", "reasoning_effort": "low", "messages": [
        {"role": "user", "content": "x"}, message, {"role": "tool", "tool_call_id": call["id"], "content": "ok"}],
        "tools": [{"type": "function", "function": {"name": "f"}}]})
    assert follow_up["messages"][1]["content"][0] == {
        "reasoningContent": {"reasoningText": {"text": "Need weather.", "signature": "sig-1"}}}
    assert follow_up["messages"][1]["content"][1]["toolUse"]["toolUseId"] == "tooluse_A"
    assert "thinking" in follow_up["additionalModelRequestFields"]
    check_with_botocore(follow_up)
    lost = _request({"model": "m", "reasoning_effort": "low", "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]})
    assert "additionalModelRequestFields" not in lost


@pytest.mark.parametrize(("reason", "finish"), [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
                                                ("tool_use", "tool_calls"), ("guardrail_intervened", "content_filter"),
                                                ("content_filtered", "content_filter")])
def test_response_finish_reasons_and_usage(reason: str, finish: str) -> None:
    response = {"output": {"message": {"role": "assistant", "content": [{"text": "Hi"}]}}, "stopReason": reason,
                "usage": {"inputTokens": 10, "outputTokens": 2, "totalTokens": 112, "cacheReadInputTokens": 90,
                          "cacheWriteInputTokens": 10}, "metrics": {"latencyMs": 1}}
    out = orjson.loads(translate_response(response, "bedrock/claude", created=0))
    assert out["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": "Hi", "refusal": None},
                                 "logprobs": None, "finish_reason": finish}
    assert out["usage"] == {"prompt_tokens": 110, "completion_tokens": 2, "total_tokens": 112,
                            "prompt_tokens_details": {"cached_tokens": 90}, "cache_creation_input_tokens": 10}
    assert out["model"] == "bedrock/claude" and out["object"] == "chat.completion"


def _stream(events: list[tuple[str, dict[str, Any]]], wants_usage: bool = True) -> list[Any]:
    decoder = BedrockStream("bedrock", "bedrock/claude", wants_usage)
    out: list[bytes] = []
    for name, payload in events:
        out += decoder.feed(SseEvent(name, orjson.dumps(payload)))
    out += decoder.close()
    return ["[DONE]" if raw == b"data: [DONE]\n\n" else orjson.loads(raw[6:]) for raw in out]


def test_stream_text_without_block_start_then_tool_then_usage_after_stop() -> None:
    chunks = _stream([
        ("messageStart", {"role": "assistant"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Checking"}, "p": "abcdef"}),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        ("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_1", "name": "f"}}}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"ci'}}}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": 'ty":"Paris"}'}}}),
        ("contentBlockStop", {"contentBlockIndex": 1}),
        ("contentBlockStart", {"contentBlockIndex": 2, "start": {"toolUse": {"toolUseId": "tooluse_2", "name": "g"}}}),
        ("contentBlockStop", {"contentBlockIndex": 2}),
        ("messageStop", {"stopReason": "tool_use"}),
        ("metadata", {"usage": {"inputTokens": 5, "outputTokens": 6, "totalTokens": 11}, "metrics": {"latencyMs": 9}}),
    ])
    deltas = [c["choices"][0]["delta"] for c in chunks[:-2]]
    assert deltas == [
        {"role": "assistant", "content": ""}, {"content": "Checking"},
        {"tool_calls": [{"index": 0, "id": "tooluse_1", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": 'ty":"Paris"}'}}]},
        {"tool_calls": [{"index": 1, "id": "tooluse_2", "type": "function", "function": {"name": "g", "arguments": ""}}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]},
        {},
    ]
    assert chunks[-3]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-2]["choices"] == [] and chunks[-2]["usage"]["total_tokens"] == 11
    assert chunks[-1] == "[DONE]"


@pytest.mark.parametrize(("name", "kind", "status"), [
    ("throttlingException", "rate_limited", 429), ("serviceUnavailableException", "overloaded", 503),
    ("internalServerException", "server", 502), ("modelStreamErrorException", "server", 502),
    ("validationException", "bad_request", 400)])
def test_stream_exceptions_are_failures(name: str, kind: str, status: int) -> None:
    decoder = BedrockStream("bedrock", "m", False)
    decoder.feed(SseEvent("messageStart", b'{"role":"assistant"}'))
    with pytest.raises(UpstreamError) as caught:
        decoder.feed(SseEvent("exception:" + name, b'{"message":"slow down"}'))
    assert (caught.value.kind, caught.value.status, caught.value.message) == (kind, status, "slow down")
    assert not decoder.visible  # before the commit point: the relay may fall back


def test_stream_cut_before_message_stop_raises() -> None:
    decoder = BedrockStream("bedrock", "m", False)
    decoder.feed(SseEvent("contentBlockDelta", b'{"contentBlockIndex":0,"delta":{"text":"a"}}'))
    with pytest.raises(UpstreamError):
        decoder.close()


@pytest.mark.parametrize(("header", "status", "kind", "caller"), [
    ("ThrottlingException", 429, "rate_limited", 429), ("ModelNotReadyException", 429, "rate_limited", 429),
    ("ServiceUnavailableException", 503, "overloaded", 503), ("InternalServerException", 500, "server", 502),
    ("ModelTimeoutException", 408, "timeout", 504), ("ValidationException", 400, "bad_request", 400),
    ("ServiceQuotaExceededException", 400, "bad_request", 400), ("AccessDeniedException", 403, "auth", 403),
    ("ResourceNotFoundException", 404, "bad_request", 404), ("ModelErrorException", 424, "bad_request", 424)])
def test_classify_errors_by_x_amzn_errortype(header: str, status: int, kind: str, caller: int) -> None:
    error = classify(PROVIDER, status, {"x-amzn-ErrorType": f"{header}:http://internal.amazon.com/coral/com.amazon.bedrock/"},
                     b'{"message":"details"}')
    assert (error.kind, error.status, error.code, error.message) == (kind, caller, header, "details")


def test_urls_encode_every_form_of_model_id() -> None:
    impl = Bedrock()
    req = ChatRequest({"model": "m", "messages": [{"role": "user", "content": "x"}]})
    for model, path in [
        ("anthropic.claude-3-5-sonnet-20240620-v1:0", "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"),
        ("us.anthropic.claude-3-5-sonnet-20241022-v2:0", "/model/us.anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse"),
        ("arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude",
         "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude/converse"),
    ]:
        call = impl.build_request(req, PROVIDER, model, API_KEY)
        assert call.url.raw_path == path
        assert str(call.url).startswith("https://bedrock-runtime.us-east-1.amazonaws.com/model/")
        assert call.headers["Authorization"] == "Bearer bedrock-api-key"
    for bad in ("../x", "a b", "x?y", ""):
        with pytest.raises(UnsupportedField):
            impl.build_request(req, PROVIDER, bad, API_KEY)


def test_the_signer_is_applied_to_the_finished_call() -> None:
    seen: list[UpstreamCall] = []

    def sign(call: UpstreamCall) -> UpstreamCall:
        seen.append(call)
        return UpstreamCall(call.method, call.url, {**call.headers, "Authorization": "AWS4-HMAC-SHA256 x"},
                            call.body, call.stream)

    call = Bedrock().build_request(ChatRequest({"model": "m", "messages": [{"role": "user", "content": "x"}]}, stream=True),
                                   PROVIDER, CLAUDE, Credential("ambient", sign=sign))
    assert call.headers["Authorization"] == "AWS4-HMAC-SHA256 x"
    assert seen[0].body == call.body and str(seen[0].url).endswith("/converse-stream")


def test_embeddings_titan_fans_out_and_cohere_batches() -> None:
    impl = Bedrock()
    titan = impl.build_embeddings_request(EmbeddingsRequest({"model": "m", "input": ["a", "b"], "dimensions": 256}),
                                          PROVIDER, "amazon.titan-embed-text-v2:0", API_KEY)
    assert [orjson.loads(c.body) for c in titan] == [{"inputText": "a", "dimensions": 256},
                                                     {"inputText": "b", "dimensions": 256}]
    assert titan[0].url.raw_path == "/model/amazon.titan-embed-text-v2%3A0/invoke"
    cohere = impl.build_embeddings_request(EmbeddingsRequest({"model": "m", "input": [f"t{i}" for i in range(100)]}),
                                           PROVIDER, "cohere.embed-english-v3", API_KEY)
    assert [len(orjson.loads(c.body)["texts"]) for c in cohere] == [96, 4]
    assert orjson.loads(cohere[0].body)["input_type"] == "search_document"
    out = orjson.loads(impl.parse_embeddings_response(
        EmbeddingsRequest({"model": "bedrock/t", "input": ["a", "b"]}), PROVIDER,
        [b'{"embedding":[0.5],"inputTextTokenCount":2}', b'{"embedding":[0.25],"inputTextTokenCount":3}']))
    assert [d["embedding"] for d in out["data"]] == [[0.5], [0.25]] and out["usage"]["prompt_tokens"] == 5


# --- hypothesis -----------------------------------------------------------------------------------

_text = st.text(max_size=12)
_message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user"]), "content": _text}),
    st.fixed_dictionaries({"role": st.just("assistant"), "content": st.one_of(st.none(), _text)},
                          optional={"tool_calls": st.lists(st.fixed_dictionaries({
                              "id": _text.filter(bool), "type": st.just("function"),
                              "function": st.fixed_dictionaries({"name": st.sampled_from(["f", "g"]),
                                                                 "arguments": st.sampled_from(["{}", '{"a":1}'])})}),
                              min_size=1, max_size=2)}),
    st.fixed_dictionaries({"role": st.just("tool"), "tool_call_id": _text.filter(bool), "content": _text}),
)
_body = st.fixed_dictionaries(
    {"model": st.just("m"), "messages": st.lists(_message, min_size=1, max_size=6)},
    optional={"temperature": st.floats(0, 2), "top_p": st.floats(0, 1), "max_tokens": st.integers(1, 8192),
              "stop": st.lists(_text.filter(bool), max_size=3), "reasoning_effort": st.sampled_from(["low", "high"]),
              "tool_choice": st.sampled_from(["auto", "none", "required"]),
              "tools": st.just([{"type": "function", "function": {"name": "f"}}])},
)


@settings(max_examples=200, deadline=None)
@given(body=_body)
def test_any_valid_request_gives_a_body_botocore_accepts(body: dict[str, Any]) -> None:
    try:
        out = _request(body)
    except UnsupportedField as exc:
        assert exc.param == "messages"
        return
    check_with_botocore(out)
    for message in out["messages"]:
        kinds = {next(iter(b)) for b in message["content"]}
        assert not ("toolResult" in kinds and "text" in kinds), "no text beside tool results"


def test_a_bomb_in_a_packed_tool_call_id_is_a_400_naming_the_call() -> None:
    packer = zlib.compressobj(1)
    bomb = b"B1" + b"".join(packer.compress(b"[" * (1 << 20)) for _ in range(16)) + packer.flush()
    body = {"model": "bedrock/x", "messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": attach("tooluse_B", bomb), "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "tooluse_B", "content": "sunny"}]}
    with pytest.raises(GatewayError) as caught:
        _request(body)
    assert caught.value.status == 400 and caught.value.param == "messages[1].tool_calls[0].id"


@pytest.mark.parametrize(("model", "sent"), [
    ("us.anthropic.claude-opus-4-1-20250805-v1:0", {"temperature": 1.0}),
    ("anthropic.claude-sonnet-4-5-20250929-v1:0", {"temperature": 1.0}),
    ("anthropic.claude-3-7-sonnet-20250219-v1:0", {"temperature": 1.0, "topP": 0.9}),
    ("amazon.nova-pro-v1:0", {"temperature": 1.0, "topP": 0.9}),
])
def test_claude_4_1_and_later_get_temperature_or_top_p_never_both(model: str, sent: dict[str, float]) -> None:
    inference = _request({"model": "bedrock/x", "messages": [{"role": "user", "content": "x"}],
                          "temperature": 1.4, "top_p": 0.9}, model)["inferenceConfig"]
    assert {k: inference[k] for k in ("temperature", "topP") if k in inference} == sent
