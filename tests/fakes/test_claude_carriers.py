"""The fake's Claude on Bedrock (InvokeModel, its stream, CountTokens) and Vertex (rawPredict,
streamRawPredict, count-tokens), Anthropic's count_tokens and beta-gated fields, and Gemini's
countTokens: what they answer and what they refuse, as those services do (wire-formats-dialects C, D)."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import orjson
from botocore.eventstream import EventStreamBuffer

from tests.fakes.fixtures import fake, http  # noqa: F401  (pytest fixtures, used by name)
from tests.fakes.upstream import VERTEX_PROJECT, FakeUpstream

CLAUDE = "anthropic.claude-3-7-sonnet-20250219-v1:0"
BODY: Any = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50,
             "messages": [{"role": "user", "content": "two words"}]}
BEARER = {"Authorization": "Bearer fake-key"}


async def post(http: aiohttp.ClientSession, url: str, body: Any, **headers: str) -> tuple[int, bytes]:
    async with http.post(url, data=orjson.dumps(body), headers={**BEARER, "Content-Type": "application/json",
                                                                **headers}) as response:
        return response.status, await response.read()


def vertex(model: str, method: str) -> str:
    return f"/vertex/v1/projects/{VERTEX_PROJECT}/locations/us-east5/publishers/anthropic/models/{model}:{method}"


async def test_bedrock_invoke_answers_a_messages_body(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, f"{fake.base_url}/bedrock/model/{CLAUDE}/invoke",
                              {**BODY, "anthropic_beta": ["context-1m-2025-08-07"]})
    message = orjson.loads(body)
    assert status == 200 and message["id"].startswith("msg_bdrk_")
    assert message["content"] == [{"type": "text", "text": "[bedrock] two words"}]


async def test_bedrock_refuses_what_bedrock_refuses(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    url = f"{fake.base_url}/bedrock/model/{CLAUDE}/invoke"
    for bad, message in (({**BODY, "anthropic_beta": ["claude-code-20250219"]}, "invalid beta flag"),
                         ({**BODY, "anthropic_beta": ["interleaved-thinking-2025-05-14"]}, "invalid beta flag"),
                         ({**BODY, "model": CLAUDE}, "model: Extra inputs are not permitted"),
                         ({**BODY, "stream": True}, "stream: Extra inputs are not permitted"),
                         ({k: v for k, v in BODY.items() if k != "anthropic_version"}, "anthropic_version"),
                         ({**BODY, "context_management": {"edits": []}}, "context_management: Extra inputs")):
        status, body = await post(http, url, bad)
        assert status == 400 and message in orjson.loads(body)["message"], bad


async def test_bedrock_streams_base64_anthropic_events(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{fake.base_url}/bedrock/model/{CLAUDE}/invoke-with-response-stream",
                         data=orjson.dumps(BODY), headers=BEARER) as response:
        assert response.headers["Content-Type"] == "application/vnd.amazon.eventstream"
        raw = await response.read()
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    events = []
    for frame in buffer:
        assert frame.headers[":event-type"] == "chunk"
        events.append(orjson.loads(base64.b64decode(orjson.loads(frame.payload)["bytes"])))
    kinds = [e["type"] for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert events[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] > 0


async def test_bedrock_count_tokens(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    wrapped = {"input": {"invokeModel": {"body": base64.b64encode(orjson.dumps(BODY)).decode()}}}
    status, body = await post(http, f"{fake.base_url}/bedrock/model/us.{CLAUDE}/count-tokens", wrapped)
    assert status == 200 and orjson.loads(body) == {"inputTokens": 2}
    no_max = {k: v for k, v in BODY.items() if k != "max_tokens"}
    wrapped = {"input": {"invokeModel": {"body": base64.b64encode(orjson.dumps(no_max)).decode()}}}
    status, body = await post(http, f"{fake.base_url}/bedrock/model/{CLAUDE}/count-tokens", wrapped)
    assert status == 400 and "max_tokens" in orjson.loads(body)["message"]


async def test_vertex_raw_predict_and_its_betas(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = {**BODY, "anthropic_version": "vertex-2023-10-16"}
    status, answer = await post(http, fake.base_url + vertex("claude-sonnet-4-5@20250929", "rawPredict"), body,
                                **{"anthropic-beta": "interleaved-thinking-2025-05-14"})
    assert status == 200 and orjson.loads(answer)["content"][0]["text"] == "[vertex] two words"
    status, answer = await post(http, fake.base_url + vertex("claude-sonnet-4-5@20250929", "rawPredict"), body,
                                **{"anthropic-beta": "prompt-caching-scope-2026-01-05"})
    assert status == 400
    assert "Unexpected value(s) `prompt-caching-scope-2026-01-05`" in orjson.loads(answer)["error"]["message"]
    async with http.post(fake.base_url + vertex("claude-sonnet-4-5@20250929", "streamRawPredict"),
                         data=orjson.dumps({**body, "stream": True}), headers=BEARER) as response:
        text = (await response.read()).decode()
    assert text.startswith("event: message_start\n") and text.rstrip().endswith('{"type":"message_stop"}')
    status, answer = await post(http, fake.base_url + vertex("count-tokens", "rawPredict"),
                                {"anthropic_version": "vertex-2023-10-16", "model": "claude-sonnet-4-5@20250929",
                                 "messages": BODY["messages"]})
    assert status == 200 and orjson.loads(answer) == {"input_tokens": 2}


async def test_anthropic_opens_a_field_only_with_its_beta(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = {"model": "claude-3-7-sonnet-20250219", "max_tokens": 50, "context_management": {"edits": []},
            "messages": [{"role": "user", "content": "x"}]}
    url = f"{fake.base_url}/anthropic/v1/messages"
    status, answer = await post(http, url, body, **{"anthropic-version": "2023-06-01"})
    assert status == 400 and "context_management: Extra inputs" in orjson.loads(answer)["error"]["message"]
    status, _ = await post(http, url, body, **{"anthropic-version": "2023-06-01",
                                               "anthropic-beta": "context-management-2025-06-27"})
    assert status == 200
    status, answer = await post(http, url + "/count_tokens", {k: v for k, v in body.items() if k != "max_tokens"},
                                **{"anthropic-version": "2023-06-01", "anthropic-beta": "context-management-2025-06-27"})
    assert status == 200 and orjson.loads(answer) == {"input_tokens": 1}


async def test_gemini_count_tokens(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    url = (f"{fake.base_url}/vertex/v1/projects/{VERTEX_PROJECT}/locations/us-central1/publishers/google/models/"
           "gemini-2.5-flash:countTokens")
    status, answer = await post(http, url, {"contents": [{"role": "user", "parts": [{"text": "three more words"}]}],
                                            "systemInstruction": {"parts": [{"text": "Be brief."}]}})
    assert status == 200 and orjson.loads(answer)["totalTokens"] == 5
