"""Caller input the gateway must refuse cheaply and clearly: bombs in packed tool call ids,
embeddings fan-out, and field values of the wrong JSON type — through the real proxy."""

from __future__ import annotations

import json
import logging
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tensorwall_proxy.providers.ids import attach
from tests.conftest import Proxy, post_json
from tests.fakes import FakeUpstream
from tests.processes import Proc, memory, request, start_proxy, write_config

MIB = 1 << 20


def bomb(tag: bytes, mib: int) -> bytes:
    """Packed state under ``tag`` that inflates to ``mib`` MiB: one deflate block repeated after
    full flushes (each one is then byte-identical), closed with the right checksum. About 1 KB per MiB."""
    chunk = b"[" * MIB
    packer = zlib.compressobj(9)
    head = packer.compress(chunk) + packer.flush(zlib.Z_FULL_FLUSH)
    unit = packer.compress(chunk) + packer.flush(zlib.Z_FULL_FLUSH)
    end = packer.flush()[:-4]
    checksum = 1
    for _ in range(mib):
        checksum = zlib.adler32(chunk, checksum)
    return tag + head + unit * (mib - 1) + end + struct.pack(">I", checksum)




@pytest.mark.slow
def test_a_gigabyte_bomb_in_a_tool_call_id_costs_little_memory_and_time(tmp_path: Path,
                                                                         spawn: Callable[..., Proc]) -> None:
    # Nothing listens on the upstream: the request must be refused before any upstream call.
    config = write_config(tmp_path, 'gateway_keys: []\nproviders:\n  anthropic: {base_url: "http://127.0.0.1:9/v1"}\n')
    proc, port = start_proxy(spawn, config)
    headers = {"Authorization": "Bearer sk-ant-api03-test"}
    model = "anthropic/claude-3-7-sonnet-20250219"

    def turn(tool_id: str) -> dict[str, object]:
        return {"model": model, "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": tool_id, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": tool_id, "content": "sunny"}]}

    # A warm-up with an ordinary packed id of the same length, so the peak below is the bomb's own.
    plain = attach("toolu_A", b"A1" + bytes(1_060_000))
    status, _ = request(port, "/v1/chat/completions", turn(plain), headers)
    assert status == 502  # nothing listens upstream
    before = memory(proc.pid)["VmHWM"]

    bombed = attach("toolu_A", bomb(b"A1", 1024))  # 1 GiB inflated, a 1.4 MB request
    started = time.monotonic()
    status, body = request(port, "/v1/chat/completions", turn(bombed), headers)
    elapsed = time.monotonic() - started
    grown = memory(proc.pid)["VmHWM"] - before
    assert status == 400, body
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "messages[1].tool_calls[0].id"
    # DESIGN §4: a bomb in a packed id costs at most 50 MiB of peak RSS and less than a second.
    assert grown <= 50 * MIB, f"peak RSS grew {grown / MIB:.0f} MiB"
    assert elapsed < 1.0, f"answered after {elapsed:.2f} s"
    assert "Traceback" not in proc.log()


# --- embeddings: a bounded number of inputs (the parsing itself: tests/dialects/test_chat.py) ----


@pytest.mark.parametrize("model", ["bedrock/amazon.titan-embed-text-v2:0", "vertex/gemini-embedding-001",
                                   "openai/text-embedding-3-small"])
def test_too_many_embedding_inputs_are_refused_before_any_upstream_call(proxy: Proxy, fake: FakeUpstream,
                                                                         model: str) -> None:
    response = post_json(proxy, "/v1/embeddings", {"model": model, "input": [f"text {i}" for i in range(2049)]})
    assert response.status == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "input" and "2048" in error["message"]
    assert fake.requests == []


# --- wrong JSON types: a 400, never a 500 ------------------------------------------------------------

_HELLO = [{"role": "user", "content": "Hello"}]
_TRANSLATED = ["anthropic/claude-sonnet-4-5", "vertex/gemini-2.5-flash", "bedrock/anthropic.claude-sonnet-4-5-v1:0"]


@pytest.mark.parametrize("model", _TRANSLATED)
@pytest.mark.parametrize("stop", [5, True, 1.5, {"a": "b"}, [1, 2]])
def test_a_stop_that_is_not_text_is_a_400_naming_it(proxy: Proxy, fake: FakeUpstream, caplog: pytest.LogCaptureFixture,
                                                     model: str, stop: object) -> None:
    caplog.set_level(logging.INFO)
    response = post_json(proxy, "/v1/chat/completions", {"model": model, "messages": _HELLO, "stop": stop})
    assert response.status == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "stop"
    assert fake.requests == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("modalities", [5, "audio", True, {"audio": 1}])
def test_modalities_that_are_not_an_array_are_a_400_on_anthropic(proxy: Proxy, caplog: pytest.LogCaptureFixture,
                                                                 modalities: object) -> None:
    caplog.set_level(logging.INFO)
    response = post_json(proxy, "/v1/chat/completions",
                         {"model": "anthropic/claude-sonnet-4-5", "messages": _HELLO, "modalities": modalities})
    assert response.status == 400, response.text
    assert response.json()["error"]["param"] == "modalities"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("model", ["openai/gpt-4o", "mistral/mistral-large-latest", *_TRANSLATED])
@pytest.mark.parametrize("fields", [
    {"tools": [{"type": "function", "function": {"name": {"n": 1}}}]},
    {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": 7}}},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": ["f"], "arguments": 5}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": 3}]}]},
    {"response_format": {"type": "json_schema", "json_schema": [1]}, "reasoning_effort": 3, "user": 5},
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": 5}}]}]},
])
def test_odd_values_of_other_fields_never_give_a_500(proxy: Proxy, caplog: pytest.LogCaptureFixture, model: str,
                                                     fields: dict[str, object]) -> None:
    caplog.set_level(logging.INFO)
    response = post_json(proxy, "/v1/chat/completions", {"model": model, "messages": _HELLO, **fields})
    assert response.status < 500, response.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- usage: OpenAI's names, the same streamed or not ------------------------------------------------


def _usage_of(proxy: Proxy, model: str, stream: bool) -> dict[str, object]:
    body = {"model": model, "messages": [{"role": "user", "content": "one two three"}], "reasoning_effort": "low"}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    response = post_json(proxy, "/v1/chat/completions", body)
    assert response.status == 200, response.text
    if not stream:
        usage: dict[str, object] = response.json()["usage"]
        return usage
    events = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"] == []
    streamed: dict[str, object] = last["usage"]
    return streamed


@pytest.mark.parametrize(("model", "cache_write"), [("anthropic/claude-sonnet-4-5-cache", 3),
                                                    ("bedrock/anthropic.claude-sonnet-4-5-cache-v1:0", 3),
                                                    ("anthropic/claude-sonnet-4-5", None),
                                                    ("vertex/gemini-2.5-flash", None)])
def test_usage_is_the_same_streamed_or_not_and_cache_writes_keep_anthropics_name(
        proxy: Proxy, model: str, cache_write: int | None) -> None:
    whole, streamed = _usage_of(proxy, model, False), _usage_of(proxy, model, True)
    assert whole == streamed
    # OpenAI's prompt_tokens_details holds cached_tokens (and audio_tokens); writes go beside them.
    details = whole.get("prompt_tokens_details") or {}
    assert isinstance(details, dict) and set(details) <= {"cached_tokens", "audio_tokens"}
    assert whole.get("cache_creation_input_tokens") == cache_write
    if cache_write:
        assert details == {"cached_tokens": 7}
