"""Stored conversations through the proxy and the fake upstream, with the openai SDK: a follow-up
by ``previous_response_id`` (answers and streams, text and tool calls), ``GET``, ``DELETE`` and
``input_items``, ids that are unknown or another caller's, ``store: false``, stored responses off,
a store that is down, and the conversation surviving a restart."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import GATEWAY_KEY, PROVIDER_KEY, Proxy, config_text, post_json, raw_request, redis_keys
from tests.dialects.test_responses_e2e import NATIVE, WEATHER
from tests.e2e.test_conformance import BY_TYPE, Type
from tests.fakes import FakeUpstream
from tests.processes import Proc, request, start_proxy, write_config

HEADERS = {"X-API-Key": GATEWAY_KEY, "Authorization": f"Bearer {PROVIDER_KEY}"}


def _seen(fake: FakeUpstream) -> str:
    """What the upstream received last, as text (every type's body names the conversation's words)."""
    return fake.last().body.decode()


@BY_TYPE
def test_a_follow_up_continues_the_conversation(proxy: Proxy, fake: FakeUpstream, kind: Type) -> None:
    client = proxy.client()
    first = client.responses.create(model=kind.model, input="my name is Ada", instructions="Be brief.")
    assert first.store is True and first.previous_response_id is None
    second = client.responses.create(model=kind.model, input="what is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id and second.store is True and second.id != first.id
    sent = _seen(fake)
    if kind.name in NATIVE:
        # The provider stored the first turn itself: the follow-up goes there, by its id, as the caller sent it.
        assert fake.last().json["previous_response_id"] == first.id and "my name is Ada" not in sent
        assert first.id in fake.responses
        return
    # The first turn's input and answer, then the new input; the first turn's instructions are not carried.
    assert sent.index("my name is Ada") < sent.index(f"[{kind.name}] my name is Ada") < sent.index("what is my name?")
    assert "Be brief." not in sent and "previous_response_id" not in sent
    assert second.output_text == f"[{kind.name}] what is my name?"


@pytest.mark.parametrize("model", ["openai/gpt-4o", "azure/gpt-4o"])
def test_a_native_follow_up_goes_where_its_response_is(proxy: Proxy, fake: FakeUpstream, model: str) -> None:
    client = proxy.client()
    first = client.responses.create(model=model, input="kept upstream")
    fake.clear()
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="anthropic/claude-3-5-sonnet-20241022", input="x", previous_response_id=first.id)
    assert caught.value.code == "previous_response_not_found"
    assert f"made by provider '{model.split('/')[0]}'" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught, \
            proxy.client(api_key="sk-another-provider-key-9876543210") as other:  # as if it did not exist
        other.responses.create(model=model, input="x", previous_response_id=first.id)
    assert caught.value.code == "previous_response_not_found" and "made by" not in caught.value.message
    assert not fake.requests
    with client.responses.stream(model=model, input="and again", previous_response_id=first.id) as stream:
        second = stream.get_final_response()
    assert fake.last().json["previous_response_id"] == first.id and second.previous_response_id == first.id
    third = client.responses.create(model=model, input="once more", previous_response_id=second.id)
    assert third.previous_response_id == second.id


def test_a_streamed_follow_up_and_get_right_after_the_end(proxy: Proxy, fake: FakeUpstream) -> None:
    client = proxy.client()
    with client.responses.stream(model="anthropic/claude-3-5-sonnet-20241022", input="first words") as stream:
        first = stream.get_final_response()
    # The turn was written before response.completed went out: readable the moment the stream ends.
    assert client.responses.retrieve(first.id).output_text == first.output_text
    with client.responses.stream(model="anthropic/claude-3-5-sonnet-20241022", input="second words",
                                 previous_response_id=first.id) as stream:
        second = stream.get_final_response()
    assert second.previous_response_id == first.id
    assert "first words" in _seen(fake) and "second words" in _seen(fake)
    assert client.responses.retrieve(second.id).previous_response_id == first.id


async def test_a_tool_round_trip_by_previous_response_id(proxy: Proxy, fake: FakeUpstream) -> None:
    """The Agents SDK's way: the call's output is the whole input of the next turn."""
    async with proxy.async_client() as client:
        first = await client.responses.create(model="vertex/gemini-2.0-flash", input="weather in Paris?",
                                              tools=WEATHER)
        call = first.output[-1]
        assert call.type == "function_call"
        second = await client.responses.create(
            model="vertex/gemini-2.0-flash", tools=WEATHER, previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}])
    assert second.output_text == "[vertex] tool said: sunny, 21 C"


def test_get_returns_what_create_returned(proxy: Proxy) -> None:
    client = proxy.client()
    created = client.responses.with_raw_response.create(model="openai/gpt-4o", input="remember me")
    got = client.responses.with_raw_response.retrieve(created.parse().id)
    assert got.http_response.json() == created.http_response.json()
    assert got.headers["content-type"] == "application/json"


@pytest.mark.parametrize("model", ["groq/llama-3.1-8b-instant", "azure/gpt-4o"])  # kept here; kept upstream
def test_delete_then_it_is_gone(proxy: Proxy, fake: FakeUpstream, model: str) -> None:
    client = proxy.client()
    kept = client.responses.create(model=model, input="short lived")
    assert [i.content[0].text for i in client.responses.input_items.list(kept.id).data] == ["short lived"]
    gone = raw_request(f"{proxy.url}/v1/responses/{kept.id}", method="DELETE",
                       headers={"X-API-Key": GATEWAY_KEY, "Authorization": f"Bearer {PROVIDER_KEY}"})
    assert gone.status == 200 and gone.json() == {"id": kept.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(kept.id)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=model, input="again", previous_response_id=kept.id)
    assert caught.value.code == "previous_response_not_found"
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(kept.id)
    if model.startswith("azure/"):  # the provider was asked, with the caller's credential there
        assert kept.id not in fake.responses
        assert [r.method for r in fake.for_flavor("azure")] == ["POST", "GET", "DELETE", "POST"]


@pytest.mark.parametrize("unknown", ["resp_" + "0" * 24, "resp_nope", "not-a-response-id", "resp_" + "a" * 500])
def test_unknown_ids(proxy: Proxy, fake: FakeUpstream, unknown: str) -> None:
    client = proxy.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="anthropic/claude-3-5-sonnet-20241022", input="x", previous_response_id=unknown)
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "previous_response_not_found"
    assert error["param"] == "previous_response_id" and len(error["message"]) < 200
    assert not fake.requests  # never a silent fresh start
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unknown)


@pytest.mark.parametrize("bad", [123, True, ["resp_1"], {"id": "resp_1"}])
def test_a_previous_response_id_that_is_not_a_string_is_400(proxy: Proxy, fake: FakeUpstream, bad: object) -> None:
    response = post_json(proxy, "/v1/responses", {"model": "anthropic/claude-3-5-sonnet-20241022", "input": "x",
                                                  "previous_response_id": bad})
    assert response.status == 400, response.text
    assert response.json()["error"]["param"] == "previous_response_id" and not fake.requests


def test_an_id_without_a_record_goes_to_the_one_native_endpoint(proxy: Proxy, fake: FakeUpstream) -> None:
    """A response the gateway has no record of (made before it kept records, or directly at the
    provider) is the provider's to know, when the model has one native endpoint: passed through."""
    with pytest.raises(openai.BadRequestError) as caught:
        proxy.client().responses.create(model="openai/gpt-4o", input="x", previous_response_id="resp_elsewhere1")
    assert caught.value.code == "previous_response_not_found"
    assert fake.last("openai").json["previous_response_id"] == "resp_elsewhere1"  # the provider's own answer


@pytest.mark.parametrize("model", ["groq/llama-3.1-8b-instant", "openai/gpt-4o"])  # kept here; kept upstream
def test_another_callers_response_is_not_theirs(make_proxy: Callable[..., Proxy], fake: FakeUpstream,
                                                model: str) -> None:
    text = config_text(fake).replace(f"gateway_keys: [{GATEWAY_KEY}]", f"gateway_keys: [{GATEWAY_KEY}, other-team]")
    proxy = make_proxy(text=text)
    mine = proxy.client().responses.create(model=model, input="private")
    other_team = openai.OpenAI(base_url=proxy.url + "/v1", api_key=PROVIDER_KEY, max_retries=0,
                               default_headers={"X-API-Key": "other-team"})  # another principal, the same provider key
    others = [other_team, proxy.client(api_key="sk-another-provider-key-9876543210")]  # the same principal, another key
    with other_team:
        _refused_to(others, mine.id)
    assert proxy.client().responses.retrieve(mine.id).id == mine.id  # still there for its owner


def _refused_to(others: list[openai.OpenAI], response_id: str) -> None:
    for other in others:
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(response_id)
        with pytest.raises(openai.NotFoundError):
            other.responses.input_items.list(response_id)
        with pytest.raises(openai.NotFoundError):
            other.responses.delete(response_id)
        with pytest.raises(openai.BadRequestError) as caught:
            other.responses.create(model="openai/gpt-4o", input="x", previous_response_id=response_id)
        assert caught.value.code == "previous_response_not_found"


def test_store_false_keeps_nothing(proxy: Proxy) -> None:
    client = proxy.client()
    response = client.responses.create(model="openai/gpt-4o", input="forget me", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_input_items_list_the_conversation(proxy: Proxy) -> None:
    client = proxy.client()
    first = client.responses.create(model="mistral/mistral-small-latest", input="alpha")
    second = client.responses.create(model="mistral/mistral-small-latest", previous_response_id=first.id,
                                     input=[{"role": "user", "content": "beta"}])
    newest_first = client.responses.input_items.list(second.id)
    texts = [_text(item) for item in newest_first.data]
    assert texts == ["beta", "[mistral] alpha", "alpha"]
    assert all(item.id for item in newest_first.data)
    oldest_first = client.responses.input_items.list(second.id, order="asc", limit=2)
    assert [_text(item) for item in oldest_first.data] == ["alpha", "[mistral] alpha"]
    assert oldest_first.has_more is True
    assert [_text(i) for i in client.responses.input_items.list(first.id).data] == ["alpha"]


def _text(item: Any) -> str:
    part = item.content[0]
    return str(part.text)


def test_stored_responses_off(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    proxy = make_proxy("state: {responses: off}\n")
    client = proxy.client()
    response = client.responses.create(model="groq/llama-3.1-8b-instant", input="hi")
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="groq/llama-3.1-8b-instant", input="x", previous_response_id=response.id)
    assert caught.value.code == "previous_response_not_found" and "keeps no responses" in caught.value.message


def test_a_store_that_cannot_open(make_proxy: Callable[..., Proxy], fake: FakeUpstream, tmp_path: Path) -> None:
    """A state directory the gateway cannot write: answers are served unstored; what needs the
    store is 503, in OpenAI's shape, and nothing reaches the upstream."""
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the state directory should be")
    proxy = make_proxy(f"state: {{path: \"{blocked}\"}}\n")
    client = proxy.client()
    response = client.responses.create(model="groq/llama-3.1-8b-instant", input="hi")
    assert response.store is False and response.output_text == "[groq] hi"
    fake.clear()
    with pytest.raises(openai.InternalServerError) as caught:
        client.responses.create(model="groq/llama-3.1-8b-instant", input="x", previous_response_id="resp_" + "1" * 24)
    assert caught.value.status_code == 503 and caught.value.code == "state_unavailable"
    assert not fake.requests
    chat = client.chat.completions.create(model="groq/llama-3.1-8b-instant", messages=[{"role": "user", "content": "ok"}])
    assert chat.choices[0].message.content  # a chat request never needed the store


@pytest.mark.slow
def test_the_conversation_survives_a_restart(spawn: Callable[..., Proc], fake: FakeUpstream,
                                             tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = write_config(tmp_path, config_text(fake, f"state: {{path: \"{state}\"}}\n"))
    proc, port = start_proxy(spawn, config)
    status, body = request(port, "/v1/responses", {"model": "groq/llama-3.1-8b-instant", "input": "before the restart"}, HEADERS)
    assert status == 200
    first = json.loads(body)["id"]
    proc.signal(15)
    assert proc.wait() == 0
    assert (state / "responses.db").exists()
    _, port = start_proxy(spawn, config)
    status, body = request(port, "/v1/responses", {"model": "groq/llama-3.1-8b-instant", "input": "after it",
                                                   "previous_response_id": first}, HEADERS)
    assert status == 200, body
    assert "before the restart" in _seen(fake)
    assert json.loads(body)["previous_response_id"] == first


@pytest.mark.slow
def test_two_instances_share_conversations_through_redis(spawn: Callable[..., Proc], fake: FakeUpstream,
                                                         tmp_path: Path, redis_url: str, key_prefix: str) -> None:
    prefix = key_prefix  # this test's own; its keys are deleted after it
    config = write_config(tmp_path, config_text(
        fake, f"state: {{backend: redis, url: \"{redis_url}\", key_prefix: \"{prefix}\"}}\n"))
    ports = [start_proxy(spawn, config)[1] for _ in range(2)]
    status, body = request(ports[0], "/v1/responses", {"model": "anthropic/claude-3-5-sonnet-20241022",
                                                       "input": "said to one"}, HEADERS)
    assert status == 200
    first = json.loads(body)["id"]
    status, body = request(ports[1], "/v1/responses", {"model": "anthropic/claude-3-5-sonnet-20241022",
                                                       "input": "asked of two", "previous_response_id": first}, HEADERS)
    assert status == 200, body
    assert "said to one" in _seen(fake)
    status, body = request(ports[1], f"/v1/responses/{first}", None, HEADERS)
    assert status == 200 and json.loads(body)["id"] == first
    assert redis_keys(prefix)  # the conversation is in Redis, under this test's prefix


def test_a_response_whose_provider_left_the_configuration(make_proxy: Callable[..., Proxy], fake: FakeUpstream) -> None:
    """Two gateways on one state directory: the second no longer configures the provider that kept it."""
    kept = make_proxy().client().responses.create(model="azure/gpt-4o", input="kept at azure")
    without = make_proxy(text=config_text(fake).replace("  azure:    {endpoint:", "  other:    {type: azure, endpoint:"))
    fake.clear()
    with pytest.raises(openai.InternalServerError) as caught:  # azure is still a type, now without a setting
        without.client().responses.retrieve(kept.id)
    assert caught.value.status_code == 503 and caught.value.code == "provider_not_configured"
    with pytest.raises(openai.BadRequestError) as refused:
        without.client().responses.create(model="other/gpt-4o", input="x", previous_response_id=kept.id)
    assert refused.value.code == "previous_response_not_found" and not fake.requests
    named = make_proxy().client().responses.create(model="azure-eu/gpt-4o-eu", input="kept at azure-eu")
    gone = make_proxy(text=config_text(fake).replace("  azure-eu:\n", "  azure-gone:\n"))
    with pytest.raises(openai.NotFoundError) as missing:
        gone.client().responses.retrieve(named.id)
    assert "no longer configured" in missing.value.message
