"""The native Messages wire, without a server: betas split by provider type and credential, the
pairing rule, which bedrock/vertex models are Claude, the passthrough decoder's commit point and
usage, and the gateway's own state removed from a body before it is sent natively."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tensorwall_proxy.auth import Credential
from tensorwall_proxy.config import ProviderConfig, Secret
from tensorwall_proxy.dialects.native import messages_body
from tensorwall_proxy.errors import UnsupportedField, UpstreamError
from tensorwall_proxy.providers.anthropic_wire import (
    anthropic_family,
    beta_label,
    caller_betas,
    require_pairs,
    split_betas,
)
from tensorwall_proxy.providers.ids import attach
from tensorwall_proxy.providers.messages_wire import MessagesPassthrough, read_answer
from tensorwall_proxy.sse import SseEvent

CALLER = Credential("caller", Secret("sk-ant-caller"))
SERVER = Credential("server", Secret("sk-ant-server"))
ANTHROPIC = ProviderConfig(name="a", type="anthropic")
BEDROCK = ProviderConfig(name="b", type="bedrock")
VERTEX = ProviderConfig(name="v", type="vertex")
ASKED = ["claude-code-20250219", "context-1m-2025-08-07", "interleaved-thinking-2025-05-14", "new-thing-2099-01-01"]


@pytest.mark.parametrize(("provider", "credential", "kept"), [
    (ANTHROPIC, CALLER, ASKED),
    (ANTHROPIC, SERVER, ["claude-code-20250219", "interleaved-thinking-2025-05-14"]),
    (ProviderConfig(name="a", type="anthropic", betas=("*",)), SERVER, ASKED),
    (ProviderConfig(name="a", type="anthropic", betas=("context-1m-*",)), SERVER, ["context-1m-2025-08-07"]),
    (BEDROCK, CALLER, ["context-1m-2025-08-07"]),
    (BEDROCK, SERVER, []),
    (VERTEX, CALLER, ["context-1m-2025-08-07", "interleaved-thinking-2025-05-14"]),
    (VERTEX, SERVER, ["interleaved-thinking-2025-05-14"]),
])
def test_betas_split_by_type_and_credential(provider: ProviderConfig, credential: Credential,
                                            kept: list[str]) -> None:
    betas = split_betas(ASKED, provider, credential)
    assert list(betas.kept) == kept
    assert sorted(betas.kept + betas.stripped) == sorted(ASKED)


def test_the_beta_list_is_capped_whole_entries_only() -> None:
    many = [f"claude-code-{i:04d}" for i in range(200)]
    betas = split_betas(many, ANTHROPIC, CALLER)
    assert len(",".join(betas.kept)) <= 1024 and betas.stripped == tuple(many[len(betas.kept):])


def test_caller_betas_read_the_header_and_a_body_list_once_each() -> None:
    assert caller_betas(" a, b ,,a", ["b", "c", 3]) == ["a", "b", "c"]
    assert caller_betas(None) == []


@pytest.mark.parametrize(("beta", "label"), [("context-1m-2025-08-07", "context-1m"),
                                             ("claude-code-20250219", "claude-code"),
                                             ("anything-else", "other"), ("x" * 500, "other")])
def test_the_metric_label_is_a_table_family_or_other(beta: str, label: str) -> None:
    assert beta_label(beta) == label


def test_a_stripped_beta_with_its_field_is_refused_naming_both() -> None:
    require_pairs(("context-management-2025-06-27",), {"messages": []}, BEDROCK)
    with pytest.raises(UnsupportedField) as refused:
        require_pairs(("context-management-2025-06-27",), {"context_management": {}}, BEDROCK)
    assert "context_management" in refused.value.message and "context-management-2025-06-27" in refused.value.message
    assert refused.value.status == 400


@pytest.mark.parametrize(("provider", "model", "claude"), [
    (BEDROCK, "anthropic.claude-sonnet-4-5-20250929-v1:0", True),
    (BEDROCK, "us.anthropic.claude-opus-4-6-v1", True),
    (BEDROCK, "global.anthropic.claude-sonnet-4-6", True),
    (BEDROCK, "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-haiku-20240307-v1:0", True),
    (BEDROCK, "arn:aws:bedrock:us-east-1:123:application-inference-profile/abc123", False),
    (ProviderConfig(name="b", type="bedrock", anthropic_models=("arn:*:application-inference-profile/*",)),
     "arn:aws:bedrock:us-east-1:123:application-inference-profile/abc123", True),
    (BEDROCK, "meta.llama3-70b-instruct-v1:0", False),
    (BEDROCK, "amazon.titan-anthropic.x", False),
    (VERTEX, "claude-sonnet-4-5@20250929", True),
    (VERTEX, "gemini-2.5-flash", False),
    (ANTHROPIC, "claude-3-7-sonnet-20250219", False),  # the question is only asked of bedrock and vertex
])
def test_which_models_are_claude(provider: ProviderConfig, model: str, claude: bool) -> None:
    assert anthropic_family(provider, model) is claude


def _event(data: dict[str, Any]) -> SseEvent:
    return SseEvent(data["type"], orjson.dumps(data))


START = {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [],
                                              "usage": {"input_tokens": 5, "cache_read_input_tokens": 2,
                                                        "output_tokens": 1}}}


@pytest.mark.parametrize(("event", "commits"), [
    ({"type": "ping"}, False),
    ({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}, False),
    ({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "",
                                                                    "signature": ""}}, False),
    ({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "f",
                                                                    "input": {}}}, True),
    ({"type": "content_block_start", "index": 0, "content_block": {"type": "redacted_thinking", "data": "x"}}, True),
    ({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}, True),
    ({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "h"}}, True),
    ({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}, True),
])
def test_the_commit_point(event: dict[str, Any], commits: bool) -> None:
    decoder = MessagesPassthrough("a")
    decoder.feed(_event(START))
    assert not decoder.visible and decoder.response_id == "msg_1"
    out = decoder.feed(_event(event))
    assert decoder.visible is commits
    assert out == [b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"]


def test_usage_comes_from_message_start_and_message_delta() -> None:
    decoder = MessagesPassthrough("a")
    for event in (START, {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}},
                  {"type": "message_stop"}):
        decoder.feed(_event(event))
    assert decoder.done and decoder.usage == {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}
    assert decoder.close() == []


@pytest.mark.parametrize(("kind", "status"), [("overloaded_error", 503), ("rate_limit_error", 429),
                                              ("api_error", 502), ("invalid_request_error", 400)])
def test_an_in_band_error_is_classified_like_its_http_equivalent(kind: str, status: int) -> None:
    decoder = MessagesPassthrough("a")
    decoder.feed(_event(START))
    with pytest.raises(UpstreamError) as failed:
        decoder.feed(_event({"type": "error", "error": {"type": kind, "message": "no"}}))
    assert failed.value.status == status


def test_a_stream_that_stops_short_is_a_502() -> None:
    decoder = MessagesPassthrough("a")
    decoder.feed(_event(START))
    with pytest.raises(UpstreamError) as failed:
        decoder.close()
    assert failed.value.status == 502


def test_pretty_printed_event_data_is_made_one_line() -> None:
    out = MessagesPassthrough("a").feed(SseEvent("ping", b'{\n  "type": "ping"\n}'))
    assert out == [b'event: ping\ndata: {"type":"ping"}\n\n']


def test_a_whole_message_gives_its_usage_and_id() -> None:
    answer = read_answer("a", orjson.dumps({**START["message"], "content": [{"type": "text", "text": "x"}]}))
    assert answer.response_id == "msg_1" and answer.usage == {"prompt_tokens": 7, "completion_tokens": 1,
                                                              "total_tokens": 8}
    with pytest.raises(ValueError):
        read_answer("a", b'{"choices": []}')


def test_gateway_state_is_removed_and_nothing_else() -> None:
    packed = attach("toolu_1", b"state")
    body = {"model": "m", "extra": {"kept": True}, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "ours", "signature": ""},
                                          {"type": "thinking", "thinking": "theirs", "signature": "sig"},
                                          {"type": "tool_use", "id": packed, "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": packed, "content": "ok"}]}]}
    sent = messages_body(body)
    assert sent["extra"] == {"kept": True} and sent["messages"][0] is body["messages"][0]
    assert sent["messages"][1]["content"] == [{"type": "thinking", "thinking": "theirs", "signature": "sig"},
                                              {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]
    assert sent["messages"][2]["content"][0]["tool_use_id"] == "toolu_1"
    clean = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}
    assert messages_body(clean) is clean


def test_past_the_commit_point_content_events_go_out_unparsed() -> None:
    decoder = MessagesPassthrough("a")
    assert decoder.split_plain(b"event: ping\ndata: {}\n\n") == (b"", b"event: ping\ndata: {}\n\n")  # held
    decoder.feed(_event(START))
    decoder.feed(_event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "a"}}))
    delta = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"b"}}\n\n'
    end = b'event: message_delta\ndata: {"type":"message_delta","delta":{},"usage":{"output_tokens":2}}\n\n'
    assert decoder.split_plain(delta + delta[:20]) == (delta, delta[:20])
    assert decoder.split_plain(delta + end) == (delta, end)
    assert decoder.split_plain(b"event: x\r\ndata: {}\r\n\r\n") == (b"", b"event: x\r\ndata: {}\r\n\r\n")
    assert decoder.usage is None  # nothing of the plain run was read
