"""Tests of the fake upstream's vertex flavor (Vertex AI's Gemini API) and its Google OAuth endpoint.

google-genai is the judge of the wire format: every body and every stream event the fake sends is
parsed with the SDK's own `GenerateContentResponse`, whose models forbid unknown keys, and dumped
back in camelCase to the very same JSON (so a snake_case key, which the models would also accept,
is caught too). The request checks are tested one rule at a time with a plain aiohttp client,
because the SDK would refuse to send most of them; the SDK itself, authenticated by google-auth
against the fake's token endpoint, then runs the whole loop.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import google.auth.exceptions
import google.auth.transport.requests
import orjson
import pytest
from google import genai
from google.genai import errors, types
from google.oauth2 import service_account
from yarl import URL

from tests.fakes import (
    EMBEDDING_SIZE,
    FAULT_WORDS,
    GOOGLE_CLOUD_PLATFORM_SCOPE,
    GOOGLE_TOKEN_AUDIENCE,
    GOOGLE_TOKEN_LIFETIME,
    TOOL_ARGUMENTS,
    VERTEX_FAULT_WORDS,
    VERTEX_MAX_PREDICT_INSTANCES,
    VERTEX_NO_ALT_SSE,
    VERTEX_PROJECT,
    VERTEX_SERVICE_ACCOUNT,
    VERTEX_SKIP_SIGNATURES,
    VERTEX_THINKING_PREFIX,
    VERTEX_TOOL_ARGS,
    FakeUpstream,
    embedding_vector,
    service_account_private_key,
    vertex_function_call_part,
    vertex_thought_signature,
)
from tests.fakes.fixtures import fake, http  # noqa: F401  (pytest fixtures, used by name)

MODEL = "gemini-2.5-flash"
GEMINI_3 = "gemini-3-pro-preview"
BEARER = {"Authorization": "Bearer ya29.test-token"}
HELLO: Any = [{"role": "user", "parts": [{"text": "Hello there world"}]}]
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
WEATHER: Any = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "OBJECT",
        "properties": {"location": {"type": "STRING"}},
        "required": ["location"],
    },
}
TIME: Any = {"name": "get_time", "parametersJsonSchema": {"type": "object", "properties": {}}}
TOOLS: Any = [{"functionDeclarations": [WEATHER, TIME]}]
RESPONSE_ID = re.compile(r"[A-Za-z0-9]{23}")


def path(model: str = MODEL, method: str = "generateContent", version: str = "v1") -> str:
    """The path the gateway builds under `base_url: {fake}/vertex`."""
    return f"/vertex/{version}/projects/{VERTEX_PROJECT}/locations/us-central1/publishers/google/models/{model}:{method}"


def request(**fields: Any) -> dict[str, Any]:
    """A valid body: the defaults, overridden (or, with a value of None, removed) by `fields`."""
    body: dict[str, Any] = {"contents": HELLO, **fields}
    return {key: value for key, value in body.items() if value is not None}


def config(**generation: Any) -> dict[str, Any]:
    return request(generationConfig=generation)


async def post(
    http: aiohttp.ClientSession,
    fake: FakeUpstream,
    body: Any,
    model: str = MODEL,
    method: str = "generateContent",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with http.post(
        fake.base_url + path(model, method), data=data, headers=BEARER if headers is None else headers
    ) as resp:
        return resp.status, orjson.loads(await resp.read())


async def events_of(
    http: aiohttp.ClientSession, fake: FakeUpstream, body: Any, model: str = MODEL
) -> list[dict[str, Any]]:
    """The `data:` events of a streamed answer, checking Google's SSE framing (CRLF, no terminator)."""
    url = fake.base_url + path(model, "streamGenerateContent") + "?alt=sse"
    async with http.post(url, data=orjson.dumps(body), headers=BEARER) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/event-stream"
        text = (await resp.read()).decode()
    assert text.endswith("\r\n\r\n")
    assert "[DONE]" not in text
    events = []
    for raw in text.removesuffix("\r\n\r\n").split("\r\n\r\n"):
        assert raw.startswith("data: ")
        assert "\n" not in raw
        events.append(orjson.loads(raw.removeprefix("data: ")))
    return events


def assert_refused(status: int, body: Any, expected: int, google_status: str, message: str) -> None:
    assert status == expected, body
    assert body == {"error": {"code": expected, "message": body["error"]["message"], "status": google_status}}
    assert message in body["error"]["message"]


def canonical(value: Any) -> Any:
    """The JSON with every thoughtSignature as bytes, since base64 has two alphabets."""
    if isinstance(value, dict):
        return {
            k: base64.urlsafe_b64decode(v) if k == "thoughtSignature" else canonical(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def judge(obj: dict[str, Any]) -> types.GenerateContentResponse:
    """Parse with google-genai's type (extra keys forbidden); its camelCase dump gives `obj` back."""
    parsed = types.GenerateContentResponse.model_validate_json(orjson.dumps(obj))
    assert canonical(parsed.model_dump(mode="json", by_alias=True, exclude_none=True)) == canonical(obj)
    return parsed


def reassemble(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The response a stream describes, built the way a client joins the new pieces."""
    candidates: dict[int, dict[str, Any]] = {}
    for event in events:
        for entry in event.get("candidates", []):
            candidate = candidates.setdefault(entry.get("index", 0), {})
            assert "finishReason" not in candidate, "a piece after the candidate finished"
            for part in entry.get("content", {}).get("parts", []):
                parts = candidate.setdefault("content", {"role": "model", "parts": []})["parts"]
                last = parts[-1] if parts else None
                joins = (
                    last is not None
                    and "text" in part
                    and "text" in last
                    and last.get("thought") == part.get("thought")
                    and "thoughtSignature" not in last
                )
                if joins:
                    assert last is not None
                    last["text"] += part["text"]
                    if "thoughtSignature" in part:
                        last["thoughtSignature"] = part["thoughtSignature"]
                else:
                    parts.append(dict(part))
            for key in ("finishReason", "safetyRatings"):
                if key in entry:
                    candidate[key] = entry[key]
    final = events[-1]
    body: dict[str, Any] = {}
    if "promptFeedback" in final:
        body["promptFeedback"] = final["promptFeedback"]
    else:
        body["candidates"] = [{**c, **({"index": i} if i else {})} for i, c in sorted(candidates.items())]
    for key in ("usageMetadata", "modelVersion", "createTime", "responseId"):
        body[key] = final[key]
    return body


def without_ids(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("responseId", "createTime")}


def texts(body: dict[str, Any]) -> list[str]:
    """The answer text of each candidate (thoughts left out)."""
    return [
        "".join(p.get("text", "") for p in c.get("content", {}).get("parts", []) if not p.get("thought"))
        for c in body["candidates"]
    ]


def call_turn(*parts: Any) -> dict[str, Any]:
    return {"role": "model", "parts": list(parts)}


def answer_turn(*names: str, response: Any = None) -> dict[str, Any]:
    result = {"content": "22 degrees"} if response is None else response
    return {"role": "user", "parts": [{"functionResponse": {"name": n, "response": result}} for n in names]}


ASK: Any = {"role": "user", "parts": [{"text": "Weather in Paris?"}]}


# --------------------------------------------------------------------------------------------------
# The format, judged by google-genai's own types

SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "plain text": (MODEL, request(systemInstruction={"parts": [{"text": "Be brief"}]})),
    "shout": (MODEL, request(systemInstruction={"parts": [{"text": "Please shout."}]})),
    "function call": (MODEL, request(tools=TOOLS)),
    "forced function": (
        MODEL,
        request(
            tools=TOOLS,
            toolConfig={"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_time"]}},
        ),
    ),
    "gemini 3 function call": (GEMINI_3, request(tools=TOOLS)),
    "gemini 3 text": (GEMINI_3, request()),
    "function response": (
        MODEL,
        request(
            contents=[
                ASK,
                call_turn({"functionCall": {"name": "get_weather", "args": {}}}),
                answer_turn("get_weather"),
            ],
            tools=TOOLS,
        ),
    ),
    "thinking": (MODEL, config(thinkingConfig={"includeThoughts": True, "thinkingBudget": 1024})),
    "thinking and a call": (
        GEMINI_3,
        request(tools=TOOLS, generationConfig={"thinkingConfig": {"includeThoughts": True}}),
    ),
    "json output": (MODEL, config(responseMimeType="application/json", responseSchema={"type": "OBJECT"})),
    "max tokens": (MODEL, config(maxOutputTokens=2)),
    "stop sequence": (MODEL, config(stopSequences=["world"])),
    "three candidates": (MODEL, config(candidateCount=3)),
    "images": (
        MODEL,
        request(
            contents=[
                {
                    "role": "user",
                    "parts": [
                        {"text": "Look at"},
                        {"inlineData": {"mimeType": "image/png", "data": PNG_B64}},
                        {"fileData": {"mimeType": "image/jpeg", "fileUri": "gs://bucket/cat.jpg"}},
                    ],
                }
            ]
        ),
    ),
    "blocked prompt": ("gemini-blocked", request()),
    "safety stop": ("gemini-safety", config(candidateCount=2)),
}


@pytest.mark.parametrize("shape", SHAPES)
async def test_every_body_and_event_parses_with_the_sdk_types(
    fake: FakeUpstream, http: aiohttp.ClientSession, shape: str
) -> None:
    model, body = SHAPES[shape]
    status, answer = await post(http, fake, body, model)
    assert status == 200, answer
    judge(answer)
    assert answer["modelVersion"] == model

    events = await events_of(http, fake, body, model)
    for event in events:
        judge(event)
    for event in events[:-1]:
        # Vertex's partial usage: only the traffic type until the last event.
        assert event["usageMetadata"] == {"trafficType": "ON_DEMAND"}
    assert len({(e["responseId"], e["createTime"]) for e in events}) == 1
    streamed = reassemble(events)
    judge(streamed)
    # The stream tells exactly what the non-streamed body tells, ids aside.
    assert without_ids(streamed) == without_ids(answer)


# --------------------------------------------------------------------------------------------------
# What it answers


async def test_echo_usage_envelope_and_record(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = request(systemInstruction={"parts": [{"text": "Be brief"}]})
    async with http.post(fake.base_url + path(), json=body, headers=BEARER) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        raw = await resp.read()
    assert raw.startswith(b'{\n  "candidates"')  # pretty-printed, as Google's servers answer
    answer = orjson.loads(raw)
    assert answer["candidates"] == [
        {
            "content": {"role": "model", "parts": [{"text": "[vertex] Hello there world"}]},
            "finishReason": "STOP",
        }
    ]
    # Words: "Hello there world" + "Be brief" in; "[vertex] Hello there world" out.
    assert answer["usageMetadata"] == {
        "promptTokenCount": 5,
        "candidatesTokenCount": 4,
        "totalTokenCount": 9,
        "trafficType": "ON_DEMAND",
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 5}],
        "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 4}],
    }
    assert answer["modelVersion"] == MODEL
    assert RESPONSE_ID.fullmatch(answer["responseId"])
    created = datetime.datetime.fromisoformat(answer["createTime"])
    assert abs((datetime.datetime.now(datetime.UTC) - created).total_seconds()) < 60

    rec = fake.last("vertex")
    assert rec.path == path()
    assert rec.path_model == rec.model == MODEL
    assert fake.for_model(MODEL) == [rec]
    assert rec.json == body
    assert rec.finished_at is not None
    assert fake.vertex_tokens == ["ya29.test-token"]
    assert fake.vertex_tokens_seen == {"ya29.test-token"}
    assert fake.url("vertex") == fake.base_url + "/vertex"


async def test_v1beta1_and_a_percent_encoded_model(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    url = fake.base_url + path("tuned%2Fgemini%2D2.5", version="v1beta1")
    async with http.post(URL(url, encoded=True), json=request(), headers=BEARER) as resp:
        assert resp.status == 200
        answer = await resp.json()
    assert answer["modelVersion"] == "tuned/gemini-2.5"
    rec = fake.last("vertex")
    assert rec.path_model == "tuned/gemini-2.5"
    assert "tuned%2Fgemini%2D2.5:generateContent" in rec.raw_path
    assert fake.for_model("tuned/gemini-2.5") == [rec]


async def test_shout_images_and_files(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    _, loud = await post(
        http, fake, request(systemInstruction={"parts": [{"text": "Be brief"}, {"text": "SHOUT"}]})
    )
    assert texts(loud) == ["[VERTEX] HELLO THERE WORLD"]
    _, calm = await post(http, fake, request(systemInstruction={"parts": [{"text": "shouting is rude"}]}))
    assert texts(calm) == ["[vertex] Hello there world"]
    _, images = await post(http, fake, SHAPES["images"][1])
    assert texts(images) == ["[vertex] Look at <image> <file>"]
    assert images["usageMetadata"]["promptTokenCount"] == 4


async def test_function_calls_and_calling_modes(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, answer = await post(http, fake, request(tools=TOOLS))
    assert status == 200, answer
    assert answer["candidates"] == [
        {
            "content": {
                "role": "model",
                "parts": [{"functionCall": {"name": "get_weather", "args": VERTEX_TOOL_ARGS}}],
            },
            "finishReason": "STOP",
        }
    ]
    assert orjson.loads(TOOL_ARGUMENTS) == VERTEX_TOOL_ARGS
    assert answer["usageMetadata"]["candidatesTokenCount"] == 2  # the args' JSON text

    def mode(name: str, allowed: list[str] | None = None) -> dict[str, Any]:
        calling: dict[str, Any] = {"mode": name}
        if allowed is not None:
            calling["allowedFunctionNames"] = allowed
        return request(tools=TOOLS, toolConfig={"functionCallingConfig": calling})

    for body, name in (
        (mode("AUTO"), "get_weather"),
        (mode("ANY"), "get_weather"),
        (mode("VALIDATED"), "get_weather"),
        (mode("ANY", ["get_time"]), "get_time"),
    ):
        _, called = await post(http, fake, body)
        assert called["candidates"][0]["content"]["parts"] == [
            {"functionCall": {"name": name, "args": VERTEX_TOOL_ARGS}}
        ]
    _, none = await post(http, fake, mode("NONE"))
    assert texts(none) == ["[vertex] Hello there world"]


async def test_a_function_response_turn_is_echoed_as_what_the_tool_said(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    call = call_turn({"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}})
    for response, said in (
        ({"content": "22 degrees"}, "22 degrees"),
        ({"temp": 22, "unit": "C"}, '{"temp": 22, "unit": "C"}'),
        ({"content": "22", "unit": "C"}, '{"content": "22", "unit": "C"}'),
        ({"content": {"temp": 22}}, '{"content": {"temp": 22}}'),
    ):
        body = request(contents=[ASK, call, answer_turn("get_weather", response=response)], tools=TOOLS)
        status, answer = await post(http, fake, body)
        assert status == 200, answer
        # No new call after a function response, even with tools declared.
        assert texts(answer) == [f"[vertex] tool said: {said}"]
        assert json.dumps(response, sort_keys=True) == said or response == {"content": said}


async def test_candidate_count_gives_distinct_candidates(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    _, answer = await post(http, fake, config(candidateCount=3))
    assert texts(answer) == [
        "[vertex] Hello there world",
        "[vertex] Hello there world (2)",
        "[vertex] Hello there world (3)",
    ]
    # proto3 JSON leaves the zero index out, as Vertex does.
    assert [c.get("index") for c in answer["candidates"]] == [None, 1, 2]
    assert answer["usageMetadata"]["candidatesTokenCount"] == 4 + 5 + 5
    parsed = judge(answer)
    assert parsed.candidates is not None
    assert [c.index for c in parsed.candidates] == [None, 1, 2]


async def test_json_output_thinking_and_limits(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = config(responseMimeType="application/json", responseJsonSchema={"type": "object"})
    _, as_json = await post(http, fake, {**body, "systemInstruction": {"parts": [{"text": "shout"}]}})
    assert texts(as_json) == ['{"answer":"[VERTEX] HELLO THERE WORLD"}']

    _, thinking = await post(http, fake, config(thinkingConfig={"includeThoughts": True}))
    parts = thinking["candidates"][0]["content"]["parts"]
    assert parts == [
        {"text": VERTEX_THINKING_PREFIX + "[vertex] Hello there world", "thought": True},
        {"text": "[vertex] Hello there world"},
    ]
    usage = thinking["usageMetadata"]
    assert (usage["candidatesTokenCount"], usage["thoughtsTokenCount"]) == (4, 6)
    assert usage["totalTokenCount"] == 3 + 4 + 6
    _, quiet = await post(http, fake, config(thinkingConfig={"includeThoughts": False, "thinkingBudget": 0}))
    assert "thoughtsTokenCount" not in quiet["usageMetadata"]
    assert len(quiet["candidates"][0]["content"]["parts"]) == 1

    _, cut = await post(http, fake, config(maxOutputTokens=2))
    assert (texts(cut), cut["candidates"][0]["finishReason"]) == (["[vertex] Hello"], "MAX_TOKENS")
    _, stopped = await post(http, fake, config(stopSequences=["nothing", "there"]))
    assert (texts(stopped), stopped["candidates"][0]["finishReason"]) == (["[vertex] Hello "], "STOP")
    _, limited = await post(http, fake, config(maxOutputTokens=1, stopSequences=["world"]))
    assert (texts(limited), limited["candidates"][0]["finishReason"]) == (["[vertex]"], "MAX_TOKENS")


async def test_blocked_and_safety(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    _, blocked = await post(http, fake, request(), model="gemini-blocked")
    assert "candidates" not in blocked
    assert blocked["promptFeedback"]["blockReason"] == "SAFETY"
    assert blocked["usageMetadata"]["promptTokenCount"] == 3
    assert "candidatesTokenCount" not in blocked["usageMetadata"]
    _, unsafe = await post(http, fake, request(), model="gemini-safety")
    (candidate,) = unsafe["candidates"]
    assert candidate["finishReason"] == "SAFETY"
    assert "content" not in candidate
    assert candidate["safetyRatings"][0]["blocked"] is True
    assert len(await events_of(http, fake, request(), "gemini-blocked")) == 1


async def test_streamed_pieces_carry_only_new_text(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    events = await events_of(http, fake, request())
    pieces = [e["candidates"][0]["content"]["parts"][0]["text"] for e in events]
    assert pieces == ["[vertex] ", "Hello ", "there ", "world"]
    assert [e["candidates"][0].get("finishReason") for e in events] == [None, None, None, "STOP"]
    assert events[-1]["usageMetadata"]["totalTokenCount"] == 7

    # A function call arrives whole, in one event.
    (call,) = await events_of(http, fake, request(tools=TOOLS))
    assert call["candidates"][0]["content"]["parts"] == [
        {"functionCall": {"name": "get_weather", "args": VERTEX_TOOL_ARGS}}
    ]
    assert call["candidates"][0]["finishReason"] == "STOP"

    # Gemini 3 signs a text answer in a last, empty text part.
    signed = await events_of(http, fake, request(), GEMINI_3)
    last = signed[-1]["candidates"][0]
    assert last["content"]["parts"][0]["text"] == ""
    assert "thoughtSignature" in last["content"]["parts"][0]
    assert last["finishReason"] == "STOP"


async def test_streaming_needs_alt_sse(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    for query in ("", "?alt=json"):
        url = fake.base_url + path(method="streamGenerateContent") + query
        async with http.post(url, json=request(), headers=BEARER) as resp:
            assert_refused(resp.status, await resp.json(), 400, "INVALID_ARGUMENT", VERTEX_NO_ALT_SSE)


# --------------------------------------------------------------------------------------------------
# Thought signatures (Gemini 3)


async def test_gemini_3_signs_its_calls_and_its_text(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    _, answer = await post(http, fake, request(tools=TOOLS), model=GEMINI_3)
    (part,) = answer["candidates"][0]["content"]["parts"]
    assert part == vertex_function_call_part("get_weather")
    assert part["thoughtSignature"] == vertex_thought_signature("get_weather", VERTEX_TOOL_ARGS)
    assert base64.b64decode(part["thoughtSignature"])  # standard base64
    assert vertex_thought_signature("get_time", VERTEX_TOOL_ARGS) != part["thoughtSignature"]
    assert vertex_thought_signature("get_weather", {"location": "Rome"}) != part["thoughtSignature"]

    _, text = await post(http, fake, request(), model=GEMINI_3)
    (text_part,) = text["candidates"][0]["content"]["parts"]
    assert text_part["text"] == "[vertex] Hello there world"
    assert text_part["thoughtSignature"]
    _, older = await post(http, fake, request(tools=TOOLS))
    assert "thoughtSignature" not in older["candidates"][0]["content"]["parts"][0]


def history(first_call: dict[str, Any], *, answered: bool = True) -> list[dict[str, Any]]:
    contents = [ASK, call_turn(first_call)]
    return [*contents, answer_turn(first_call["functionCall"]["name"])] if answered else contents


async def test_gemini_3_demands_its_signature_back(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    signed = vertex_function_call_part("get_weather")
    status, answer = await post(http, fake, request(contents=history(signed), tools=TOOLS), model=GEMINI_3)
    assert status == 200, answer
    assert texts(answer) == ["[vertex] tool said: 22 degrees"]

    unsigned = {"functionCall": signed["functionCall"]}
    status, refused = await post(http, fake, request(contents=history(unsigned), tools=TOOLS), model=GEMINI_3)
    assert_refused(
        status,
        refused,
        400,
        "INVALID_ARGUMENT",
        "Function call is missing a thought_signature in functionCall parts",
    )
    assert "`default_api:get_weather`" in refused["error"]["message"]
    # A model that is not Gemini 3 does not care.
    status, _ = await post(http, fake, request(contents=history(unsigned), tools=TOOLS), model=MODEL)
    assert status == 200

    forged = {**signed, "thoughtSignature": vertex_thought_signature("get_time", VERTEX_TOOL_ARGS)}
    status, refused = await post(http, fake, request(contents=history(forged), tools=TOOLS), model=GEMINI_3)
    assert_refused(status, refused, 400, "INVALID_ARGUMENT", "Thought signature is not valid")
    changed = {
        "functionCall": {"name": "get_weather", "args": {"location": "Rome"}},
        "thoughtSignature": signed["thoughtSignature"],
    }
    status, _ = await post(http, fake, request(contents=history(changed), tools=TOOLS), model=GEMINI_3)
    assert status == 400

    # The same bytes in the URL-safe alphabet (google-genai's), and Google's documented placeholder.
    raw = base64.b64decode(signed["thoughtSignature"])
    for signature in (
        base64.urlsafe_b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        *VERTEX_SKIP_SIGNATURES,
    ):
        accepted = {**signed, "thoughtSignature": signature}
        status, answer = await post(
            http, fake, request(contents=history(accepted), tools=TOOLS), model=GEMINI_3
        )
        assert status == 200, (signature, answer)


async def test_only_the_current_turn_and_the_first_call_need_a_signature(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    signed = vertex_function_call_part("get_weather")
    unsigned = {"functionCall": signed["functionCall"]}
    older_turn = [
        *history(unsigned),
        call_turn({"text": "It is 22 degrees."}),
        {"role": "user", "parts": [{"text": "Thanks"}]},
    ]
    status, answer = await post(http, fake, request(contents=older_turn, tools=TOOLS), model=GEMINI_3)
    assert status == 200, answer

    # Parallel calls: only the first carries (and needs) a signature.
    parallel = [
        ASK,
        call_turn(signed, {"functionCall": {"name": "get_time", "args": {}}}),
        answer_turn("get_weather", "get_time"),
    ]
    status, answer = await post(http, fake, request(contents=parallel, tools=TOOLS), model=GEMINI_3)
    assert status == 200, answer

    # Two steps in the current turn: the second step's call needs its own signature.
    steps = [*history(signed), call_turn(unsigned)]
    status, refused = await post(
        http, fake, request(contents=[*steps, answer_turn("get_weather")], tools=TOOLS), model=GEMINI_3
    )
    assert_refused(status, refused, 400, "INVALID_ARGUMENT", "missing a thought_signature")
    # Even a final model turn that nothing answered yet is checked.
    status, _ = await post(
        http, fake, request(contents=history(unsigned, answered=False), tools=TOOLS), model=GEMINI_3
    )
    assert status == 400


# --------------------------------------------------------------------------------------------------
# What it refuses, one rule at a time


def part_request(*parts: Any, role: str = "user") -> dict[str, Any]:
    return request(contents=[{"role": role, "parts": list(parts)}])


def declaration_request(**declaration: Any) -> dict[str, Any]:
    return request(tools=[{"functionDeclarations": [{"name": "get_weather", **declaration}]}])


BAD_REQUESTS: dict[str, tuple[Any, str]] = {
    "not an object": (b"[1, 2]", "Expected a JSON object"),
    "unknown top-level key": (request(model="gemini-2.5-flash"), 'Unknown name "model": Cannot find field.'),
    "OpenAI's messages": ({"messages": [{"role": "user", "content": "hi"}]}, 'Unknown name "messages"'),
    "no contents": ({}, "must include at least one contents field"),
    "empty contents": (request(contents=[]), "must include at least one contents field"),
    "assistant role": (
        request(contents=[{"role": "assistant", "parts": [{"text": "hi"}]}]),
        "Please use a valid role: user, model.",
    ),
    "missing role": (request(contents=[{"parts": [{"text": "hi"}]}]), "Please use a valid role"),
    "empty parts": (
        request(contents=[{"role": "user", "parts": []}]),
        "must include at least one parts field",
    ),
    "contents not a list": (request(contents={"role": "user"}), "Invalid value at 'contents'"),
    "unknown part key": (part_request({"txt": "hi"}), "Unknown name \"txt\" at 'contents[0].parts[0]'"),
    "two data fields": (
        part_request({"text": "hi", "inlineData": {"mimeType": "image/png", "data": PNG_B64}}),
        "Oneof field 'data' is already set",
    ),
    "no data": (part_request({"thought": True}), "has no data"),
    "empty text": (part_request({"text": ""}), "empty text parameter"),
    "text not a string": (
        part_request({"text": 5}),
        "Invalid value at 'contents[0].parts[0].text' (TYPE_STRING), 5",
    ),
    "inline without mime type": (part_request({"inlineData": {"data": PNG_B64}}), "`mime_type` is missing"),
    "inline bad base64": (
        part_request({"inlineData": {"mimeType": "image/png", "data": "not base64!"}}),
        "inline_data.data' (TYPE_BYTES)",
    ),
    "file without mime type": (
        part_request({"fileData": {"fileUri": "gs://bucket/cat.jpg"}}),
        "file_data needs the MIME type",
    ),
    "file without uri": (part_request({"fileData": {"mimeType": "image/png"}}), "`file_uri` is missing"),
    "OpenAI image part": (
        part_request({"type": "image_url", "image_url": {"url": "https://x/cat.png"}}),
        'Unknown name "type"',
    ),
    "function call from the user": (
        part_request({"functionCall": {"name": "f", "args": {}}}),
        "only allowed in a model turn",
    ),
    "function call without name": (
        request(contents=[ASK, call_turn({"functionCall": {"args": {}}})]),
        "has an empty name",
    ),
    "function call args a string": (
        request(contents=[ASK, call_turn({"functionCall": {"name": "f", "args": "{}"}})]),
        "function_call.args' (type.googleapis.com/google.protobuf.Struct)",
    ),
    "function call first": (
        request(contents=[call_turn({"functionCall": {"name": "f", "args": {}}})]),
        "function call turn comes immediately after a user turn",
    ),
    "function response from the model": (
        part_request({"functionResponse": {"name": "f", "response": {}}}, role="model"),
        "only allowed in a user turn",
    ),
    "function response without name": (
        request(
            contents=[
                ASK,
                call_turn({"functionCall": {"name": "f"}}),
                {"role": "user", "parts": [{"functionResponse": {"response": {}}}]},
            ]
        ),
        "function_response.name is required",
    ),
    "function response a string": (
        request(
            contents=[
                ASK,
                call_turn({"functionCall": {"name": "f"}}),
                answer_turn("f", response="22 degrees"),
            ]
        ),
        'function_response.response\' (type.googleapis.com/google.protobuf.Struct), "22 degrees"',
    ),
    "function response without response": (
        request(
            contents=[
                ASK,
                call_turn({"functionCall": {"name": "f"}}),
                {"role": "user", "parts": [{"functionResponse": {"name": "f"}}]},
            ]
        ),
        "function_response.response is missing",
    ),
    "function response without call": (
        request(contents=[ASK, answer_turn("f")]),
        "function response turn comes immediately after a function call turn",
    ),
    "fewer responses than calls": (
        request(
            contents=[
                ASK,
                call_turn({"functionCall": {"name": "f"}}, {"functionCall": {"name": "g"}}),
                answer_turn("f"),
            ]
        ),
        "number of function response parts is equal to the number of function call parts",
    ),
    "responses to other names": (
        request(contents=[ASK, call_turn({"functionCall": {"name": "f"}}), answer_turn("g")]),
        "their names must match",
    ),
    "bad thought signature": (
        request(contents=[ASK, call_turn({"functionCall": {"name": "f"}, "thoughtSignature": "%%%"})]),
        "thought_signature' (TYPE_BYTES)",
    ),
    "system with an image": (
        request(systemInstruction={"parts": [{"inlineData": {"mimeType": "image/png", "data": PNG_B64}}]}),
        "a system instruction holds text only",
    ),
    "unknown generation key": (config(maxTokens=10), "Unknown name \"maxTokens\" at 'generation_config'"),
    "OpenAI's response_format": (
        config(response_format={"type": "json_object"}),
        'Unknown name "response_format"',
    ),
    "temperature above 2": (
        config(temperature=2.5),
        "temperature value of 2.5 but the supported range is from 0 (inclusive) to 2.0001 (exclusive)",
    ),
    "negative temperature": (config(temperature=-0.1), "temperature value of -0.1"),
    "temperature a string": (config(temperature="hot"), "generation_config.temperature' (TYPE_FLOAT)"),
    "topP above 1": (config(topP=1.5), "topP value of 1.5"),
    "penalty too high": (config(presencePenalty=2.5), "presencePenalty value of 2.5"),
    "no output tokens": (config(maxOutputTokens=0), "maxOutputTokens value of 0"),
    "nine candidates": (config(candidateCount=9), "candidateCount is 9"),
    "zero candidates": (config(candidateCount=0), "candidateCount is 0"),
    "six stop sequences": (
        config(stopSequences=["a", "b", "c", "d", "e", "f"]),
        "6 stop sequences: at most 5",
    ),
    "stop a string": (config(stopSequences="stop"), "stop_sequences' (TYPE_STRING)"),
    "csv output": (config(responseMimeType="text/csv"), "response_mime_type `text/csv` is not supported"),
    "schema without json": (
        config(responseSchema={"type": "OBJECT"}),
        "needs response_mime_type application/json",
    ),
    "two schemas": (
        config(
            responseMimeType="application/json",
            responseSchema={"type": "OBJECT"},
            responseJsonSchema={"type": "object"},
        ),
        "both set",
    ),
    "JSON Schema in responseSchema": (
        config(
            responseMimeType="application/json",
            responseSchema={"type": "OBJECT", "additionalProperties": False},
        ),
        "Unknown name \"additionalProperties\" at 'generation_config.response_schema'",
    ),
    "budget and level": (
        config(thinkingConfig={"thinkingBudget": 1024, "thinkingLevel": "HIGH"}),
        "only one of thinking budget and thinking level",
    ),
    "bad thinking level": (config(thinkingConfig={"thinkingLevel": "EXTREME"}), "thinking_level"),
    "OpenAI-style tools": (
        request(tools=[{"type": "function", "function": {"name": "f"}}]),
        "Unknown name \"type\" at 'tools[0]'",
    ),
    "bad function name": (declaration_request(name="get weather"), "Invalid function name"),
    "duplicate declaration": (
        request(tools=[{"functionDeclarations": [WEATHER]}, {"functionDeclarations": [WEATHER]}]),
        "Duplicate function declaration found: get_weather",
    ),
    "both parameter schemas": (
        declaration_request(parameters={"type": "OBJECT"}, parametersJsonSchema={"type": "object"}),
        "sets both `parameters` and `parameters_json_schema`",
    ),
    "type list": (
        declaration_request(parameters={"type": ["string", "null"]}),
        "parameters.type' (type.googleapis.com/google.cloud.aiplatform.v1.Type)",
    ),
    "type unknown": (declaration_request(parameters={"type": "map"}), "parameters.type'"),
    "required not a list": (
        declaration_request(parameters={"type": "OBJECT", "required": "location"}),
        "parameters.required'",
    ),
    "nested additionalProperties": (
        declaration_request(
            parameters={
                "type": "OBJECT",
                "properties": {"where": {"type": "OBJECT", "additionalProperties": False}},
            }
        ),
        "Unknown name \"additionalProperties\" at 'tools[0].function_declarations[0].parameters.properties[0].value'",
    ),
    "unknown calling mode": (
        request(tools=TOOLS, toolConfig={"functionCallingConfig": {"mode": "REQUIRED"}}),
        "function_calling_config.mode'",
    ),
    "allowed names under AUTO": (
        request(
            tools=TOOLS,
            toolConfig={"functionCallingConfig": {"mode": "AUTO", "allowedFunctionNames": ["get_time"]}},
        ),
        "can only be set when the mode is ANY",
    ),
    "allowed name not declared": (
        request(
            tools=TOOLS,
            toolConfig={"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_date"]}},
        ),
        "`get_date`, which is not a declared function",
    ),
    "ANY without declarations": (
        request(toolConfig={"functionCallingConfig": {"mode": "ANY"}}),
        "needs at least one function declaration",
    ),
    "bad safety threshold": (
        request(safetySettings=[{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_ALL"}]),
        "safety_settings[0].threshold'",
    ),
    "labels not strings": (request(labels={"team": 1}), "Invalid value at 'labels'"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
async def test_bad_requests(fake: FakeUpstream, http: aiohttp.ClientSession, case: str) -> None:
    body, message = BAD_REQUESTS[case]
    status, refused = await post(http, fake, body)
    assert_refused(status, refused, 400, "INVALID_ARGUMENT", message)
    # Recorded even though refused, and refused the same way when streamed.
    assert fake.last("vertex").body == (body if isinstance(body, bytes) else orjson.dumps(body))
    url = fake.base_url + path(method="streamGenerateContent") + "?alt=sse"
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with http.post(url, data=data, headers=BEARER) as resp:
        assert_refused(resp.status, await resp.json(), 400, "INVALID_ARGUMENT", message)


# JSON-Schema keywords that Google's OpenAPI subset does not have, with a value for each.
UNSUPPORTED_KEYWORDS: dict[str, Any] = {
    "additionalProperties": False,
    "additional_properties": False,  # snake_case is still the same unknown field
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$ref": "#/$defs/x",
    "$defs": {"x": {}},
    "const": "Paris",
    "oneOf": [{"type": "string"}],
    "allOf": [{"type": "string"}],
    "patternProperties": {"^x": {}},
}


@pytest.mark.parametrize("keyword", UNSUPPORTED_KEYWORDS)
async def test_json_schema_keywords_gemini_does_not_accept(
    fake: FakeUpstream, http: aiohttp.ClientSession, keyword: str
) -> None:
    """What makes the gateway's schema reduction testable: `parameters` takes Google's subset only."""
    value = UNSUPPORTED_KEYWORDS[keyword]
    parameters = {"type": "OBJECT", "properties": {"location": {"type": "STRING"}}, keyword: value}
    status, refused = await post(http, fake, declaration_request(parameters=parameters))
    assert_refused(
        status,
        refused,
        400,
        "INVALID_ARGUMENT",
        f"Invalid JSON payload received. Unknown name \"{keyword}\" at 'tools[0].function_declarations[0].parameters': Cannot find field.",
    )
    # The same schema is fine as parametersJsonSchema, which takes ordinary JSON Schema.
    status, answer = await post(
        http, fake, declaration_request(parametersJsonSchema={**parameters, "type": "object"})
    )
    assert status == 200, answer


# --------------------------------------------------------------------------------------------------
# camelCase and snake_case


SNAKE_HISTORY: Any = [
    {
        "role": "user",
        "parts": [
            {"text": "Look"},
            {"inline_data": {"mime_type": "image/png", "data": PNG_B64}},
            {"file_data": {"mime_type": "application/pdf", "file_uri": "gs://b/doc.pdf"}},
        ],
    },
    {
        "role": "model",
        "parts": [
            {
                "function_call": {"name": "get_weather", "args": {"city_name": "Paris"}},
                "thought_signature": vertex_thought_signature("get_weather", {"city_name": "Paris"}),
            }
        ],
    },
    {"role": "user", "parts": [{"function_response": {"name": "get_weather", "response": {"temp_c": 22}}}]},
]
CAMEL_HISTORY: Any = [
    {
        "role": "user",
        "parts": [
            {"text": "Look"},
            {"inlineData": {"mimeType": "image/png", "data": PNG_B64}},
            {"fileData": {"mimeType": "application/pdf", "fileUri": "gs://b/doc.pdf"}},
        ],
    },
    {
        "role": "model",
        "parts": [
            {
                "functionCall": {"name": "get_weather", "args": {"city_name": "Paris"}},
                "thoughtSignature": vertex_thought_signature("get_weather", {"city_name": "Paris"}),
            }
        ],
    },
    {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp_c": 22}}}]},
]


async def test_snake_case_keys_mean_the_same_as_camel_case(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    snake = {
        "contents": SNAKE_HISTORY,
        "system_instruction": {"parts": [{"text": "shout"}]},
        "tools": [
            {
                "function_declarations": [
                    {
                        "name": "get_weather",
                        "parameters_json_schema": {"type": "object", "additionalProperties": False},
                    },
                    {
                        "name": "get_time",
                        "parameters": {
                            "type": "OBJECT",
                            "properties": {"max_value": {"type": "INTEGER"}},
                            "required": ["max_value"],
                            "property_ordering": ["max_value"],
                        },
                    },
                ]
            }
        ],
        "tool_config": {"function_calling_config": {"mode": "ANY", "allowed_function_names": ["get_time"]}},
        "generation_config": {
            "max_output_tokens": 50,
            "stop_sequences": ["zzz"],
            "candidate_count": 2,
            "response_mime_type": "application/json",
            "response_json_schema": {"type": "object"},
            "thinking_config": {"include_thoughts": True, "thinking_budget": 512},
            "top_p": 0.5,
            "top_k": 40,
            "presence_penalty": 0.1,
            "frequency_penalty": 0.1,
            "response_logprobs": False,
        },
        "safety_settings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_ONLY_HIGH"}],
        "labels": {"team_name": "ml"},
        "cached_content": "projects/p/locations/l/cachedContents/c",
    }
    camel = {
        "contents": CAMEL_HISTORY,
        "systemInstruction": {"parts": [{"text": "shout"}]},
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "get_weather",
                        "parametersJsonSchema": {"type": "object", "additionalProperties": False},
                    },
                    {
                        "name": "get_time",
                        "parameters": {
                            "type": "OBJECT",
                            "properties": {"max_value": {"type": "INTEGER"}},
                            "required": ["max_value"],
                            "propertyOrdering": ["max_value"],
                        },
                    },
                ]
            }
        ],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_time"]}},
        "generationConfig": {
            "maxOutputTokens": 50,
            "stopSequences": ["zzz"],
            "candidateCount": 2,
            "responseMimeType": "application/json",
            "responseJsonSchema": {"type": "object"},
            "thinkingConfig": {"includeThoughts": True, "thinkingBudget": 512},
            "topP": 0.5,
            "topK": 40,
            "presencePenalty": 0.1,
            "frequencyPenalty": 0.1,
            "responseLogprobs": False,
        },
        "safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_ONLY_HIGH"}],
        "labels": {"team_name": "ml"},
        "cachedContent": "projects/p/locations/l/cachedContents/c",
    }
    answers = []
    for body in (snake, camel):
        status, answer = await post(http, fake, body, model=GEMINI_3)
        assert status == 200, answer
        answers.append(without_ids(answer))
    assert answers[0] == answers[1]
    # The keys of args, responses, labels and schema properties are the caller's: left as sent.
    assert texts(answers[0])[0] == '{"answer":"[VERTEX] TOOL SAID: {\\"TEMP_C\\": 22}"}'

    # Still one name per field: both spellings at once are refused.
    both = part_request({"inlineData": {"mimeType": "image/png", "mime_type": "image/png", "data": PNG_B64}})
    status, refused = await post(http, fake, both)
    assert_refused(status, refused, 400, "INVALID_ARGUMENT", "Duplicate field")


async def test_nulls_count_as_absent(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = request(systemInstruction=None, generationConfig={"temperature": None, "maxOutputTokens": 2})
    body["tools"] = None
    status, answer = await post(http, fake, body)
    assert status == 200, answer
    assert texts(answer) == ["[vertex] Hello"]


# --------------------------------------------------------------------------------------------------
# Auth, paths and the script


async def test_bearer_auth_is_required(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    for headers in ({}, {"x-goog-api-key": "AIza-test"}, {"Authorization": "Basic dXNlcjpwdw=="}):
        status, refused = await post(http, fake, request(), headers=headers)
        assert_refused(
            status, refused, 401, "UNAUTHENTICATED", "Request is missing required authentication credential"
        )
    assert len(fake.for_flavor("vertex")) == 3  # recorded even though refused
    assert fake.vertex_tokens == []


async def test_strict_tokens_accept_only_issued_unexpired_ones(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake.strict_tokens = True
    status, refused = await post(http, fake, request())
    assert_refused(status, refused, 401, "UNAUTHENTICATED", "Request had invalid authentication credentials")
    token = await mint(fake)
    status, _ = await post(http, fake, request(), headers={"Authorization": f"Bearer {token}"})
    assert status == 200
    fake.token_lifetime = 0
    expired = await mint(fake)
    status, refused = await post(http, fake, request(), headers={"Authorization": f"Bearer {expired}"})
    assert_refused(status, refused, 401, "UNAUTHENTICATED", "invalid authentication credentials")
    assert fake.vertex_tokens == ["ya29.test-token", token, expired]


async def test_unknown_methods_and_paths(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    for url in (
        path(method="computeTokens"),
        path(method="batchEmbedContents"),
        path().replace(":generateContent", ""),
    ):
        status, body = await post_url(http, fake.base_url + url)
        assert_refused(status, body, 404, "NOT_FOUND", "names no method this fake serves")
    status, body = await post_url(
        http, fake.base_url + "/vertex/v2/projects/p/locations/l/publishers/google/models/m:generateContent"
    )
    assert_refused(status, body, 404, "NOT_FOUND", "Unknown request URL")
    assert fake.last().flavor == "vertex"


async def post_url(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.post(url, json=request(), headers=BEARER) as resp:
        return resp.status, await resp.json()


async def test_script_overrides_the_vertex_answer(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    fake.script["gemini-scripted"] = (
        418,
        {"x-test": "1"},
        {"error": {"code": 418, "message": "teapot", "status": "UNKNOWN"}},
    )
    status, body = await post(http, fake, request(), model="gemini-scripted")
    assert (status, body["error"]["message"]) == (418, "teapot")


# --------------------------------------------------------------------------------------------------
# Embeddings


async def test_predict_embeds_each_instance(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = {
        "instances": [
            {"content": "Hello there world", "task_type": "RETRIEVAL_DOCUMENT", "title": "Greeting"},
            {"content": "second", "task_type": "RETRIEVAL_QUERY"},
        ],
        "parameters": {"outputDimensionality": 4, "autoTruncate": True},
    }
    status, answer = await post(http, fake, body, model="text-embedding-005", method="predict")
    assert status == 200, answer
    assert answer == {
        "predictions": [
            {
                "embeddings": {
                    "values": embedding_vector("Hello there world")[:4],
                    "statistics": {"token_count": 3, "truncated": False},
                }
            },
            {
                "embeddings": {
                    "values": embedding_vector("second")[:4],
                    "statistics": {"token_count": 1, "truncated": False},
                }
            },
        ],
        # Characters without the spaces.
        "metadata": {"billableCharacterCount": 15 + 6},
    }
    for prediction in answer["predictions"]:
        types.ContentEmbedding.model_validate(prediction["embeddings"])
    types.EmbedContentMetadata.model_validate(answer["metadata"])
    _, full = await post(
        http, fake, {"instances": [{"content": "x"}]}, model="text-embedding-005", method="predict"
    )
    assert full["predictions"][0]["embeddings"]["values"] == embedding_vector("x")
    assert len(embedding_vector("x")) == EMBEDDING_SIZE


async def test_predict_caps_instances_at_250(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    many = [{"content": f"text {i}"} for i in range(VERTEX_MAX_PREDICT_INSTANCES)]
    status, answer = await post(http, fake, {"instances": many}, model="text-embedding-005", method="predict")
    assert status == 200
    assert len(answer["predictions"]) == 250
    status, refused = await post(
        http,
        fake,
        {"instances": [*many, {"content": "one more"}]},
        model="text-embedding-005",
        method="predict",
    )
    assert_refused(
        status, refused, 400, "INVALID_ARGUMENT", "it has 251 instances: the model accepts at most 250"
    )


BAD_PREDICTS: dict[str, tuple[Any, str]] = {
    "no instances": ({}, "`instances` must be a non-empty list"),
    "empty instances": ({"instances": []}, "`instances` must be a non-empty list"),
    "OpenAI input": ({"input": ["x"]}, 'Unknown name "input"'),
    "text instead of content": ({"instances": [{"text": "x"}]}, "unknown field `text`"),
    "camelCase task type": (
        {"instances": [{"content": "x", "taskType": "RETRIEVAL_QUERY"}]},
        "unknown field `taskType`",
    ),
    "empty content": ({"instances": [{"content": ""}]}, "instances[0].content is missing or empty"),
    "bad task type": ({"instances": [{"content": "x", "task_type": "SEARCH"}]}, "task type `SEARCH`"),
    "title without retrieval document": (
        {"instances": [{"content": "x", "title": "T"}]},
        "title is only valid with task type RETRIEVAL_DOCUMENT",
    ),
    "too many dimensions": (
        {"instances": [{"content": "x"}], "parameters": {"outputDimensionality": 9}},
        "outputDimensionality is 9",
    ),
    "OpenAI dimensions": (
        {"instances": [{"content": "x"}], "parameters": {"dimensions": 4}},
        "unknown field `dimensions`",
    ),
}


@pytest.mark.parametrize("case", BAD_PREDICTS)
async def test_bad_predict_requests(fake: FakeUpstream, http: aiohttp.ClientSession, case: str) -> None:
    body, message = BAD_PREDICTS[case]
    status, refused = await post(http, fake, body, model="text-embedding-005", method="predict")
    assert_refused(status, refused, 400, "INVALID_ARGUMENT", message)


async def test_embed_content_embeds_one_content(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    for body in (
        {
            "content": {"parts": [{"text": "Hello there world"}]},
            "embedContentConfig": {"outputDimensionality": 3, "taskType": "SEMANTIC_SIMILARITY"},
        },
        {
            "content": {"role": "user", "parts": [{"text": "Hello there world"}]},
            "embed_content_config": {"output_dimensionality": 3},
        },
        {"content": {"parts": [{"text": "Hello there world"}]}, "outputDimensionality": 3},
    ):
        status, answer = await post(http, fake, body, model="gemini-embedding-001", method="embedContent")
        assert status == 200, answer
        assert answer == {
            "embedding": {"values": embedding_vector("Hello there world")[:3]},
            "usageMetadata": {"promptTokenCount": 3},
        }
        types.ContentEmbedding.model_validate(answer["embedding"])
        types.UsageMetadata.model_validate(answer["usageMetadata"])
    _, joined = await post(
        http,
        fake,
        {"content": {"parts": [{"text": "a"}, {"text": "b"}]}},
        model="gemini-embedding-001",
        method="embedContent",
    )
    assert joined["embedding"]["values"] == embedding_vector("a b")

    for body, message in (
        ({"contents": [{"parts": [{"text": "a"}]}, {"parts": [{"text": "b"}]}]}, 'Unknown name "contents"'),
        ({"content": [{"parts": [{"text": "a"}]}]}, "Invalid value at 'content'"),
        ({}, "embedContent embeds exactly one content"),
        (
            {"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": PNG_B64}}]}},
            "is not a non-empty text part",
        ),
        ({"content": {"parts": [{"text": "a"}]}, "outputDimensionality": 0}, "outputDimensionality is 0"),
        (
            {"content": {"parts": [{"text": "a"}]}, "embedContentConfig": {"taskType": "NOPE"}},
            "task type `NOPE`",
        ),
    ):
        status, refused = await post(http, fake, body, model="gemini-embedding-001", method="embedContent")
        assert_refused(status, refused, 400, "INVALID_ARGUMENT", message)


# --------------------------------------------------------------------------------------------------
# Faults


def test_vertex_fault_words_extend_the_common_ones() -> None:
    assert VERTEX_FAULT_WORDS[: len(FAULT_WORDS)] == FAULT_WORDS
    assert set(VERTEX_FAULT_WORDS) - set(FAULT_WORDS) == {"fail-403", "blocked", "safety"}


@pytest.mark.parametrize(
    ("word", "status", "google_status", "message"),
    [
        ("fail-500", 500, "INTERNAL", "Internal error encountered."),
        ("fail-503", 503, "UNAVAILABLE", "The service is currently unavailable."),
        ("fail-429", 429, "RESOURCE_EXHAUSTED", "Resource exhausted. Please try again later."),
        ("fail-400", 400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
        ("fail-401", 401, "UNAUTHENTICATED", "Request had invalid authentication credentials."),
        (
            "fail-403",
            403,
            "PERMISSION_DENIED",
            "Permission 'aiplatform.endpoints.predict' denied on resource",
        ),
    ],
)
async def test_failure_words(
    fake: FakeUpstream, http: aiohttp.ClientSession, word: str, status: int, google_status: str, message: str
) -> None:
    model = f"gemini-{word}"
    for method, body in (
        ("generateContent", request()),
        ("predict", {"instances": [{"content": "x"}]}),
        ("embedContent", {"content": {"parts": [{"text": "x"}]}}),
    ):
        async with http.post(fake.base_url + path(model, method), json=body, headers=BEARER) as resp:
            assert_refused(resp.status, await resp.json(), status, google_status, message)
            assert resp.headers.get("retry-after") == ("7" if word == "fail-429" else None)
    # Before the stream starts, an error is a plain JSON error.
    url = fake.base_url + path(model, "streamGenerateContent") + "?alt=sse"
    async with http.post(url, json=request(), headers=BEARER) as resp:
        assert resp.content_type == "application/json"
        assert_refused(resp.status, await resp.json(), status, google_status, message)


async def test_faults_come_after_validation(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, refused = await post(http, fake, request(contents=[]), model="gemini-fail-500")
    assert_refused(status, refused, 400, "INVALID_ARGUMENT", "contents")


async def test_error_mid_stream_after_the_first_event(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    events = await events_of(http, fake, request(), "gemini-error-mid-stream")
    assert len(events) == 2
    judge(events[0])
    assert events[0]["candidates"][0]["content"]["parts"] == [{"text": "[vertex] "}]
    assert events[1] == {
        "error": {"code": 500, "message": "Internal error encountered.", "status": "INTERNAL"}
    }
    # Not streamed, the same failure is a 500.
    status, refused = await post(http, fake, request(), model="gemini-error-mid-stream")
    assert_refused(status, refused, 500, "INTERNAL", "Internal error encountered.")


async def test_cut_mid_stream_breaks_the_connection(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    received = b""
    url = fake.base_url + path("gemini-cut-mid-stream", "streamGenerateContent") + "?alt=sse"
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(url, json=request(), headers=BEARER) as resp:
            async for piece in resp.content.iter_any():
                received += piece
    assert received.count(b"data: ") == 2
    assert b"finishReason" not in received
    # Not streamed: half of an honest content-length.
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(
            fake.base_url + path("gemini-cut-mid-stream"), json=request(), headers=BEARER
        ) as resp:
            await resp.read()
    assert fake.last("vertex").finished_at is not None


async def test_slow_stream_pauses_after_the_first_event(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    stamps: list[tuple[float, bytes]] = []
    url = fake.base_url + path("gemini-slow-stream", "streamGenerateContent") + "?alt=sse"
    async with http.post(url, json=request(), headers=BEARER) as resp:
        async for line in resp.content:
            stamps.append((time.monotonic(), line))
    data = [t for t, line in stamps if line.startswith(b"data: ")]
    assert len(data) == 4
    assert data[1] - data[0] >= 0.15
    assert b'"finishReason":"STOP"' in stamps[-2][1]  # the stream still finishes


async def test_slow_first_byte_and_hang(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    started = time.monotonic()
    status, answer = await post(http, fake, request(), model="gemini-slow-first-byte")
    assert time.monotonic() - started >= 0.15
    assert status == 200
    judge(answer)

    with pytest.raises(TimeoutError):
        async with http.post(
            fake.base_url + path("gemini-hang"),
            json=request(),
            headers=BEARER,
            timeout=aiohttp.ClientTimeout(total=0.2),
        ):
            pass
    rec = fake.last("vertex")
    for _ in range(100):
        if rec.disconnected_at is not None:
            break
        await asyncio.sleep(0.01)
    assert rec.disconnected_at is not None
    assert rec.finished_at is None


# --------------------------------------------------------------------------------------------------
# Google OAuth, through google-auth itself


def credentials(
    fake: FakeUpstream, tmp_path: Path, scopes: list[str] | None = None
) -> service_account.Credentials:
    key_file = fake.write_service_account(tmp_path)
    return service_account.Credentials.from_service_account_file(
        str(key_file), scopes=scopes or [GOOGLE_CLOUD_PLATFORM_SCOPE]
    )


async def refresh(creds: service_account.Credentials) -> None:
    """google-auth blocks (requests): off the loop, which the fake needs to answer."""
    await asyncio.to_thread(creds.refresh, google.auth.transport.requests.Request())


async def mint(fake: FakeUpstream) -> str:
    with_key = service_account.Credentials.from_service_account_info(
        fake.service_account_info(), scopes=[GOOGLE_CLOUD_PLATFORM_SCOPE]
    )
    await refresh(with_key)
    return str(with_key.token)


async def test_google_auth_gets_a_token_from_the_fake(fake: FakeUpstream, tmp_path: Path) -> None:
    creds = credentials(fake, tmp_path)
    assert not creds.valid
    await refresh(creds)
    assert creds.token == "ya29.fake-1"
    assert creds.valid
    lifetime = (creds.expiry - datetime.datetime.now(datetime.UTC).replace(tzinfo=None)).total_seconds()
    assert GOOGLE_TOKEN_LIFETIME - 60 < lifetime <= GOOGLE_TOKEN_LIFETIME
    (rec,) = fake.token_requests
    assert rec.flavor == "oauth2"
    assert rec.path == "/oauth2/token"
    assert rec.header("Content-Type") == "application/x-www-form-urlencoded"
    assert b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer" in rec.body
    assert fake.issued_tokens == ["ya29.fake-1"]
    assert fake.requests == []  # token requests are kept apart

    fake.token_lifetime = 1
    await refresh(creds)
    assert creds.token == "ya29.fake-2"
    # google-auth refreshes ahead of expiry, so a 1-second token is expired at once.
    assert not creds.valid
    assert len(fake.token_requests) == 2
    fake.clear()
    assert fake.token_requests == []
    assert fake.issued_tokens == ["ya29.fake-1", "ya29.fake-2"]


async def test_concurrent_refreshes_are_each_counted(fake: FakeUpstream, tmp_path: Path) -> None:
    fake.token_delay = 0.1
    first, second = credentials(fake, tmp_path), credentials(fake, tmp_path)
    await asyncio.gather(refresh(first), refresh(second))
    one, two = fake.token_requests
    assert one.finished_at is not None and two.finished_at is not None
    assert max(one.started_at, two.started_at) < min(one.finished_at, two.finished_at)  # in flight together
    assert {first.token, second.token} == {"ya29.fake-1", "ya29.fake-2"}
    assert len(fake.token_requests) == 2


async def test_the_token_endpoint_refuses_what_google_refuses(fake: FakeUpstream, tmp_path: Path) -> None:
    storage_only = credentials(
        fake, tmp_path, scopes=["https://www.googleapis.com/auth/devstorage.read_only"]
    )
    with pytest.raises(google.auth.exceptions.RefreshError, match="invalid_scope"):
        await refresh(storage_only)
    fake.token_failure = 401
    with pytest.raises(google.auth.exceptions.RefreshError, match="invalid_grant"):
        await refresh(credentials(fake, tmp_path))
    assert fake.issued_tokens == []
    assert len(fake.token_requests) == 2


def jwt(claims: dict[str, Any]) -> str:
    def segment(value: Any) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")

    return f"{segment({'alg': 'RS256', 'typ': 'JWT'})}.{segment(claims)}.c2ln"


async def test_the_token_endpoint_checks_the_assertion(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    now = int(time.time())
    good = {
        "iss": VERTEX_SERVICE_ACCOUNT,
        "aud": GOOGLE_TOKEN_AUDIENCE,
        "scope": GOOGLE_CLOUD_PLATFORM_SCOPE,
        "iat": now,
        "exp": now + 3600,
    }
    grant = "urn:ietf:params:oauth:grant-type:jwt-bearer"
    cases: list[tuple[dict[str, str], int, str]] = [
        ({"grant_type": grant, "assertion": jwt(good)}, 200, ""),
        ({"grant_type": grant, "assertion": jwt({**good, "aud": fake.token_uri})}, 200, ""),
        (
            {
                "grant_type": grant,
                "assertion": jwt({**good, "scope": f"openid {GOOGLE_CLOUD_PLATFORM_SCOPE}"}),
            },
            200,
            "",
        ),
        ({"grant_type": "client_credentials", "assertion": jwt(good)}, 400, "unsupported_grant_type"),
        ({"grant_type": grant, "assertion": "not-a-jwt"}, 400, "invalid_grant"),
        (
            {"grant_type": grant, "assertion": jwt({**good, "aud": "https://example.com/token"})},
            400,
            "invalid_grant",
        ),
        ({"grant_type": grant, "assertion": jwt({**good, "exp": now + 7200})}, 400, "invalid_grant"),
        (
            {"grant_type": grant, "assertion": jwt({k: v for k, v in good.items() if k != "iss"})},
            400,
            "invalid_grant",
        ),
        (
            {"grant_type": grant, "assertion": jwt({k: v for k, v in good.items() if k != "scope"})},
            400,
            "invalid_scope",
        ),
    ]
    for form, status, error in cases:
        async with http.post(fake.token_uri, data=form) as resp:
            body = await resp.json()
        assert resp.status == status, (form, body)
        if status == 200:
            assert body == {
                "access_token": fake.issued_tokens[-1],
                "expires_in": 3600,
                "token_type": "Bearer",
            }
        else:
            assert body["error"] == error
            assert body["error_description"]
    assert fake.issued_tokens == ["ya29.fake-1", "ya29.fake-2", "ya29.fake-3"]


def test_service_account_file(fake: FakeUpstream, tmp_path: Path) -> None:
    written = fake.write_service_account(tmp_path)
    assert written == tmp_path / "service-account.json"
    assert fake.write_service_account(tmp_path / "key.json") == tmp_path / "key.json"
    info = json.loads(written.read_text())
    assert info == {
        "type": "service_account",
        "project_id": VERTEX_PROJECT,
        "private_key_id": "k1",
        "private_key": service_account_private_key(),
        "client_email": "sa@fake-project.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": fake.base_url + "/oauth2/token",
    }
    assert info["private_key"].startswith("-----BEGIN PRIVATE KEY-----")


# --------------------------------------------------------------------------------------------------
# google-genai as the client, authenticated through the fake's token endpoint


@pytest.fixture
def client(fake: FakeUpstream, tmp_path: Path) -> Iterator[genai.Client]:
    """The synchronous SDK on Vertex, pointed at the fake; run it with `asyncio.to_thread`."""
    with genai.Client(
        vertexai=True,
        project=VERTEX_PROJECT,
        location="us-central1",
        credentials=credentials(fake, tmp_path),
        http_options=types.HttpOptions(base_url=fake.base_url + "/vertex/"),
    ) as sdk:
        yield sdk


async def test_sdk_generates_streams_and_embeds(fake: FakeUpstream, client: genai.Client) -> None:
    def run() -> None:
        answer = client.models.generate_content(
            model=MODEL,
            contents="Hello there world",
            config=types.GenerateContentConfig(
                system_instruction="shout", candidate_count=2, max_output_tokens=10
            ),
        )
        assert answer.text == "[VERTEX] HELLO THERE WORLD"
        assert answer.candidates is not None and len(answer.candidates) == 2
        pieces = [
            chunk.text
            for chunk in client.models.generate_content_stream(model=MODEL, contents="Hello there world")
        ]
        assert pieces == ["[vertex] ", "Hello ", "there ", "world"]
        predicted = client.models.embed_content(
            model="text-embedding-005",
            contents=["a b", "c"],
            config=types.EmbedContentConfig(
                output_dimensionality=4, task_type="RETRIEVAL_DOCUMENT", title="T"
            ),
        )
        assert predicted.embeddings is not None
        assert [e.values for e in predicted.embeddings] == [
            embedding_vector("a b")[:4],
            embedding_vector("c")[:4],
        ]
        assert predicted.embeddings[0].statistics is not None
        assert predicted.embeddings[0].statistics.token_count == 2
        embedded = client.models.embed_content(model="gemini-embedding-001", contents="a b")
        assert embedded.embeddings is not None
        assert embedded.embeddings[0].values == embedding_vector("a b")

    await asyncio.to_thread(run)
    methods = [rec.path.rpartition(":")[2] for rec in fake.for_flavor("vertex")]
    assert methods == ["generateContent", "streamGenerateContent", "predict", "embedContent"]
    assert fake.last("vertex").path.startswith("/vertex/v1beta1/projects/fake-project/locations/us-central1/")
    # One token, minted once and reused.
    assert len(fake.token_requests) == 1
    assert fake.vertex_tokens == ["ya29.fake-1"] * 4


@pytest.mark.parametrize("streamed", [False, True], ids=["generate", "stream"])
async def test_sdk_gemini_3_function_loop_round_trips_the_signature(
    fake: FakeUpstream, client: genai.Client, streamed: bool
) -> None:
    """The SDK keeps the signature as bytes and sends it back re-encoded: the fake accepts it."""
    weather = types.FunctionDeclaration(
        name="get_weather",
        parameters_json_schema={"type": "object", "properties": {"location": {"type": "string"}}},
    )
    settings = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[weather])],
        thinking_config=types.ThinkingConfig(include_thoughts=True),
    )

    def ask(contents: list[types.Content]) -> types.Content:
        if streamed:
            parts: list[types.Part] = []
            for chunk in client.models.generate_content_stream(
                model=GEMINI_3, contents=contents, config=settings
            ):
                assert chunk.candidates is not None and chunk.candidates[0].content is not None
                parts += chunk.candidates[0].content.parts or []
            return types.Content(role="model", parts=parts)
        answer = client.models.generate_content(model=GEMINI_3, contents=contents, config=settings)
        assert answer.candidates is not None and answer.candidates[0].content is not None
        return answer.candidates[0].content

    def run() -> None:
        contents = [types.Content(role="user", parts=[types.Part(text="Weather in Paris?")])]
        turn = ask(contents)
        call = next(part for part in turn.parts or [] if part.function_call)
        assert call.function_call is not None
        assert call.function_call.name == "get_weather"
        assert call.thought_signature == base64.b64decode(
            vertex_thought_signature("get_weather", VERTEX_TOOL_ARGS)
        )
        result = types.Part.from_function_response(name="get_weather", response={"content": "22 degrees"})
        contents += [turn, types.Content(role="user", parts=[result])]
        parts = ask(contents).parts or []
        thought = "".join(p.text or "" for p in parts if p.thought)
        assert thought == VERTEX_THINKING_PREFIX + "[vertex] tool said: 22 degrees"
        assert "".join(p.text or "" for p in parts if not p.thought) == "[vertex] tool said: 22 degrees"

        # Without the signature, the same history is refused.
        unsigned = copy.deepcopy(turn)
        for part in unsigned.parts or []:
            part.thought_signature = None
        contents[1] = unsigned
        with pytest.raises(errors.ClientError) as refused:
            ask(contents)
        assert refused.value.code == 400
        assert "missing a thought_signature" in str(refused.value)

    await asyncio.to_thread(run)
    sent = fake.for_flavor("vertex")[1].json
    assert "thoughtSignature" in sent["contents"][1]["parts"][-1]


async def test_sdk_sees_google_errors(fake: FakeUpstream, client: genai.Client) -> None:
    def run() -> None:
        with pytest.raises(errors.ClientError) as limited:
            client.models.generate_content(model="gemini-fail-429", contents="hi")
        assert (limited.value.code, limited.value.status) == (429, "RESOURCE_EXHAUSTED")
        with pytest.raises(errors.ServerError) as failed:
            client.models.generate_content(model="gemini-fail-503", contents="hi")
        assert (failed.value.code, failed.value.status) == (503, "UNAVAILABLE")

    await asyncio.to_thread(run)
