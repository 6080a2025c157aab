"""The nine provider types, each declared once: what the rest of the gateway may know about a type.

A ``ProviderType`` says what depends on the type outside its wire (DESIGN §2): its YAML keys and
their defaults (the default base URL among them, and the environment variable of the default
provider), the setting without which it cannot be called, how a key travels and which credentials
it accepts (the caller's key, the host's ambient identity, SigV4, none), which caller headers may
cross with the caller's key, the dialects it speaks natively and whether it has embeddings.
``config.py`` builds the default providers and validates the YAML from here; ``auth.py``, the relay
and the transport ask a provider's ``kind`` instead of testing its type name.

Every type's field policy (``policy.FieldPolicy``: what it refuses, drops, clamps and maps) is
here too, so the policies of all nine are one table.

Pure data: this module imports nothing of the package that reads config, so config.py can read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal

from .policy import FieldPolicy

TypeName = Literal["openai", "anthropic", "azure", "vertex", "groq", "mistral", "bedrock", "ollama", "lmstudio"]
# The ambient identity a type can sign with: google-auth application default credentials, or the AWS chain.
AmbientKind = Literal["google", "aws"]
# Which credentials a type accepts: a YAML api_key, the caller's key, the host's identity, YAML AWS keys, none.
CredentialMode = Literal["key", "forward", "ambient", "sigv4", "none"]
# The dialects the gateway knows (DESIGN §1, §12): what a provider's `dialects:` may name.
DIALECT_NAMES: Final[tuple[str, ...]] = ("chat", "completions", "responses", "messages")
# What a provider of OpenAI's wire can pass through when its YAML declares it (DESIGN §12, §14).
_OPENAI_WIRE_DIALECTS: Final = ("chat", "completions", "responses")


@dataclass(frozen=True, slots=True)
class Setting:
    """One YAML key of a type and its default.

    The default provider (named like the type) reads ``env`` first; a provider of another name
    (``azure-eu: {type: azure}``) gets only ``default``, unless ``env_for_all`` says the variable
    is the platform's own (``AWS_REGION``), which every provider of the type reads.
    """

    key: str
    default: str | int = ""
    env: str = ""
    env_for_all: bool = False

    def value(self, default_provider: bool) -> str | int:
        """The value before the YAML merges over it (``${VAR:-default}`` is interpolated later)."""
        if self.env and (default_provider or self.env_for_all):
            return f"${{{self.env}:-{self.default}}}"
        return self.default


@dataclass(frozen=True, slots=True)
class ProviderType:
    """Everything about a provider type that is not its wire."""

    name: TypeName
    settings: tuple[Setting, ...]
    required: str              # the setting without which it cannot be called (503 provider_not_configured)
    auth_scheme: str           # how a key travels upstream, for people (`tensorwall-proxy route`)
    policy: FieldPolicy        # what it refuses, drops, clamps and maps of a chat body
    forwards: bool = True      # takes the caller's key (`auth: forward`)
    key_optional: bool = False  # ... and is called without a key when the caller sends none
    ambient: AmbientKind | None = None  # the host identity `auth: ambient` signs with
    sigv4: bool = False        # YAML AWS keys (or a profile) sign with SigV4
    # The ambient credentials name the required setting when the YAML leaves it empty (a
    # Google identity knows its project).
    ambient_fills_required: bool = False
    key_prefixes: tuple[str, ...] = ()  # the vendor's well-known key prefixes (DESIGN §14)
    forwarded_headers: tuple[str, ...] = ()  # caller headers that cross with the caller's own key
    dialects: tuple[str, ...] = ("chat",)  # the front doors it speaks natively by default
    # The front doors its wire can pass through natively when a provider's YAML declares them
    # (`dialects: [chat, responses]`); `dialects` is always among them.
    declarable: tuple[str, ...] = ("chat",)
    embeddings: bool = True

    @property
    def keys(self) -> frozenset[str]:
        """The YAML keys of the type, beside the common ones."""
        return frozenset(s.key for s in self.settings)

    @property
    def default_auth(self) -> Literal["forward", "none"]:
        """``auth`` when the YAML says nothing: forward the caller's key where the type takes one."""
        return "forward" if self.forwards else "none"

    @property
    def credentials(self) -> frozenset[CredentialMode]:
        """The credentials the type accepts."""
        modes: set[CredentialMode] = {"key", "none"}
        if self.forwards:
            modes.add("forward")
        if self.ambient is not None:
            modes.add("ambient")
        if self.sigv4:
            modes.add("sigv4")
        return frozenset(modes)

    @property
    def required_env(self) -> str:
        """The variable that sets the required setting of the default provider."""
        return next(s.env for s in self.settings if s.key == self.required)

    def default(self, key: str) -> str | int:
        """A setting's fixed default ("" when it has none)."""
        return next((s.default for s in self.settings if s.key == key), "")

    def defaults(self, default_provider: bool) -> dict[str, Any]:
        """The YAML values a provider of this type starts from, before its own YAML merges over them."""
        out: dict[str, Any] = {}
        for setting in self.settings:
            value = setting.value(default_provider)
            if value != "":
                out[setting.key] = value
        return out


def _base_url(default: str, env: str) -> Setting:
    return Setting("base_url", default, env)


# reasoning_effort → Claude's extended thinking budget_tokens (its minimum is 1024), on Anthropic's
# API and on Bedrock alike; → Gemini's thinkingBudget, where "none" turns thinking off.
CLAUDE_THINKING: Final[Mapping[str, int]] = MappingProxyType({
    "minimal": 1024, "low": 1024, "medium": 4096, "high": 16384, "xhigh": 32768, "max": 32768})
GEMINI_THINKING: Final[Mapping[str, int]] = MappingProxyType({
    "none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 32768, "max": 32768})
# What a translated answer cannot carry: per-token logprobs and audio output.
_TRANSLATED_REFUSED: Final = ("logprobs", "top_logprobs", "audio")


TYPES: Final[Mapping[str, ProviderType]] = MappingProxyType({t.name: t for t in (
    ProviderType("openai", (_base_url("https://api.openai.com/v1", "OPENAI_API_URL"),), "base_url",
                 "Authorization: Bearer", forwarded_headers=("OpenAI-Organization", "OpenAI-Project"),
                 dialects=("chat", "responses"), declarable=_OPENAI_WIRE_DIALECTS,
                 policy=FieldPolicy("provider type 'openai'")),
    ProviderType("anthropic", (
        _base_url("https://api.anthropic.com/v1", "ANTHROPIC_API_URL"), Setting("version", "2023-06-01"),
        Setting("default_max_tokens", 4096), Setting("betas"),
    ), "base_url", "x-api-key (a token: Authorization: Bearer)", key_prefixes=("sk-ant-",),
        forwarded_headers=("anthropic-beta",), embeddings=False, dialects=("chat", "messages"),
        declarable=("chat", "messages"),
        policy=FieldPolicy("Anthropic", max_n=1, refused=_TRANSLATED_REFUSED, refused_modalities=("audio",),
                           temperature=(0.0, 1.0), reasoning_budgets=CLAUDE_THINKING)),
    ProviderType("azure", (
        Setting("endpoint", "", "AZURE_OPENAI_ENDPOINT"), Setting("api_version", "2024-10-21", "AZURE_OPENAI_API_VERSION"),
    ), "endpoint", "api-key", dialects=("chat", "responses"), declarable=("chat", "responses"),
        policy=FieldPolicy("provider type 'azure'")),
    ProviderType("vertex", (
        Setting("project", "", "GOOGLE_CLOUD_PROJECT"), Setting("location", "us-central1", "VERTEX_AI_LOCATION"),
        Setting("base_url", "", "VERTEX_API_URL"), Setting("betas"), Setting("anthropic_models"),
    ), "project", "Authorization: Bearer (an OAuth token)", ambient="google", ambient_fills_required=True,
        key_prefixes=("AIza",), dialects=("chat", "messages"), declarable=("chat", "messages"),
        policy=FieldPolicy("the Gemini translation", refused=_TRANSLATED_REFUSED, reasoning_budgets=GEMINI_THINKING)),
    ProviderType("groq", (_base_url("https://api.groq.com/openai/v1", "GROQ_API_URL"),), "base_url",
                 "Authorization: Bearer", key_prefixes=("gsk_",), embeddings=False, declarable=_OPENAI_WIRE_DIALECTS,
                 # Groq answers 400 to n > 1, logprobs, logit_bias and messages[].name (wire-formats §6.1).
                 policy=FieldPolicy("provider type 'groq'", max_n=1, refused=("logprobs", "top_logprobs"),
                                    dropped=("logit_bias", "metadata", "store"), strips_message_names=True)),
    ProviderType("mistral", (_base_url("https://api.mistral.ai/v1", "MISTRAL_API_URL"),), "base_url",
                 "Authorization: Bearer", declarable=_OPENAI_WIRE_DIALECTS,
                 # Mistral has no stream_options (422) and takes seed as random_seed and only max_tokens.
                 policy=FieldPolicy("provider type 'mistral'",
                                    dropped=("stream_options", "user", "metadata", "store", "service_tier",
                                             "logit_bias"),
                                    renamed=(("seed", "random_seed"), ("max_completion_tokens", "max_tokens")))),
    ProviderType("bedrock", (
        Setting("region", "us-east-1", "AWS_REGION", env_for_all=True), Setting("base_url", "", "BEDROCK_API_URL"),
        Setting("aws_access_key_id"), Setting("aws_secret_access_key"), Setting("aws_session_token"),
        Setting("profile"), Setting("betas"), Setting("anthropic_models"),
    ), "region", "Authorization: Bearer (a Bedrock API key), else SigV4", ambient="aws", sigv4=True,
        dialects=("chat", "messages"), declarable=("chat", "messages"),
        policy=FieldPolicy("Bedrock", max_n=1, refused=_TRANSLATED_REFUSED, temperature=(0.0, 1.0),
                           reasoning_budgets=CLAUDE_THINKING)),
    # Ollama never receives the caller's key, only a YAML api_key.
    ProviderType("ollama", (_base_url("http://localhost:11434", "OLLAMA_API_URL"),), "base_url",
                 "Authorization: Bearer", forwards=False, declarable=_OPENAI_WIRE_DIALECTS,
                 policy=FieldPolicy("provider type 'ollama'", max_n=1)),
    # LM Studio wants a key only when its "Require Authentication" is on.
    ProviderType("lmstudio", (_base_url("http://localhost:1234/v1", "LMSTUDIO_API_URL"),), "base_url",
                 "Authorization: Bearer", key_optional=True, declarable=_OPENAI_WIRE_DIALECTS,
                 policy=FieldPolicy("provider type 'lmstudio'", max_n=1, refused=("logprobs", "top_logprobs"))),
)})
TYPE_NAMES: Final[tuple[TypeName, ...]] = tuple(t.name for t in TYPES.values())
# Every vendor key prefix, for the one cheap test on the common path (most keys have none).
VENDOR_PREFIXES: Final[tuple[str, ...]] = tuple(p for t in TYPES.values() for p in t.key_prefixes)
