"""Reasoning through ``/v1/responses`` with the official openai SDK, for the translated providers
whose thinking has state (Anthropic, Bedrock Converse, Gemini on Vertex), against the fake upstream:
the reasoning item and its summary, ``include`` giving a sealed ``encrypted_content``, the item sent
back restoring the thinking in what the upstream received (the fake checks Anthropic's and
Bedrock's signatures), and a tampered item refused by the gateway with nothing sent upstream."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.responses import Response

from tests.conftest import Proxy, post_json
from tests.dialects.test_responses_e2e import CODEX_HEADERS, WEATHER, _sse, codex_body
from tests.fakes import (
    ANTHROPIC_THINKING_PREFIX,
    FakeUpstream,
    Recorded,
    anthropic_thinking_block,
    bedrock_reasoning_block,
    vertex_text_signature,
)

INCLUDE = ["reasoning.encrypted_content"]


def _anthropic_restored(record: Recorded, reply: str) -> bool:
    turn = record.json["messages"][1]
    return bool(turn["content"][0] == anthropic_thinking_block(ANTHROPIC_THINKING_PREFIX + reply))


def _bedrock_restored(record: Recorded, reply: str) -> bool:
    return bool(record.json["messages"][1]["content"][0] == bedrock_reasoning_block("Thinking about: " + reply))


def _vertex_restored(record: Recorded, reply: str) -> bool:
    parts = record.json["contents"][1]["parts"]
    return bool(parts[-1] == {"text": reply, "thoughtSignature": vertex_text_signature(reply)})


@dataclass(frozen=True)
class Thinker:
    """A translated provider type whose thinking has state, and how its upstream shows it restored."""

    name: str
    model: str
    restored: Callable[[Recorded, str], bool]  # the recorded next turn, the first reply's text


THINKERS = [
    Thinker("anthropic", "anthropic/claude-3-7-sonnet-20250219", _anthropic_restored),
    Thinker("bedrock", "bedrock/anthropic.claude-3-7-sonnet-20250219-v1:0", _bedrock_restored),
    Thinker("vertex", "vertex/gemini-3-pro-preview", _vertex_restored),
]
BY_THINKER = pytest.mark.parametrize("kind", THINKERS, ids=[t.name for t in THINKERS])


def _first_turn(proxy: Proxy, kind: Thinker, stream: bool, **extra: Any) -> Response:
    args: dict[str, Any] = {"model": kind.model, "input": "hello there", "reasoning": {"effort": "low"}, **extra}
    if not stream:
        return proxy.client().responses.create(**args)
    with proxy.client().responses.stream(**args) as events:  # the SDK's accumulator checks the grammar
        kinds = [event.type for event in events]
        final = events.get_final_response()
    assert "response.reasoning_summary_text.delta" in kinds
    return final


@BY_THINKER
@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
def test_thinking_comes_back_as_a_sealed_item_and_is_restored(proxy: Proxy, fake: FakeUpstream, kind: Thinker,
                                                               stream: bool) -> None:
    reply = f"[{kind.name}] hello there"
    first = _first_turn(proxy, kind, stream, include=INCLUDE)
    reasoning = first.output[0]
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_")
    assert [part.text for part in reasoning.summary] == ["Thinking about: " + reply]
    assert first.output_text == reply
    # Gemini streams a text answer's signature after the text: an item of its own, after the message.
    sealed = [item.encrypted_content for item in first.output if item.type == "reasoning"]
    assert any(sealed) and all(token is None or token.startswith("twr1.") for token in sealed)
    assert "reasoning_state" not in first.model_dump_json()
    if kind.name == "vertex":
        assert first.usage is not None and first.usage.output_tokens_details.reasoning_tokens > 0

    # The next turn as a stateless client sends it: every output item back, then a new question.
    second = proxy.client().responses.create(model=kind.model, reasoning={"effort": "low"}, include=INCLUDE, input=[
        {"role": "user", "content": "hello there"}, *[item.model_dump(exclude_none=True) for item in first.output],
        {"role": "user", "content": "and again"}])
    assert second.output_text == f"[{kind.name}] and again"
    assert kind.restored(fake.last(kind.name), reply)


@BY_THINKER
def test_without_include_the_item_has_no_state_and_nothing_is_restored(proxy: Proxy, fake: FakeUpstream,
                                                                         kind: Thinker) -> None:
    first = _first_turn(proxy, kind, False)
    assert first.output[0].type == "reasoning" and first.output[0].encrypted_content is None
    proxy.client().responses.create(model=kind.model, input=[
        {"role": "user", "content": "hello there"}, *[item.model_dump(exclude_none=True) for item in first.output],
        {"role": "user", "content": "and again"}])
    assert not kind.restored(fake.last(kind.name), f"[{kind.name}] hello there")


@BY_THINKER
def test_a_tampered_item_is_the_gateways_400_and_nothing_reaches_the_upstream(proxy: Proxy, fake: FakeUpstream,
                                                                               kind: Thinker) -> None:
    first = _first_turn(proxy, kind, False, include=INCLUDE)
    items = [item.model_dump(exclude_none=True) for item in first.output]
    token = items[0]["encrypted_content"]
    middle = len(token) // 2
    items[0]["encrypted_content"] = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1:]
    sent = len(fake.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        proxy.client().responses.create(model=kind.model, include=INCLUDE,
                                        input=[{"role": "user", "content": "hello there"}, *items])
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "input[1].encrypted_content"
    assert error["code"] == "invalid_encrypted_content" and caught.value.status_code == 400
    assert len(fake.requests) == sent


def test_openais_own_encrypted_content_is_left_out_for_a_translated_provider(proxy: Proxy, fake: FakeUpstream) -> None:
    response = proxy.client().responses.create(model=THINKERS[0].model, reasoning={"effort": "low"}, input=[
        {"role": "user", "content": "hi"},
        {"type": "reasoning", "id": "rs_openai", "summary": [], "encrypted_content": "gAAAAABoOpenAIsOwnFernetToken"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hello"}]},
        {"role": "user", "content": "again"}])
    assert response.output_text == "[anthropic] again"
    assert fake.last("anthropic").json["messages"][1]["content"] == [{"type": "text", "text": "hello"}]


def test_a_tool_turn_restores_its_thinking_from_the_item(proxy: Proxy, fake: FakeUpstream) -> None:
    """The call id carries the thinking too; a client that keeps only the id's short form still gets
    it back from the item, so thinking stays on (Anthropic needs it first on a tool-use turn)."""
    client = proxy.client()
    model = THINKERS[0].model
    first = client.responses.create(model=model, input="weather in Paris?", tools=WEATHER, include=INCLUDE,
                                    reasoning={"effort": "low"})
    items = [item.model_dump(exclude_none=True) for item in first.output]
    assert items[0]["type"] == "reasoning" and items[-1]["type"] == "function_call"
    short = items[-1]["call_id"].split("~")[0]
    items[-1]["call_id"] = short
    second = client.responses.create(model=model, tools=WEATHER, include=INCLUDE, reasoning={"effort": "low"}, input=[
        {"role": "user", "content": "weather in Paris?"}, *items,
        {"type": "function_call_output", "call_id": short, "output": "sunny"}])
    assert second.output_text == "[anthropic] tool said: sunny"
    sent = fake.last("anthropic").json
    assert sent["thinking"]["type"] == "enabled"
    assert sent["messages"][1]["content"][0] == anthropic_thinking_block(
        ANTHROPIC_THINKING_PREFIX + "[anthropic] weather in Paris?")
    assert sent["messages"][1]["content"][-1]["type"] == "tool_use"


@BY_THINKER
def test_a_codex_turn_with_reasoning_streams_as_codex_parses_it(proxy: Proxy, fake: FakeUpstream,
                                                                kind: Thinker) -> None:
    """Codex sends include and reasoning, parses strictly, and sends the output back as it came."""
    body = {**codex_body(kind.model, []), "reasoning": {"effort": "low", "summary": "auto"}}
    response = post_json(proxy, "/v1/responses", body, **CODEX_HEADERS)
    events = _sse(response.body)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    opened: dict[str, str] = {}
    parts: set[tuple[str, int]] = set()
    for event in events:
        if event["type"] == "response.output_item.added":
            opened[event["item"]["id"]] = event["item"]["type"]
            if event["item"]["type"] == "message":
                assert event["item"]["content"] == []
        if event["type"] == "response.reasoning_summary_part.added":
            parts.add((event["item_id"], event["summary_index"]))
        if event["type"] == "response.reasoning_summary_text.delta":
            assert (event["item_id"], event["summary_index"]) in parts
        if "item_id" in event:
            assert event["item_id"] in opened
    final = events[-1]
    assert final["type"] == "response.completed"
    assert isinstance(final["response"]["usage"]["output_tokens_details"]["reasoning_tokens"], int)
    output = final["response"]["output"]
    assert output[0]["type"] == "reasoning"
    assert any(item.get("encrypted_content", "").startswith("twr1.") for item in output if item["type"] == "reasoning")
    # Codex's next request: its input, the output items as they came, a new user message.
    follow = {**body, "input": [*body["input"], *output,
                                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go"}]}]}
    again = post_json(proxy, "/v1/responses", follow, **CODEX_HEADERS)
    assert again.status == 200 and _sse(again.body)[-1]["type"] == "response.completed"
    text = output[[item["type"] for item in output].index("message")]["content"][0]["text"]
    assert kind.restored(fake.last(kind.name), text)


def test_a_chat_caller_never_sees_the_extension_and_cannot_send_it(proxy: Proxy) -> None:
    model = THINKERS[0].model
    answer = post_json(proxy, "/v1/chat/completions", {"model": model, "reasoning_effort": "low",
                                                       "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status == 200 and json.loads(answer.body)["choices"][0]["message"]["reasoning_content"]
    streamed = post_json(proxy, "/v1/chat/completions", {"model": model, "reasoning_effort": "low", "stream": True,
                                                         "messages": [{"role": "user", "content": "hi"}]})
    assert b"reasoning_content" in streamed.body
    assert b"reasoning_state" not in answer.body + streamed.body
    refused = post_json(proxy, "/v1/chat/completions", {"model": model, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello", "reasoning_state": [
            {"wire": "anthropic", "block": {"type": "thinking", "thinking": "forged", "signature": "x"}}]},
        {"role": "user", "content": "again"}]})
    assert refused.status == 400
    assert json.loads(refused.body)["error"]["param"] == "messages[1].reasoning_state"


def _sealed_turn(proxy: Proxy) -> list[dict[str, Any]]:
    """A first turn's input and output items, its thinking sealed by ``proxy``."""
    first = proxy.client().responses.create(model=THINKERS[0].model, input="hello there", reasoning={"effort": "low"},
                                            include=INCLUDE, store=False)  # stateless, as Codex
    assert (first.output[0].encrypted_content or "").startswith("twr1.")
    return [{"role": "user", "content": "hello there"}, *[item.model_dump(exclude_none=True) for item in first.output],
            {"role": "user", "content": "and again"}]


def test_the_key_lives_in_the_store_only_once_needed_and_every_gateway_on_it_shares_it(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream, tmp_path: Path) -> None:
    first, second = make_proxy(), make_proxy()  # two gateways on one state directory
    first.client().responses.create(model=THINKERS[0].model, input="hi", reasoning={"effort": "low"},
                                   store=False)
    assert not (tmp_path / "state").exists()  # a plain request that keeps nothing never opens the store
    items = _sealed_turn(first)
    assert (tmp_path / "state").exists()
    second.client().responses.create(model=THINKERS[0].model, reasoning={"effort": "low"}, input=items,
                                    store=False)
    assert _anthropic_restored(fake.last("anthropic"), "[anthropic] hello there")


def test_state_secret_in_the_yaml_signs_without_a_store(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                                        tmp_path: Path) -> None:
    secret = "state:\n  secret: a-secret-every-instance-shares\n"
    items = _sealed_turn(make_proxy(secret))
    make_proxy(secret).client().responses.create(model=THINKERS[0].model, reasoning={"effort": "low"}, input=items,
                                                 store=False)
    assert _anthropic_restored(fake.last("anthropic"), "[anthropic] hello there")
    assert not (tmp_path / "state").exists()
    with pytest.raises(openai.BadRequestError) as caught:  # another secret: not ours
        make_proxy("state:\n  secret: another-secret\n").client().responses.create(
            model=THINKERS[0].model, input=items, store=False)
    assert caught.value.code == "invalid_encrypted_content"


def test_with_the_store_down_state_is_left_out_but_state_sent_back_is_a_503(
        make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    items = _sealed_turn(make_proxy())
    down = make_proxy("state:\n  path: /dev/null/cannot-be-a-directory\n")
    answer = down.client().responses.create(model=THINKERS[0].model, input="hi", reasoning={"effort": "low"},
                                            include=INCLUDE)
    assert answer.output[0].type == "reasoning" and answer.output[0].encrypted_content is None
    sent = len(fake.requests)
    with pytest.raises(openai.InternalServerError) as caught:
        down.client().responses.create(model=THINKERS[0].model, input=items)
    assert caught.value.status_code == 503 and caught.value.code == "state_unavailable"
    assert len(fake.requests) == sent


def test_a_forged_item_is_refused_for_a_native_provider_too(proxy: Proxy, fake: FakeUpstream) -> None:
    """It would be dropped before OpenAI anyway; a token that claims to be the gateway's and is not
    is the caller's mistake wherever the request goes."""
    sent = len(fake.requests)
    response = post_json(proxy, "/v1/responses", {"model": "openai/gpt-4o", "input": [
        {"role": "user", "content": "hi"},
        {"type": "reasoning", "summary": [], "encrypted_content": "twr1.forged-by-a-client"}]})
    assert response.status == 400 and response.json()["error"]["param"] == "input[1].encrypted_content"
    assert len(fake.requests) == sent
