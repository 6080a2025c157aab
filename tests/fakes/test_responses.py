"""The fake upstream's OpenAI Responses API and legacy completions: if it lies about them, every
native passthrough test lies too. A real FakeUpstream on 127.0.0.1, a plain aiohttp client."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import orjson
import pytest

from tests.fakes import AZURE_MODEL, RESPONSES_CUSTOM_INPUT, RESPONSES_STORED, TOOL_ARGUMENTS, FakeUpstream
from tests.fakes.fixtures import fake, http  # noqa: F401  (pytest fixtures, used by name)

BEARER = {"Authorization": "Bearer sk-test"}
TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}


async def call(http: aiohttp.ClientSession, method: str, url: str, body: Any = None,
               headers: dict[str, str] = BEARER) -> tuple[int, Any]:
    data = orjson.dumps(body) if body is not None else None
    async with http.request(method, url, data=data, headers=headers) as resp:
        return resp.status, orjson.loads(await resp.read())


async def events(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of a Responses stream, each `event:` line checked against its data's type."""
    async with http.post(url, data=orjson.dumps({**body, "stream": True}), headers=BEARER) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        text = (await resp.read()).decode()
    out = []
    for block in filter(None, text.split("\n\n")):
        head, data = block.split("\n")
        out.append(json.loads(data.removeprefix("data: ")))
        assert head == f"event: {out[-1]['type']}"
    return out


async def test_a_text_response_is_a_whole_response_object(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, body = await call(http, "POST", fake.base_url + "/openai/v1/responses",
                              {"model": "gpt-4o", "input": "Hello there world", "instructions": "Be brief",
                               "x_unknown": 1})
    assert status == 200 and body["object"] == "response" and body["status"] == "completed"
    assert body["output"][0]["content"] == [{"type": "output_text", "text": "[openai] Hello there world",
                                             "annotations": [], "logprobs": []}]
    # Words: 3 of input and 2 of instructions, 4 of reply.
    assert body["usage"] == {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                             "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 9}
    assert body["instructions"] == "Be brief" and body["store"] is True and body["id"] in fake.responses
    assert fake.last("openai").json["x_unknown"] == 1


async def test_a_stream_follows_the_event_grammar(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    stream = await events(http, fake.base_url + "/groq/openai/v1/responses",
                          {"model": "llama", "input": "one two", "max_output_tokens": 2})
    assert [e["sequence_number"] for e in stream] == list(range(len(stream)))
    assert [e["type"] for e in stream] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.incomplete"]
    assert stream[0]["response"]["output"] == [] and stream[0]["response"]["status"] == "in_progress"
    assert stream[2]["item"]["content"] == [] and stream[3]["part"]["text"] == ""
    final = stream[-1]["response"]
    assert final["incomplete_details"] == {"reason": "max_output_tokens"} and final["id"] == stream[0]["response"]["id"]
    assert "".join(e["delta"] for e in stream if e["type"].endswith(".delta")) == "[groq] one"


async def test_function_calls_stream_and_come_back(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    url = fake.base_url + "/openai/v1/responses"
    stream = await events(http, url, {"model": "gpt-4o", "input": "weather?", "tools": [TOOL]})
    added = stream[2]
    assert added["type"] == "response.output_item.added" and added["item"]["arguments"] == ""
    done = next(e for e in stream if e["type"] == "response.function_call_arguments.done")
    assert done["name"] == "get_weather" and done["arguments"] == TOOL_ARGUMENTS
    item = stream[-1]["response"]["output"][0]
    status, body = await call(http, "POST", url, {"model": "gpt-4o", "tools": [TOOL], "input": [
        item, {"type": "function_call_output", "call_id": item["call_id"], "output": "sunny"}]})
    assert status == 200 and body["output"][0]["content"][0]["text"] == "[openai] tool said: sunny"
    status, body = await call(http, "POST", url, {"model": "gpt-4o", "input": "patch", "tools": [
        {"type": "web_search"}, {"type": "custom", "name": "apply_patch"}]})
    assert status == 200 and body["output"][0]["type"] == "custom_tool_call"
    assert body["output"][0]["input"] == RESPONSES_CUSTOM_INPUT


async def test_stored_responses_continue_list_and_delete(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    url = fake.base_url + "/openai/v1/responses"
    _, first = await call(http, "POST", url, {"model": "gpt-4o", "input": "one two three"})
    status, second = await call(http, "POST", url, {"model": "gpt-4o", "input": "four",
                                                    "previous_response_id": first["id"]})
    assert status == 200 and second["previous_response_id"] == first["id"]
    assert second["usage"]["input_tokens"] == 3 + 4 + 1  # the stored input and output count again
    assert await call(http, "GET", f"{url}/{first['id']}") == (200, first)
    status, items = await call(http, "GET", f"{url}/{first['id']}/input_items")
    assert status == 200 and [i["content"] for i in items["data"]] == [[{"type": "input_text", "text": "one two three"}]]
    assert items["first_id"] == items["data"][0]["id"] and items["has_more"] is False
    assert await call(http, "DELETE", f"{url}/{first['id']}") == (200, {"id": first["id"], "object":
                                                                         "response.deleted", "deleted": True})
    status, error = await call(http, "GET", f"{url}/{first['id']}")
    assert status == 404 and "not found" in error["error"]["message"]
    status, error = await call(http, "POST", url, {"model": "gpt-4o", "input": "x", "previous_response_id": "resp_no"})
    assert status == 400 and error["error"]["code"] == "previous_response_not_found"
    _, unstored = await call(http, "POST", url, {"model": "gpt-4o", "input": "x", "store": False})
    assert unstored["id"] not in fake.responses and unstored["store"] is False


async def test_the_store_is_bounded(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    url = fake.base_url + "/lmstudio/v1/responses"
    ids = [(await call(http, "POST", url, {"model": "m", "input": "x"}, {}))[1]["id"] for _ in range(RESPONSES_STORED + 1)]
    assert len(fake.responses) == RESPONSES_STORED and ids[0] not in fake.responses and ids[-1] in fake.responses


async def test_azure_serves_responses_on_its_v1_path(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    url = fake.base_url + "/azure/openai/v1/responses"
    status, body = await call(http, "POST", url, {"model": "my-deployment", "input": "hi"}, {"api-key": "k"})
    assert status == 200 and body["model"] == AZURE_MODEL
    status, _ = await call(http, "POST", url, {"model": "my-deployment", "input": "hi"}, {})
    assert status == 401


@pytest.mark.parametrize(("word", "last"), [("error-before-content", "error"),
                                            ("failed-before-content", "response.failed")])
async def test_failures_before_content(fake: FakeUpstream, http: aiohttp.ClientSession, word: str, last: str) -> None:
    stream = await events(http, fake.base_url + "/openai/v1/responses", {"model": word, "input": "hi"})
    assert [e["type"] for e in stream][:2] == ["response.created", "response.in_progress"]
    assert stream[-1]["type"] == last and not any(e["type"].endswith(".delta") for e in stream)


async def test_error_mid_stream_comes_after_the_first_delta(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    stream = await events(http, fake.base_url + "/openai/v1/responses", {"model": "error-mid-stream", "input": "a b"})
    assert [e["type"] for e in stream][-2:] == ["response.output_text.delta", "error"]
    assert stream[-1]["code"] == "server_error"


async def test_legacy_completions(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    url = fake.base_url + "/ollama/v1/completions"
    status, body = await call(http, "POST", url, {"model": "m", "prompt": ["one two three"], "max_tokens": 2}, {})
    assert status == 200 and body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "[ollama] one" and body["choices"][0]["finish_reason"] == "length"
    async with http.post(url, data=orjson.dumps({"model": "m", "prompt": "a b", "stream": True,
                                                 "stream_options": {"include_usage": True}})) as resp:
        text = (await resp.read()).decode()
    chunks = [json.loads(b.removeprefix("data: ")) for b in text.split("\n\n") if b and b != "data: [DONE]"]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "[ollama] a b"
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert text.endswith("data: [DONE]\n\n")
