"""Tests of the fake upstream itself: if it lies about a wire format, every gateway test lies too.

Each test talks to a real FakeUpstream on 127.0.0.1 with a plain aiohttp client.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from typing import Any

import aiohttp
import orjson
import pytest
from yarl import URL

from tests.fakes import AZURE_MODEL, GZIP_BOMB, TOOL_ARGUMENTS, FakeUpstream, embedding_vector
from tests.fakes.fixtures import fake, http  # noqa: F401  (pytest fixtures, used by name)

BEARER = {"Authorization": "Bearer sk-test"}
HELLO = [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hello there world"}]

# Where each flavor's chat endpoint lives, and the headers it needs.
CHAT: dict[str, tuple[str, dict[str, str]]] = {
    "openai": ("/openai/v1/chat/completions", BEARER),
    "groq": ("/groq/openai/v1/chat/completions", BEARER),
    "mistral": ("/mistral/v1/chat/completions", BEARER),
    "lmstudio": ("/lmstudio/v1/chat/completions", {}),
    "ollama": ("/ollama/v1/chat/completions", {}),
    "azure": ("/azure/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21", {"api-key": "k"}),
}


async def post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[int, Any]:
    async with http.post(url, data=orjson.dumps(body), headers=headers) as resp:
        return resp.status, orjson.loads(await resp.read())


async def stream(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str]
) -> list[str]:
    """The `data:` payloads of an SSE response, in order."""
    async with http.post(url, data=orjson.dumps(body), headers=headers) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        text = (await resp.read()).decode()
    assert text.endswith("\n\n")
    return [event.removeprefix("data: ") for event in text.split("\n\n") if event]


def content_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def test_non_streamed_reply_and_usage(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, body = await post(
        http, fake.base_url + "/openai/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO}, BEARER
    )
    assert status == 200
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "gpt-4o"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "[openai] Hello there world", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    # Word counts: 2 + 3 words of prompt, 4 words of reply.
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
    rec = fake.last("openai")
    assert rec.model == "gpt-4o"
    assert rec.header("authorization") == "Bearer sk-test"
    assert rec.finished_at is not None
    assert rec.disconnected_at is None


@pytest.mark.parametrize(("stop", "text"), [("there", "[openai] Hello "), (["world", "Hello"], "[openai] "),
                                           ("absent", "[openai] Hello there world")])
async def test_stop_cuts_before_the_earliest_sequence(fake: FakeUpstream, http: aiohttp.ClientSession, stop: Any,
                                                      text: str) -> None:
    status, body = await post(http, fake.base_url + "/openai/v1/chat/completions",
                              {"model": "gpt-4o", "messages": HELLO, "stop": stop}, BEARER)
    assert status == 200
    assert body["choices"][0]["message"]["content"] == text and body["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("flavor", list(CHAT))
async def test_stream_reassembles_to_the_non_streamed_text(
    fake: FakeUpstream, http: aiohttp.ClientSession, flavor: str
) -> None:
    path, headers = CHAT[flavor]
    request = {"model": "m", "messages": HELLO}
    _, whole = await post(http, fake.base_url + path, request, headers)
    events = await stream(http, fake.base_url + path, {**request, "stream": True}, headers)
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    with_choices = [c for c in chunks if c["choices"]]
    assert with_choices[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert content_of(chunks) == whole["choices"][0]["message"]["content"] == f"[{flavor}] Hello there world"
    assert with_choices[-1]["choices"][0]["finish_reason"] == "stop"
    assert len({(c["id"], c["created"], c["model"]) for c in with_choices}) == 1


async def test_include_usage_adds_a_final_usage_chunk(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    request = {"model": "m", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    events = await stream(http, fake.base_url + "/v1/chat/completions", request, BEARER)
    chunks = [orjson.loads(e) for e in events[:-1]]
    *earlier, last = chunks
    assert last["choices"] == []
    assert last["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
    assert all("usage" in c and c["usage"] is None for c in earlier)
    assert fake.last().flavor == "openai"


async def test_mistral_streams_usage_on_the_finish_chunk(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    events = await stream(
        http,
        fake.base_url + "/mistral/v1/chat/completions",
        {"model": "m", "messages": HELLO, "stream": True},
        BEARER,
    )
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert all(c["choices"] for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["total_tokens"] == 9


async def test_azure_stream_opens_with_a_filter_only_chunk(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    path, headers = CHAT["azure"]
    events = await stream(http, fake.base_url + path, {"messages": HELLO, "stream": True}, headers)
    first, *rest = (orjson.loads(e) for e in events[:-1])
    assert first["choices"] == [] and first["id"] == "" and first["created"] == 0
    assert first["prompt_filter_results"][0]["prompt_index"] == 0
    assert all("content_filter_results" in c["choices"][0] for c in rest)
    assert {c["model"] for c in rest} == {AZURE_MODEL}


async def test_azure_api_version_and_percent_encoded_deployment(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    root = fake.base_url + "/azure/openai/deployments/gpt%2F4/chat/completions"
    body = {"messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    async with http.post(URL(root, encoded=True), json=body, headers={"api-key": "k"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["param"] == "api-version"
    old = URL(root + "?api-version=2024-02-01", encoded=True)
    async with http.post(old, json=body, headers={"api-key": "k"}) as resp:
        assert resp.status == 400
        assert "stream_options" in (await resp.json())["error"]["message"]
    rec = fake.last("azure")
    assert rec.raw_path == "/azure/openai/deployments/gpt%2F4/chat/completions?api-version=2024-02-01"
    assert rec.deployment == "gpt/4"
    assert fake.for_model("gpt/4") == fake.requests[-2:]
    status, _ = await post(http, root + "?api-version=2024-10-21", body, {})
    assert status == 401


async def test_mistral_rejects_stream_options_and_foreign_tool_ids(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    url = fake.base_url + "/mistral/v1/chat/completions"
    body = {"model": "m", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    status, error = await post(http, url, body, BEARER)
    assert status == 422
    assert error == {
        "detail": [
            {
                "loc": ["body", "stream_options"],
                "msg": "Extra inputs are not permitted",
                "type": "extra_forbidden",
            }
        ]
    }
    foreign = "call_abcdefghijklmnopqrstuvwx"
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": foreign, "type": "function", "function": {"name": "w", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": foreign, "content": "sunny"},
    ]
    status, error = await post(http, url, {"model": "m", "messages": messages}, BEARER)
    assert status == 400
    assert error == {
        "object": "error",
        "message": f"Tool call id was {foreign} but must be a-z, A-Z, 0-9, with a length of 9.",
        "type": "invalid_request_error",
        "param": None,
        "code": "3280",
    }
    assert fake.last("mistral").json["messages"][2]["tool_call_id"] == foreign


async def test_tool_calls_use_each_flavors_id_format(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    body = {"model": "m", "messages": HELLO, "tools": tools}
    _, openai = await post(http, fake.base_url + "/openai/v1/chat/completions", body, BEARER)
    _, mistral = await post(http, fake.base_url + "/mistral/v1/chat/completions", body, BEARER)
    for reply, id_length in ((openai, 29), (mistral, 9)):
        choice = reply["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] is None
        (call,) = choice["message"]["tool_calls"]
        assert call["function"] == {"name": "get_weather", "arguments": TOOL_ARGUMENTS}
        assert len(call["id"]) == id_length and call["id"].removeprefix("call_").isalnum()
    events = await stream(
        http, fake.base_url + "/openai/v1/chat/completions", {**body, "stream": True}, BEARER
    )
    deltas = [orjson.loads(e)["choices"][0]["delta"] for e in events[:-1]]
    fragments = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert fragments[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert len(fragments) >= 3
    assert "".join(f["function"]["arguments"] for f in fragments) == TOOL_ARGUMENTS


async def test_groq_rejects_n_above_one(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = {"model": "m", "messages": HELLO, "n": 2}
    status, error = await post(http, fake.base_url + "/groq/openai/v1/chat/completions", body, BEARER)
    assert status == 400
    assert error["error"]["param"] == "n"
    status, reply = await post(http, fake.base_url + "/openai/v1/chat/completions", body, BEARER)
    assert status == 200 and [c["index"] for c in reply["choices"]] == [0, 1]


async def test_missing_bearer_is_refused_but_not_by_local_servers(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    body = {"model": "m", "messages": HELLO}
    status, error = await post(http, fake.base_url + "/openai/v1/chat/completions", body, {})
    assert status == 401 and error["error"]["code"] == "invalid_api_key"
    status, _ = await post(http, fake.base_url + "/ollama/v1/chat/completions", body, {})
    assert status == 200


async def test_fail_429_sends_retry_after(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = {"model": "gpt-4o-fail-429", "messages": HELLO}
    async with http.post(fake.base_url + "/openai/v1/chat/completions", json=body, headers=BEARER) as resp:
        assert resp.status == 429
        assert resp.headers["retry-after"] == "7"
        assert resp.headers["retry-after-ms"] == "7000"
        error = (await resp.json())["error"]
    assert error["type"] == error["code"] == "rate_limit_exceeded"
    assert len(fake.for_model("gpt-4o-fail-429")) == 1


async def test_gzip_bomb_is_small_on_the_wire_and_huge_inflated(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake.gzip_bomb_mib = 3
    body = {"model": f"gpt-4o-{GZIP_BOMB}", "messages": HELLO}
    async with http.post(fake.base_url + "/openai/v1/chat/completions", json=body, headers=BEARER) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Encoding"] == "gzip"
        assert resp.content_length is not None and resp.content_length < 64 * 1024
        inflated = await resp.read()  # aiohttp inflates it
    assert len(inflated) > 3 * 1024 * 1024
    message = orjson.loads(inflated)["choices"][0]["message"]
    assert message["content"] == "a" * (3 * 1024 * 1024)


async def test_hang_records_the_caller_leaving(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = {"model": "hang", "messages": HELLO}
    with pytest.raises(TimeoutError):
        async with http.post(
            fake.base_url + "/openai/v1/chat/completions",
            json=body,
            headers=BEARER,
            timeout=aiohttp.ClientTimeout(total=0.2),
        ):
            pass
    rec = fake.last()
    for _ in range(100):
        if rec.disconnected_at is not None:
            break
        await asyncio.sleep(0.01)
    assert rec.disconnected_at is not None
    assert rec.finished_at is None
    assert rec.disconnected_at - rec.started_at >= 0.15


async def test_cut_mid_stream_breaks_the_connection(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = {"model": "cut-mid-stream", "messages": HELLO, "stream": True}
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(
            fake.base_url + "/openai/v1/chat/completions", json=body, headers=BEARER
        ) as resp:
            async for piece in resp.content.iter_any():
                received += piece
    assert received.count(b"data: ") == 3
    assert b"[DONE]" not in received


async def test_embeddings_base64_for_openai_floats_for_ollama(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    body = {"model": "e", "input": ["alpha", "beta gamma"], "encoding_format": "base64"}
    status, openai = await post(http, fake.base_url + "/openai/v1/embeddings", body, BEARER)
    assert status == 200
    assert openai["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    decoded = [
        list(struct.unpack(f"<{len(raw) // 4}f", raw))
        for raw in (base64.b64decode(item["embedding"]) for item in openai["data"])
    ]
    assert decoded == [embedding_vector("alpha"), embedding_vector("beta gamma")]
    assert all(-1 <= v <= 1 for v in decoded[0])
    status, ollama = await post(http, fake.base_url + "/ollama/v1/embeddings", body, {})
    assert status == 200
    assert [item["embedding"] for item in ollama["data"]] == decoded
    assert [item["index"] for item in ollama["data"]] == [0, 1]
    _, truncated = await post(
        http, fake.base_url + "/openai/v1/embeddings", {**body, "dimensions": 3}, BEARER
    )
    assert len(base64.b64decode(truncated["data"][0]["embedding"])) == 3 * 4
