"""Unit tests for tensorwall_proxy/router.py: name resolution (DESIGN §5) and the attempt order.

Pure: no server, no event loop; randomness comes from a seeded ``random.Random``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import FrozenInstanceError
from typing import Any

import pytest

from tensorwall_proxy.config import RuleConfig, Secret, Timeouts, parse_config
from tensorwall_proxy.errors import GatewayError
from tensorwall_proxy.router import BUILTIN_RULES, LLMRouter, Route, RouteEndpoint

NAMES = "ABCDEFGHIJ"


def make_route(specs: Sequence[tuple[int, int]], strategy: Any = "weighted") -> tuple[LLMRouter, Route]:
    """A router with one route "r" whose endpoints have the given (weight, priority); models A, B, C..."""
    router = LLMRouter(rng=random.Random(1234))
    router.add_route(
        "r",
        [RouteEndpoint("openai", NAMES[i], weight=w, priority=p) for i, (w, p) in enumerate(specs)],
        strategy=strategy,
    )
    return router, router.resolve("r")


def first_picks(router: LLMRouter, route: Route, healthy: Sequence[bool], n: int) -> Counter[int]:
    return Counter(router.order(route, healthy)[0] for _ in range(n))


def assert_not_found(router: LLMRouter, model: str) -> None:
    with pytest.raises(GatewayError) as info:
        router.resolve(model)
    assert info.value.status == 404
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"
    assert model in info.value.message


# --- resolution order ------------------------------------------------------------------------------


def test_an_exact_route_wins_over_the_pattern_table() -> None:
    router = LLMRouter()
    router.add_route("gpt-4o", [RouteEndpoint("groq", "llama-3.3-70b-versatile")])
    route = router.resolve("gpt-4o")
    assert route.name == "gpt-4o"
    assert route.label == "gpt-4o"
    assert [(e.provider, e.model) for e in route.endpoints] == [("groq", "llama-3.3-70b-versatile")]


@pytest.mark.parametrize(
    ("model", "provider", "upstream"),
    [
        ("azure/gpt-4", "azure", "gpt-4"),
        ("vertex/gemini-pro", "vertex", "gemini-pro"),
        ("vertex/text-embedding-005", "vertex", "text-embedding-005"),
        ("groq/llama3-70b", "groq", "llama3-70b"),
        ("ollama/mistral", "ollama", "mistral"),
        ("bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0", "bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0"),
        ("openai/gpt-4o", "openai", "gpt-4o"),
        ("lmstudio/qwen2.5-7b-instruct", "lmstudio", "qwen2.5-7b-instruct"),
        ("mistral/mistral-large-latest", "mistral", "mistral-large-latest"),
        ("anthropic/claude-3-5-haiku-latest", "anthropic", "claude-3-5-haiku-latest"),
        ("ollama/library/llama3:8b", "ollama", "library/llama3:8b"),
    ],
)
def test_a_provider_prefix_routes_to_that_provider_with_the_prefix_stripped(
        model: str, provider: str, upstream: str) -> None:
    route = LLMRouter().resolve(model)
    assert route.name == model
    assert route.label == f"{provider}/*"
    assert [(e.provider, e.model) for e in route.endpoints] == [(provider, upstream)]


def test_a_provider_prefix_wins_over_the_pattern_table() -> None:
    route = LLMRouter().resolve("groq/gpt-4o")
    assert [(e.provider, e.model) for e in route.endpoints] == [("groq", "gpt-4o")]


def test_a_configured_second_provider_is_a_prefix() -> None:
    router = LLMRouter(providers=["openai", "azure", "azure-eu"])
    route = router.resolve("azure-eu/gpt-4o")
    assert [(e.provider, e.model) for e in route.endpoints] == [("azure-eu", "gpt-4o")]


def test_an_unconfigured_prefix_is_not_a_provider() -> None:
    router = LLMRouter()
    assert_not_found(router, "openai-eu/gpt-4o")
    assert_not_found(router, "nobody/gpt-4o")
    # An unconfigured name that a pattern covers goes by the pattern, as DESIGN §5 step 3 reads.
    assert [(e.provider, e.model) for e in router.resolve("azure-eu/gpt-4o").endpoints] == [("azure", "eu/gpt-4o")]


def test_a_prefix_with_nothing_after_it_is_not_a_model() -> None:
    assert_not_found(LLMRouter(), "openai/")


def test_an_exact_route_name_with_a_slash_wins_over_the_prefix() -> None:
    router = LLMRouter()
    router.add_route("openai/gpt-4o", [RouteEndpoint("groq", "llama3-70b")])
    route = router.resolve("openai/gpt-4o")
    assert [(e.provider, e.model) for e in route.endpoints] == [("groq", "llama3-70b")]
    assert route.label == "openai/gpt-4o"
    # Other names under the prefix still go by prefix.
    assert router.resolve("openai/gpt-4o-mini").endpoints[0].provider == "openai"


@pytest.mark.parametrize(
    ("model", "provider", "upstream", "pattern"),
    [
        ("azure-gpt-4o", "azure", "gpt-4o", "azure-*"),
        ("azure-my-deployment", "azure", "my-deployment", "azure-*"),
        ("gpt-4o", "openai", "gpt-4o", "gpt-*"),
        ("gpt-4", "openai", "gpt-4", "gpt-*"),
        ("o1", "openai", "o1", "o1*"),
        ("o1-mini", "openai", "o1-mini", "o1*"),
        ("o3-mini", "openai", "o3-mini", "o3*"),
        ("o3", "openai", "o3", "o3*"),
        ("o4-mini", "openai", "o4-mini", "o4*"),
        ("chatgpt-4o-latest", "openai", "chatgpt-4o-latest", "chatgpt-*"),
        ("text-embedding-3-small", "openai", "text-embedding-3-small", "text-embedding-*"),
        ("text-embedding-005", "openai", "text-embedding-005", "text-embedding-*"),
        ("claude-3-5-sonnet-20241022", "anthropic", "claude-3-5-sonnet-20241022", "claude-*"),
        ("claude-3-sonnet", "anthropic", "claude-3-sonnet", "claude-*"),
        ("gemini-1.5-pro", "vertex", "gemini-1.5-pro", "gemini-*"),
        ("gemini-2.0-flash", "vertex", "gemini-2.0-flash", "gemini-*"),
        ("llama3-8b-8192", "groq", "llama3-8b-8192", "llama*"),
        ("llama-3.3-70b-versatile", "groq", "llama-3.3-70b-versatile", "llama*"),
        ("mixtral-8x7b-32768", "groq", "mixtral-8x7b-32768", "mixtral*"),
        ("gemma2-9b-it", "groq", "gemma2-9b-it", "gemma*"),
        ("mistral-large-latest", "mistral", "mistral-large-latest", "mistral-*"),
        ("codestral-latest", "mistral", "codestral-latest", "codestral*"),
        ("open-mistral-nemo", "mistral", "open-mistral-nemo", "open-mistral*"),
        ("ministral-8b-latest", "mistral", "ministral-8b-latest", "ministral*"),
        ("pixtral-12b-2409", "mistral", "pixtral-12b-2409", "pixtral*"),
    ],
)
def test_the_builtin_pattern_table(model: str, provider: str, upstream: str, pattern: str) -> None:
    route = LLMRouter().resolve(model)
    assert route.name == model
    assert route.label == pattern
    assert [(e.provider, e.model) for e in route.endpoints] == [(provider, upstream)]
    assert route.strategy == "weighted"
    assert route.timeouts is None


def test_the_builtin_table_has_exactly_the_documented_patterns() -> None:
    assert [(r.match, r.provider, r.strip) for r in BUILTIN_RULES] == [
        ("azure-*", "azure", "azure-"),
        ("gpt-*", "openai", ""),
        ("o1*", "openai", ""),
        ("o3*", "openai", ""),
        ("o4*", "openai", ""),
        ("chatgpt-*", "openai", ""),
        ("text-embedding-*", "openai", ""),
        ("claude-*", "anthropic", ""),
        ("gemini-*", "vertex", ""),
        ("llama*", "groq", ""),
        ("mixtral*", "groq", ""),
        ("gemma*", "groq", ""),
        ("mistral-*", "mistral", ""),
        ("codestral*", "mistral", ""),
        ("open-mistral*", "mistral", ""),
        ("ministral*", "mistral", ""),
        ("pixtral*", "mistral", ""),
    ]


@pytest.mark.parametrize(
    "model",
    ["unknown-model", "GPT-4o", "my-gpt-4", "mistral", "gpt4", "claude", "azure-", "o2-mini", "", " gpt-4o"],
)
def test_an_unmatched_name_is_404_model_not_found(model: str) -> None:
    assert_not_found(LLMRouter(), model)


def test_builtin_rules_for_providers_that_are_not_configured_are_skipped() -> None:
    router = LLMRouter(providers=["openai"])
    assert router.resolve("gpt-4o").endpoints[0].provider == "openai"
    assert_not_found(router, "claude-3-5-sonnet-latest")
    assert_not_found(router, "groq/llama3-70b")


# --- rules replace the table -----------------------------------------------------------------------


def test_rules_replace_the_builtin_table() -> None:
    router = LLMRouter(rules=[RuleConfig("team-*", "groq", strip="team-")])
    route = router.resolve("team-llama3-70b")
    assert [(e.provider, e.model) for e in route.endpoints] == [("groq", "llama3-70b")]
    assert route.label == "team-*"
    assert_not_found(router, "gpt-4o")
    assert_not_found(router, "claude-3-5-sonnet-latest")


def test_empty_rules_leave_only_routes_and_prefixes() -> None:
    router = LLMRouter(rules=[])
    assert_not_found(router, "gpt-4o")
    assert router.resolve("openai/gpt-4o").endpoints[0].model == "gpt-4o"


@pytest.mark.parametrize(
    ("pattern", "matching", "not_matching"),
    [
        ("team-*-chat", ["team-a-chat", "team-long-name-chat", "team--chat"], ["team-a-chat2", "xteam-a-chat"]),
        ("*-instruct", ["qwen-instruct", "-instruct"], ["qwen-instruct-v2"]),
        ("model-?", ["model-1", "model-x"], ["model-", "model-12"]),
        ("m[0-9]-large", ["m1-large", "m7-large"], ["mx-large", "m10-large"]),
        ("exact-name", ["exact-name"], ["exact-name-2", "xexact-name"]),
        ("*", ["anything", "gpt-4o"], []),
    ],
)
def test_rule_patterns_are_globs_matching_the_whole_name(
        pattern: str, matching: list[str], not_matching: list[str]) -> None:
    router = LLMRouter(rules=[RuleConfig(pattern, "mistral")])
    for model in matching:
        route = router.resolve(model)
        assert [(e.provider, e.model) for e in route.endpoints] == [("mistral", model)], model
        assert route.label == pattern
    for model in not_matching:
        assert_not_found(router, model)


def test_the_first_matching_rule_wins() -> None:
    router = LLMRouter(rules=[RuleConfig("gpt-4o*", "azure"), RuleConfig("gpt-*", "openai")])
    assert router.resolve("gpt-4o-mini").endpoints[0].provider == "azure"
    assert router.resolve("gpt-4-turbo").endpoints[0].provider == "openai"


def test_strip_applies_only_when_the_name_starts_with_it() -> None:
    router = LLMRouter(rules=[RuleConfig("*-fast", "groq", strip="x-")])
    assert router.resolve("x-llama-fast").endpoints[0].model == "llama-fast"
    assert router.resolve("llama-fast").endpoints[0].model == "llama-fast"


def test_a_rule_whose_strip_leaves_nothing_falls_through_to_the_next_rule() -> None:
    router = LLMRouter(rules=[RuleConfig("eu-*", "azure", strip="eu-"), RuleConfig("*", "openai")])
    assert router.resolve("eu-").endpoints[0].provider == "openai"
    assert router.resolve("eu-gpt-4o").endpoints[0].model == "gpt-4o"


# --- routes and endpoints --------------------------------------------------------------------------


def test_an_endpoint_without_model_sends_the_public_name() -> None:
    router = LLMRouter()
    key = Secret("server-side")
    router.add_route("gpt-4", [
        RouteEndpoint("openai", weight=7, priority=2, api_key=key),
        RouteEndpoint("azure", "gpt4-deployment"),
    ])
    first, second = router.resolve("gpt-4").endpoints
    assert (first.provider, first.model, first.weight, first.priority) == ("openai", "gpt-4", 7, 2)
    assert first.api_key is key
    assert second.model == "gpt4-deployment"


def test_add_route_replaces_a_route_and_lists_it() -> None:
    router = LLMRouter()
    router.add_route("gpt-4", [RouteEndpoint("openai")])
    router.add_route("gpt-4", [RouteEndpoint("groq", "llama3-70b")], strategy="priority")
    assert list(router.routes) == ["gpt-4"]
    route = router.resolve("gpt-4")
    assert route.endpoints[0].provider == "groq"
    assert route.strategy == "priority"


def test_add_route_keeps_timeouts() -> None:
    router = LLMRouter()
    timeouts = Timeouts(connect=1, first_byte=2, idle=3, total=4)
    router.add_route("slow", [RouteEndpoint("openai")], timeouts=timeouts)
    assert router.resolve("slow").timeouts == timeouts


def test_a_route_added_after_a_pattern_resolution_takes_over() -> None:
    router = LLMRouter()
    assert router.resolve("gpt-4o").endpoints[0].provider == "openai"
    router.add_route("gpt-4o", [RouteEndpoint("azure", "gpt4o-deployment")])
    assert router.resolve("gpt-4o").endpoints[0].provider == "azure"


def test_a_pattern_resolution_is_reused_for_the_same_name() -> None:
    router = LLMRouter()
    assert router.resolve("claude-3-5-haiku-latest") is router.resolve("claude-3-5-haiku-latest")


def test_resolution_stays_right_past_the_cache_limit() -> None:
    router = LLMRouter()
    for i in range(5000):
        assert router.resolve(f"gpt-{i}").endpoints[0].model == f"gpt-{i}"
    assert router.resolve("gpt-0").endpoints[0].model == "gpt-0"
    assert router.resolve("claude-x").endpoints[0].provider == "anthropic"


def test_add_route_rejects_no_endpoints() -> None:
    with pytest.raises(ValueError, match="at least one endpoint"):
        LLMRouter().add_route("r", [])


def test_add_route_rejects_an_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        LLMRouter().add_route("r", [RouteEndpoint("openai")], strategy="round-robin")  # type: ignore[arg-type]


def test_add_route_rejects_an_unknown_provider() -> None:
    with pytest.raises(ValueError, match="unknown provider 'azur'"):
        LLMRouter().add_route("r", [RouteEndpoint("openai"), RouteEndpoint("azur")])


class _ProviderObject:
    def __init__(self, name: Any) -> None:
        self.name = name


def test_route_endpoint_accepts_an_object_with_a_name() -> None:
    endpoint = RouteEndpoint(provider=_ProviderObject("anthropic"), weight=2)  # type: ignore[arg-type]
    assert endpoint.provider == "anthropic"
    assert endpoint.weight == 2


@pytest.mark.parametrize("provider", [_ProviderObject(None), _ProviderObject(3), object(), 42])
def test_route_endpoint_rejects_a_provider_without_a_string_name(provider: Any) -> None:
    with pytest.raises(TypeError):
        RouteEndpoint(provider=provider)


def test_route_endpoint_rejects_negative_weight_and_priority() -> None:
    with pytest.raises(ValueError, match="weight"):
        RouteEndpoint("openai", weight=-1)
    with pytest.raises(ValueError, match="priority"):
        RouteEndpoint("openai", priority=-1)
    assert RouteEndpoint("openai", weight=0).weight == 0


def test_route_endpoint_is_frozen_and_hides_its_key() -> None:
    endpoint = RouteEndpoint("openai", api_key=Secret("sk-do-not-print"))
    with pytest.raises(FrozenInstanceError):
        endpoint.weight = 5  # type: ignore[misc]
    assert "sk-do-not-print" not in repr(endpoint)


# --- the documented Python API (llm-providers.md) --------------------------------------------------


def test_the_documented_python_api() -> None:
    from tensorwall_proxy.providers import azure_openai_provider, openai_provider
    from tensorwall_proxy.router import LLMRouter as DocumentedRouter
    from tensorwall_proxy.router import RouteEndpoint as DocumentedEndpoint

    router = DocumentedRouter()
    router.add_route("gpt-4", [
        DocumentedEndpoint(provider=openai_provider, weight=70, priority=0),
        DocumentedEndpoint(provider=azure_openai_provider, weight=30, priority=1),
    ])
    route = router.resolve("gpt-4")
    assert [(e.provider, e.model, e.weight, e.priority) for e in route.endpoints] == [
        ("openai", "gpt-4", 70, 0),
        ("azure", "gpt-4", 30, 1),
    ]
    orders = {tuple(router.order(route, [True, True])) for _ in range(200)}
    assert orders == {(0, 1), (1, 0)}


# --- from_config -----------------------------------------------------------------------------------


def test_from_config_builds_the_yaml_routes_and_rules() -> None:
    config = parse_config("""
gateway_keys: []
providers:
  azure-eu: {type: azure, endpoint: "https://eu.openai.azure.com"}
routes:
  gpt-4:
    strategy: priority
    endpoints:
      - {provider: openai, weight: 70, priority: 0}
      - {provider: azure-eu, model: gpt4-deployment, weight: 30, priority: 1, api_key: ep-key}
    timeouts: {first_byte: 5}
rules:
  - {match: "corp-*", provider: azure-eu, strip: "corp-"}
""", env={})
    router = LLMRouter.from_config(config, rng=random.Random(0))
    route = router.resolve("gpt-4")
    assert route.strategy == "priority"
    assert route.timeouts is not None and route.timeouts.first_byte == 5
    assert [(e.provider, e.model, e.weight, e.priority) for e in route.endpoints] == [
        ("openai", "gpt-4", 70, 0),
        ("azure-eu", "gpt4-deployment", 30, 1),
    ]
    assert route.endpoints[1].api_key == Secret("ep-key")
    assert [(e.provider, e.model) for e in router.resolve("corp-gpt-4o").endpoints] == [("azure-eu", "gpt-4o")]
    assert router.resolve("azure-eu/gpt-4o-mini").endpoints[0].provider == "azure-eu"
    # rules: replaced the built-in table
    assert_not_found(router, "claude-3-5-sonnet-latest")


def test_from_config_without_rules_uses_the_builtin_table() -> None:
    router = LLMRouter.from_config(parse_config("gateway_keys: []", env={}))
    assert router.resolve("claude-3-5-sonnet-latest").endpoints[0].provider == "anthropic"
    assert router.routes == {}


# --- the attempt order -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2024])
def test_weights_70_30_send_70_percent_of_first_attempts(seed: int) -> None:
    router = LLMRouter(rng=random.Random(seed))
    router.add_route("gpt-4", [RouteEndpoint("openai", weight=70, priority=0),
                               RouteEndpoint("azure", weight=30, priority=1)])
    route = router.resolve("gpt-4")
    picks = first_picks(router, route, [True, True], 5000)
    assert 0.67 <= picks[0] / 5000 <= 0.73, picks


def test_three_weights_split_first_attempts_in_proportion() -> None:
    router, route = make_route([(50, 0), (30, 0), (20, 0)])
    picks = first_picks(router, route, [True] * 3, 6000)
    for index, share in enumerate((0.5, 0.3, 0.2)):
        assert abs(picks[index] / 6000 - share) <= 0.03, picks


def test_order_is_deterministic_for_a_seed() -> None:
    def run() -> list[list[int]]:
        router, route = make_route([(5, 0), (3, 1), (2, 2)])
        return [router.order(route, [True] * 3) for _ in range(50)]

    assert run() == run()


def test_fallbacks_follow_ascending_priority_then_descending_weight() -> None:
    specs = [(10, 1), (50, 0), (30, 0), (30, 2), (5, 0), (30, 0)]
    router, route = make_route(specs)
    seen_first: set[int] = set()
    for _ in range(500):
        order = router.order(route, [True] * len(specs))
        first, rest = order[0], order[1:]
        seen_first.add(first)
        expected = sorted((i for i in range(len(specs)) if i != first), key=lambda i: (specs[i][1], -specs[i][0], i))
        assert rest == expected
    assert seen_first == set(range(len(specs)))


def test_fallbacks_with_equal_priority_and_weight_keep_their_listed_order() -> None:
    router, route = make_route([(1, 0)] * 4)
    for _ in range(100):
        order = router.order(route, [True] * 4)
        assert order[1:] == sorted(order[1:])
        assert sorted(order) == [0, 1, 2, 3]


def test_weighted_first_pick_ignores_priority() -> None:
    router, route = make_route([(1, 0), (99, 5)])
    picks = first_picks(router, route, [True, True], 2000)
    assert picks[1] > picks[0] * 10


def test_priority_strategy_sends_every_first_attempt_to_the_lowest_priority_split_by_weight() -> None:
    router, route = make_route([(3, 1), (100, 2), (1, 1), (50, 3)], strategy="priority")
    picks = first_picks(router, route, [True] * 4, 4000)
    assert set(picks) == {0, 2}
    assert abs(picks[0] / 4000 - 0.75) <= 0.03, picks
    for _ in range(50):
        order = router.order(route, [True] * 4)
        assert order[1:] == [i for i in (0, 2, 1, 3) if i != order[0]]


def test_priority_strategy_uses_higher_numbers_only_when_the_lower_are_unhealthy() -> None:
    router, route = make_route([(3, 0), (1, 0), (100, 1), (100, 2)], strategy="priority")
    assert set(first_picks(router, route, [False, True, True, True], 300)) == {1}
    assert set(first_picks(router, route, [False, False, True, True], 300)) == {2}
    assert router.order(route, [False, False, True, True]) == [2, 3]
    assert router.order(route, [False, False, False, True]) == [3]


def test_priority_strategy_with_zero_weights_picks_within_the_lowest_priority() -> None:
    router, route = make_route([(0, 0), (0, 0), (100, 1)], strategy="priority")
    picks = first_picks(router, route, [True] * 3, 600)
    assert set(picks) == {0, 1}


def test_order_leaves_out_unhealthy_endpoints() -> None:
    router, route = make_route([(5, 0), (100, 0), (5, 1)])
    for _ in range(200):
        order = router.order(route, [True, False, True])
        assert sorted(order) == [0, 2]


def test_order_is_empty_when_no_endpoint_is_healthy() -> None:
    router, route = make_route([(5, 0), (5, 1)])
    assert router.order(route, [False, False]) == []


def test_order_of_a_single_healthy_endpoint_is_that_endpoint() -> None:
    router, route = make_route([(5, 0), (0, 1), (5, 2)])
    assert router.order(route, [False, True, False]) == [1]
    single_router, single = make_route([(1, 0)])
    assert single_router.order(single, [True]) == [0]


def test_weight_zero_is_never_first_while_another_endpoint_has_weight() -> None:
    router, route = make_route([(0, 0), (1, 1), (0, 0)])
    for _ in range(1000):
        order = router.order(route, [True, True, True])
        assert order[0] == 1
        assert order[1:] == [0, 2]


def test_weight_zero_endpoints_share_first_attempts_when_none_has_weight() -> None:
    router, route = make_route([(0, 0), (0, 1), (5, 0)])
    picks = first_picks(router, route, [True, True, False], 600)
    assert set(picks) == {0, 1}
    assert min(picks.values()) > 200
