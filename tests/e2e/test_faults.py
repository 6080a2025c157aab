"""Fault injection through the proxy: byte-level faults from a raw TCP server, rate limits with
every Retry-After form, and a caller that leaves in each phase of a request.

Each case asserts what the caller gets (status, or the in-band error and the missing [DONE]) and,
where it matters, which endpoint was tried next and whether the upstream connection was really
abandoned. Timeouts are fractions of a second so the file runs in a few seconds. What
tests/e2e/test_relay.py and tests/e2e/test_disconnect.py already cover (fake-upstream 500/503/429
fallback, slow-stream idle timeout, cut-mid-stream, a caller leaving before any upstream byte or
mid-stream) is not repeated here. The last two cases reproduce what scripts/soak.py found: an
endpoint that has been failing for a long time.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from tensorwall_proxy.api import GATEWAY
from tensorwall_proxy.health import EJECT_AFTER
from tests.conftest import (
    USER,
    Proxy,
    RawResponse,
    config_text,
    open_request,
    post_json,
    wait_for,
)
from tests.fakes import FakeUpstream, Recorded, Scripted
from tests.rawtcp import (
    CLOSE,
    DONE,
    HALF_CLOSE,
    LAST_CHUNK,
    READ,
    RESET,
    SILENCE,
    SSE_HEAD,
    Pause,
    RawConnection,
    RawServer,
    Script,
    Send,
    chunk,
    completion_body,
    completion_chunk,
    head,
    json_response,
)

# Short clocks for every route of this file: a fault shows within a third of a second.
FAST = "{connect: 1, first_byte: 0.3, idle: 0.3, total: 0.3}"
# How late the gateway may notice a fault or a departed caller and still pass.
WITHIN = 1.0


# --------------------------------------------------------------------------------------------------
# Helpers



def raw_proxy(make_proxy: Callable[..., Proxy], fake: FakeUpstream, raw: RawServer, *,
              fallback: bool = True) -> Proxy:
    """A proxy whose route `faulty` tries the raw server first and, with `fallback`, the fake's
    openai flavor second; both share the `openai` key scope, so the caller's key may go to either."""
    text = config_text(fake, providers=f'  raw: {{type: openai, base_url: "{raw.base_url}/v1", key_scope: openai}}\n')
    second = "\n      - {provider: openai, model: gpt-4o, priority: 1}" if fallback else ""
    return make_proxy(text=text + f"""
routes:
  faulty:
    strategy: priority
    timeouts: {FAST}
    endpoints:
      - {{provider: raw, model: raw-model, priority: 0}}{second}
""")


def chat(proxy: Proxy, model: str = "faulty", *, stream: bool = False, **fields: Any) -> RawResponse:
    return post_json(proxy, "/v1/chat/completions", {"model": model, "messages": USER, "stream": stream, **fields})


def events(response: RawResponse) -> list[str]:
    """The SSE events of a streamed answer, as text."""
    return [event for event in response.text.split("\n\n") if event.strip()]


def streamed_text(response: RawResponse) -> str:
    text = ""
    for event in events(response):
        data = event.removeprefix("data: ")
        if data == "[DONE]":
            continue
        parsed = json.loads(data)
        for choice in parsed.get("choices") or []:
            text += choice.get("delta", {}).get("content") or ""
    return text


def answer_text(response: RawResponse, stream: bool) -> str:
    assert response.status == 200, response.body
    if stream:
        assert events(response)[-1] == "data: [DONE]"
        return streamed_text(response)
    return str(response.json()["choices"][0]["message"]["content"])


def in_band_error(response: RawResponse) -> dict[str, Any]:
    """The error event that ends a stream broken after the commit point; asserts there is no [DONE]."""
    assert response.status == 200, response.body
    assert "data: [DONE]" not in response.text
    last = events(response)[-1]
    assert last.startswith('data: {"error"'), last
    error: dict[str, Any] = json.loads(last.removeprefix("data: "))["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def abandoned(connection: RawConnection, since: float) -> bool:
    """The gateway closed this upstream connection within WITHIN seconds of `since`."""
    return (connection.closed_by == "peer" and connection.closed_at is not None
            and connection.closed_at - since < WITHIN)


# --------------------------------------------------------------------------------------------------
# Connection resets before the commit point fall back to the next endpoint


@pytest.mark.parametrize("stream", [False, True])
def test_reset_before_the_request_is_read_falls_back(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                                     raw_server: Callable[..., RawServer], stream: bool) -> None:
    raw = raw_server([RESET])
    proxy = raw_proxy(make_proxy, fake, raw)
    response = chat(proxy, stream=stream)
    assert answer_text(response, stream) == "[openai] hello"
    assert response.headers["x-tensorwall-provider"] == "openai"
    # Each endpoint once: a reset after connecting cannot prove the request never arrived.
    assert len(raw.connections) == 1
    assert [r.flavor for r in fake.requests] == ["openai"]


@pytest.mark.parametrize("stream", [False, True])
def test_reset_after_the_request_was_read_falls_back(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                                     raw_server: Callable[..., RawServer], stream: bool) -> None:
    raw = raw_server([READ, RESET])
    proxy = raw_proxy(make_proxy, fake, raw)
    response = chat(proxy, stream=stream)
    assert answer_text(response, stream) == "[openai] hello"
    assert response.headers["x-tensorwall-provider"] == "openai"
    assert len(raw.connections) == 1
    assert json.loads(raw.connections[0].request_body)["model"] == "raw-model"  # it did reach the upstream
    assert [r.flavor for r in fake.requests] == ["openai"]


@pytest.mark.parametrize("script", [[RESET], [READ, RESET]], ids=["before-read", "after-read"])
def test_reset_with_no_endpoint_left_is_a_502(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                              raw_server: Callable[..., RawServer], script: Script) -> None:
    raw = raw_server(script)
    proxy = raw_proxy(make_proxy, fake, raw, fallback=False)
    response = chat(proxy)
    assert response.status == 502, response.body
    assert response.headers["x-tensorwall-provider"] == "raw"
    assert response.json()["error"]["type"] == "server_error"
    assert len(raw.connections) == 1  # not tried again: the request may have been received


# --------------------------------------------------------------------------------------------------
# Status line and headers, then silence: the first_byte clock (streams) or total (non-streamed)


@pytest.mark.parametrize("stream", [False, True])
def test_headers_then_silence_falls_back_after_the_phase_timeout(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, raw_server: Callable[..., RawServer],
        stream: bool) -> None:
    head = SSE_HEAD if stream else b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n"
    raw = raw_server([READ, Send(head), SILENCE])
    proxy = raw_proxy(make_proxy, fake, raw)
    started = time.monotonic()
    response = chat(proxy, stream=stream)
    assert answer_text(response, stream) == "[openai] hello"
    assert 0.3 <= time.monotonic() - started < 0.3 + WITHIN
    assert [r.flavor for r in fake.requests] == ["openai"]
    assert wait_for(lambda: raw.connections[0].closed_at is not None)
    assert abandoned(raw.connections[0], started + 0.3)


@pytest.mark.parametrize(("stream", "phrase"), [(False, "did not answer within 0.3s"),
                                                (True, "sent nothing for 0.3s (first_byte timeout)")])
def test_headers_then_silence_alone_is_a_504(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                             raw_server: Callable[..., RawServer], stream: bool,
                                             phrase: str) -> None:
    head = SSE_HEAD if stream else b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n"
    raw = raw_server([READ, Send(head), SILENCE])
    proxy = raw_proxy(make_proxy, fake, raw, fallback=False)
    response = chat(proxy, stream=stream)
    # Nothing was committed, so even a stream gets a plain HTTP error, not an in-band one.
    assert response.status == 504, response.body
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["x-tensorwall-provider"] == "raw"
    assert phrase in response.json()["error"]["message"]


def test_an_event_trickling_in_piece_by_piece_still_trips_first_byte(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, raw_server: Callable[..., RawServer]) -> None:
    """first_byte runs to the first whole event: bytes that never complete one do not hold it open."""
    partial = chunk(b'data: {"id":"chatcmpl-raw","object":"chat.completion.chunk","choices":[')
    # Four bytes every 0.1 s for two seconds: a clock reset by bytes would wait all of that.
    raw = raw_server([READ, Send(SSE_HEAD + partial, cuts=range(len(SSE_HEAD), len(SSE_HEAD) + len(partial), 4),
                                 gap=0.1), SILENCE])
    proxy = raw_proxy(make_proxy, fake, raw)
    started = time.monotonic()
    response = chat(proxy, stream=True)
    assert answer_text(response, True) == "[openai] hello"
    assert time.monotonic() - started < 0.3 + WITHIN
    assert [r.flavor for r in fake.requests] == ["openai"]


# --------------------------------------------------------------------------------------------------
# Broken streams after the commit point: an in-band error, no [DONE], no fallback

COMMITTED = chunk(completion_chunk(role=True) + completion_chunk("Hel"))


@pytest.mark.parametrize(("tail", "why"), [
    # A chunk announced as 0x40 bytes, ten sent, then FIN.
    (b"40\r\n" + b'data: {"id"', "half-close mid-chunk"),
    # A whole chunk, then FIN where the next chunk-size line or the last chunk should be.
    (chunk(completion_chunk("lo")), "half-close at a chunk boundary, no last chunk"),
])
def test_half_close_after_the_commit_point_is_an_in_band_error(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, raw_server: Callable[..., RawServer],
        tail: bytes, why: str) -> None:
    raw = raw_server([READ, Send(SSE_HEAD + COMMITTED), Pause(0.05), Send(tail), HALF_CLOSE, SILENCE])
    proxy = raw_proxy(make_proxy, fake, raw)
    response = chat(proxy, stream=True)
    error = in_band_error(response)
    assert streamed_text(response).startswith("Hel"), why
    assert error["type"] == "server_error"
    assert fake.requests == []  # never a fallback after the commit point
    assert wait_for(lambda: raw.connections[0].closed_at is not None)
    assert raw.connections[0].closed_by == "peer"  # the gateway let go of the half-closed connection


def test_clean_end_without_done_is_an_in_band_error(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                                   raw_server: Callable[..., RawServer]) -> None:
    """A well-terminated chunked body that never said [DONE]: the answer may be truncated."""
    raw = raw_server([READ, Send(SSE_HEAD + COMMITTED + LAST_CHUNK), CLOSE])
    proxy = raw_proxy(make_proxy, fake, raw)
    response = chat(proxy, stream=True)
    error = in_band_error(response)
    assert "[DONE]" in error["message"]
    assert fake.requests == []


def test_stall_mid_stream_is_an_idle_timeout_in_band(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                                     raw_server: Callable[..., RawServer]) -> None:
    raw = raw_server([READ, Send(SSE_HEAD + COMMITTED), SILENCE])
    proxy = raw_proxy(make_proxy, fake, raw)
    started = time.monotonic()
    response = chat(proxy, stream=True)
    error = in_band_error(response)
    assert "idle timeout" in error["message"]
    assert streamed_text(response) == "Hel"
    assert 0.3 <= time.monotonic() - started < 0.3 + WITHIN
    assert fake.requests == []
    assert wait_for(lambda: raw.connections[0].closed_at is not None)
    assert abandoned(raw.connections[0], started + 0.3)


def test_stall_after_a_role_chunk_is_still_before_the_commit_point(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, raw_server: Callable[..., RawServer]) -> None:
    """An empty role chunk shows the client nothing: a stall after it may still fall back."""
    raw = raw_server([READ, Send(SSE_HEAD + chunk(completion_chunk(role=True))), SILENCE])
    proxy = raw_proxy(make_proxy, fake, raw)
    response = chat(proxy, stream=True)
    assert answer_text(response, True) == "[openai] hello"
    assert [r.flavor for r in fake.requests] == ["openai"]


# --------------------------------------------------------------------------------------------------
# One response cut into many TCP writes at awkward offsets: reassembled exactly


def _awkward_cuts(data: bytes, markers: list[bytes]) -> list[int]:
    """Offsets inside each marker (mid status line, between CR and LF, mid chunk size, mid JSON)."""
    cuts: set[int] = set()
    for marker in markers:
        start = 0
        while (found := data.find(marker, start)) >= 0:
            cuts.add(found + max(1, len(marker) // 2))
            start = found + 1
    return sorted(cuts)


def test_stream_split_across_many_tcp_writes(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                             raw_server: Callable[..., RawServer]) -> None:
    body = (chunk(completion_chunk(role=True)) + chunk(completion_chunk("Hel") + completion_chunk("lo, ")[:-1])
            + chunk(b"\n" + completion_chunk("wörld")) + chunk(completion_chunk(finish="stop") + DONE)
            + LAST_CHUNK)
    data = SSE_HEAD + body
    cuts = _awkward_cuts(data, [b"HTTP/1.1", b"\r\n", b"text/event", b"data:", b'"content"', b"\n\n",
                                "wö".encode(), b"[DONE]"])
    raw = raw_server([READ, Send(data, cuts=cuts, gap=0.002), CLOSE])
    proxy = raw_proxy(make_proxy, fake, raw)
    response = chat(proxy, stream=True)
    assert raw.connections[0].writes > 25
    assert answer_text(response, True) == "Hello, wörld"
    assert fake.requests == []


def test_non_streamed_answer_split_across_many_tcp_writes(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                                          raw_server: Callable[..., RawServer]) -> None:
    data = json_response(completion_body("split answer ✓"))
    raw = raw_server([READ, Send(data, cuts=range(3, len(data), 7), gap=0.002), CLOSE])
    proxy = raw_proxy(make_proxy, fake, raw)
    response = chat(proxy)
    assert raw.connections[0].writes > 20
    assert answer_text(response, False) == "split answer ✓"
    assert response.headers["x-tensorwall-provider"] == "raw"


# --------------------------------------------------------------------------------------------------
# A 500 that is not even JSON (a load balancer's HTML page), then success on the next endpoint

_HTML = b"<html><body><h1>500 Internal Server Error</h1></body></html>\r\n"
HTML_500 = head(500, {"Content-Type": "text/html", "Content-Length": str(len(_HTML)), "Connection": "close"}) + _HTML


@pytest.mark.parametrize("stream", [False, True])
def test_html_500_falls_back_to_the_next_endpoint(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                                  raw_server: Callable[..., RawServer], stream: bool) -> None:
    raw = raw_server([READ, Send(HTML_500), CLOSE])
    proxy = raw_proxy(make_proxy, fake, raw)
    response = chat(proxy, stream=stream)
    assert answer_text(response, stream) == "[openai] hello"
    assert response.headers["x-tensorwall-provider"] == "openai"
    assert len(raw.connections) == 1
    assert [r.flavor for r in fake.requests] == ["openai"]


def test_html_500_alone_is_a_502_naming_the_status(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                                   raw_server: Callable[..., RawServer]) -> None:
    raw = raw_server([READ, Send(HTML_500), CLOSE])
    proxy = raw_proxy(make_proxy, fake, raw, fallback=False)
    response = chat(proxy)
    assert response.status == 502
    assert "HTTP 500" in response.json()["error"]["message"]
    assert response.headers["x-tensorwall-provider"] == "raw"


# --------------------------------------------------------------------------------------------------
# 429 and every Retry-After form: the cooldown applied, and the Retry-After the caller gets

COOLDOWN = 9  # retries.cooldown_seconds for these routes: distinct from every header value below
RATE_LIMITED = {"error": {"message": "Rate limit reached.", "type": "requests", "param": None,
                          "code": "rate_limit_exceeded"}}


def _http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


def _limited_proxy(make_proxy: Callable[..., Proxy], models: list[str]) -> Proxy:
    endpoints = "\n".join(f"      - {{provider: openai, model: {m}, priority: {i}}}" for i, m in enumerate(models))
    return make_proxy(f"""
retries: {{cooldown_seconds: {COOLDOWN}}}
routes:
  limited:
    strategy: priority
    endpoints:
{endpoints}
""")


def _retry_after(response: RawResponse) -> int:
    assert response.status == 429, response.body
    assert "retry-after" in response.headers, f"429 without Retry-After: {response.headers}"
    return int(response.headers["retry-after"])


RETRY_AFTER_FORMS = [
    ({"retry-after": "3"}, 3.0),
    ({"retry-after-ms": "2500"}, 2.5),
    ({"retry-after": "3", "retry-after-ms": "2500"}, 2.5),  # the finer one wins, as the SDKs read it
    ({"retry-after": _http_date(120)}, COOLDOWN),  # an HTTP date is not read: the configured cooldown
    ({}, COOLDOWN),  # none at all: the configured cooldown
]
RETRY_AFTER_IDS = ["seconds", "ms", "both", "http-date", "missing"]


@pytest.mark.parametrize(("headers", "seconds"), RETRY_AFTER_FORMS, ids=RETRY_AFTER_IDS)
def test_429_cools_for_what_retry_after_says(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                             scripted: Callable[[str, Scripted], str],
                                             headers: dict[str, str], seconds: float) -> None:
    """The second request finds every endpoint cooling: 429 at once, Retry-After = what is left."""
    model = scripted("limited", (429, headers, RATE_LIMITED))
    proxy = _limited_proxy(make_proxy, [model])
    assert chat(proxy, "limited").status == 429
    assert len(fake.requests) == 1
    second = chat(proxy, "limited")
    assert len(fake.requests) == 1  # cooling: answered at once, no upstream call
    assert abs(_retry_after(second) - seconds) <= 1
    assert "x-tensorwall-provider" not in second.headers
    assert second.json()["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize(("headers", "seconds"), RETRY_AFTER_FORMS, ids=RETRY_AFTER_IDS)
def test_the_upstreams_429_tells_the_caller_when_to_come_back(make_proxy: Callable[..., Proxy],
                                                                fake: FakeUpstream,
                                                                scripted: Callable[[str, Scripted], str],
                                                                headers: dict[str, str], seconds: float) -> None:
    """DESIGN §5/§7: a 429 carries Retry-After, the upstream's value or, when every endpoint is
    cooling (as here, right after the only endpoint's 429), the shortest remaining cooldown."""
    model = scripted("limited", (429, headers, RATE_LIMITED))
    proxy = _limited_proxy(make_proxy, [model])
    first = chat(proxy, "limited")
    assert first.headers["x-tensorwall-provider"] == "openai"
    if list(headers) == ["retry-after"] and first.headers.get("retry-after") == headers["retry-after"]:
        return  # the upstream's own value passed through unchanged (an HTTP date included) is fine
    assert abs(_retry_after(first) - seconds) <= 1


def test_429_cooldown_ends_when_retry_after_says(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                                 scripted: Callable[[str, Scripted], str]) -> None:
    model = scripted("brief", (429, {"retry-after-ms": "300"}, RATE_LIMITED))
    proxy = _limited_proxy(make_proxy, [model])
    assert chat(proxy, "limited").status == 429
    assert chat(proxy, "limited").status == 429
    assert len(fake.requests) == 1
    time.sleep(0.4)
    fake.script.pop(model)  # the upstream has capacity again
    assert answer_text(chat(proxy, "limited"), False) == "[openai] hello"
    assert len(fake.requests) == 2


def test_retry_after_beyond_the_cap_cools_for_300_seconds(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                                          scripted: Callable[[str, Scripted], str]) -> None:
    model = scripted("hour", (429, {"retry-after": "3600"}, RATE_LIMITED))
    proxy = _limited_proxy(make_proxy, [model])
    chat(proxy, "limited")
    second = chat(proxy, "limited")
    assert len(fake.requests) == 1
    assert 298 <= _retry_after(second) <= 300


def test_every_endpoint_cooling_answers_the_shortest_cooldown(make_proxy: Callable[..., Proxy],
                                                              fake: FakeUpstream,
                                                              scripted: Callable[[str, Scripted], str]) -> None:
    short = scripted("short", (429, {"retry-after": "3"}, RATE_LIMITED))
    long = scripted("long", (429, {"retry-after-ms": "6000"}, RATE_LIMITED))
    unsaid = scripted("unsaid", (429, {}, RATE_LIMITED))
    proxy = _limited_proxy(make_proxy, [long, unsaid, short])
    first = chat(proxy, "limited")
    assert [r.model for r in fake.requests] == [long, unsaid, short]  # 429 falls back, up to the cap
    assert first.headers["x-tensorwall-provider"] == "openai"
    assert 2 <= _retry_after(first) <= 6
    second = chat(proxy, "limited")
    assert len(fake.requests) == 3
    assert 2 <= _retry_after(second) <= 3


def test_429_from_the_raw_server_then_success_on_the_next_endpoint(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, raw_server: Callable[..., RawServer]) -> None:
    """A 429 with a Retry-After the gateway must read from bytes on the wire, streamed: falls back,
    and the endpoint stays out of rotation for the next request."""
    limited = json_response(json.dumps(RATE_LIMITED).encode(), 429, {"Retry-After": "30"})
    raw = raw_server([READ, Send(limited), CLOSE])
    proxy = raw_proxy(make_proxy, fake, raw)
    for _ in range(2):
        assert answer_text(chat(proxy, stream=True), True) == "[openai] hello"
    assert len(raw.connections) == 1
    assert [r.flavor for r in fake.requests] == ["openai", "openai"]


# --------------------------------------------------------------------------------------------------
# A caller that leaves: the upstream request ends with it, in every phase
# (before any upstream byte, and mid-stream on the fake: tests/e2e/test_disconnect.py)


def _leaves_and_upstream_notices(fake: FakeUpstream, model: str, sock: socket.socket) -> None:
    assert wait_for(lambda: fake.for_model(model))
    time.sleep(0.1)  # let the upstream reach the phase under test
    record = fake.for_model(model)[-1]
    assert record.finished_at is None and record.disconnected_at is None
    left = time.monotonic()
    sock.close()
    assert wait_for(lambda: record.disconnected_at is not None)
    assert record.disconnected_at is not None and record.disconnected_at - left < WITHIN


async def _headers_then_wait(request: web.Request, rec: Recorded) -> web.StreamResponse:
    """Status and SSE headers at once, then no event: the proxy is holding, the caller sees nothing."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await asyncio.sleep(3600)
    return response


async def _half_a_body_then_wait(request: web.Request, rec: Recorded) -> web.StreamResponse:
    """A non-streamed answer: headers with an honest Content-Length, half the body, then nothing."""
    body = b'{"id":"chatcmpl-x","object":"chat.completion","choices":[]}'
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    await asyncio.sleep(3600)
    return response


@pytest.mark.parametrize(("handler", "stream"), [(_headers_then_wait, True), (_half_a_body_then_wait, False)],
                         ids=["stream-after-headers-before-first-event", "non-streamed-after-headers"])
def test_caller_leaving_after_upstream_headers_cancels_the_upstream(
        proxy: Proxy, fake: FakeUpstream, scripted: Callable[[str, Scripted], str],
        handler: Scripted, stream: bool) -> None:
    model = scripted("gpt-leave", handler)
    sock = open_request(proxy, {"model": model, "messages": USER, "stream": stream})
    _leaves_and_upstream_notices(fake, model, sock)


def test_caller_leaving_during_a_fallback_cancels_the_second_attempt(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    proxy = make_proxy("""
routes:
  second-hangs:
    strategy: priority
    endpoints:
      - {provider: openai, model: fail-500, priority: 0}
      - {provider: azure-eu, model: hang-behind-500, priority: 1}
""")
    sock = open_request(proxy, {"model": "second-hangs", "messages": USER, "stream": True})
    _leaves_and_upstream_notices(fake, "hang-behind-500", sock)
    assert fake.for_model("fail-500")[0].finished_at is not None


@pytest.mark.parametrize("stream", [True, False])
def test_caller_leaving_closes_the_raw_upstream_connection(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, raw_server: Callable[..., RawServer],
        stream: bool) -> None:
    """Mid-stream after the commit point, or while a non-streamed answer is awaited: the gateway
    closes its upstream connection at once, never leaves it to a timeout."""
    script: Script = ([READ, Send(SSE_HEAD + COMMITTED), SILENCE] if stream
                      else [READ, Send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"), SILENCE])
    raw = raw_server(script)
    # Default (long) clocks: only the caller's departure may end the upstream connection here.
    proxy = make_proxy(text=config_text(fake, providers=f'  raw: {{type: openai, base_url: "{raw.base_url}/v1"}}\n')
                       + """
routes:
  faulty:
    endpoints:
      - {provider: raw, model: raw-model}
""")
    sock = open_request(proxy, {"model": "faulty", "messages": USER, "stream": stream})
    if stream:
        received = b""
        while b"Hel" not in received:
            received += sock.recv(65536)
        assert received.startswith(b"HTTP/1.1 200")
    else:
        assert wait_for(lambda: raw.connections and raw.connections[0].request_read_at is not None)
        time.sleep(0.1)
    connection = raw.connections[0]
    assert connection.closed_at is None
    left = time.monotonic()
    sock.close()
    assert wait_for(lambda: connection.closed_at is not None)
    assert abandoned(connection, left)


# --------------------------------------------------------------------------------------------------
# An endpoint that has been failing for a long time: the soak found these (scripts/soak.py)


def _fail_for_a_long_time(proxy: Proxy, key: tuple[str, str, str | None]) -> None:
    """Record 5,120 consecutive failures of one (endpoint, credential) in the proxy's own health
    book: under ten minutes of an outage at ten failed attempts per second. (The soak reaches
    this state with real requests in about two seconds of its upstream-500 phase.)"""
    health = proxy.app[GATEWAY].health
    for _ in range(EJECT_AFTER * 1024):
        health.failed(key)


def test_an_endpoint_failing_for_a_long_time_still_answers_502(make_proxy: Callable[..., Proxy],
                                                                fake: FakeUpstream) -> None:
    """Its ejection time is capped at 300 s; the failures that follow must stay ordinary 502s."""
    proxy = make_proxy("""
routes:
  down:
    endpoints:
      - {provider: azure-eu, model: fail-500}
""")
    _fail_for_a_long_time(proxy, ("azure-eu", "fail-500", None))
    statuses = [chat(proxy, "down").status for _ in range(6)]
    assert statuses == [502] * 6
    assert len(fake.requests) == 6  # a lone endpoint is tried even while ejected (DESIGN §5)


def test_a_stream_cut_after_a_long_outage_still_ends_in_band(make_proxy: Callable[..., Proxy],
                                                            fake: FakeUpstream) -> None:
    """After the commit point a failure must end the stream in-band, whatever else goes wrong:
    never a second status line written into a chunked body the client is already reading."""
    proxy = make_proxy("""
routes:
  cutting:
    endpoints:
      - {provider: azure-eu, model: cut-mid-stream}
""")
    _fail_for_a_long_time(proxy, ("azure-eu", "cut-mid-stream", None))
    for _ in range(6):
        sock = open_request(proxy, {"model": "cutting", "messages": USER, "stream": True})
        sock.settimeout(3)
        received = b""
        with contextlib.suppress(TimeoutError):
            while piece := sock.recv(65536):
                received += piece
                if received.endswith(b"\r\n0\r\n\r\n"):
                    break
        sock.close()
        assert received.startswith(b"HTTP/1.1 200")
        assert b"HTTP/1.1 500" not in received
        assert b'data: {"error"' in received
        assert received.endswith(b"\r\n0\r\n\r\n"), received[-200:]  # the chunked body ended properly
