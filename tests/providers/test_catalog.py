"""The catalog of provider types and the field-policy table it carries, read as data."""

from __future__ import annotations

from typing import Any

import pytest

from tensorwall_proxy.config import DEFAULT_PROVIDERS, TYPE_DEFAULTS, ProviderConfig
from tensorwall_proxy.errors import UnsupportedField
from tensorwall_proxy.providers import PROVIDERS
from tensorwall_proxy.providers.catalog import TYPES
from tensorwall_proxy.providers.policy import adapt, check, reasoning_budget, temperature


def test_every_type_has_one_entry_and_one_implementation() -> None:
    assert list(TYPES) == ["openai", "anthropic", "azure", "vertex", "groq", "mistral", "bedrock", "ollama", "lmstudio"]
    assert PROVIDERS.keys() == TYPES.keys()


def test_the_default_provider_reads_its_variable_and_another_of_the_type_only_the_fixed_default() -> None:
    assert DEFAULT_PROVIDERS["openai"] == {"base_url": "${OPENAI_API_URL:-https://api.openai.com/v1}"}
    assert TYPE_DEFAULTS["openai"] == {"base_url": "https://api.openai.com/v1"}
    assert DEFAULT_PROVIDERS["azure"] == {"endpoint": "${AZURE_OPENAI_ENDPOINT:-}",
                                          "api_version": "${AZURE_OPENAI_API_VERSION:-2024-10-21}"}
    assert TYPE_DEFAULTS["azure"] == {"api_version": "2024-10-21"}
    assert DEFAULT_PROVIDERS["anthropic"] == {"base_url": "${ANTHROPIC_API_URL:-https://api.anthropic.com/v1}",
                                              "version": "2023-06-01", "default_max_tokens": 4096}
    # AWS_REGION is the platform's own variable: every bedrock provider reads it.
    assert TYPE_DEFAULTS["bedrock"] == {"region": "${AWS_REGION:-us-east-1}"}
    assert DEFAULT_PROVIDERS["bedrock"] == {"region": "${AWS_REGION:-us-east-1}", "base_url": "${BEDROCK_API_URL:-}"}


@pytest.mark.parametrize(("name", "credentials"), [
    ("openai", {"key", "forward", "none"}),
    ("ollama", {"key", "none"}),
    ("vertex", {"key", "forward", "ambient", "none"}),
    ("bedrock", {"key", "forward", "ambient", "sigv4", "none"}),
])
def test_credentials_a_type_accepts(name: str, credentials: set[str]) -> None:
    assert TYPES[name].credentials == credentials
    assert TYPES[name].default_auth == ("forward" if "forward" in credentials else "none")


def test_a_provider_config_carries_its_types_entry() -> None:
    provider = ProviderConfig(name="eu", type="groq")
    assert provider.kind is TYPES["groq"]
    assert provider.accepts_caller_key("gsk_x") and not provider.accepts_caller_key("sk-ant-x")
    assert ProviderConfig(name="o", type="ollama").carries_caller_key() is False


@pytest.mark.parametrize(("name", "message"), [
    ("anthropic", "'n' greater than 1 is not supported by Anthropic."),
    ("bedrock", "'n' greater than 1 is not supported by Bedrock."),
    ("groq", "'n' greater than 1 is not supported by provider type 'groq'."),
    ("ollama", "'n' greater than 1 is not supported by provider type 'ollama'."),
])
def test_n_past_what_the_type_honours_is_refused_naming_it(name: str, message: str) -> None:
    with pytest.raises(UnsupportedField) as raised:
        check({"n": 2}, TYPES[name].policy)
    assert raised.value.message == message


@pytest.mark.parametrize("name", ["openai", "azure", "vertex", "mistral"])
def test_n_is_free_where_the_type_honours_it(name: str) -> None:
    check({"n": 4}, TYPES[name].policy)


@pytest.mark.parametrize(("value", "refused"), [(True, True), (5, True), ("", True), (None, False), (False, False),
                                                (0, False)])
def test_a_refused_field_is_refused_when_it_asks_for_something(value: Any, refused: bool) -> None:
    for name in ("anthropic", "bedrock", "vertex", "groq", "lmstudio"):
        if refused:
            with pytest.raises(UnsupportedField):
                check({"logprobs": value}, TYPES[name].policy)
        else:
            check({"logprobs": value}, TYPES[name].policy)


def test_adapt_drops_renames_and_strips_for_the_types_that_send_the_callers_body() -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "x", "name": "a"}], "n": 1, "logprobs": False,
                            "logit_bias": {"1": 2}, "seed": 3}
    adapt(body, TYPES["groq"].policy)
    assert body == {"messages": [{"role": "user", "content": "x"}], "seed": 3}
    body = {"messages": [], "seed": 3, "max_completion_tokens": 9, "user": "u"}
    adapt(body, TYPES["mistral"].policy)
    assert body == {"messages": [], "random_seed": 3, "max_tokens": 9}


def test_temperature_is_clamped_where_the_type_has_a_range() -> None:
    assert temperature({"temperature": 1.7}, TYPES["anthropic"].policy) == 1.0
    assert temperature({"temperature": -1}, TYPES["bedrock"].policy) == 0.0
    assert temperature({"temperature": 1.7}, TYPES["vertex"].policy) == 1.7
    assert temperature({}, TYPES["anthropic"].policy) is None


def test_reasoning_effort_maps_to_each_types_budget() -> None:
    assert reasoning_budget({"reasoning_effort": "high"}, TYPES["anthropic"].policy) == 16384
    assert reasoning_budget({"reasoning_effort": "high"}, TYPES["bedrock"].policy) == 16384
    assert reasoning_budget({"reasoning_effort": "none"}, TYPES["vertex"].policy) == 0
    assert reasoning_budget({"reasoning_effort": "none"}, TYPES["anthropic"].policy) is None
    assert reasoning_budget({"reasoning_effort": "high"}, TYPES["openai"].policy) is None
