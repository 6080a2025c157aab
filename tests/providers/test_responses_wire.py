"""The native Responses decoder and answer reader (providers/responses_wire.py), from events as data:
the commit point of DESIGN §14, bytes relayed unchanged, usage, sequence numbers, in-band errors."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorwall_proxy.dialects.responses import RESPONSES
from tensorwall_proxy.errors import UpstreamError
from tensorwall_proxy.providers.responses_wire import ResponsesPassthrough, in_band_error, read_answer
from tensorwall_proxy.sse import SseEvent

RESPONSE: dict[str, Any] = {"id": "resp_up1", "object": "response", "status": "in_progress", "output": [],
                            "usage": None, "model": "gpt-4o"}
USAGE = {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 1, "cache_write_tokens": 0},
         "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 8}


def event(kind: str, number: int, **fields: Any) -> SseEvent:
    return SseEvent(kind, orjson.dumps({"type": kind, "sequence_number": number, **fields}))


def wire(*events: SseEvent) -> bytes:
    return b"".join(b"event: " + e.event.encode() + b"\ndata: " + e.data + b"\n\n" for e in events if e.event)


PRELUDE = [event("response.created", 0, response=RESPONSE), event("response.in_progress", 1, response=RESPONSE),
           event("response.output_item.added", 2, output_index=0,
                 item={"id": "msg_1", "type": "message", "role": "assistant", "content": []}),
           event("response.content_part.added", 3, item_id="msg_1", output_index=0, content_index=0,
                 part={"type": "output_text", "text": ""})]


def test_the_prelude_is_held_and_the_first_delta_commits() -> None:
    decoder = ResponsesPassthrough("openai")
    for e in PRELUDE:
        assert decoder.feed(e) == [wire(e)]  # the upstream's own bytes
        assert not decoder.visible
    assert decoder.response_id == "resp_up1" and decoder.opening == RESPONSE and decoder.sequence == 4
    delta = event("response.output_text.delta", 4, item_id="msg_1", output_index=0, content_index=0, delta="Hi")
    assert decoder.feed(delta) == [wire(delta)]
    assert decoder.visible and not decoder.done and decoder.sequence == 5


@pytest.mark.parametrize(("item", "commits"), [
    ({"type": "function_call", "id": "fc_1", "call_id": "c", "name": "f", "arguments": ""}, True),
    ({"type": "custom_tool_call", "id": "ctc_1", "call_id": "c", "name": "f", "input": ""}, True),
    ({"type": "reasoning", "id": "rs_1", "summary": []}, False),
    ({"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "t"}]}, True),
    ({"type": "message", "id": "m", "content": []}, False),
])
def test_an_item_added_commits_when_it_is_a_call_or_holds_content(item: dict[str, Any], commits: bool) -> None:
    decoder = ResponsesPassthrough("openai")
    decoder.feed(event("response.output_item.added", 0, output_index=0, item=item))
    assert decoder.visible is commits


@pytest.mark.parametrize("kind", ["response.reasoning_summary_text.delta", "response.refusal.delta",
                                  "response.function_call_arguments.delta", "response.web_search_call.searching"])
def test_deltas_and_events_the_client_must_see_commit(kind: str) -> None:
    decoder = ResponsesPassthrough("openai")
    decoder.feed(event(kind, 0, delta="x"))
    assert decoder.visible


@pytest.mark.parametrize("terminal", ["response.completed", "response.incomplete"])
def test_a_terminal_event_commits_ends_and_carries_the_usage(terminal: str) -> None:
    decoder = ResponsesPassthrough("openai")
    decoder.feed(PRELUDE[0])
    decoder.feed(event(terminal, 1, response={**RESPONSE, "status": "completed", "usage": USAGE}))
    assert decoder.visible and decoder.done and decoder.close() == []
    assert decoder.usage == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def test_past_the_commit_point_whole_events_pass_plain_until_a_terminal_one() -> None:
    decoder = ResponsesPassthrough("openai")
    assert decoder.split_plain(wire(*PRELUDE)) == (b"", wire(*PRELUDE))  # before it: every event is fed
    for e in PRELUDE:
        decoder.feed(e)
    decoder.feed(event("response.output_text.delta", 4, delta="a"))
    deltas = [event("response.output_text.delta", n, delta="b") for n in (5, 6)]
    done = event("response.completed", 7, response={**RESPONSE, "usage": USAGE})
    chunk = wire(*deltas, done) + b"event: response.output_text.del"
    plain, rest = decoder.split_plain(chunk)
    assert plain == wire(*deltas) and rest == wire(done) + b"event: response.output_text.del"
    assert decoder.sequence == 7 and not decoder.done


def test_an_in_band_error_before_the_commit_point_is_a_classified_upstream_failure() -> None:
    decoder = ResponsesPassthrough("openai")
    decoder.feed(PRELUDE[0])
    with pytest.raises(UpstreamError) as info:
        decoder.feed(event("error", 1, code="rate_limit_exceeded", message="slow down", param=None))
    assert (info.value.kind, info.value.status, info.value.code) == ("rate_limited", 429, "rate_limit_exceeded")
    assert decoder.sequence == 1  # the error is not relayed, so its number is not taken
    failed = event("response.failed", 1, response={**RESPONSE, "status": "failed",
                                                   "error": {"code": "server_error", "message": "boom"}})
    with pytest.raises(UpstreamError) as info:
        ResponsesPassthrough("openai").feed(failed)
    assert (info.value.kind, info.value.status, info.value.message) == ("server", 502, "boom")


def test_a_failed_response_past_the_commit_point_is_relayed_as_the_terminal_event() -> None:
    decoder = ResponsesPassthrough("openai")
    decoder.feed(event("response.output_text.delta", 0, delta="a"))
    failed = event("response.failed", 1, response={**RESPONSE, "status": "failed", "error": {"code": "server_error"}})
    assert decoder.feed(failed) == [wire(failed)] and decoder.done


@pytest.mark.parametrize(("error", "kind", "status"), [
    ({"type": "overloaded_error", "message": "m"}, "overloaded", 503),
    ({"code": "server_is_overloaded"}, "overloaded", 503),
    ({"code": "rate_limit_exceeded"}, "rate_limited", 429),
    ({"code": "insufficient_quota"}, "rate_limited", 429),
    ({"code": "server_error"}, "server", 502),
    ({"type": "api_error"}, "server", 502),
    ({}, "server", 502),
    ({"code": "context_length_exceeded", "message": "too long"}, "bad_request", 400),
])
def test_in_band_errors_are_classified_like_their_http_equivalents(error: dict[str, Any], kind: str,
                                                                   status: int) -> None:
    exc = in_band_error("openai", error, "fallback")
    assert (exc.kind, exc.status) == (kind, status)
    assert exc.falls_back is (status != 400)


def test_a_stream_that_ends_before_its_terminal_event_is_a_failure() -> None:
    decoder = ResponsesPassthrough("openai")
    decoder.feed(event("response.output_text.delta", 0, delta="a"))
    with pytest.raises(UpstreamError):
        decoder.close()


@pytest.mark.parametrize("data", [b"not json", b"[1]"])
def test_an_event_that_is_not_an_object_is_a_502(data: bytes) -> None:
    with pytest.raises(UpstreamError) as info:
        ResponsesPassthrough("openai").feed(SseEvent(None, data))
    assert info.value.status == 502


def test_a_whole_answer_gives_its_usage_and_id() -> None:
    answer = read_answer("openai", orjson.dumps({**RESPONSE, "usage": USAGE}))
    assert answer.response_id == "resp_up1" and answer.usage == {"prompt_tokens": 5, "completion_tokens": 3,
                                                                 "total_tokens": 8}
    with pytest.raises(ValueError):
        read_answer("openai", b'{"id": "x"}')


def test_a_sequence_number_out_of_range_is_not_counted() -> None:
    decoder = ResponsesPassthrough("openai")
    decoder.feed(SseEvent(None, b'{"type":"response.output_text.delta","sequence_number":18446744073709551615}'))
    decoder.feed(SseEvent(None, b'{"type":"response.output_text.delta","sequence_number":true}'))
    assert decoder.sequence == 0
    decoder.split_plain(b'data: {"type":"response.output_text.delta","sequence_number":99999999999999999999}\n\n')
    assert decoder.sequence == 0  # more digits than any real stream: not read as a number


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                     max_leaves=12)
_KINDS = st.sampled_from(["response.created", "response.output_item.added", "response.output_text.delta", "error",
                          "response.failed", "response.completed", "response.content_part.added", "x"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.fixed_dictionaries({"type": _KINDS}, optional={
    "sequence_number": _JSON, "response": _JSON, "item": _JSON, "error": _JSON, "code": _JSON}), max_size=6))
def test_any_events_are_relayed_or_an_upstream_error(events: list[dict[str, Any]]) -> None:
    """Whatever shape an upstream's events take, the decoder relays them or raises UpstreamError, and
    the dialect can always end the stream with its response.failed."""
    decoder = ResponsesPassthrough("openai")
    try:
        for parsed in events:
            data = orjson.dumps(parsed)
            assert decoder.feed(SseEvent(parsed["type"], data)) == [wire(SseEvent(parsed["type"], data))]
        decoder.close()
    except UpstreamError as exc:
        failed = orjson.loads(RESPONSES.error_event(exc, decoder).split(b"data: ", 1)[1])
        assert failed["type"] == "response.failed" and failed["response"]["status"] == "failed"
