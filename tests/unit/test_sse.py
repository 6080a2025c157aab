"""Unit tests for tensorwall_proxy/sse.py: the incremental SSE decoder, its size bound, and the encoder.

Pure: bytes in, events out. Hypothesis splits streams at arbitrary byte boundaries, since that is
how a network delivers them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorwall_proxy.sse import DONE, DONE_EVENT, SseDecoder, SseError, SseEvent, encode


def decode(chunks: Iterable[bytes], max_event_bytes: int | None = None) -> list[SseEvent]:
    """Every event of a stream fed chunk by chunk, the trailing one included."""
    decoder = SseDecoder() if max_event_bytes is None else SseDecoder(max_event_bytes)
    events: list[SseEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.flush())
    return events


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in pairwise(points)]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


# --- line ends ------------------------------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_events_separated_by_each_line_end(eol: bytes) -> None:
    stream = b"data: one" + eol + eol + b"event: ping" + eol + b"data: two" + eol + eol
    expected = [SseEvent(None, b"one"), SseEvent("ping", b"two")]
    assert decode([stream]) == expected
    assert decode(bytewise(stream)) == expected


def test_line_ends_may_change_within_a_stream() -> None:
    stream = b"data: a\r\n\r\ndata: b\n\ndata: c\r\rdata: d\r\n\n"
    assert [e.data for e in decode([stream])] == [b"a", b"b", b"c", b"d"]


def test_a_crlf_split_across_two_feeds_is_one_line_end() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"\n\r\n") == [SseEvent(None, b"a\nb")]
    # CRLF then CR are two line ends: the event is complete before the LF that may follow.
    assert decoder.feed(b"data: c\r\n\r") == [SseEvent(None, b"c")]
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n") == []  # the rest of that CRLF, not another line end
    assert decoder.flush() == []


def test_lone_cr_feeds_end_lines_at_once() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: a") == []
    assert decoder.feed(b"\r") == []
    assert decoder.feed(b"\r") == [SseEvent(None, b"a")]  # CR CR: a line end, then a blank line
    assert decoder.feed(b"\n") == []  # completes the second CR's CRLF


def test_an_event_ended_by_cr_cr_is_returned_by_the_feed_that_completes_it() -> None:
    """With CR line ends the second CR ends the event; holding it until more bytes arrive delays a
    live stream's event (often its last one before a pause) for no reason."""
    decoder = SseDecoder()
    assert decoder.feed(b"data: a\r\r") == [SseEvent(None, b"a")]


def test_a_trailing_cr_is_not_lost_at_flush() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.flush() == [SseEvent(None, b"a")]


# --- fields ----------------------------------------------------------------------------------------


def test_comment_lines_are_dropped() -> None:
    stream = b": keep-alive\n\n:\n\n: ping\ndata: x\n: between\ndata: y\n\n"
    assert decode([stream]) == [SseEvent(None, b"x\ny")]


def test_several_data_lines_are_joined_with_newlines() -> None:
    assert decode([b"data: {\"a\":\ndata: 1}\ndata:\n\n"]) == [SseEvent(None, b"{\"a\":\n1}\n")]


def test_event_names_are_kept_and_the_last_one_wins() -> None:
    stream = b"event: message_start\ndata: {}\n\nevent: a\nevent: content_block_delta\ndata: {\"x\":1}\n\n"
    assert decode([stream]) == [
        SseEvent("message_start", b"{}"),
        SseEvent("content_block_delta", b"{\"x\":1}"),
    ]


def test_an_event_name_is_decoded_leniently() -> None:
    assert decode([b"event: caf\xc3\xa9\xff\ndata: x\n\n"]) == [SseEvent("caf\u00e9\ufffd", b"x")]


def test_an_event_without_data_is_dropped() -> None:
    assert decode([b"event: ping\n\nid: 7\nretry: 100\n\n"]) == []


@pytest.mark.parametrize(
    ("stream", "data"),
    [
        (b"data:x\n\n", b"x"),
        (b"data: x\n\n", b"x"),
        (b"data:  x\n\n", b" x"),
        (b"id: 1\ndata:x\n\n", b"x"),
        (b"id: 1\ndata: x\n\n", b"x"),
        (b"id: 1\ndata:  x\n\n", b" x"),
        (b"data: a: b\n\n", b"a: b"),
        (b"data\n\n", b""),
        (b"data: \n\n", b""),
    ],
)
def test_one_optional_space_after_the_colon_is_removed(stream: bytes, data: bytes) -> None:
    assert decode([stream]) == [SseEvent(None, data)]


def test_unknown_fields_are_ignored() -> None:
    assert decode([b"id: 42\nretry: 1000\nfoo: bar\ndata: x\n\n"]) == [SseEvent(None, b"x")]


def test_extra_blank_lines_between_events_are_harmless() -> None:
    assert decode([b"\n\n\ndata: a\n\n\n\n\ndata: b\n\n\n"]) == [SseEvent(None, b"a"), SseEvent(None, b"b")]


def test_an_event_split_over_many_feeds_comes_out_once() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"da") == []
    assert decoder.feed(b"ta: {\"choices\"") == []
    assert decoder.feed(b": []}\n") == []
    assert decoder.feed(b"\ndata: [DO") == [SseEvent(None, b"{\"choices\": []}")]
    assert decoder.feed(b"NE]\n\n") == [SseEvent(None, DONE)]


# --- flush -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tail", [b"data: last", b"data: last\n", b"data: last\r\n", b"event: e\ndata: last"])
def test_flush_returns_a_trailing_event_without_a_blank_line(tail: bytes) -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: first\n\n" + tail) == [SseEvent(None, b"first")]
    [event] = decoder.flush()
    assert event.data == b"last"
    assert decoder.flush() == []


@pytest.mark.parametrize("tail", [b"", b"\n", b": comment", b"event: only-a-name\n", b"   "])
def test_flush_without_a_trailing_event_returns_nothing(tail: bytes) -> None:
    decoder = SseDecoder()
    decoder.feed(tail)
    assert decoder.flush() == []


# --- the size bound ---------------------------------------------------------------------------------


def test_sse_error_is_a_value_error() -> None:
    assert issubclass(SseError, ValueError)


def test_an_unterminated_event_larger_than_the_bound_raises() -> None:
    decoder = SseDecoder(max_event_bytes=64)
    with pytest.raises(SseError, match="64"):
        decoder.feed(b"data: " + b"x" * 100)


def test_an_event_growing_past_the_bound_over_many_feeds_raises() -> None:
    decoder = SseDecoder(max_event_bytes=64)
    decoder.feed(b"data: ")
    with pytest.raises(SseError):
        for _ in range(100):
            decoder.feed(b"x")


def test_a_partial_event_past_the_bound_after_a_complete_one_raises() -> None:
    decoder = SseDecoder(max_event_bytes=64)
    with pytest.raises(SseError):
        decoder.feed(b"data: ok\n\ndata: " + b"x" * 100)


def test_a_complete_event_larger_than_the_bound_raises_even_in_one_chunk() -> None:
    """The bound is on an event's size; whether it arrives in one read or many must not matter."""
    decoder = SseDecoder(max_event_bytes=64)
    with pytest.raises(SseError):
        decoder.feed(b"data: " + b"x" * 100 + b"\n\n")


def test_events_within_the_bound_pass() -> None:
    event = b"data: " + b"x" * 50
    assert decode(bytewise(event + b"\n\n" + event + b"\n\n"), max_event_bytes=64) == [
        SseEvent(None, b"x" * 50),
        SseEvent(None, b"x" * 50),
    ]


def test_many_small_events_in_one_chunk_are_not_limited_by_the_bound() -> None:
    chunk = b"data: 0123456789\n\n" * 100
    assert len(decode([chunk], max_event_bytes=64)) == 100


# --- encode ----------------------------------------------------------------------------------------


def test_encode_writes_one_event() -> None:
    assert encode(b"{\"a\":1}") == b"data: {\"a\":1}\n\n"
    assert encode(b"{}", event="message_start") == b"event: message_start\ndata: {}\n\n"
    assert encode(DONE) == DONE_EVENT == b"data: [DONE]\n\n"


_line = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12)
_data = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))


@settings(max_examples=300, deadline=None)
@given(events=st.lists(st.tuples(_data, st.none() | _line), max_size=8), data=st.data())
def test_encode_round_trips_through_the_decoder(events: list[tuple[bytes, str | None]], data: st.DataObject) -> None:
    stream = b"".join(encode(payload, name) for payload, name in events)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    decoded = decode(split_at(stream, cuts))
    assert decoded == [SseEvent(name, payload) for payload, name in events]


# --- any split of any stream -----------------------------------------------------------------------


@st.composite
def sse_streams(draw: st.DrawFn) -> tuple[bytes, list[SseEvent]]:
    """A stream written with one line-end style, and the events a decoder must find in it."""
    eol = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    blob = b""
    expected: list[SseEvent] = []
    count = draw(st.integers(0, 5))
    for index in range(count):
        lines: list[bytes] = []
        name: str | None = None
        if draw(st.booleans()):
            lines.append(b":" + draw(_line).encode())
        if draw(st.booleans()):
            name = draw(_line)
            lines.append(b"event: " + name.encode())
        parsed: list[str] = []
        for value in draw(st.lists(_line, min_size=1, max_size=3)):
            space = draw(st.booleans())
            lines.append(b"data:" + (b" " if space else b"") + value.encode())
            # One space after the colon is dropped: the written one, else the value's own.
            parsed.append(value if space or not value.startswith(" ") else value[1:])
        if draw(st.booleans()):
            lines.append(b": trailing comment")
        expected.append(SseEvent(name, "\n".join(parsed).encode()))
        last = index == count - 1
        # The last event may end without its blank line, or without any line end: flush finds it.
        ending = draw(st.sampled_from([eol + eol, eol, b""])) if last else eol + eol
        blob += eol.join(lines) + ending
    return blob, expected


@settings(max_examples=400, deadline=None)
@given(stream=sse_streams(), data=st.data())
def test_any_split_of_a_stream_gives_the_same_events(stream: tuple[bytes, list[SseEvent]],
                                                     data: st.DataObject) -> None:
    blob, expected = stream
    assert decode([blob]) == expected
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=12))
    assert decode(split_at(blob, cuts)) == expected


@settings(max_examples=60, deadline=None)
@given(stream=sse_streams())
def test_a_stream_fed_byte_by_byte_gives_the_same_events(stream: tuple[bytes, list[SseEvent]]) -> None:
    blob, expected = stream
    assert decode(bytewise(blob)) == expected
