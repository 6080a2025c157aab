"""Name resolution and attempt order: ``LLMRouter`` and ``RouteEndpoint`` (the Python API of llm-providers.md).

A public model name resolves in DESIGN §5's order: an exact route, then ``<provider>/<model>``
for any configured provider, then the pattern table (built in, or ``rules:``), else 404. A
provider with a server-side credential serves through the prefix form and the patterns only the
upstream models its ``models:`` matches (DESIGN §14): a gateway key must not unlock the operator's
account for any model; routes under ``routes:`` are explicit and not gated. The
router then orders a route's healthy endpoints for one request: a weighted pick first, then the
fallbacks by ascending priority and descending weight.

router.py never performs I/O, never sleeps and imports no aiohttp; its randomness comes from an
injectable ``random.Random`` so a test can seed it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import translate
from typing import Final

from .config import DEFAULT_PROVIDERS, Config, RuleConfig, Secret, Strategy, Timeouts
from .errors import GatewayError


@dataclass(frozen=True, slots=True)
class RouteEndpoint:
    """One provider + upstream model id + weight + priority (+ an optional server-side key).

    ``model=None`` sends the public name the route was reached by.
    """

    provider: str
    model: str | None = None
    weight: int = 1
    priority: int = 0
    api_key: Secret | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        provider = self.provider
        # llm-providers.md passes provider objects; accept anything that carries a `name`.
        if not isinstance(provider, str):
            name = getattr(provider, "name", None)
            if not isinstance(name, str):
                raise TypeError("RouteEndpoint.provider must be a provider name")
            object.__setattr__(self, "provider", name)
        if self.weight < 0:
            raise ValueError("RouteEndpoint.weight must be >= 0")
        if self.priority < 0:
            raise ValueError("RouteEndpoint.priority must be >= 0")


@dataclass(frozen=True, slots=True)
class Route:
    """What one public model name resolved to. ``label`` is bounded: a route name or a matched rule."""

    name: str
    label: str
    endpoints: tuple[RouteEndpoint, ...]  # every endpoint's `model` is filled in
    strategy: Strategy = "weighted"
    timeouts: Timeouts | None = None


# DESIGN §5 step 3. (pattern, provider, prefix stripped from the upstream model id)
BUILTIN_RULES: Final[tuple[RuleConfig, ...]] = (
    RuleConfig("azure-*", "azure", strip="azure-"),
    RuleConfig("gpt-*", "openai"),
    RuleConfig("o1*", "openai"),
    RuleConfig("o3*", "openai"),
    RuleConfig("o4*", "openai"),
    RuleConfig("chatgpt-*", "openai"),
    RuleConfig("text-embedding-*", "openai"),
    RuleConfig("claude-*", "anthropic"),
    RuleConfig("gemini-*", "vertex"),
    RuleConfig("llama*", "groq"),
    RuleConfig("mixtral*", "groq"),
    RuleConfig("gemma*", "groq"),
    RuleConfig("mistral-*", "mistral"),
    RuleConfig("codestral*", "mistral"),
    RuleConfig("open-mistral*", "mistral"),
    RuleConfig("ministral*", "mistral"),
    RuleConfig("pixtral*", "mistral"),
)

# Resolutions of prefix and pattern names are cached; names come from callers, so the cache is
# bounded and simply emptied when full.
_CACHE_LIMIT: Final = 4096


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    rule: RuleConfig
    prefix: str | None  # "gpt-" for "gpt-*": a startswith() test, the common case
    pattern: re.Pattern[str] | None

    def matches(self, model: str) -> bool:
        if self.prefix is not None:
            return model.startswith(self.prefix)
        assert self.pattern is not None
        return self.pattern.match(model) is not None


def _compile(rule: RuleConfig) -> _CompiledRule:
    body = rule.match[:-1]
    if rule.match.endswith("*") and not any(c in body for c in "*?["):
        return _CompiledRule(rule, body, None)
    return _CompiledRule(rule, None, re.compile(translate(rule.match)))


ModelGate = Callable[[str], bool]


def fallback_order(endpoints: Sequence[RouteEndpoint], candidates: Iterable[int] | None = None) -> list[int]:
    """Indices of ``endpoints`` (or of ``candidates`` among them) in fallback order: ascending
    priority, then descending weight, then as written."""
    indices = range(len(endpoints)) if candidates is None else candidates
    return sorted(indices, key=lambda i: (endpoints[i].priority, -endpoints[i].weight, i))


def model_gate(models: Sequence[str]) -> ModelGate:
    """Whether an upstream model id is one of ``models`` (exact ids and fnmatch globs, case-sensitive;
    ``*`` alone opens every model). The globs are compiled here, once per table."""
    if "*" in models:
        return lambda model: True
    exact = frozenset(m for m in models if not any(c in m for c in "*?["))
    globs = [m for m in models if m not in exact]
    if not globs:
        return exact.__contains__
    pattern = re.compile("|".join(f"(?:{translate(glob)})" for glob in globs))
    return lambda model: model in exact or pattern.match(model) is not None


class LLMRouter:
    """Routes by model name and orders endpoints by weight and priority.

    >>> router = LLMRouter()
    >>> router.add_route("gpt-4", [RouteEndpoint(provider="openai", weight=70, priority=0),
    ...                            RouteEndpoint(provider="azure", weight=30, priority=1)])
    >>> router.resolve("gpt-4").endpoints[0].provider
    'openai'
    """

    def __init__(self, providers: Iterable[str] | None = None, rules: Sequence[RuleConfig] | None = None,
                 rng: random.Random | None = None, gates: Mapping[str, ModelGate] | None = None) -> None:
        self._providers = frozenset(providers if providers is not None else DEFAULT_PROVIDERS)
        # provider → which upstream models its prefix and patterns may reach; absent: any.
        self._gates = dict(gates or {})
        self._rules = tuple(_compile(r) for r in (BUILTIN_RULES if rules is None else rules)
                            if r.provider in self._providers)
        self._routes: dict[str, Route] = {}
        self._cache: dict[str, Route] = {}
        self._rng = rng or random.Random()

    @classmethod
    def from_config(cls, config: Config, rng: random.Random | None = None) -> LLMRouter:
        """The router the YAML describes."""
        gates = {name: model_gate(p.models) for name, p in config.providers.items() if p.server_credential}
        router = cls(config.providers, config.rules, rng, gates)
        for route in config.routes.values():
            router.add_route(
                route.name,
                [RouteEndpoint(e.provider, e.model, e.weight, e.priority, e.api_key) for e in route.endpoints],
                strategy=route.strategy,
                timeouts=route.timeouts,
            )
        return router

    @property
    def routes(self) -> Mapping[str, Route]:
        """The exact routes, by name."""
        return self._routes

    def add_route(self, name: str, endpoints: Sequence[RouteEndpoint], strategy: Strategy = "weighted",
                  timeouts: Timeouts | None = None) -> None:
        """Register (or replace) the route for an exact public model name."""
        if not endpoints:
            raise ValueError(f"route {name!r} needs at least one endpoint")
        if strategy not in ("weighted", "priority"):
            raise ValueError(f"unknown strategy {strategy!r}")
        for endpoint in endpoints:
            if endpoint.provider not in self._providers:
                raise ValueError(f"route {name!r}: unknown provider {endpoint.provider!r}")
        filled = tuple(
            e if e.model else RouteEndpoint(e.provider, name, e.weight, e.priority, e.api_key) for e in endpoints
        )
        self._routes[name] = Route(name, name, filled, strategy, timeouts)
        self._cache.clear()

    def resolve(self, model: str) -> Route:
        """The route a public model name resolves to; 404 ``model_not_found`` when nothing matches."""
        route = self._routes.get(model)
        if route is not None:
            return route
        route = self._cache.get(model)
        if route is not None:
            return route
        route = self._resolve_uncached(model)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[model] = route
        return route

    def _resolve_uncached(self, model: str) -> Route:
        prefix, slash, rest = model.partition("/")
        if slash and rest and prefix in self._providers:
            if self._admits(prefix, rest):
                return Route(model, f"{prefix}/*", (RouteEndpoint(prefix, rest),))
        else:
            for compiled in self._rules:
                if compiled.matches(model):
                    rule = compiled.rule
                    upstream = model[len(rule.strip):] if rule.strip and model.startswith(rule.strip) else model
                    if not upstream:
                        continue
                    # First match wins: a gated provider that does not serve the model is a 404,
                    # not a reason to try the next rule.
                    if self._admits(rule.provider, upstream):
                        return Route(model, rule.match, (RouteEndpoint(rule.provider, upstream),))
                    break
        raise GatewayError(404, f"The model '{model}' does not exist or is not routed by this gateway.",
                           param="model", code="model_not_found")

    def _admits(self, provider: str, upstream: str) -> bool:
        gate = self._gates.get(provider)
        return gate is None or gate(upstream)

    def order(self, route: Route, healthy: Sequence[bool]) -> list[int]:
        """Indices of the healthy endpoints of ``route`` in the order one request should try them.

        weighted: the first is picked among all healthy endpoints in proportion to weight.
        priority: the first is picked by weight among the healthy endpoints of the lowest priority
        number, so higher numbers serve only while every lower one is unhealthy.
        Either way the fallbacks follow by ascending priority, then descending weight.
        """
        endpoints = route.endpoints
        candidates = [i for i, ok in enumerate(healthy) if ok]
        if not candidates:
            return []
        if len(candidates) == 1:
            return candidates
        pool = candidates
        if route.strategy == "priority":
            lowest = min(endpoints[i].priority for i in candidates)
            pool = [i for i in candidates if endpoints[i].priority == lowest]
        first = self._weighted_pick(pool, endpoints)
        return [first, *(i for i in fallback_order(endpoints, candidates) if i != first)]

    def _weighted_pick(self, pool: Sequence[int], endpoints: Sequence[RouteEndpoint]) -> int:
        total = sum(endpoints[i].weight for i in pool)
        if total <= 0:
            return pool[self._rng.randrange(len(pool))]
        point = self._rng.random() * total
        for i in pool:
            point -= endpoints[i].weight
            if point < 0:
                return i
        return pool[-1]
