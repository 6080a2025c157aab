"""Tests of the fake upstream's bedrock flavor (AWS Bedrock Runtime) and of its event-stream encoder.

botocore is the judge of the wire format. The real aiobotocore client signs every SDK call with
SigV4, so each 200 it gets proves the fake's signature check accepts real signatures; it parses
every answer against the service model, and iterates ConverseStream with its own event-stream
decoder (CRCs included). On top of that, raw bodies and event payloads are checked strictly against
the bedrock-runtime service model (`assert_shape`: no unknown key, required members present, enums,
one member per union), because botocore's parser silently ignores what it does not know. The
request checks and the faults are tested with a plain aiohttp client, signed with botocore's own
signer (`bedrock_sigv4_headers`), so that a test can change the request after signing.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import re
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiobotocore.session
import aiohttp
import botocore.auth
import botocore.session
import orjson
import pytest
from botocore.config import Config
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer
from botocore.exceptions import ClientError, EventStreamError
from yarl import URL

from tests.fakes import (
    BEDROCK_ACCESS_KEY,
    BEDROCK_CACHE_READ_TOKENS,
    BEDROCK_CACHE_WRITE_TOKENS,
    BEDROCK_COHERE_MAX_TEXTS,
    BEDROCK_FAULT_WORDS,
    BEDROCK_LATENCY_MS,
    BEDROCK_SECRET_KEY,
    BEDROCK_SIGNATURE_MISMATCH,
    BEDROCK_SPLIT_BYTES,
    BEDROCK_THINKING_PREFIX,
    BEDROCK_TOOL_INPUT,
    BEDROCK_VALIDATION_ERROR_TYPE,
    EMBEDDING_SIZE,
    FakeUpstream,
    bedrock_reasoning_block,
    bedrock_signature,
    bedrock_sigv4_headers,
    corrupt_message_crc,
    embedding_vector,
    encode_error,
    encode_event,
    encode_event_message,
    encode_exception,
)
from tests.fakes.fixtures import fake, http  # noqa: F401  (pytest fixtures, used by name)

CLAUDE = "anthropic.claude-3-5-sonnet-20240620-v1:0"
NOVA = "amazon.nova-lite-v1:0"
TITAN = "amazon.titan-embed-text-v2:0"
COHERE = "cohere.embed-english-v3"
ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20241022-v2:0"
HELLO: Any = [{"role": "user", "content": [{"text": "Hello there world"}]}]
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
WEATHER: Any = {
    "toolSpec": {
        "name": "get_weather",
        "description": "The weather in a city",
        "inputSchema": {"json": {"type": "object", "properties": {"location": {"type": "string"}}}},
    }
}
TIME: Any = {"toolSpec": {"name": "get_time", "inputSchema": {"json": {"type": "object"}}}}
TOOLS: Any = {"tools": [WEATHER, TIME]}
THINKING: Any = {"thinking": {"type": "enabled", "budget_tokens": 1024}}
TOOL_USE_ID = re.compile(r"tooluse_[A-Za-z0-9]{22}")
SESSION_KEY = "ASIAFAKEBEDROCK0002"
SESSION_SECRET = "fake-bedrock-session-secret"
SESSION_TOKEN = "fake-session-token//with+odd=chars"
_SERVICE = botocore.session.get_session().get_service_model("bedrock-runtime")


# -- fixtures and helpers ----------------------------------------------------------------------------


@asynccontextmanager
async def sdk(
    fake: FakeUpstream,
    access_key: str | None = BEDROCK_ACCESS_KEY,
    secret_key: str | None = BEDROCK_SECRET_KEY,
    session_token: str | None = None,
) -> AsyncIterator[Any]:
    """The real aiobotocore client, retries off so each test sees each answer."""
    session = aiobotocore.session.get_session()
    async with session.create_client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=fake.base_url + "/bedrock",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        aws_session_token=session_token,
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=5),
    ) as client:
        yield client


@pytest.fixture
async def bedrock(fake: FakeUpstream) -> AsyncIterator[Any]:
    async with sdk(fake) as client:
        yield client


def target(fake: FakeUpstream, model: str, action: str = "converse") -> str:
    """The URL the gateway builds under `base_url: {fake}/bedrock`: the model id fully encoded."""
    return f"{fake.base_url}/bedrock/model/{quote(model, safe='')}/{action}"


def converse(**fields: Any) -> dict[str, Any]:
    """A valid Converse body: the defaults, overridden (or, with None, removed) by `fields`."""
    body: dict[str, Any] = {"messages": HELLO, **fields}
    return {key: value for key, value in body.items() if value is not None}


@dataclass
class Answer:
    status: int
    headers: Any
    data: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.data)

    @property
    def error_type(self) -> str:
        return str(self.headers.get("x-amzn-ErrorType", "")).split(":", 1)[0]


async def post(
    http: aiohttp.ClientSession,
    fake: FakeUpstream,
    body: Any,
    model: str = CLAUDE,
    action: str = "converse",
    *,
    headers: dict[str, str] | None = None,
    url: str | None = None,
) -> Answer:
    """POST exactly these bytes to exactly this URL (no re-encoding), signed with botocore's signer
    unless `headers` are given."""
    url = url or target(fake, model, action)
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    if headers is None:
        headers = bedrock_sigv4_headers(url, data)
    async with http.post(URL(url, encoded=True), data=data, headers=headers) as resp:
        return Answer(resp.status, resp.headers, await resp.read())


def frames_of(data: bytes, piece: int | None = None) -> list[tuple[dict[str, Any], Any]]:
    """Decode an event stream with botocore's EventStreamBuffer, fed whole or in `piece`-byte pieces."""
    buffer = EventStreamBuffer()
    messages = []
    step = piece or max(len(data), 1)
    for start in range(0, len(data), step):
        buffer.add_data(data[start : start + step])
        messages.extend(buffer)
    assert buffer._data == b"", "bytes left over after the last complete frame"
    return [(dict(m.headers), orjson.loads(m.payload) if m.payload else None) for m in messages]


async def stream_bytes(http: aiohttp.ClientSession, fake: FakeUpstream, body: Any, model: str) -> list[bytes]:
    """The chunks of a ConverseStream answer as aiohttp read them."""
    url = target(fake, model, "converse-stream")
    data = orjson.dumps(body)
    async with http.post(URL(url, encoded=True), data=data, headers=bedrock_sigv4_headers(url, data)) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"] == "application/vnd.amazon.eventstream"
        return [chunk async for chunk, _ in resp.content.iter_chunks()]


def events(frames: list[tuple[dict[str, Any], Any]]) -> list[tuple[str, Any]]:
    """(event type, payload) of each event frame, the padding key dropped."""
    found = []
    for headers, payload in frames:
        assert headers[":message-type"] == "event", headers
        assert headers[":content-type"] == "application/json"
        found.append((headers[":event-type"], {k: v for k, v in payload.items() if k != "p"}))
    return found


def assert_shape(value: Any, shape: Any, path: str = "$", *, padding: bool = False) -> None:
    """Strictly check JSON against a bedrock-runtime shape: botocore's parser would ignore surprises."""
    kind = shape.type_name
    if kind == "structure" and shape.metadata.get("document"):
        return
    if kind == "structure":
        assert isinstance(value, dict), f"{path}: expected an object, got {value!r}"
        unknown = set(value) - set(shape.members) - ({"p"} if padding else set())
        assert not unknown, f"{path}: keys the service model does not define: {unknown}"
        missing = [name for name in shape.required_members if name not in value]
        assert not missing, f"{path}: required members missing: {missing}"
        if shape.metadata.get("union"):
            assert len(value) == 1, f"{path}: a union sets exactly one member, not {sorted(value)}"
        for name, member in shape.members.items():
            if name in value:
                assert_shape(value[name], member, f"{path}.{name}")
    elif kind == "list":
        assert isinstance(value, list), path
        for i, item in enumerate(value):
            assert_shape(item, shape.member, f"{path}[{i}]")
    elif kind == "map":
        assert isinstance(value, dict), path
        for key, item in value.items():
            assert_shape(item, shape.value, f"{path}.{key}")
    elif kind == "string":
        assert isinstance(value, str), path
        assert not shape.enum or value in shape.enum, f"{path}: {value!r} not in {shape.enum}"
        pattern = shape.metadata.get("pattern")
        assert pattern is None or re.fullmatch(pattern, value), f"{path}: {value!r} !~ {pattern}"
    elif kind in ("integer", "long"):
        assert isinstance(value, int) and not isinstance(value, bool), path
        assert value >= shape.metadata.get("min", value), path
    elif kind in ("float", "double"):
        assert isinstance(value, int | float) and not isinstance(value, bool), path
    elif kind == "boolean":
        assert isinstance(value, bool), path
    elif kind == "blob":
        base64.b64decode(value, validate=True)
    else:  # pragma: no cover - the shapes used here have no other kinds
        raise AssertionError(f"{path}: unexpected shape kind {kind}")


def assert_converse_body(body: Any) -> None:
    assert_shape(body, _SERVICE.operation_model("Converse").output_shape)


def assert_stream_events(frames: list[tuple[dict[str, Any], Any]]) -> None:
    stream = _SERVICE.operation_model("ConverseStream").output_shape.members["stream"]
    for headers, payload in frames:
        member = headers.get(":event-type") or headers.get(":exception-type")
        assert member in stream.members, member
        assert_shape(payload, stream.members[member], member, padding=True)


def text_of(content: list[dict[str, Any]]) -> str:
    return "".join(block.get("text", "") for block in content)


def tool_turns(*first: Any, tool_use_id: str = "tooluse_abc", result: Any = None) -> list[Any]:
    """user asks, assistant (`first` blocks, then a toolUse) calls get_weather, user answers."""
    use = {"toolUse": {"toolUseId": tool_use_id, "name": "get_weather", "input": {"location": "Paris"}}}
    content = result if result is not None else [{"text": "sunny"}]
    return [
        {"role": "user", "content": [{"text": "Weather in Paris?"}]},
        {"role": "assistant", "content": [*first, use]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": tool_use_id, "content": content}}]},
    ]


# -- the encoder -----------------------------------------------------------------------------------


def test_the_worked_example_of_wire_formats_5_4() -> None:
    message = encode_event("messageStop", {"stopReason": "end_turn"})
    total_length, headers_length = struct.unpack(">II", message[:8])
    assert (total_length, headers_length, len(message)) == (122, 81, 122)
    assert message[12 : 12 + 26] == b"\x0b:event-type\x07\x00\x0bmessageStop"
    assert message[12 + 81 : -4] == b'{"stopReason":"end_turn"}'
    [(headers, payload)] = frames_of(message)
    assert headers == {
        ":event-type": "messageStop",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    assert payload == {"stopReason": "end_turn"}


def test_what_is_encoded_decodes_the_same_in_any_pieces() -> None:
    stream = b"".join(
        [
            encode_event("messageStart", {"role": "assistant"}),
            encode_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "héllo ✓"}}),
            encode_event_message({":message-type": "event", ":event-type": "raw"}, b""),
            encode_exception("throttlingException", "slow down"),
            encode_exception(
                "modelStreamErrorException", "boom", originalStatusCode=500, originalMessage="x"
            ),
        ]
    )
    expected = [
        ("messageStart", {"role": "assistant"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "héllo ✓"}}),
        ("raw", None),
        ("throttlingException", {"message": "slow down"}),
        ("modelStreamErrorException", {"message": "boom", "originalStatusCode": 500, "originalMessage": "x"}),
    ]
    for piece in (None, 1, 3, BEDROCK_SPLIT_BYTES, 100):
        decoded = frames_of(stream, piece)
        assert [(h.get(":event-type") or h.get(":exception-type"), p) for h, p in decoded] == expected
        assert [h[":message-type"] for h, _ in decoded] == ["event"] * 3 + ["exception"] * 2


def test_an_error_message_carries_its_code_in_headers() -> None:
    [(headers, payload)] = frames_of(encode_error("InternalFailure", "it broke"))
    assert headers == {
        ":message-type": "error",
        ":error-code": "InternalFailure",
        ":error-message": "it broke",
    }
    assert payload is None


def test_a_wrong_crc_is_refused_by_botocore() -> None:
    good = encode_event("messageStart", {"role": "assistant"})
    buffer = EventStreamBuffer()
    buffer.add_data(corrupt_message_crc(good))
    with pytest.raises(ChecksumMismatch):
        list(buffer)
    # The prelude CRC is checked too: a changed length shows.
    broken = bytearray(good)
    broken[3] ^= 0x01
    buffer = EventStreamBuffer()
    buffer.add_data(bytes(broken))
    with pytest.raises(ChecksumMismatch):
        list(buffer)


# -- the real SDK: SigV4 accepted, answers parsed ---------------------------------------------------


async def test_converse_through_the_sdk(fake: FakeUpstream, bedrock: Any) -> None:
    answer = await bedrock.converse(modelId=CLAUDE, messages=HELLO)
    assert answer["output"]["message"] == {
        "role": "assistant",
        "content": [{"text": "[bedrock] Hello there world"}],
    }
    assert answer["stopReason"] == "end_turn"
    assert answer["usage"] == {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7}
    assert answer["metrics"] == {"latencyMs": BEDROCK_LATENCY_MS}
    assert answer["ResponseMetadata"]["RequestId"]
    rec = fake.last("bedrock")
    assert rec.raw_path == "/bedrock/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    assert rec.path_model == rec.model == CLAUDE
    assert rec.auth_scheme == "sigv4"
    assert rec.aws_credential is not None
    key, date, region, service, end = rec.aws_credential.split("/")
    assert (key, region, service, end) == (BEDROCK_ACCESS_KEY, "us-east-1", "bedrock", "aws4_request")
    assert date == rec.header("X-Amz-Date")[:8]
    assert rec.json == {"messages": HELLO}
    assert fake.for_model(CLAUDE) == [rec]


async def test_the_raw_converse_body_matches_the_service_model(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    for body in (
        converse(),
        converse(toolConfig=TOOLS),
        converse(
            inferenceConfig={"maxTokens": 2048}, additionalModelRequestFields=THINKING, toolConfig=TOOLS
        ),
    ):
        answer = await post(http, fake, body, model="global.anthropic.claude-sonnet-4-cache")
        assert answer.status == 200, answer.data
        assert answer.headers["Content-Type"] == "application/json"
        assert answer.headers["x-amzn-RequestId"]
        assert_converse_body(answer.json)


async def test_a_session_token_is_required_and_checked(fake: FakeUpstream) -> None:
    fake.aws_credentials[SESSION_KEY] = (SESSION_SECRET, SESSION_TOKEN)
    async with sdk(fake, SESSION_KEY, SESSION_SECRET, SESSION_TOKEN) as client:
        answer = await client.converse(modelId=CLAUDE, messages=HELLO)
    assert text_of(answer["output"]["message"]["content"]) == "[bedrock] Hello there world"
    rec = fake.last("bedrock")
    assert rec.header("X-Amz-Security-Token") == SESSION_TOKEN
    assert "x-amz-security-token" in rec.header("Authorization")
    for token in ("another-token", None):
        async with sdk(fake, SESSION_KEY, SESSION_SECRET, token) as client:
            with pytest.raises(ClientError) as refused:
                await client.converse(modelId=CLAUDE, messages=HELLO)
        assert refused.value.response["Error"]["Code"] == "UnrecognizedClientException"
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    # A long-term key that comes with a token is refused as well.
    async with sdk(fake, session_token=SESSION_TOKEN) as client:
        with pytest.raises(ClientError, match="UnrecognizedClientException"):
            await client.converse(modelId=CLAUDE, messages=HELLO)


async def test_an_arn_model_id_travels_encoded_and_is_recorded_decoded(
    fake: FakeUpstream, bedrock: Any
) -> None:
    answer = await bedrock.converse(modelId=ARN, messages=HELLO)
    assert answer["stopReason"] == "end_turn"
    rec = fake.last("bedrock")
    assert rec.raw_path == f"/bedrock/model/{quote(ARN, safe='')}/converse"
    assert "%2F" in rec.raw_path and "%3A" in rec.raw_path
    assert rec.path_model == ARN


async def test_converse_stream_through_the_sdk(fake: FakeUpstream, bedrock: Any) -> None:
    answer = await bedrock.converse_stream(modelId=CLAUDE, messages=HELLO)
    got = [event async for event in answer["stream"]]
    kinds = [next(iter(event)) for event in got]
    assert kinds == [
        "messageStart",
        *["contentBlockDelta"] * 4,  # one per word: "[bedrock] ", "Hello ", "there ", "world"
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert "contentBlockStart" not in kinds  # text blocks start on their first delta
    assert got[0] == {"messageStart": {"role": "assistant"}}
    assert "".join(e["contentBlockDelta"]["delta"]["text"] for e in got[1:5]) == "[bedrock] Hello there world"
    assert {e["contentBlockDelta"]["contentBlockIndex"] for e in got[1:5]} == {0}
    assert got[-2] == {"messageStop": {"stopReason": "end_turn"}}
    assert got[-1] == {
        "metadata": {
            "usage": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7},
            "metrics": {"latencyMs": BEDROCK_LATENCY_MS},
        }
    }
    assert fake.last("bedrock").raw_path.endswith("%3A0/converse-stream")


async def test_stream_of_reasoning_and_a_tool_call_through_the_sdk(fake: FakeUpstream, bedrock: Any) -> None:
    answer = await bedrock.converse_stream(
        modelId=CLAUDE,
        messages=HELLO,
        inferenceConfig={"maxTokens": 2048},
        additionalModelRequestFields=THINKING,
        toolConfig=TOOLS,
    )
    got = [event async for event in answer["stream"]]
    reasoning = [
        e["contentBlockDelta"]["delta"]["reasoningContent"]
        for e in got
        if "reasoningContent" in e.get("contentBlockDelta", {}).get("delta", {})
    ]
    thought = "".join(r.get("text", "") for r in reasoning)
    assert thought == BEDROCK_THINKING_PREFIX + "[bedrock] Hello there world"
    assert reasoning[-1] == {"signature": bedrock_signature(thought)}
    [start] = [e["contentBlockStart"] for e in got if "contentBlockStart" in e]
    assert start["contentBlockIndex"] == 1
    assert start["start"]["toolUse"]["name"] == "get_weather"
    assert TOOL_USE_ID.fullmatch(start["start"]["toolUse"]["toolUseId"])
    fragments = [
        e["contentBlockDelta"]["delta"]["toolUse"]["input"]
        for e in got
        if "toolUse" in e.get("contentBlockDelta", {}).get("delta", {})
    ]
    assert 2 <= len(fragments) <= 3
    assert json.loads("".join(fragments)) == BEDROCK_TOOL_INPUT
    assert [e["contentBlockStop"]["contentBlockIndex"] for e in got if "contentBlockStop" in e] == [0, 1]
    assert got[-2] == {"messageStop": {"stopReason": "tool_use"}}
    assert "metadata" in got[-1]


async def test_stream_frames_match_the_service_model_and_carry_padding(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    body = converse(
        inferenceConfig={"maxTokens": 2048}, additionalModelRequestFields=THINKING, toolConfig=TOOLS
    )
    frames = frames_of(b"".join(await stream_bytes(http, fake, body, CLAUDE)))
    assert_stream_events(frames)
    padded = [headers[":event-type"] for headers, payload in frames if "p" in payload]
    assert "contentBlockDelta" in padded and "messageStop" in padded
    assert len({len(payload["p"]) for _, payload in frames if "p" in payload}) > 1
    names = [name for name, _ in events(frames)]
    assert names.index("metadata") == len(names) - 1 > names.index("messageStop")


async def test_invoke_model_titan_through_the_sdk(fake: FakeUpstream, bedrock: Any) -> None:
    answer = await bedrock.invoke_model(
        modelId=TITAN,
        body=orjson.dumps({"inputText": "Hello there world", "dimensions": 256, "normalize": True}),
        contentType="application/json",
        accept="application/json",
    )
    assert answer["contentType"] == "application/json"
    body = orjson.loads(await answer["body"].read())
    assert body == {"embedding": embedding_vector("Hello there world"), "inputTextTokenCount": 3}
    assert len(body["embedding"]) == EMBEDDING_SIZE  # min(EMBEDDING_SIZE, dimensions)
    headers = answer["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-bedrock-input-token-count"] == "3"
    assert fake.last("bedrock").raw_path == "/bedrock/model/amazon.titan-embed-text-v2%3A0/invoke"


async def test_invoke_model_titan_embedding_types(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    answer = await post(
        http, fake, {"inputText": "hi", "embeddingTypes": ["float", "binary"]}, TITAN, "invoke"
    )
    vector = embedding_vector("hi")
    assert answer.json["embeddingsByType"] == {"float": vector, "binary": [1 if v > 0 else 0 for v in vector]}


async def test_invoke_model_cohere_through_the_sdk(fake: FakeUpstream, bedrock: Any) -> None:
    texts = ["first text", "second"]
    for model in ("cohere.embed-english-v3", "cohere.embed-multilingual-v3"):
        answer = await bedrock.invoke_model(
            modelId=model,
            body=orjson.dumps({"texts": texts, "input_type": "search_document", "truncate": "END"}),
        )
        body = orjson.loads(await answer["body"].read())
        assert body["embeddings"] == [embedding_vector(t) for t in texts]
        assert body["response_type"] == "embeddings_floats"
        assert body["texts"] == texts
        assert isinstance(body["id"], str) and body["id"]


async def test_invoke_model_cohere_embedding_types(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = {"texts": ["a"], "input_type": "clustering", "embedding_types": ["float", "int8"]}
    answer = await post(http, fake, body, COHERE, "invoke")
    assert answer.status == 200, answer.data
    assert answer.json["response_type"] == "embeddings_by_type"
    assert answer.json["embeddings"]["float"] == [embedding_vector("a")]
    assert answer.json["embeddings"]["int8"] == [[round(v * 127) for v in embedding_vector("a")]]


# -- auth ------------------------------------------------------------------------------------------


async def test_a_bedrock_api_key_is_accepted_as_bearer(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    headers = {"Authorization": "Bearer bedrock-api-key-abc", "Content-Type": "application/json"}
    answer = await post(http, fake, converse(), headers=headers)
    assert answer.status == 200, answer.data
    assert text_of(answer.json["output"]["message"]["content"]) == "[bedrock] Hello there world"
    rec = fake.last("bedrock")
    assert rec.auth_scheme == "bearer"
    assert rec.aws_credential is None


async def test_the_sdk_sends_an_api_key_from_the_environment(
    fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "env-bedrock-api-key")
    async with sdk(fake, None, None) as client:
        answer = await client.converse(modelId=NOVA, messages=HELLO)
    assert answer["stopReason"] == "end_turn"
    rec = fake.last("bedrock")
    assert rec.auth_scheme == "bearer"
    assert rec.header("Authorization") == "Bearer env-bedrock-api-key"


async def test_a_body_changed_after_signing_is_refused(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    url = target(fake, CLAUDE)
    signed = orjson.dumps(converse())
    headers = bedrock_sigv4_headers(url, signed)
    answer = await post(
        http,
        fake,
        orjson.dumps(converse(messages=[{"role": "user", "content": [{"text": "Hi"}]}])),
        headers=headers,
    )
    assert answer.status == 403
    assert answer.error_type == "InvalidSignatureException"
    assert answer.json["message"].startswith(BEDROCK_SIGNATURE_MISMATCH)
    # AWS shows what it expected: the path signed double-encoded, the body's hash.
    assert "/bedrock/model/anthropic.claude-3-5-sonnet-20240620-v1%253A0/converse" in answer.json["message"]
    assert fake.last("bedrock").auth_scheme == "sigv4"
    # The same signed headers with the bytes that were signed pass.
    assert (await post(http, fake, signed, headers=headers)).status == 200


async def test_a_path_sent_other_than_signed_is_refused(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Signed with `%3A` but sent with `:` (what yarl does to a URL it is allowed to re-encode)."""
    encoded = target(fake, CLAUDE)
    data = orjson.dumps(converse())
    headers = bedrock_sigv4_headers(encoded, data)
    plain = f"{fake.base_url}/bedrock/model/{CLAUDE}/converse"
    answer = await post(http, fake, data, headers=headers, url=plain)
    assert answer.status == 403
    assert answer.error_type == "InvalidSignatureException"
    assert fake.last("bedrock").raw_path == f"/bedrock/model/{CLAUDE}/converse"
    # Signed as sent, the plain form is fine too: the check is about signing what is sent.
    assert (await post(http, fake, data, url=plain, headers=bedrock_sigv4_headers(plain, data))).status == 200


@pytest.mark.parametrize(
    ("signing", "error_type"),
    [
        ({"secret_key": "not-the-secret"}, "InvalidSignatureException"),
        ({"access_key": "AKIDUNKNOWN000000000"}, "UnrecognizedClientException"),
        ({"session_token": "a-token-for-a-long-term-key"}, "UnrecognizedClientException"),
    ],
)
async def test_wrong_credentials_are_refused(
    fake: FakeUpstream, http: aiohttp.ClientSession, signing: dict[str, str], error_type: str
) -> None:
    url = target(fake, CLAUDE)
    data = orjson.dumps(converse())
    answer = await post(http, fake, data, headers=bedrock_sigv4_headers(url, data, **signing))
    assert answer.status == 403
    assert answer.error_type == error_type
    assert answer.headers["x-amzn-ErrorType"].endswith(
        ":http://internal.amazon.com/coral/com.amazon.coral.service/"
    )
    assert isinstance(answer.json["message"], str)


async def test_a_wrong_secret_through_the_sdk(fake: FakeUpstream) -> None:
    async with sdk(fake, secret_key="not-the-secret") as client:
        with pytest.raises(ClientError) as refused:
            await client.converse(modelId=CLAUDE, messages=HELLO)
    assert refused.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert refused.value.response["Error"]["Message"].startswith(BEDROCK_SIGNATURE_MISMATCH)


async def test_missing_or_foreign_auth_is_refused(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    json_only = {"Content-Type": "application/json"}
    answer = await post(http, fake, converse(), headers=json_only)
    assert (answer.status, answer.error_type) == (403, "MissingAuthenticationTokenException")
    assert answer.json == {"message": "Missing Authentication Token"}
    assert fake.last("bedrock").auth_scheme is None
    answer = await post(http, fake, converse(), headers={**json_only, "Authorization": "Basic dXNlcjpwYXNz"})
    assert (answer.status, answer.error_type) == (403, "IncompleteSignatureException")
    answer = await post(
        http, fake, converse(), headers={**json_only, "Authorization": "AWS4-HMAC-SHA256 Signature=abc"}
    )
    assert (answer.status, answer.error_type) == (403, "IncompleteSignatureException")
    assert "'Credential'" in answer.json["message"] and "'SignedHeaders'" in answer.json["message"]


async def test_the_scope_must_name_bedrock(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = target(fake, CLAUDE)
    data = orjson.dumps(converse())
    request = AWSRequest(method="POST", url=url, data=data, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(BEDROCK_ACCESS_KEY, BEDROCK_SECRET_KEY), "bedrock-runtime", "us-east-1").add_auth(
        request
    )
    answer = await post(http, fake, data, headers=dict(request.headers.items()))
    assert (answer.status, answer.error_type) == (403, "InvalidSignatureException")
    assert "'bedrock'" in answer.json["message"]


async def test_only_signed_headers_count(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    url = target(fake, CLAUDE)
    data = orjson.dumps(converse())
    headers = bedrock_sigv4_headers(url, data, headers={"X-Custom": "signed  value"})
    assert "x-custom" in headers["Authorization"]
    answer = await post(http, fake, data, headers={**headers, "X-Unsigned": "added later"})
    assert answer.status == 200, answer.data
    answer = await post(http, fake, data, headers={**headers, "X-Custom": "changed"})
    assert (answer.status, answer.error_type) == (403, "InvalidSignatureException")


async def test_the_signature_is_checked_at_the_requests_own_time(
    fake: FakeUpstream, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signed ten minutes ago: expired for AWS's five minutes, but valid at its own X-Amz-Date."""
    then = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=10)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: then)
    url = target(fake, CLAUDE)
    data = orjson.dumps(converse())
    headers = bedrock_sigv4_headers(url, data)
    monkeypatch.undo()
    answer = await post(http, fake, data, headers=headers)
    assert (answer.status, answer.error_type) == (403, "InvalidSignatureException")
    assert answer.json["message"].startswith("Signature expired: ")
    fake.aws_max_skew = None
    assert (await post(http, fake, data, headers=headers)).status == 200
    # A date that is not the scope's is refused whatever the skew.
    headers["X-Amz-Date"] = then.replace(year=then.year - 1).strftime("%Y%m%dT%H%M%SZ")
    answer = await post(http, fake, data, headers=headers)
    assert (answer.status, answer.error_type) == (403, "InvalidSignatureException")
    assert answer.json["message"].startswith("Date in Credential scope does not match")


async def test_unknown_actions_and_raw_slashes_are_404(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    answer = await post(http, fake, converse(), action="chat")
    assert (answer.status, answer.error_type) == (404, "UnknownOperationException")
    raw = f"{fake.base_url}/bedrock/model/{ARN}/converse"  # `/` and `:` unencoded
    answer = await post(http, fake, converse(), url=raw)
    assert (answer.status, answer.error_type) == (404, "UnknownOperationException")
    async with http.get(fake.base_url + "/bedrock/model/x/converse") as resp:
        assert resp.status == 404
        assert resp.headers["x-amzn-ErrorType"].startswith("UnknownOperationException:")
    assert fake.last().flavor == "bedrock"


# -- Converse validation ---------------------------------------------------------------------------


def _messages(*turns: tuple[str, list[Any]]) -> list[Any]:
    return [{"role": role, "content": content} for role, content in turns]


_USE = {"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {}}}
_RESULT = {"toolResult": {"toolUseId": "t1", "content": [{"text": "sunny"}]}}
_ASKED = _messages(("user", [{"text": "hi"}]), ("assistant", [_USE]))


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (converse(model=CLAUDE), "Unknown member 'model'"),
        (converse(messages=[]), "must start with a user message"),
        (converse(messages=_messages(("assistant", [{"text": "hi"}]))), "must start with a user message"),
        (
            converse(messages=_messages(("user", [{"text": "a"}]), ("user", [{"text": "b"}]))),
            "A conversation must alternate between user and assistant roles",
        ),
        (
            converse(messages=_messages(("system", [{"text": "a"}]))),
            "Member must satisfy enum value set: [user, assistant]",
        ),
        (
            converse(messages=_messages(("user", []))),
            "The content field in the Message object at messages.0 is empty",
        ),
        (converse(messages=[{"role": "user", "content": "Hello"}]), "Member must be a list"),
        (
            converse(messages=_messages(("user", [{"text": "a", "image": {}}]))),
            "Exactly one member must be set",
        ),
        (converse(messages=_messages(("user", [{"video": {}}]))), "Unknown member 'video'"),
        (converse(messages=_messages(("user", [{"text": "  \n"}]))), "messages.0.content.0 is blank"),
        (
            converse(
                messages=_messages(
                    ("user", [{"image": {"format": "png", "source": {"url": "https://x/y.png"}}}])
                )
            ),
            "Unknown member 'url'",
        ),
        (
            converse(
                messages=_messages(
                    ("user", [{"image": {"format": "png", "source": {"bytes": "not base64!"}}}])
                )
            ),
            "Invalid base64",
        ),
        (
            converse(
                messages=_messages(("user", [{"image": {"format": "bmp", "source": {"bytes": PNG_B64}}}]))
            ),
            "[png, jpeg, gif, webp]",
        ),
        (
            converse(messages=_messages(("user", [_USE])), toolConfig=TOOLS),
            "only allowed in a message whose role is assistant",
        ),
        (
            converse(
                messages=_messages(
                    ("user", [{"text": "hi"}]),
                    ("assistant", [{"toolUse": {**_USE["toolUse"], "toolUseId": "bad id!"}}]),
                ),
                toolConfig=TOOLS,
            ),
            "messages.1.content.0.toolUse.toolUseId",
        ),
        (
            converse(
                messages=_messages(
                    ("user", [{"text": "hi"}]),
                    ("assistant", [{"toolUse": {**_USE["toolUse"], "toolUseId": "x" * 65}}]),
                ),
                toolConfig=TOOLS,
            ),
            "toolUseId",
        ),
        (
            converse(
                messages=_messages(
                    ("user", [{"text": "hi"}]),
                    ("assistant", [{"toolUse": {**_USE["toolUse"], "name": "get.weather"}}]),
                ),
                toolConfig=TOOLS,
            ),
            "messages.1.content.0.toolUse.name",
        ),
        (
            converse(
                messages=_messages(
                    ("user", [{"text": "hi"}]),
                    ("assistant", [{"toolUse": {**_USE["toolUse"], "input": "{}"}}]),
                ),
                toolConfig=TOOLS,
            ),
            "messages.1.content.0.toolUse.input",
        ),
        (
            converse(
                messages=[
                    *_ASKED,
                    {"role": "user", "content": [_RESULT]},
                    {"role": "assistant", "content": [_RESULT]},
                ],
                toolConfig=TOOLS,
            ),
            "only allowed in a message whose role is user",
        ),
        (
            converse(
                messages=[
                    *_ASKED,
                    {
                        "role": "user",
                        "content": [{"toolResult": {**_RESULT["toolResult"], "toolUseId": "t2"}}],
                    },
                ],
                toolConfig=TOOLS,
            ),
            "'t2', which no toolUse block of the previous turn has",
        ),
        (
            converse(
                messages=[*_ASKED, {"role": "user", "content": [_RESULT, {"text": "and now?"}]}],
                toolConfig=TOOLS,
            ),
            "Conversation blocks and tool result blocks cannot be provided in the same turn.",
        ),
        (
            converse(
                messages=[
                    *_ASKED,
                    {
                        "role": "user",
                        "content": [{"toolResult": {"toolUseId": "t1", "content": [{"html": "<b>"}]}}],
                    },
                ],
                toolConfig=TOOLS,
            ),
            "Unknown member 'html'",
        ),
        (
            converse(messages=[*_ASKED, {"role": "user", "content": [_RESULT]}]),
            "The toolConfig field must be defined when using toolUse and toolResult content blocks.",
        ),
        (
            converse(
                messages=[*_ASKED, {"role": "user", "content": [{"text": "ignored the tool"}]}],
                toolConfig=TOOLS,
            ),
            "Expected toolResult blocks at messages.2.content for the following Ids: t1",
        ),
        (converse(toolConfig={"tools": []}), "toolConfig.tools"),
        (
            converse(
                toolConfig={
                    "tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {"type": "array"}}}}]
                }
            ),
            "Input should be 'object'",
        ),
        (converse(toolConfig={"tools": [WEATHER, WEATHER]}), "Tool names must be unique"),
        (
            converse(toolConfig={**TOOLS, "toolChoice": {"auto": {}, "any": {}}}),
            "Exactly one member must be set at 'toolConfig.toolChoice'",
        ),
        (converse(toolConfig={**TOOLS, "toolChoice": {"none": {}}}), "Unknown member 'none'"),
        (converse(toolConfig={**TOOLS, "toolChoice": {"tool": {"name": "nope"}}}), "names no toolSpec"),
        (converse(inferenceConfig={"maxTokens": 0}), "inferenceConfig.maxTokens"),
        (converse(inferenceConfig={"temperature": 1.5}), "Value '1.5' at 'inferenceConfig.temperature'"),
        (converse(inferenceConfig={"topP": -0.1}), "inferenceConfig.topP"),
        (converse(inferenceConfig={"stopSequences": "END"}), "inferenceConfig.stopSequences"),
        (converse(inferenceConfig={"max_tokens": 10}), "Unknown member 'max_tokens'"),
        (converse(system="Be brief."), "Member must be a list"),
        (converse(system=[{"text": ""}]), "system.0.text"),
        (
            converse(
                outputConfig={
                    "textFormat": {
                        "type": "json_schema",
                        "structure": {"jsonSchema": {"schema": {"type": "object"}}},
                    }
                }
            ),
            "Member must be a string",
        ),
        (
            converse(
                outputConfig={
                    "textFormat": {
                        "type": "json_schema",
                        "structure": {"jsonSchema": {"schema": "{not json"}},
                    }
                }
            ),
            "is not a valid JSON object",
        ),
        (
            converse(
                inferenceConfig={"maxTokens": 2048},
                additionalModelRequestFields={"thinking": {"type": "enabled", "budget_tokens": 1000}},
            ),
            "greater than or equal to 1024",
        ),
        (
            converse(inferenceConfig={"maxTokens": 1024}, additionalModelRequestFields=THINKING),
            "`max_tokens` must be greater than `thinking.budget_tokens`",
        ),
        (
            converse(additionalModelRequestFields=THINKING),
            "`max_tokens` must be greater than `thinking.budget_tokens`",
        ),
        (
            converse(
                inferenceConfig={"maxTokens": 2048, "temperature": 0.5}, additionalModelRequestFields=THINKING
            ),
            "`temperature` may only be set to 1",
        ),
        (
            converse(
                inferenceConfig={"maxTokens": 2048},
                additionalModelRequestFields=THINKING,
                toolConfig={**TOOLS, "toolChoice": {"any": {}}},
            ),
            "Thinking may not be enabled when tool_choice forces tool use.",
        ),
        (
            converse(
                inferenceConfig={"maxTokens": 2048}, additionalModelRequestFields={"thinking": {"type": "on"}}
            ),
            "Input tag 'on'",
        ),
    ],
)
async def test_converse_refusals(
    fake: FakeUpstream, http: aiohttp.ClientSession, body: Any, needle: str
) -> None:
    for action in ("converse", "converse-stream"):
        answer = await post(http, fake, body, action=action)
        assert answer.status == 400, answer.data
        assert answer.headers["x-amzn-ErrorType"] == BEDROCK_VALIDATION_ERROR_TYPE
        assert list(answer.json) == ["message"]
        assert needle in answer.json["message"], answer.json["message"]


async def test_thinking_is_refused_on_models_other_than_claude(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    body = converse(inferenceConfig={"maxTokens": 2048}, additionalModelRequestFields=THINKING)
    answer = await post(http, fake, body, model=NOVA)
    assert answer.status == 400
    assert "extraneous key [thinking] is not permitted" in answer.json["message"]
    assert (await post(http, fake, body, model=f"us.{CLAUDE}")).status == 200


async def test_a_refusal_through_the_sdk(bedrock: Any) -> None:
    with pytest.raises(ClientError) as refused:
        await bedrock.converse(modelId=CLAUDE, messages=[{"role": "assistant", "content": [{"text": "hi"}]}])
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


# -- the thinking signature rule -------------------------------------------------------------------


def _thinking_body(messages: list[Any]) -> dict[str, Any]:
    return converse(
        messages=messages,
        inferenceConfig={"maxTokens": 2048},
        additionalModelRequestFields=THINKING,
        toolConfig=TOOLS,
    )


async def test_with_thinking_the_last_tool_turn_must_start_with_signed_reasoning(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    answer = await post(http, fake, _thinking_body(tool_turns()))
    assert answer.status == 400
    assert "Expected `thinking` or `redacted_thinking`, but found `toolUse`" in answer.json["message"]

    forged = {"reasoningContent": {"reasoningText": {"text": "I thought", "signature": "forged"}}}
    answer = await post(http, fake, _thinking_body(tool_turns(forged)))
    assert answer.status == 400
    assert "Invalid `signature`" in answer.json["message"]

    unsigned = {"reasoningContent": {"reasoningText": {"text": "I thought"}}}
    assert (await post(http, fake, _thinking_body(tool_turns(unsigned)))).status == 400

    answer = await post(http, fake, _thinking_body(tool_turns(bedrock_reasoning_block("I thought"))))
    assert answer.status == 200, answer.data
    content = answer.json["output"]["message"]["content"]
    assert content[0] == bedrock_reasoning_block(BEDROCK_THINKING_PREFIX + "[bedrock] tool said: sunny")
    assert content[1:] == [{"text": "[bedrock] tool said: sunny"}]

    # Without thinking the same history needs no reasoning.
    plain = converse(messages=tool_turns(), toolConfig=TOOLS)
    assert (await post(http, fake, plain)).status == 200


async def test_the_fakes_own_reasoning_and_tool_call_go_back_unchanged(bedrock: Any) -> None:
    first = await bedrock.converse(
        modelId=CLAUDE,
        messages=HELLO,
        inferenceConfig={"maxTokens": 2048},
        additionalModelRequestFields=THINKING,
        toolConfig=TOOLS,
    )
    assistant = first["output"]["message"]
    assert [next(iter(block)) for block in assistant["content"]] == ["reasoningContent", "toolUse"]
    assert first["stopReason"] == "tool_use"
    tool_use = assistant["content"][1]["toolUse"]
    assert TOOL_USE_ID.fullmatch(tool_use["toolUseId"])
    assert tool_use["input"] == BEDROCK_TOOL_INPUT
    result = {"toolResult": {"toolUseId": tool_use["toolUseId"], "content": [{"json": {"temp": 21}}]}}
    second = await bedrock.converse(
        modelId=CLAUDE,
        messages=[*HELLO, assistant, {"role": "user", "content": [result]}],
        inferenceConfig={"maxTokens": 2048},
        additionalModelRequestFields=THINKING,
        toolConfig=TOOLS,
    )
    assert second["output"]["message"]["content"][-1] == {"text": '[bedrock] tool said: {"temp":21}'}
    assert second["stopReason"] == "end_turn"


# -- behaviour -------------------------------------------------------------------------------------


async def _content(http: aiohttp.ClientSession, fake: FakeUpstream, body: Any, model: str = CLAUDE) -> Any:
    answer = await post(http, fake, body, model=model)
    assert answer.status == 200, answer.data
    assert_converse_body(answer.json)
    return answer.json


async def test_reply_texts(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    image = {"image": {"format": "png", "source": {"bytes": PNG_B64}}}
    body = converse(messages=_messages(("user", [{"text": "Look"}, image, {"text": "here"}])))
    assert (
        text_of((await _content(http, fake, body))["output"]["message"]["content"])
        == "[bedrock] Look <image> here"
    )
    body = converse(system=[{"text": "You shout."}, {"cachePoint": {"type": "default"}}])
    assert (
        text_of((await _content(http, fake, body))["output"]["message"]["content"])
        == "[BEDROCK] HELLO THERE WORLD"
    )
    turns = _messages(("user", [{"text": "a"}]), ("assistant", [{"text": "b"}]), ("user", [{"text": "c d"}]))
    answer = await _content(http, fake, converse(messages=turns))
    assert text_of(answer["output"]["message"]["content"]) == "[bedrock] c d"
    assert answer["usage"]["inputTokens"] == 4


async def test_tool_results_are_echoed(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    mixed = [{"json": {"temp": 21, "unit": "C"}}, {"text": "ok"}]
    answer = await _content(http, fake, converse(messages=tool_turns(result=mixed), toolConfig=TOOLS))
    assert answer["output"]["message"]["content"] == [
        {"text": '[bedrock] tool said: {"temp":21,"unit":"C"} ok'}
    ]
    assert answer["stopReason"] == "end_turn"


async def test_tool_choice_picks_the_tool(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    for choice, name in (
        ({"auto": {}}, "get_weather"),
        ({"any": {}}, "get_weather"),
        ({"tool": {"name": "get_time"}}, "get_time"),
    ):
        answer = await _content(http, fake, converse(toolConfig={**TOOLS, "toolChoice": choice}))
        [block] = answer["output"]["message"]["content"]
        assert block["toolUse"]["name"] == name
        assert block["toolUse"]["input"] == BEDROCK_TOOL_INPUT
        assert answer["stopReason"] == "tool_use"


async def test_stop_reasons(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    answer = await _content(http, fake, converse(inferenceConfig={"maxTokens": 2}))
    assert (text_of(answer["output"]["message"]["content"]), answer["stopReason"]) == (
        "[bedrock] Hello",
        "max_tokens",
    )
    assert answer["usage"]["outputTokens"] == 2
    answer = await _content(http, fake, converse(inferenceConfig={"stopSequences": ["there"]}))
    assert (text_of(answer["output"]["message"]["content"]), answer["stopReason"]) == (
        "[bedrock] Hello ",
        "stop_sequence",
    )
    answer = await _content(
        http, fake, converse(inferenceConfig={"maxTokens": 100, "stopSequences": ["nowhere"]})
    )
    assert answer["stopReason"] == "end_turn"


async def test_structured_output(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    schema = json.dumps({"type": "object", "properties": {"answer": {"type": "string"}}})
    output = {
        "textFormat": {"type": "json_schema", "structure": {"jsonSchema": {"schema": schema, "name": "a"}}}
    }
    answer = await _content(http, fake, converse(outputConfig=output))
    assert json.loads(text_of(answer["output"]["message"]["content"])) == {
        "answer": "[bedrock] Hello there world"
    }


async def test_cache_tokens(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    answer = await _content(http, fake, converse(), model="anthropic.claude-cache-v1:0")
    assert answer["usage"] == {
        "inputTokens": 3,
        "outputTokens": 4,
        "cacheReadInputTokens": BEDROCK_CACHE_READ_TOKENS,
        "cacheWriteInputTokens": BEDROCK_CACHE_WRITE_TOKENS,
        "totalTokens": 3 + 4 + BEDROCK_CACHE_READ_TOKENS + BEDROCK_CACHE_WRITE_TOKENS,
    }
    assert answer["metrics"] == {"latencyMs": BEDROCK_LATENCY_MS}


async def test_streamed_and_whole_answers_agree(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    for body in (converse(inferenceConfig={"maxTokens": 2}), converse(system=[{"text": "shout"}])):
        whole = (await post(http, fake, body)).json
        streamed = events(frames_of(b"".join(await stream_bytes(http, fake, body, CLAUDE))))
        text = "".join(p["delta"]["text"] for name, p in streamed if name == "contentBlockDelta")
        assert text == text_of(whole["output"]["message"]["content"])
        assert ("messageStop", {"stopReason": whole["stopReason"]}) in streamed
        assert streamed[-1] == ("metadata", {"usage": whole["usage"], "metrics": whole["metrics"]})


# -- InvokeModel refusals --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "body", "needle"),
    [
        (TITAN, {"inputText": ["a", "b"]}, "#/inputText: expected type: String, found: JSONArray"),
        (TITAN, {"inputText": "a", "input": "b"}, "extraneous key [input] is not permitted"),
        (TITAN, {"inputText": "a", "dimensions": 128}, "#/dimensions: 128 is not a valid enum value"),
        (TITAN, {"dimensions": 256}, "required key [inputText] not found"),
        (TITAN, {"inputText": "a", "normalize": "yes"}, "#/normalize"),
        (COHERE, {"texts": ["a"]}, "required key [input_type] not found"),
        (COHERE, {"texts": ["a"], "input_type": "search"}, "#/input_type"),
        (
            COHERE,
            {"texts": ["a"] * (BEDROCK_COHERE_MAX_TEXTS + 1), "input_type": "search_query"},
            "expected maximum item count: 96",
        ),
        (COHERE, {"texts": "a", "input_type": "search_query"}, "#/texts"),
        (COHERE, {"texts": ["a"], "input_type": "search_query", "truncate": "MIDDLE"}, "#/truncate"),
        (CLAUDE, {"inputText": "a"}, "anthropic_version"),
    ],
)
async def test_invoke_refusals(
    fake: FakeUpstream, http: aiohttp.ClientSession, model: str, body: Any, needle: str
) -> None:
    answer = await post(http, fake, body, model, "invoke")
    assert answer.status == 400
    assert answer.headers["x-amzn-ErrorType"] == BEDROCK_VALIDATION_ERROR_TYPE
    assert needle in answer.json["message"], answer.json["message"]


# -- faults ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("word", "status", "error_type"),
    [
        ("fail-400", 400, "ValidationException"),
        ("fail-401", 403, "UnrecognizedClientException"),
        ("fail-403", 403, "AccessDeniedException"),
        ("fail-404", 404, "ResourceNotFoundException"),
        ("fail-408", 408, "ModelTimeoutException"),
        ("fail-424", 424, "ModelErrorException"),
        ("fail-429", 429, "ThrottlingException"),
        ("not-ready", 429, "ModelNotReadyException"),
        ("fail-500", 500, "InternalServerException"),
        ("fail-503", 503, "ServiceUnavailableException"),
    ],
)
async def test_status_faults(
    fake: FakeUpstream, http: aiohttp.ClientSession, bedrock: Any, word: str, status: int, error_type: str
) -> None:
    assert word in BEDROCK_FAULT_WORDS
    for model, action, body in (
        (f"{CLAUDE}-{word}", "converse", converse()),
        (f"{CLAUDE}-{word}", "converse-stream", converse()),
        (f"{TITAN}-{word}", "invoke", {"inputText": "hi"}),
    ):
        answer = await post(http, fake, body, model, action)
        assert (answer.status, answer.error_type) == (status, error_type)
        assert isinstance(answer.json["message"], str) and answer.json["message"]
        assert answer.headers.get("retry-after") == ("7" if word == "fail-429" else None)
        assert answer.headers["x-amzn-RequestId"]
    with pytest.raises(ClientError) as refused:
        await bedrock.converse(modelId=f"{CLAUDE}-{word}", messages=HELLO)
    assert refused.value.response["Error"]["Code"] == error_type
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == status


async def test_validation_comes_before_faults(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    answer = await post(http, fake, converse(messages=[]), model=f"{CLAUDE}-fail-500")
    assert answer.status == 400


async def test_slow_first_byte(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    started = time.monotonic()
    answer = await post(http, fake, converse(), model=f"{CLAUDE}-slow-first-byte")
    assert answer.status == 200
    assert time.monotonic() - started >= fake.delay


async def test_hang_ends_only_when_the_caller_leaves(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(post(http, fake, converse(), model=f"{CLAUDE}-hang"), 0.3)
    rec = fake.last("bedrock")
    for _ in range(50):
        if rec.disconnected_at is not None:
            break
        await asyncio.sleep(0.02)
    assert rec.disconnected_at is not None
    assert rec.finished_at is None


async def _read_until_cut(
    http: aiohttp.ClientSession, fake: FakeUpstream, model: str, action: str, body: Any
) -> bytes:
    url = target(fake, model, action)
    data = orjson.dumps(body)
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(
            URL(url, encoded=True), data=data, headers=bedrock_sigv4_headers(url, data)
        ) as resp:
            assert resp.status == 200
            async for chunk, _ in resp.content.iter_chunks():
                received += chunk
    return received


async def test_cut_mid_stream_ends_inside_a_frame(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    received = await _read_until_cut(http, fake, f"{CLAUDE}-cut-mid-stream", "converse-stream", converse())
    buffer = EventStreamBuffer()
    buffer.add_data(received)
    complete = [(m.headers[":event-type"]) for m in buffer]
    assert complete == ["messageStart", "contentBlockDelta", "contentBlockDelta"]
    assert buffer._data, "the stream must end inside a frame"
    total_length = struct.unpack(">I", buffer._data[:4])[0]
    assert 0 < len(buffer._data) < total_length
    assert fake.last("bedrock").finished_at is not None


async def test_cut_mid_stream_not_streamed_sends_half_a_body(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    received = await _read_until_cut(http, fake, f"{CLAUDE}-cut-mid-stream", "converse", converse())
    assert received and not received.endswith(b"}")


async def test_slow_stream_pauses_after_the_first_delta(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    url = target(fake, f"{CLAUDE}-slow-stream", "converse-stream")
    data = orjson.dumps(converse())
    buffer = EventStreamBuffer()
    arrivals: list[tuple[str, float]] = []
    async with http.post(URL(url, encoded=True), data=data, headers=bedrock_sigv4_headers(url, data)) as resp:
        async for chunk, _ in resp.content.iter_chunks():
            buffer.add_data(chunk)
            arrivals.extend((m.headers[":event-type"], time.monotonic()) for m in buffer)
    names = [name for name, _ in arrivals]
    first_delta = names.index("contentBlockDelta")
    assert arrivals[first_delta + 1][1] - arrivals[first_delta][1] >= fake.delay * 0.9
    assert names[-1] == "metadata"


async def test_stream_throttled_sends_an_exception_frame_before_content(
    fake: FakeUpstream, http: aiohttp.ClientSession, bedrock: Any
) -> None:
    model = f"{CLAUDE}-stream-throttled"
    frames = frames_of(b"".join(await stream_bytes(http, fake, converse(), model)))
    assert [h.get(":event-type") or h.get(":exception-type") for h, _ in frames] == [
        "messageStart",
        "throttlingException",
    ]
    headers, payload = frames[1]
    assert headers[":message-type"] == "exception"
    assert set(payload) == {"message"}
    assert_stream_events(frames)
    answer = await bedrock.converse_stream(modelId=model, messages=HELLO)
    seen = []
    with pytest.raises(EventStreamError) as raised:
        async for event in answer["stream"]:
            seen.append(event)
    assert raised.value.response["Error"]["Code"] == "throttlingException"
    assert seen == [{"messageStart": {"role": "assistant"}}]
    not_streamed = await post(http, fake, converse(), model)
    assert (not_streamed.status, not_streamed.error_type) == (429, "ThrottlingException")


async def test_error_mid_stream_sends_a_model_stream_error(
    fake: FakeUpstream, http: aiohttp.ClientSession, bedrock: Any
) -> None:
    model = f"{CLAUDE}-error-mid-stream"
    frames = frames_of(b"".join(await stream_bytes(http, fake, converse(), model)))
    kinds = [h.get(":event-type") or h.get(":exception-type") for h, _ in frames]
    assert kinds == ["messageStart", "contentBlockDelta", "modelStreamErrorException"]
    assert frames[1][1]["delta"] == {"text": "[bedrock] "}
    payload = frames[2][1]
    assert payload["originalStatusCode"] == 500 and payload["message"] and payload["originalMessage"]
    assert_stream_events(frames)
    answer = await bedrock.converse_stream(modelId=model, messages=HELLO)
    with pytest.raises(EventStreamError) as raised:
        async for _ in answer["stream"]:
            pass
    assert raised.value.response["Error"]["Code"] == "modelStreamErrorException"
    not_streamed = await post(http, fake, converse(), model)
    assert (not_streamed.status, not_streamed.error_type) == (500, "InternalServerException")


async def test_error_mid_stream_after_reasoning_waits_for_text(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    body = converse(inferenceConfig={"maxTokens": 2048}, additionalModelRequestFields=THINKING)
    frames = frames_of(b"".join(await stream_bytes(http, fake, body, f"{CLAUDE}-error-mid-stream")))
    assert frames[-1][0][":exception-type"] == "modelStreamErrorException"
    assert frames[-2][1]["delta"] == {"text": "[bedrock] "}


async def test_corrupt_crc_is_refused_by_the_decoder(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    data = b"".join(await stream_bytes(http, fake, converse(), f"{CLAUDE}-corrupt-crc"))
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    decoded = []
    with pytest.raises(ChecksumMismatch):
        for message in buffer:
            decoded.append(message.headers[":event-type"])
    assert decoded == ["messageStart", "contentBlockDelta"]


async def test_split_frames_decode_like_the_normal_stream(
    fake: FakeUpstream, http: aiohttp.ClientSession, bedrock: Any
) -> None:
    model = f"{CLAUDE}-split-frames"
    normal = events(frames_of(b"".join(await stream_bytes(http, fake, converse(), CLAUDE))))
    chunks = await stream_bytes(http, fake, converse(), model)
    assert len(chunks) > 1
    buffer = EventStreamBuffer()
    as_read = []
    for chunk in chunks:
        buffer.add_data(chunk)
        as_read.extend((m.headers[":event-type"], orjson.loads(m.payload)) for m in buffer)
    assert [(n, {k: v for k, v in p.items() if k != "p"}) for n, p in as_read] == normal
    data = b"".join(chunks)
    for piece in (1, BEDROCK_SPLIT_BYTES, 13):
        assert events(frames_of(data, piece)) == normal
    answer = await bedrock.converse_stream(modelId=model, messages=HELLO)
    got = [event async for event in answer["stream"]]
    assert (
        "".join(e["contentBlockDelta"]["delta"]["text"] for e in got if "contentBlockDelta" in e)
        == "[bedrock] Hello there world"
    )
    assert next(iter(got[-1])) == "metadata"


async def test_stream_only_faults_change_nothing_when_not_streamed(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    for word in ("corrupt-crc", "split-frames"):
        answer = await post(http, fake, converse(), model=f"{CLAUDE}-{word}")
        assert answer.status == 200
        assert text_of(answer.json["output"]["message"]["content"]) == "[bedrock] Hello there world"


async def test_scripts_win_over_everything_after_validation(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    model = f"{CLAUDE}-fail-500"
    fake.script[model] = (418, {"x-amzn-ErrorType": "TeapotException"}, {"message": "short and stout"})
    answer = await post(http, fake, converse(), model=model)
    assert (answer.status, answer.error_type, answer.json) == (
        418,
        "TeapotException",
        {"message": "short and stout"},
    )


def test_fault_words_are_unique() -> None:
    assert len(set(BEDROCK_FAULT_WORDS)) == len(BEDROCK_FAULT_WORDS)
