"""Every field of a chat body, with a value of every JSON type, through parse_chat and all nine
translators: each either builds a request or answers with the gateway's 400 — never another
exception, which the caller would see as a 500. Pure: no event loop, no sockets."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensorwall_proxy.auth import Credential
from tensorwall_proxy.config import ProviderConfig, Secret
from tensorwall_proxy.dialects.chat import parse_chat
from tensorwall_proxy.errors import GatewayError
from tensorwall_proxy.providers import provider_for

CREDENTIAL = Credential("caller", Secret("sk-caller-key"))
# One provider and upstream model per type (bedrock twice: Claude and another family).
TARGETS: list[tuple[ProviderConfig, str]] = [
    (ProviderConfig(name="openai", type="openai", base_url="http://h/v1"), "gpt-4o"),
    (ProviderConfig(name="groq", type="groq", base_url="http://h/openai/v1"), "llama-3.3-70b"),
    (ProviderConfig(name="mistral", type="mistral", base_url="http://h/v1"), "mistral-large"),
    (ProviderConfig(name="lmstudio", type="lmstudio", base_url="http://h/v1"), "qwen"),
    (ProviderConfig(name="ollama", type="ollama", base_url="http://h"), "llama3"),
    (ProviderConfig(name="azure", type="azure", endpoint="http://h", api_version="2024-10-21"), "gpt-4o"),
    (ProviderConfig(name="anthropic", type="anthropic", base_url="http://h/v1", version="2023-06-01",
                    default_max_tokens=4096), "claude-sonnet-4-5"),
    (ProviderConfig(name="anthropic-next", type="anthropic", base_url="http://h/v1", version="2026-10-21"),
     "claude-3-5-haiku-20241022"),
    (ProviderConfig(name="vertex", type="vertex", project="p", location="us-central1", base_url="http://h"),
     "gemini-2.5-pro"),
    (ProviderConfig(name="bedrock", type="bedrock", region="us-east-1", base_url="http://h"),
     "us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
    (ProviderConfig(name="bedrock-nova", type="bedrock", region="us-east-1", base_url="http://h"), "amazon.nova-pro-v1:0"),
]

# Any JSON value orjson can read: null, booleans, 64-bit integers, finite floats, strings, and
# arrays and objects of them, nested.
_SCALAR = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6)
           | st.sampled_from(["", "auto", "none", "required", "function", "text", "json_schema", "json_object",
                              "high", "audio", "2fa", "data:image/png;base64,AAAA", "{}", "[1]"]))
JSON = st.recursive(_SCALAR, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6) | st.sampled_from(["type", "name", "text", "url"]),
                                      inner, max_size=3), max_leaves=8)


def _obj(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects shaped like OpenAI's, each field present or not, each value any JSON or a likely one."""
    return st.fixed_dictionaries({}, optional={name: value | JSON for name, value in fields.items()})


_NAME = st.sampled_from(["get_weather", "2fa_lookup", "a" * 70, "x.y", "tw.x"]) | JSON
_FUNCTION = _obj(name=_NAME, description=st.text(max_size=5), parameters=st.just({"type": "object", "properties": {
    "a": {"type": ["string", "null"]}}}), arguments=st.sampled_from(["{}", '{"a": 1}', "[", ""]))
_CALL = _obj(id=st.sampled_from(["call_1", "toolu_1", "x~tw1~QTE", "~tw1~"]), type=st.just("function"),
             function=_FUNCTION)
_PART = _obj(type=st.sampled_from(["text", "image_url", "file", "input_audio", "refusal", "video"]),
             text=st.text(max_size=5), refusal=st.text(max_size=5),
             image_url=_obj(url=st.sampled_from(["data:image/jpg;base64,AAAA", "https://x/y.png", "data:,", "gs://b/o"])),
             file=_obj(file_data=st.sampled_from(["data:application/pdf;base64,AAAA", "data:image/png;base64,AA"])),
             input_audio=_obj(data=st.text(max_size=4), format=st.sampled_from(["wav", "mp3"])))
_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"])},
    optional={"content": st.text(max_size=5) | st.lists(_PART, max_size=3) | JSON, "name": JSON,
              "tool_calls": st.lists(_CALL, max_size=2) | JSON,
              "tool_call_id": st.sampled_from(["call_1", "toolu_1"]) | JSON, "refusal": JSON})
_TOOL = _obj(type=st.just("function"), function=_FUNCTION)

# The whole request field list of OpenAI's Chat Completions API, and extras callers send.
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["gpt-4o", ""]),
    "messages": st.lists(_MESSAGE, min_size=1, max_size=4),
    "tools": st.lists(_TOOL, max_size=3),
    "tool_choice": st.sampled_from(["auto", "none", "required"]) | _obj(
        type=st.sampled_from(["function", "allowed_tools"]), function=_FUNCTION,
        allowed_tools=_obj(mode=st.sampled_from(["auto", "required"]), tools=st.lists(_TOOL, max_size=2))),
    "stop": st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=5),
    "n": st.integers(min_value=-1, max_value=3),
    "temperature": st.floats(min_value=-1, max_value=3),
    "top_p": st.floats(min_value=0, max_value=1),
    "top_k": st.integers(min_value=0, max_value=100),
    "max_tokens": st.integers(min_value=-1, max_value=100_000),
    "max_completion_tokens": st.integers(min_value=-1, max_value=100_000),
    "stream": st.booleans(),
    "stream_options": _obj(include_usage=st.booleans()),
    "response_format": _obj(type=st.sampled_from(["text", "json_object", "json_schema"]),
                            json_schema=_obj(name=st.text(max_size=4), schema=st.just({"type": "object"}),
                                             strict=st.booleans())),
    "seed": st.integers(min_value=-(2**63), max_value=2**63 - 1), "logprobs": st.booleans(), "top_logprobs": st.integers(min_value=0, max_value=20),
    "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2),
    "logit_bias": st.dictionaries(st.text(max_size=3), st.integers(-100, 100), max_size=2),
    "user": st.text(max_size=5), "parallel_tool_calls": st.booleans(),
    "modalities": st.lists(st.sampled_from(["text", "audio"]), max_size=2),
    "audio": _obj(voice=st.text(max_size=3), format=st.text(max_size=3)),
    "prediction": _obj(type=st.just("content"), content=st.text(max_size=3)),
    "reasoning_effort": st.sampled_from(["none", "minimal", "low", "medium", "high", "xhigh", "max"]),
    "service_tier": st.sampled_from(["auto", "default", "flex"]), "store": st.booleans(),
    "metadata": st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
    "web_search_options": _obj(search_context_size=st.text(max_size=3)),
    "verbosity": st.sampled_from(["low", "high"]), "safety_identifier": st.text(max_size=3),
    "prompt_cache_key": st.text(max_size=3), "functions": st.lists(_FUNCTION, max_size=2),
    "function_call": st.sampled_from(["auto", "none"]) | _FUNCTION,
}


def _with_fields(names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({name: FIELDS[name] | JSON for name in names}).map(
        lambda fields: {"model": "m", "messages": [{"role": "user", "content": "Hello"}], **fields})


# A few fields at a time: with many at once nearly every body is refused by the first bad one.
_BODY = st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=3, unique=True).flatmap(_with_fields)


def _fails_as_caller_error(exc: GatewayError) -> None:
    assert exc.status == 400, (exc.status, exc.message)
    assert orjson.loads(exc.body())["error"]["type"] == "invalid_request_error"


def check(body: dict[str, Any]) -> None:
    """parse_chat, then every type's build_request: a request or a 400, nothing else."""
    try:
        req = parse_chat(body, {})
    except GatewayError as exc:
        _fails_as_caller_error(exc)
        return
    for provider, model in TARGETS:
        try:
            call = provider_for(provider.type).build_request(req, provider, model, CREDENTIAL)
        except GatewayError as exc:
            _fails_as_caller_error(exc)
            continue
        assert isinstance(orjson.loads(call.body), dict)


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_BODY)
def test_every_field_of_every_type_is_a_request_or_a_400(body: dict[str, Any]) -> None:
    check(body)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(message=_MESSAGE, tools=st.lists(_TOOL, max_size=2))
def test_every_message_field_is_a_request_or_a_400(message: dict[str, Any], tools: list[Any]) -> None:
    # The history around the generated message names its tool calls, so tool results have a call.
    body = {"model": "m", "tools": tools, "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                              "function": {"name": "get_weather", "arguments": "{}"}}]},
        message, {"role": "user", "content": "Go on"}]}
    check(body)
