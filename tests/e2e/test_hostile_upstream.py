"""A hostile or broken upstream: what comes back from it is bounded and checked before the caller sees it.

Bodies are counted after decompression against `server.max_upstream_body_bytes` (chat) and a
stream holds at most `server.max_held_bytes` before its commit point; statuses that are not an
answer (3xx, 204, 304), empty or non-JSON 200s and answers of the wrong shape are 502s that fall
back; Retry-After and usage numbers are validated; only named rate-limit headers pass, short;
a client that stops reading does not keep its upstream connection. The upstream is the raw TCP
server of `tests.rawtcp` (or the fake, scripted), on 127.0.0.1; every exchange is a few KiB and
a fraction of a second. The memory bounds of DESIGN §4 are measured on a `serve` subprocess in
the `slow` tests at the end.
"""

from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    GATEWAY_KEY,
    PROVIDER_KEY,
    Proxy,
    config_text,
    post_json,
    raw_request,
    wait_for,
)
from tests.e2e.test_faults import FAST, RATE_LIMITED, answer_text, chat, events
from tests.fakes import FakeUpstream, Scripted
from tests.processes import memory, reset_peak, start_proxy, write_config
from tests.rawtcp import (
    CLOSE,
    DONE,
    LAST_CHUNK,
    READ,
    SSE_HEAD,
    RawServer,
    Send,
    Silence,
    chunk,
    completion_body,
    completion_chunk,
    head,
    json_response,
)

# --------------------------------------------------------------------------------------------------
# Fixtures (as in tests/e2e/test_faults.py and tests/ops/test_lifecycle.py)




# --------------------------------------------------------------------------------------------------
# Helpers


def bounded_proxy(make_proxy: Callable[..., Proxy], fake: FakeUpstream, raw: RawServer, *, provider_type: str = "openai",
                  fallback: bool = True, server: str = "{max_upstream_body_bytes: 1024, max_held_bytes: 4096}") -> Proxy:
    """A proxy whose route `faulty` tries the raw server first (as `provider_type`) and, with
    `fallback`, the fake's openai flavor second; small upstream bounds."""
    base = "/v1"
    text = config_text(fake, providers=f'  raw: {{type: {provider_type}, base_url: "{raw.base_url}{base}"}}\n')
    second = "\n      - {provider: openai, model: gpt-4o, priority: 1}" if fallback else ""
    return make_proxy(text=text + f"""
server: {server}
routes:
  faulty:
    strategy: priority
    timeouts: {FAST}
    endpoints:
      - {{provider: raw, model: raw-model, priority: 0, api_key: raw-key}}{second}
""")


def padded_completion(size: int) -> bytes:
    """A valid chat.completion body of about `size` bytes."""
    return completion_body("x" * size)


def answered_by_fallback(response: Any, stream: bool = False) -> None:
    assert answer_text(response, stream) == "[openai] hello"
    assert response.headers["x-tensorwall-provider"] == "openai"


# --------------------------------------------------------------------------------------------------
# 13. Hostile numbers: Retry-After, usage


@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "-5", "soon", "9" * 400])
def test_a_retry_after_that_is_not_a_finite_non_negative_number_is_treated_as_absent(
        make_proxy: Callable[..., Proxy], scripted: Callable[[str, Scripted], str], value: str) -> None:
    model = scripted("limited", (429, {"retry-after": value}, RATE_LIMITED))
    proxy = make_proxy(f"""
retries: {{cooldown_seconds: 9}}
routes:
  limited:
    endpoints: [{{provider: openai, model: {model}}}]
""")
    response = chat(proxy, "limited")
    assert response.status == 429, response.body
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["retry-after"] == "9"  # the configured cooldown


@pytest.mark.parametrize("header", ["retry-after", "retry-after-ms"])
def test_retry_after_reaches_the_caller_capped_at_300_seconds(
        make_proxy: Callable[..., Proxy], scripted: Callable[[str, Scripted], str], header: str) -> None:
    model = scripted("limited", (429, {header: "86400000"}, RATE_LIMITED))
    proxy = make_proxy(f"""
routes:
  limited:
    endpoints: [{{provider: openai, model: {model}}}]
""")
    response = chat(proxy, "limited")
    assert response.status == 429, response.body
    assert response.headers["retry-after"] == "300"


HOSTILE_USAGE = [
    {"prompt_tokens": "many", "completion_tokens": 2, "total_tokens": 2},
    {"prompt_tokens": -5, "completion_tokens": -7, "total_tokens": -12},
    {"prompt_tokens": 1.5, "completion_tokens": True, "total_tokens": []},
    {"prompt_tokens": 10**30, "completion_tokens": None},
]


def _metrics(proxy: Proxy) -> tuple[int, str]:
    response = raw_request(proxy.url + "/metrics", method="GET", headers={"X-API-Key": GATEWAY_KEY})
    return response.status, response.text


@pytest.mark.parametrize("usage", HOSTILE_USAGE, ids=["string", "negative", "fraction-bool-list", "huge"])
def test_bad_usage_in_an_answer_serves_the_answer_and_counts_nothing_bad(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, raw_server: Callable[..., RawServer],
        usage: dict[str, Any]) -> None:
    body = json.loads(completion_body("counted"))
    body["usage"] = usage
    raw = raw_server([READ, Send(json_response(json.dumps(body).encode())), CLOSE])
    proxy = bounded_proxy(make_proxy, fake, raw, fallback=False)
    response = chat(proxy)
    assert response.status == 200, response.body
    assert response.json()["choices"][0]["message"]["content"] == "counted"
    status, text = _metrics(proxy)
    assert status == 200, text
    assert "-" not in "".join(line.rsplit(" ", 1)[-1] for line in text.splitlines()
                              if line.startswith("tensorwall_tokens_total"))


@pytest.mark.parametrize("usage", HOSTILE_USAGE, ids=["string", "negative", "fraction-bool-list", "huge"])
def test_bad_usage_in_a_stream_ends_it_with_done_and_nothing_after(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, raw_server: Callable[..., RawServer],
        usage: dict[str, Any]) -> None:
    usage_event = ("data: " + json.dumps({"id": "chatcmpl-raw", "object": "chat.completion.chunk", "created": 1,
                                          "model": "raw-model", "choices": [], "usage": usage}) + "\n\n").encode()
    body = completion_chunk("counted") + completion_chunk(finish="stop") + usage_event + DONE
    raw = raw_server([READ, Send(SSE_HEAD + chunk(body) + LAST_CHUNK), CLOSE])
    proxy = bounded_proxy(make_proxy, fake, raw, fallback=False)
    response = chat(proxy, stream=True, stream_options={"include_usage": True})
    assert answer_text(response, True) == "counted"
    assert not any('"error"' in event for event in events(response))
    status, text = _metrics(proxy)
    assert status == 200, text


@pytest.mark.parametrize("usage", [{"input_tokens": "many", "output_tokens": -3},
                                   {"input_tokens": 1e300, "output_tokens": [1],
                                    "cache_read_input_tokens": "x"}], ids=["string-negative", "huge-list"])
def test_bad_usage_from_a_translated_provider_serves_the_answer(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, raw_server: Callable[..., RawServer],
        usage: dict[str, Any]) -> None:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-raw",
               "content": [{"type": "text", "text": "counted"}], "stop_reason": "end_turn", "usage": usage}
    raw = raw_server([READ, Send(json_response(json.dumps(message).encode())), CLOSE])
    proxy = bounded_proxy(make_proxy, fake, raw, provider_type="anthropic", fallback=False)
    response = chat(proxy)
    assert response.status == 200, response.body
    answer = response.json()
    assert answer["choices"][0]["message"]["content"] == "counted"
    assert answer["usage"]["prompt_tokens"] == 0 and answer["usage"]["completion_tokens"] == 0


def _anthropic_stream(*events_: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events_)


ANTHROPIC_START = ("message_start", {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-raw", "content": [],
    "usage": "not an object"}})


def test_bad_usage_in_a_translated_stream_ends_it_with_done(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, raw_server: Callable[..., RawServer]) -> None:
    body = _anthropic_stream(
        ANTHROPIC_START,
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "counted"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"output_tokens": "lots", "input_tokens": -4}}),
        ("message_stop", {"type": "message_stop"}))
    raw = raw_server([READ, Send(SSE_HEAD + chunk(body) + LAST_CHUNK), CLOSE])
    proxy = bounded_proxy(make_proxy, fake, raw, provider_type="anthropic", fallback=False)
    response = chat(proxy, stream=True, stream_options={"include_usage": True})
    assert answer_text(response, True) == "counted"
    usage = json.loads(events(response)[-2].removeprefix("data: "))["usage"]
    assert usage["prompt_tokens"] == 0 and usage["completion_tokens"] == 0


# --------------------------------------------------------------------------------------------------
# 14. Statuses that are no answer, and answers that are not in the API's shape


NOT_ANSWERS = {
    "302": head(302, {"Location": "http://10.1.2.3:8080/elsewhere", "Content-Length": "0", "Connection": "close"}),
    "204": head(204, {"Connection": "close"}),
    "304": head(304, {"Connection": "close"}),
    "empty-200": json_response(b""),
    "text-200": head(200, {"Content-Type": "text/html", "Content-Length": "13", "Connection": "close"})
    + b"<html></html>",
    "choices-not-a-list": json_response(b'{"id":"x","choices":"nope"}'),
    "json-array": json_response(b"[1,2,3]"),
}


@pytest.mark.parametrize("answer", list(NOT_ANSWERS))
def test_an_upstream_reply_that_is_no_answer_is_a_502_that_falls_back(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, raw_server: Callable[..., RawServer],
        answer: str) -> None:
    raw = raw_server([READ, Send(NOT_ANSWERS[answer]), CLOSE])
    proxy = bounded_proxy(make_proxy, fake, raw)
    answered_by_fallback(chat(proxy))

    alone = bounded_proxy(make_proxy, fake, raw, fallback=False)
    response = chat(alone)
    assert response.status == 502, (response.status, response.body)
    assert response.json()["error"]["type"] == "server_error"
    assert "location" not in response.headers and "10.1.2.3" not in response.text


@pytest.mark.parametrize("answer", ["302", "204"])
def test_a_stream_answered_with_no_answer_falls_back(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, raw_server: Callable[..., RawServer],
        answer: str) -> None:
    raw = raw_server([READ, Send(NOT_ANSWERS[answer]), CLOSE])
    proxy = bounded_proxy(make_proxy, fake, raw)
    answered_by_fallback(chat(proxy, stream=True), stream=True)


def test_a_translated_answer_of_the_wrong_shape_is_a_502(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, raw_server: Callable[..., RawServer]) -> None:
    message = {"id": "msg_1", "type": "message", "content": "not a list of blocks", "usage": {}}
    raw = raw_server([READ, Send(json_response(json.dumps(message).encode())), CLOSE])
    proxy = bounded_proxy(make_proxy, fake, raw, provider_type="anthropic", fallback=False)
    response = chat(proxy)
    assert response.status == 502, response.body
    assert "not in its API's shape" in response.json()["error"]["message"]


def test_a_translated_stream_event_of_the_wrong_shape_is_a_502_that_falls_back(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, raw_server: Callable[..., RawServer]) -> None:
    body = _anthropic_stream(ANTHROPIC_START, ("content_block_start", {
        "type": "content_block_start", "index": 0, "content_block": "not an object"}))
    raw = raw_server([READ, Send(SSE_HEAD + chunk(body)), Silence(5)])
    proxy = bounded_proxy(make_proxy, fake, raw, provider_type="anthropic")
    answered_by_fallback(chat(proxy, stream=True), stream=True)


# --------------------------------------------------------------------------------------------------
# 16. Rate-limit headers: a fixed list of names, short printable values


def test_only_the_known_rate_limit_headers_pass_and_only_short_printable_values(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, raw_server: Callable[..., RawServer]) -> None:
    headers = {
        "x-ratelimit-remaining-requests": "99",
        "x-ratelimit-reset-tokens": "1m30s",
        "x-ratelimit-limit-tokens": "9" * 200,  # too long: dropped
        "x-ratelimit-limit-requests": "a\tb",  # not printable: dropped
        "x-ratelimit-evil": "passed-before",
        **{f"x-ratelimit-flood-{i}": "z" * 50 for i in range(100)},
    }
    raw = raw_server([READ, Send(json_response(completion_body("hi"), headers=headers)), CLOSE])
    proxy = bounded_proxy(make_proxy, fake, raw, fallback=False)
    response = chat(proxy)
    assert response.status == 200, response.body
    passed = {name: value for name, value in response.headers.items() if "ratelimit" in name}
    assert passed == {"x-ratelimit-remaining-requests": "99", "x-ratelimit-reset-tokens": "1m30s"}


# --------------------------------------------------------------------------------------------------
# 7. Upstream bodies: counted as read, after decompression


def _gzip_head(body: bytes, extra: dict[str, str] | None = None) -> bytes:
    return head(200, {"Content-Type": "application/json", "Content-Encoding": "gzip",
                      "Content-Length": str(len(body)), "Connection": "close", **(extra or {})}) + body


BIG = padded_completion(4096)
BODIES = {
    # The length is announced and too large: refused before a byte is read.
    "content-length": json_response(BIG),
    # No length at all: only counting finds it.
    "chunked": head(200, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    + chunk(BIG[:2000]) + chunk(BIG[2000:]) + LAST_CHUNK,
    "close-delimited": head(200, {"Content-Type": "application/json", "Connection": "close"}) + BIG,
    # A Content-Length far under the bound, a body far over it once inflated.
    "gzip": _gzip_head(gzip.compress(padded_completion(100_000))),
}


@pytest.mark.parametrize("form", list(BODIES))
def test_a_chat_answer_past_max_upstream_body_bytes_is_a_502_that_falls_back(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, raw_server: Callable[..., RawServer],
        form: str) -> None:
    assert form != "gzip" or len(gzip.compress(padded_completion(100_000))) < 1024
    raw = raw_server([READ, Send(BODIES[form]), CLOSE])
    proxy = bounded_proxy(make_proxy, fake, raw)
    answered_by_fallback(chat(proxy))
    assert [r.flavor for r in fake.requests] == ["openai"]

    alone = bounded_proxy(make_proxy, fake, raw, fallback=False)
    response = chat(alone)
    assert response.status == 502, response.body
    assert "larger than 1024 bytes" in response.json()["error"]["message"]


def test_an_answer_within_the_bound_is_served_gzip_included(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, raw_server: Callable[..., RawServer]) -> None:
    raw = raw_server([READ, Send(_gzip_head(gzip.compress(padded_completion(200)))), CLOSE])
    proxy = bounded_proxy(make_proxy, fake, raw)
    response = chat(proxy)
    assert response.status == 200, response.body
    assert response.headers["x-tensorwall-provider"] == "raw"
    assert response.json()["choices"][0]["message"]["content"] == "x" * 200


def test_embeddings_answers_are_not_held_to_the_chat_bound(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, raw_server: Callable[..., RawServer]) -> None:
    """DESIGN §14: max_upstream_body_bytes is for chat answers; embeddings get 256 MiB."""
    vectors = {"object": "list", "model": "raw-model", "usage": {"prompt_tokens": 1, "total_tokens": 1},
               "data": [{"object": "embedding", "index": 0, "embedding": [0.125] * 1000}]}
    raw = raw_server([READ, Send(json_response(json.dumps(vectors).encode())), CLOSE])
    proxy = bounded_proxy(make_proxy, fake, raw, fallback=False)
    response = post_json(proxy, "/v1/embeddings", {"model": "faulty", "input": "hi", "encoding_format": "float"})
    assert response.status == 200, response.body
    assert len(response.json()["data"][0]["embedding"]) == 1000


def test_a_stream_holding_more_than_max_held_bytes_before_its_commit_point_fails_the_attempt(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, raw_server: Callable[..., RawServer]) -> None:
    """Role-only chunks show the client nothing, so they are held; past max_held_bytes, 502."""
    roles = completion_chunk(role=True) * 400  # about 80 KiB, far past the 4 KiB bound
    raw = raw_server([READ, Send(SSE_HEAD + chunk(roles)), Silence(5)])
    alone = bounded_proxy(make_proxy, fake, raw, fallback=False)
    response = chat(alone, stream=True)
    assert response.status == 502, response.body
    assert response.headers["content-type"].startswith("application/json")  # nothing was committed
    assert "more than 4096 bytes before any content" in response.json()["error"]["message"]
    assert wait_for(lambda: raw.connections[0].closed_at is not None)
    assert raw.connections[0].closed_by == "peer"

    proxy = bounded_proxy(make_proxy, fake, raw)
    answered_by_fallback(chat(proxy, stream=True), stream=True)


def test_a_stream_whose_prelude_fits_is_served(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                               raw_server: Callable[..., RawServer]) -> None:
    body = completion_chunk(role=True) * 10 + completion_chunk("fine") + completion_chunk(finish="stop") + DONE
    raw = raw_server([READ, Send(SSE_HEAD + chunk(body) + LAST_CHUNK), CLOSE])
    proxy = bounded_proxy(make_proxy, fake, raw, fallback=False)
    response = chat(proxy, stream=True)
    assert answer_text(response, True) == "fine"


# --------------------------------------------------------------------------------------------------
# DESIGN §4: what an attack may cost, as peak RSS growth of one `serve` process



def _attack_growth(spawn: Callable[..., Any], tmp_path: Path, raw: RawServer, stream: bool) -> float:
    """Peak RSS growth (MiB) of a `serve` subprocess while one request meets `raw`; the answer must be a 502."""
    config = write_config(tmp_path, f"""gateway_keys: []
providers:
  raw: {{type: openai, base_url: "{raw.base_url}/v1"}}
timeouts: {{connect: 2, first_byte: 10, idle: 10, total: 20}}
""")
    proc, port = start_proxy(spawn, config)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = json.dumps({"model": "raw/m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
    warm = raw_request(f"http://127.0.0.1:{port}/v1/models", method="GET")
    assert warm.status == 200
    before = reset_peak(proc.pid)
    started = time.monotonic()
    response = raw_request(url, body, {"Content-Type": "application/json", "Authorization": "Bearer sk-k"})
    assert response.status == 502, response.body[:300]
    assert time.monotonic() - started < 20
    return (memory(proc.pid)["VmHWM"] - before) / (1024 * 1024)


@pytest.mark.slow
def test_an_upstream_gzip_bomb_costs_at_most_200_mib(raw_server: Callable[..., RawServer], tmp_path: Path,
                                                      spawn: Callable[..., Any]) -> None:
    member = gzip.compress(bytes(16 * 1024 * 1024), 9)  # 16 MiB of zeros in ~16 KiB
    bomb = member * 32  # 512 MiB once inflated, in about half a megabyte
    growth = _attack_growth(spawn, tmp_path, raw_server([READ, Send(_gzip_head(bomb)), CLOSE]), stream=False)
    assert growth <= 200, f"peak RSS grew {growth:.0f} MiB"


@pytest.mark.slow
def test_a_flood_of_held_events_costs_at_most_100_mib(raw_server: Callable[..., RawServer], tmp_path: Path,
                                                       spawn: Callable[..., Any]) -> None:
    # Role-only chunks never reach the commit point; 64 KiB each (a padded id), 200 MiB in all.
    role = json.dumps({"id": "c" * 65000, "object": "chat.completion.chunk", "created": 1, "model": "m",
                       "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
    block = chunk(f"data: {role}\n\n".encode() * 16)  # ~1 MiB per write, the same bytes each time
    raw = raw_server([READ, Send(SSE_HEAD), *[Send(block) for _ in range(200)], Send(chunk(DONE) + LAST_CHUNK), CLOSE])
    growth = _attack_growth(spawn, tmp_path, raw, stream=True)
    assert growth <= 100, f"peak RSS grew {growth:.0f} MiB"


@pytest.mark.slow
def test_a_gzipped_stream_of_held_events_costs_at_most_100_mib(raw_server: Callable[..., RawServer], tmp_path: Path,
                                                                 spawn: Callable[..., Any]) -> None:
    """The stream's bound counts decompressed bytes, and one read never inflates without bound."""
    role = completion_chunk(role=True)
    member = gzip.compress(role * (16 * 1024 * 1024 // len(role)), 9)  # 16 MiB of role chunks in ~64 KiB
    head_ = head(200, {"Content-Type": "text/event-stream", "Content-Encoding": "gzip", "Connection": "close"})
    raw = raw_server([READ, Send(head_ + member * 32), CLOSE])  # 512 MiB once inflated
    growth = _attack_growth(spawn, tmp_path, raw, stream=True)
    assert growth <= 100, f"peak RSS grew {growth:.0f} MiB"


# --------------------------------------------------------------------------------------------------
# 8. A client that stops reading: its stream ends, and so does its upstream call


def test_a_client_that_never_reads_loses_its_stream_and_its_upstream_connection(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, raw_server: Callable[..., RawServer]) -> None:
    event = completion_chunk("y" * 65000)
    # ~13 MiB: far more than the socket buffers between the gateway and a client that reads nothing.
    raw = raw_server([READ, Send(SSE_HEAD), *[Send(chunk(event)) for _ in range(200)],
                      Send(chunk(DONE) + LAST_CHUNK), Silence(20)])
    proxy = bounded_proxy(make_proxy, fake, raw, fallback=False)
    port = int(proxy.url.rsplit(":", 1)[1])
    body = json.dumps({"model": "faulty", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    client = socket.socket()
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", port))
        client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                       + f"X-API-Key: {GATEWAY_KEY}\r\nAuthorization: Bearer {PROVIDER_KEY}\r\n".encode()
                       + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        # Never read. idle is 0.3 s: the stream must end within a few idle periods of filling the buffers.
        assert wait_for(lambda: bool(raw.connections) and raw.connections[0].closed_at is not None, 10.0)
        assert raw.connections[0].closed_by == "peer"
    finally:
        client.close()
