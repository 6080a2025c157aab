"""Unit tests for tensorwall_proxy/config.py: the YAML schema of DESIGN §4, from text to frozen dataclasses.

Pure: every test parses a string (or a file in tmp_path) with an explicit environment, so the
machine's own variables never leak in.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from tensorwall_proxy.config import (
    PROVIDER_TYPES,
    Config,
    EndpointConfig,
    Limits,
    RuleConfig,
    Secret,
    StateConfig,
    Timeouts,
    default_config_path,
    is_loopback,
    key_digest,
    load_config,
    parse_config,
)
from tensorwall_proxy.errors import ConfigError, GatewayError

REPO_ROOT = Path(__file__).resolve().parents[2]

# sha256("test"), the example digest of DESIGN §4.
TEST_DIGEST = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def parse(text: str, env: Mapping[str, str] | None = None, base_dir: Path | None = None) -> Config:
    """Parse dedented YAML with an explicit (by default empty) environment."""
    return parse_config(textwrap.dedent(text), env={} if env is None else env, base_dir=base_dir)


def errors_of(text: str, env: Mapping[str, str] | None = None, base_dir: Path | None = None) -> list[str]:
    """The errors a ConfigError reports for dedented YAML."""
    with pytest.raises(ConfigError) as info:
        parse(text, env, base_dir)
    return info.value.errors


def auth_off(text: str = "") -> str:
    """A document with gateway auth off plus ``text``."""
    return "gateway_keys: []\n" + textwrap.dedent(text)


# --- the nine default providers --------------------------------------------------------------------


def test_nine_default_providers_exist_when_yaml_omits_them() -> None:
    config = parse(auth_off())
    assert set(config.providers) == set(PROVIDER_TYPES)
    assert len(PROVIDER_TYPES) == 9
    for name, provider in config.providers.items():
        assert provider.name == name
        assert provider.type == name


def test_default_provider_settings_with_an_empty_environment() -> None:
    providers = parse(auth_off()).providers
    assert providers["openai"].base_url == "https://api.openai.com/v1"
    assert providers["anthropic"].base_url == "https://api.anthropic.com/v1"
    assert providers["anthropic"].version == "2023-06-01"
    assert providers["anthropic"].default_max_tokens == 4096
    assert providers["azure"].endpoint == ""
    assert providers["azure"].api_version == "2024-10-21"
    assert providers["vertex"].project == ""
    assert providers["vertex"].location == "us-central1"
    assert providers["vertex"].base_url == ""
    assert providers["groq"].base_url == "https://api.groq.com/openai/v1"
    assert providers["mistral"].base_url == "https://api.mistral.ai/v1"
    assert providers["bedrock"].region == "us-east-1"
    assert providers["bedrock"].base_url == ""
    assert providers["ollama"].base_url == "http://localhost:11434"
    assert providers["lmstudio"].base_url == "http://localhost:1234/v1"


def test_default_providers_read_their_environment_variables() -> None:
    env = {
        "OPENAI_API_URL": "https://openai.example/v1",
        "ANTHROPIC_API_URL": "https://anthropic.example/v1",
        "AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com",
        "AZURE_OPENAI_API_VERSION": "2024-06-01",
        "GOOGLE_CLOUD_PROJECT": "proj-1",
        "VERTEX_AI_LOCATION": "europe-west4",
        "VERTEX_API_URL": "https://vertex.example",
        "GROQ_API_URL": "https://groq.example/openai/v1",
        "MISTRAL_API_URL": "https://mistral.example/v1",
        "AWS_REGION": "eu-west-1",
        "BEDROCK_API_URL": "https://bedrock.example",
        "OLLAMA_API_URL": "http://ollama.example:11434",
        "LMSTUDIO_API_URL": "http://lmstudio.example:1234/v1",
    }
    providers = parse(auth_off(), env).providers
    assert providers["openai"].base_url == "https://openai.example/v1"
    assert providers["anthropic"].base_url == "https://anthropic.example/v1"
    assert providers["azure"].endpoint == "https://res.openai.azure.com"
    assert providers["azure"].api_version == "2024-06-01"
    assert providers["azure"].unconfigured is None
    assert providers["vertex"].project == "proj-1"
    assert providers["vertex"].location == "europe-west4"
    assert providers["vertex"].base_url == "https://vertex.example"
    assert providers["vertex"].unconfigured is None
    assert providers["groq"].base_url == "https://groq.example/openai/v1"
    assert providers["mistral"].base_url == "https://mistral.example/v1"
    assert providers["bedrock"].region == "eu-west-1"
    assert providers["bedrock"].base_url == "https://bedrock.example"
    assert providers["ollama"].base_url == "http://ollama.example:11434"
    assert providers["lmstudio"].base_url == "http://lmstudio.example:1234/v1"


def test_a_bad_default_from_the_environment_is_an_error_at_the_providers_path() -> None:
    errors = errors_of(auth_off(), {"OPENAI_API_URL": "ftp://files.example"})
    assert len(errors) == 1
    assert errors[0].startswith("providers.openai.base_url: expected an http(s) URL")


def test_a_yaml_entry_for_a_default_name_merges_over_it_key_by_key() -> None:
    config = parse(auth_off("""
        providers:
          anthropic: {base_url: "https://proxy.example/anthropic/v1"}
    """))
    anthropic = config.providers["anthropic"]
    assert anthropic.base_url == "https://proxy.example/anthropic/v1"
    assert anthropic.version == "2023-06-01"
    assert anthropic.default_max_tokens == 4096


def test_a_default_name_that_repeats_its_own_type_still_merges() -> None:
    config = parse(auth_off("""
        providers:
          azure: {type: azure, api_key: k}
    """), {"AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com"})
    azure = config.providers["azure"]
    assert azure.endpoint == "https://res.openai.azure.com"
    assert azure.api_version == "2024-10-21"
    assert azure.api_key == Secret("k")


def test_a_default_name_given_another_type_does_not_inherit_the_default() -> None:
    config = parse(auth_off("""
        providers:
          azure: {type: openai, base_url: "https://compat.example/v1"}
    """), {"AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com"})
    azure = config.providers["azure"]
    assert azure.type == "openai"
    assert azure.endpoint == ""
    assert azure.base_url == "https://compat.example/v1"


def test_a_null_entry_for_a_default_name_keeps_the_default() -> None:
    config = parse(auth_off("""
        providers:
          groq:
    """))
    assert config.providers["groq"].base_url == "https://api.groq.com/openai/v1"


def test_a_second_provider_of_a_type_gets_the_type_defaults() -> None:
    config = parse(auth_off("""
        providers:
          azure-eu:
            type: azure
            endpoint: https://my-eu.openai.azure.com
            api_key: eu-key
            models: [gpt-4o, gpt-4o-mini]
          anthropic-b: {type: anthropic, base_url: "https://b.example/v1"}
          vertex-prod: {type: vertex, project: my-project, auth: ambient}
          bedrock-eu: {type: bedrock}
    """), {"AWS_REGION": "eu-central-1"})
    azure_eu = config.providers["azure-eu"]
    assert azure_eu.type == "azure"
    assert azure_eu.api_version == "2024-10-21"
    assert azure_eu.endpoint == "https://my-eu.openai.azure.com"
    assert azure_eu.api_key is not None and azure_eu.api_key.reveal() == "eu-key"
    assert azure_eu.models == ("gpt-4o", "gpt-4o-mini")
    assert azure_eu.unconfigured is None
    assert config.providers["anthropic-b"].version == "2023-06-01"
    assert config.providers["anthropic-b"].default_max_tokens == 4096
    assert config.providers["vertex-prod"].location == "us-central1"
    assert config.providers["vertex-prod"].auth == "ambient"
    assert config.providers["bedrock-eu"].region == "eu-central-1"
    # The defaults still exist next to the extra ones.
    assert set(PROVIDER_TYPES) < set(config.providers)


def test_a_second_provider_does_not_read_the_default_providers_variables() -> None:
    env = {"AZURE_OPENAI_ENDPOINT": "https://default.openai.azure.com", "AZURE_OPENAI_API_VERSION": "2024-02-01"}
    config = parse(auth_off("""
        providers:
          azure-eu: {type: azure, endpoint: "https://eu.openai.azure.com"}
    """), env)
    assert config.providers["azure"].api_version == "2024-02-01"
    assert config.providers["azure-eu"].api_version == "2024-10-21"
    assert config.providers["azure-eu"].endpoint == "https://eu.openai.azure.com"


def test_a_second_provider_overrides_its_type_defaults() -> None:
    config = parse(auth_off("""
        providers:
          azure-old: {type: azure, endpoint: "https://old.openai.azure.com", api_version: "2024-02-01"}
    """))
    assert config.providers["azure-old"].api_version == "2024-02-01"


def test_an_unquoted_date_version_is_read_as_that_version() -> None:
    """YAML reads `2024-02-01` as a date; the versions of DESIGN §4 are written exactly like that,
    and numbers are already accepted where strings are expected, so a date should be too."""
    config = parse(auth_off("""
        providers:
          azure: {endpoint: "https://res.openai.azure.com", api_version: 2024-02-01}
          anthropic: {version: 2023-06-01}
    """))
    assert config.providers["azure"].api_version == "2024-02-01"
    assert config.providers["anthropic"].version == "2023-06-01"


def test_a_provider_not_named_like_a_type_needs_a_type() -> None:
    errors = errors_of(auth_off("""
        providers:
          my-openai: {base_url: "https://x.example/v1"}
    """))
    assert len(errors) == 1
    assert errors[0].startswith("providers.my-openai: a provider not named like one of the nine types needs `type`")


def test_an_unknown_provider_type_is_an_error_at_its_type_key() -> None:
    errors = errors_of(auth_off("""
        providers:
          eu: {type: azur}
    """))
    assert errors == [
        "providers.eu.type: unknown provider type 'azur' (expected one of: "
        "openai, anthropic, azure, vertex, groq, mistral, bedrock, ollama, lmstudio)"
    ]


def test_a_provider_name_with_a_slash_is_an_error() -> None:
    errors = errors_of(auth_off("""
        providers:
          "eu/west": {type: azure}
    """))
    assert errors == ["providers.eu/west: a provider name takes letters, digits, '_', '-' and '.'"]


@pytest.mark.parametrize("value", ["[1, 2]", "just-a-string"])
def test_a_provider_that_is_not_a_mapping_is_an_error(value: str) -> None:
    errors = errors_of(auth_off(f"""
        providers:
          openai: {value}
    """))
    assert len(errors) == 1
    assert errors[0].startswith("providers.openai: expected a mapping")


def test_providers_that_is_not_a_mapping_is_an_error_and_defaults_remain() -> None:
    errors = errors_of(auth_off("providers: [openai]\n"))
    assert errors == ["providers: expected a mapping, got list"]


# --- interpolation ---------------------------------------------------------------------------------


def test_a_set_variable_is_substituted() -> None:
    config = parse(auth_off("""
        providers:
          openai: {base_url: "${MY_URL}"}
    """), {"MY_URL": "https://set.example/v1"})
    assert config.providers["openai"].base_url == "https://set.example/v1"


def test_a_default_is_used_only_when_the_variable_is_unset() -> None:
    text = auth_off("""
        providers:
          openai: {base_url: "${MY_URL:-https://fallback.example/v1}"}
    """)
    assert parse(text).providers["openai"].base_url == "https://fallback.example/v1"
    assert parse(text, {"MY_URL": "https://set.example/v1"}).providers["openai"].base_url == "https://set.example/v1"


def test_an_explicit_empty_default_gives_an_empty_value() -> None:
    config = parse(auth_off("""
        providers:
          azure: {endpoint: "${NO_SUCH_ENDPOINT:-}"}
    """))
    assert config.providers["azure"].endpoint == ""


def test_a_variable_set_to_empty_is_empty_not_the_default() -> None:
    config = parse(auth_off("""
        providers:
          azure: {api_version: "${VERSION:-2024-10-21}"}
    """), {"VERSION": ""})
    assert config.providers["azure"].api_version == ""


def test_a_variable_embedded_in_a_string_is_substituted() -> None:
    config = parse(auth_off("""
        providers:
          ollama: {base_url: "http://${HOST}:${PORT:-11434}/ollama"}
    """), {"HOST": "gpu-box"})
    assert config.providers["ollama"].base_url == "http://gpu-box:11434/ollama"


def test_a_substituted_value_is_not_interpolated_again() -> None:
    config = parse(auth_off("""
        providers:
          openai: {api_key: "${KEY}"}
    """), {"KEY": "${SECRET_ELSEWHERE}"})
    key = config.providers["openai"].api_key
    assert key is not None and key.reveal() == "${SECRET_ELSEWHERE}"


def test_an_interpolated_number_is_read_as_a_number() -> None:
    config = parse(auth_off("""
        server: {port: "${PORT:-9000}"}
        timeouts: {connect: "${CONNECT:-2.5}"}
    """))
    assert config.server.port == 9000
    assert config.timeouts.connect == 2.5


def test_an_unset_variable_is_an_error_naming_the_yaml_path_and_the_variable() -> None:
    errors = errors_of(auth_off("""
        providers:
          openai: {base_url: "http://${OPENAI_HOST}/v1"}
    """))
    assert errors[0].startswith("providers.openai.base_url: environment variable OPENAI_HOST is not set")


def test_an_unset_variable_in_a_list_item_names_the_index() -> None:
    errors = errors_of("""
        gateway_keys: [sha256:%s]
        routes:
          gpt-4:
            endpoints:
              - {provider: openai}
              - {provider: azure, model: "${DEPLOYMENT}", api_key: azure-server-key}
    """ % ("a" * 64))
    assert len(errors) == 1
    assert errors[0].startswith("routes.gpt-4.endpoints[1].model: environment variable DEPLOYMENT is not set")


def test_an_unset_variable_in_a_secret_is_reported_once() -> None:
    """One unset variable is one problem; a second line ("is empty") for it would mislead `check`."""
    errors = errors_of(auth_off("""
        providers:
          azure-eu: {type: azure, endpoint: "https://eu.openai.azure.com", api_key: "${AZURE_EU_KEY}"}
    """))
    assert len(errors) == 1, errors
    assert "AZURE_EU_KEY" in errors[0]


@pytest.mark.parametrize("expr", ["${}", "${1ABC}", "${A-B}", "${:-x}"])
def test_an_invalid_variable_reference_is_an_error(expr: str) -> None:
    errors = errors_of(auth_off(f"""
        providers:
          openai: {{api_key: "{expr}"}}
    """))
    assert errors[0].startswith("providers.openai.api_key: '")
    assert "is not a valid variable reference" in errors[0]


def test_a_file_reference_is_read_relative_to_base_dir_and_stripped(tmp_path: Path) -> None:
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "openai").write_text("  sk-from-file\n\n", encoding="utf-8")
    config = parse(auth_off("""
        providers:
          openai: {api_key: "${file:creds/openai}"}
    """), base_dir=tmp_path)
    key = config.providers["openai"].api_key
    assert key is not None and key.reveal() == "sk-from-file"


def test_a_file_reference_may_be_absolute(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("abs-key\n", encoding="utf-8")
    config = parse(auth_off(f"""
        providers:
          openai: {{api_key: "${{file:{secret}}}"}}
    """), base_dir=Path("/nonexistent"))
    key = config.providers["openai"].api_key
    assert key is not None and key.reveal() == "abs-key"


def test_a_missing_file_is_an_error_at_the_yaml_path(tmp_path: Path) -> None:
    errors = errors_of(auth_off("""
        providers:
          openai: {api_key: "${file:missing-key}"}
    """), base_dir=tmp_path)
    assert errors[0].startswith(f"providers.openai.api_key: cannot read {tmp_path / 'missing-key'}")


def test_an_empty_file_is_an_error_at_the_yaml_path(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text(" \n\t\n", encoding="utf-8")
    errors = errors_of("""
        gateway_keys: ["${file:empty}"]
    """, base_dir=tmp_path)
    assert errors[0] == f"gateway_keys[0]: file {tmp_path / 'empty'} is empty"


def test_load_config_resolves_file_references_next_to_the_yaml(tmp_path: Path) -> None:
    (tmp_path / "gateway.key").write_text("test\n", encoding="utf-8")
    path = tmp_path / "tensorwall.yaml"
    path.write_text('gateway_keys: ["${file:gateway.key}"]\n', encoding="utf-8")
    config = load_config(path, env={})
    assert tuple(p.digest for p in config.gateway_keys) == (TEST_DIGEST,)
    assert config.source == str(path)


def test_load_config_of_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert len(info.value.errors) == 1
    assert info.value.errors[0].startswith(f"{path}: cannot read")


def test_the_shipped_default_config_loads_with_an_empty_environment() -> None:
    config = load_config(REPO_ROOT / "config" / "tensorwall.yaml", env={})
    assert config.gateway_keys == ()
    assert set(PROVIDER_TYPES) <= set(config.providers)
    assert is_loopback(config.server.host)


# --- gateway_keys ------------------------------------------------------------------------------------


def test_a_plain_gateway_key_becomes_its_sha256_digest() -> None:
    config = parse("""
        gateway_keys: [test, "${TENSORWALL_KEY}"]
    """, {"TENSORWALL_KEY": "from-env"})
    assert tuple(p.digest for p in config.gateway_keys) == (
        TEST_DIGEST,
        "sha256:" + hashlib.sha256(b"from-env").hexdigest(),
    )


def test_a_digest_is_kept_and_lowercased() -> None:
    upper = "sha256:" + TEST_DIGEST.removeprefix("sha256:").upper()
    config = parse(f"""
        gateway_keys: ["{upper}", "{TEST_DIGEST}"]
    """)
    assert tuple(p.digest for p in config.gateway_keys) == (TEST_DIGEST, TEST_DIGEST)


@pytest.mark.parametrize("digest", ["sha256:abc", "sha256:" + "g" * 64, "sha256:" + "a" * 65, "sha256:"])
def test_a_malformed_digest_is_an_error(digest: str) -> None:
    errors = errors_of(f"""
        gateway_keys: [ok, "{digest}"]
    """)
    assert len(errors) == 1
    assert errors[0].startswith("gateway_keys[1]: a digest is `sha256:` followed by 64 hex digits")


@pytest.mark.parametrize("entry", ['"${EMPTY:-}"', '""', "null"])
def test_an_empty_gateway_key_is_an_error_never_auth_off(entry: str) -> None:
    errors = errors_of(f"""
        gateway_keys: [{entry}]
    """)
    assert len(errors) == 1
    assert errors[0].startswith("gateway_keys[0]: is empty")


def test_an_empty_gateway_key_list_turns_auth_off() -> None:
    assert parse("gateway_keys: []").gateway_keys == ()


def test_a_missing_gateway_keys_key_is_an_error() -> None:
    errors = errors_of("server: {port: 8000}\n")
    assert len(errors) == 1
    assert errors[0].startswith("gateway_keys: missing")


def test_an_empty_document_is_an_error_for_the_missing_gateway_keys() -> None:
    errors = errors_of("")
    assert len(errors) == 1
    assert errors[0].startswith("gateway_keys: missing")


def test_a_null_gateway_keys_is_an_error_not_auth_off() -> None:
    """DESIGN §4: only an explicit `gateway_keys: []` turns auth off. A bare `gateway_keys:` (its
    entries commented out, say) is not that explicit list, and must not silently open the gateway."""
    with pytest.raises(ConfigError) as info:
        parse("gateway_keys:\n#  - ${TENSORWALL_KEY}\n")
    assert info.value.errors[0].startswith("gateway_keys")


@pytest.mark.parametrize("value", ["some-key", "{a: b}"])
def test_gateway_keys_that_is_not_a_list_is_an_error(value: str) -> None:
    errors = errors_of(f"gateway_keys: {value}\n")
    assert len(errors) == 1
    assert errors[0].startswith("gateway_keys: expected a list")


def test_a_non_string_gateway_key_is_an_error() -> None:
    errors = errors_of("gateway_keys: [[nested]]\n")
    assert errors[0] == "gateway_keys[0]: expected a string, got list"


def test_key_digest_is_sha256_of_utf8_bytes_lowercase_hex() -> None:
    assert key_digest("test") == TEST_DIGEST
    assert key_digest("clé") == "sha256:" + hashlib.sha256("clé".encode()).hexdigest()
    assert key_digest("a") != key_digest("b")


# --- unknown keys and error collection -------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "path"),
    [
        ("bogus: 1", "bogus"),
        ("server: {hots: 0.0.0.0}", "server.hots"),
        ("providers: {openai: {base_uri: 'https://x.example/v1'}}", "providers.openai.base_uri"),
        ("providers: {openai: {endpoint: 'https://x.example'}}", "providers.openai.endpoint"),
        ("providers: {azure-eu: {type: azure, deployment: d}}", "providers.azure-eu.deployment"),
        ("routes: {r: {strategi: weighted, endpoints: [{provider: openai}]}}", "routes.r.strategi"),
        ("routes: {r: {endpoints: [{provider: openai, wieght: 3}]}}", "routes.r.endpoints[0].wieght"),
        ("routes: {r: {endpoints: [{provider: openai}], timeouts: {conect: 1}}}", "routes.r.timeouts.conect"),
        ("rules: [{match: 'x-*', provider: openai, strip_prefix: 'x-'}]", "rules[0].strip_prefix"),
        ("timeouts: {read: 5}", "timeouts.read"),
        ("retries: {max: 5}", "retries.max"),
    ],
)
def test_an_unknown_key_is_an_error_naming_its_path(yaml_text: str, path: str) -> None:
    errors = errors_of(auth_off(yaml_text + "\n"))
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{path}: unknown key (expected one of: ")


def test_every_problem_is_reported_each_led_by_its_yaml_path() -> None:
    errors = errors_of("""
        gateway_keys: ["sha256:abc"]
        routes:
          gpt-4:
            endpoints:
              - {provider: openai, weight: 70}
              - {provider: azur, model: gpt4-deployment, weight: 30, priority: 1}
        retries: {attempts: 0}
    """)
    assert len(errors) == 3, errors
    assert errors[0].startswith("gateway_keys[0]: a digest is ")
    assert "routes.gpt-4.endpoints[1].provider: unknown provider 'azur'" in errors
    assert "retries.attempts: must be between 1 and 20, got 0" in errors


def test_a_config_error_is_a_gateway_error_joining_every_message() -> None:
    with pytest.raises(ConfigError) as info:
        parse("gateway_keys: ['']\nbogus: 1\n")
    assert isinstance(info.value, GatewayError)
    assert info.value.code == "config_error"
    assert all(message in str(info.value) for message in info.value.errors)
    assert len(info.value.errors) == 2


def test_invalid_yaml_is_a_config_error_naming_the_source() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("gateway_keys: [unclosed\n", env={}, source="/etc/tw.yaml")
    assert info.value.errors[0].startswith("/etc/tw.yaml: not valid YAML")


def test_a_top_level_that_is_not_a_mapping_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("- a\n- b\n", env={}, source="list.yaml")
    assert info.value.errors == ["list.yaml: the top level must be a mapping"]


def test_the_source_is_kept_on_the_config() -> None:
    assert parse_config("gateway_keys: []", env={}, source="here.yaml").source == "here.yaml"
    assert parse_config("gateway_keys: []", env={}).source == "<memory>"


# --- server, timeouts and retries ------------------------------------------------------------------


def test_server_timeouts_and_retries_have_the_documented_defaults() -> None:
    config = parse(auth_off())
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8000
    assert config.server.max_body_bytes == 32 * 1024 * 1024
    assert config.server.drain_seconds == 60
    assert config.server.shutdown_delay_seconds == 0
    server = config.server
    assert (server.header_timeout_seconds, server.body_timeout_seconds, server.keepalive_seconds) == (10, 30, 75)
    assert (server.max_connections, server.max_header_bytes) == (4096, 32 * 1024)
    assert (server.max_buffered_body_bytes, server.max_upstream_body_bytes) == (64 << 20, 64 << 20)
    assert server.max_held_bytes == 1 << 20
    assert (server.allowed_origins, server.allowed_hosts, server.metrics_port) == ((), (), None)
    assert config.timeouts == Timeouts(connect=10, first_byte=120, idle=120, total=600)
    assert config.retries.attempts == 3
    assert config.retries.cooldown_seconds == 30
    assert config.routes == {}
    assert config.rules is None


def test_server_settings_are_read() -> None:
    config = parse(auth_off("""
        server: {host: 0.0.0.0, port: 9001, max_body_bytes: 1024, drain_seconds: 5.5, shutdown_delay_seconds: 2}
    """))
    assert (config.server.host, config.server.port, config.server.max_body_bytes) == ("0.0.0.0", 9001, 1024)
    assert (config.server.drain_seconds, config.server.shutdown_delay_seconds) == (5.5, 2.0)


def test_an_empty_host_falls_back_to_loopback() -> None:
    assert parse(auth_off("server: {host: ''}\n")).server.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("server: {port: 65536}", "server.port: must be between 0 and 65535, got 65536"),
        ("server: {port: -1}", "server.port: must be between 0 and 65535, got -1"),
        ("server: {port: eighty}", "server.port: expected an integer, got 'eighty'"),
        ("server: {port: true}", "server.port: expected an integer, got a boolean"),
        ("server: {port: 80.5}", "server.port: expected an integer, got 80.5"),
        ("server: {max_body_bytes: 1023}", "server.max_body_bytes: must be at least 1024, got 1023"),
        ("server: {drain_seconds: -1}", "server.drain_seconds: must be at least 0, got -1"),
        ("server: {host: [a]}", "server.host: expected a string, got list"),
        ("server: [a]", "server: expected a mapping, got list"),
    ],
)
def test_server_bounds(yaml_text: str, message: str) -> None:
    assert errors_of(auth_off(yaml_text + "\n")) == [message]


def test_timeouts_take_fractions_of_seconds() -> None:
    config = parse(auth_off("timeouts: {connect: 0.25, first_byte: 1, idle: 2.5, total: '30'}\n"))
    assert config.timeouts == Timeouts(connect=0.25, first_byte=1.0, idle=2.5, total=30.0)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("timeouts: {connect: 0}", "timeouts.connect: must be greater than 0, got 0"),
        ("timeouts: {idle: -2}", "timeouts.idle: must be greater than 0, got -2"),
        ("timeouts: {total: soon}", "timeouts.total: expected a number, got 'soon'"),
        ("timeouts: {first_byte: true}", "timeouts.first_byte: expected a number, got bool"),
        ("timeouts: {first_byte: [1]}", "timeouts.first_byte: expected a number, got list"),
        ("retries: {attempts: 0}", "retries.attempts: must be between 1 and 20, got 0"),
        ("retries: {attempts: 21}", "retries.attempts: must be between 1 and 20, got 21"),
        ("retries: {attempts: 2.5}", "retries.attempts: expected an integer, got 2.5"),
        ("retries: {cooldown_seconds: -1}", "retries.cooldown_seconds: must be at least 0, got -1"),
    ],
)
def test_timeouts_and_retries_bounds(yaml_text: str, message: str) -> None:
    assert errors_of(auth_off(yaml_text + "\n")) == [message]


def test_retries_accept_their_bounds() -> None:
    assert parse(auth_off("retries: {attempts: 1, cooldown_seconds: 0}\n")).retries.attempts == 1
    config = parse(auth_off("retries: {attempts: '20', cooldown_seconds: 0.5}\n"))
    assert (config.retries.attempts, config.retries.cooldown_seconds) == (20, 0.5)


@pytest.mark.parametrize("value", ["'--3'", "'²'", "'3-'"])
def test_a_malformed_integer_string_is_a_config_error_not_a_crash(value: str) -> None:
    """`_integer` accepts any string whose `.strip().lstrip('-')` is `isdigit()`, then calls int() on it."""
    errors = errors_of(auth_off(f"retries: {{attempts: {value}}}\n"))
    assert len(errors) == 1
    assert errors[0].startswith("retries.attempts: expected an integer")


@pytest.mark.parametrize(
    ("yaml_text", "path"),
    [
        ("timeouts: {connect: .nan}", "timeouts.connect"),
        ("retries: {cooldown_seconds: .nan}", "retries.cooldown_seconds"),
        ("timeouts: {total: nan}", "timeouts.total"),
        ("server: {drain_seconds: .inf}", "server.drain_seconds"),
    ],
)
def test_a_non_finite_duration_is_an_error(yaml_text: str, path: str) -> None:
    """NaN passes both `value <= 0` and `value < minimum` unnoticed; a NaN timeout or cooldown is no duration."""
    errors = errors_of(auth_off(yaml_text + "\n"))
    assert len(errors) == 1
    assert errors[0].startswith(f"{path}: ")


# --- routes ----------------------------------------------------------------------------------------


def test_a_route_reads_its_endpoints_with_their_defaults() -> None:
    config = parse(auth_off("""
        providers:
          azure-eu: {type: azure, endpoint: "https://eu.openai.azure.com", api_key: eu}
        routes:
          gpt-4:
            endpoints:
              - {provider: openai}
              - {provider: azure-eu, model: gpt4-deployment, weight: 30, priority: 1, api_key: ep-key}
    """))
    route = config.routes["gpt-4"]
    assert route.name == "gpt-4"
    assert route.strategy == "weighted"
    assert route.timeouts is None
    assert route.endpoints[0] == EndpointConfig(provider="openai", model=None, weight=1, priority=0, api_key=None)
    second = route.endpoints[1]
    assert (second.provider, second.model, second.weight, second.priority) == ("azure-eu", "gpt4-deployment", 30, 1)
    assert second.api_key is not None and second.api_key.reveal() == "ep-key"


def test_a_route_takes_the_priority_strategy() -> None:
    config = parse(auth_off("""
        routes:
          r: {strategy: priority, endpoints: [{provider: openai}]}
    """))
    assert config.routes["r"].strategy == "priority"


def test_an_invalid_strategy_is_an_error() -> None:
    errors = errors_of(auth_off("""
        routes:
          r: {strategy: round-robin, endpoints: [{provider: openai}]}
    """))
    assert errors == ["routes.r.strategy: expected weighted or priority, got 'round-robin'"]


@pytest.mark.parametrize("endpoints", ["", "endpoints: []", "endpoints: {provider: openai}", "endpoints: null"])
def test_a_route_without_endpoints_is_an_error(endpoints: str) -> None:
    errors = errors_of(auth_off(f"""
        routes:
          r: {{{endpoints}}}
    """))
    assert errors == ["routes.r.endpoints: expected a non-empty list of endpoints"]


def test_a_route_that_is_not_a_mapping_is_an_error() -> None:
    errors = errors_of(auth_off("routes: {r: openai}\n"))
    assert errors[0] == "routes.r: expected a mapping, got str"


def test_routes_that_is_not_a_mapping_is_an_error() -> None:
    assert errors_of(auth_off("routes: [r]\n")) == ["routes: expected a mapping, got list"]


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("{model: x}", "routes.r.endpoints[0].provider: required"),
        ("{provider: ''}", "routes.r.endpoints[0].provider: required"),
        ("{provider: azur}", "routes.r.endpoints[0].provider: unknown provider 'azur'"),
        ("{provider: openai, weight: -1}", "routes.r.endpoints[0].weight: must be at least 0, got -1"),
        ("{provider: openai, weight: heavy}", "routes.r.endpoints[0].weight: expected an integer, got 'heavy'"),
        ("{provider: openai, priority: -1}", "routes.r.endpoints[0].priority: must be at least 0, got -1"),
        ("{provider: openai, api_key: ''}", "routes.r.endpoints[0].api_key: is empty"),
        ("{provider: openai, model: [a]}", "routes.r.endpoints[0].model: expected a string, got list"),
    ],
)
def test_endpoint_errors_name_their_path(endpoint: str, message: str) -> None:
    errors = errors_of(auth_off(f"""
        routes:
          r: {{endpoints: [{endpoint}]}}
    """))
    assert len(errors) == 1, errors
    assert errors[0].startswith(message)


def test_an_endpoint_that_is_not_a_mapping_is_an_error() -> None:
    errors = errors_of(auth_off("routes: {r: {endpoints: [openai]}}\n"))
    assert errors[0] == "routes.r.endpoints[0]: expected a mapping, got str"


def test_endpoint_weight_zero_and_string_numbers_are_accepted() -> None:
    config = parse(auth_off("""
        routes:
          r: {endpoints: [{provider: openai, weight: 0}, {provider: openai, weight: "5", priority: "2"}]}
    """))
    first, second = config.routes["r"].endpoints
    assert first.weight == 0
    assert (second.weight, second.priority) == (5, 2)


def test_per_route_timeouts_merge_over_the_global_ones() -> None:
    config = parse(auth_off("""
        timeouts: {connect: 5, idle: 30}
        routes:
          slow: {endpoints: [{provider: openai}], timeouts: {first_byte: 600}}
          plain: {endpoints: [{provider: openai}]}
    """))
    assert config.timeouts == Timeouts(connect=5, first_byte=120, idle=30, total=600)
    assert config.routes["slow"].timeouts == Timeouts(connect=5, first_byte=600, idle=30, total=600)
    assert config.routes["plain"].timeouts is None


def test_a_bad_per_route_timeout_names_the_route() -> None:
    errors = errors_of(auth_off("""
        routes:
          r: {endpoints: [{provider: openai}], timeouts: {total: 0}}
    """))
    assert errors == ["routes.r.timeouts.total: must be greater than 0, got 0"]


def test_a_route_name_may_hold_a_slash() -> None:
    config = parse(auth_off("""
        routes:
          openai/gpt-4o: {endpoints: [{provider: groq, model: llama3-70b}]}
    """))
    assert config.routes["openai/gpt-4o"].endpoints[0].provider == "groq"


# --- rules -----------------------------------------------------------------------------------------


def test_absent_rules_mean_the_builtin_table() -> None:
    assert parse(auth_off()).rules is None


def test_given_rules_replace_the_builtin_table_in_order() -> None:
    config = parse(auth_off("""
        rules:
          - {match: "gpt-*", provider: openai}
          - {match: "azure-*", provider: azure, strip: "azure-"}
    """))
    assert config.rules == (
        RuleConfig(match="gpt-*", provider="openai", strip=""),
        RuleConfig(match="azure-*", provider="azure", strip="azure-"),
    )
    assert isinstance(config.rules, tuple)


def test_empty_rules_turn_pattern_matching_off() -> None:
    assert parse(auth_off("rules: []\n")).rules == ()


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("{provider: openai}", "rules[0].match: required"),
        ("{match: 'x-*'}", "rules[0].provider: required"),
        ("{match: 'x-*', provider: nope}", "rules[0].provider: unknown provider 'nope'"),
        ("x-*", "rules[0]: expected a mapping, got str"),
    ],
)
def test_rule_errors_name_their_path(rule: str, message: str) -> None:
    errors = errors_of(auth_off(f"rules: [{rule}]\n"))
    assert errors[0] == message


def test_rules_that_is_not_a_list_is_an_error() -> None:
    assert errors_of(auth_off("rules: {match: x}\n")) == ["rules: expected a list, got dict"]


def test_a_rule_may_name_a_second_provider() -> None:
    config = parse(auth_off("""
        providers:
          azure-eu: {type: azure, endpoint: "https://eu.openai.azure.com"}
        rules:
          - {match: "eu-*", provider: azure-eu, strip: "eu-"}
    """))
    assert config.rules == (RuleConfig("eu-*", "azure-eu", "eu-"),)


# --- provider settings -----------------------------------------------------------------------------


def test_an_azure_provider_without_endpoint_loads_but_is_unconfigured() -> None:
    config = parse(auth_off())
    message = config.providers["azure"].unconfigured
    assert message is not None
    assert "endpoint" in message
    assert "AZURE_OPENAI_ENDPOINT" in message
    assert config.providers["openai"].unconfigured is None


def test_a_vertex_provider_without_project_names_its_variable() -> None:
    message = parse(auth_off()).providers["vertex"].unconfigured
    assert message is not None
    assert "project" in message
    assert "GOOGLE_CLOUD_PROJECT" in message


def test_a_second_provider_without_its_required_setting_names_its_yaml_path() -> None:
    config = parse(auth_off("providers: {azure-eu: {type: azure}}\n"))
    message = config.providers["azure-eu"].unconfigured
    assert message is not None
    assert "providers.azure-eu.endpoint" in message
    assert "AZURE_OPENAI_ENDPOINT" not in message


def test_a_base_url_keeps_its_path_prefix_and_loses_its_trailing_slash() -> None:
    config = parse(auth_off("providers: {openai: {base_url: 'https://gw.example/team/openai/v1/'}}\n"))
    assert config.providers["openai"].base_url == "https://gw.example/team/openai/v1"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("api.openai.com/v1", "expected an http(s) URL"),
        ("ftp://files.example", "expected an http(s) URL"),
        ("http://", "expected an http(s) URL"),
        ("https://x.example/v1?key=1", "a base URL takes no query or fragment"),
        ("https://x.example/v1#top", "a base URL takes no query or fragment"),
    ],
)
def test_an_invalid_base_url_is_an_error(url: str, message: str) -> None:
    errors = errors_of(auth_off(f"providers: {{groq: {{base_url: '{url}'}}}}\n"))
    assert len(errors) == 1
    assert errors[0].startswith(f"providers.groq.base_url: {message}")


def test_an_invalid_azure_endpoint_is_an_error() -> None:
    errors = errors_of(auth_off("providers: {azure: {endpoint: 'res.openai.azure.com'}}\n"))
    assert errors[0].startswith("providers.azure.endpoint: expected an http(s) URL")


def test_an_api_version_with_query_characters_is_an_error() -> None:
    errors = errors_of(auth_off("providers: {azure: {api_version: '2024-10-21&x=1'}}\n"))
    assert errors[0].startswith("providers.azure.api_version: expected an api-version like 2024-10-21")


def test_default_max_tokens_must_be_positive() -> None:
    errors = errors_of(auth_off("providers: {anthropic: {default_max_tokens: 0}}\n"))
    assert errors == ["providers.anthropic.default_max_tokens: must be at least 1, got 0"]
    config = parse(auth_off("providers: {anthropic: {default_max_tokens: 8192}}\n"))
    assert config.providers["anthropic"].default_max_tokens == 8192


def test_models_must_be_a_list() -> None:
    errors = errors_of(auth_off("providers: {openai: {models: gpt-4o}}\n"))
    assert errors == ["providers.openai.models: expected a list of model ids"]


def test_models_entries_are_strings() -> None:
    errors = errors_of(auth_off("providers: {openai: {models: [gpt-4o, [x]]}}\n"))
    assert errors == ["providers.openai.models[1]: expected a string, got list"]


def test_bedrock_credentials_are_secrets() -> None:
    config = parse(auth_off("""
        providers:
          bedrock:
            aws_access_key_id: AKIA-EXAMPLE
            aws_secret_access_key: very-secret
            aws_session_token: session
            profile: prod
    """))
    bedrock = config.providers["bedrock"]
    assert bedrock.aws_access_key_id == Secret("AKIA-EXAMPLE")
    assert bedrock.aws_secret_access_key == Secret("very-secret")
    assert bedrock.aws_session_token == Secret("session")
    assert bedrock.profile == "prod"
    assert "very-secret" not in repr(bedrock)


def test_an_empty_provider_api_key_is_an_error() -> None:
    errors = errors_of(auth_off("providers: {openai: {api_key: '${OPENAI_KEY:-}'}}\n"))
    assert len(errors) == 1
    assert errors[0].startswith("providers.openai.api_key: is empty")


# --- auth modes ------------------------------------------------------------------------------------


def test_auth_defaults_to_forward_and_to_none_for_ollama() -> None:
    config = parse(auth_off("providers: {ollama-gpu: {type: ollama, base_url: 'http://gpu:11434'}}\n"))
    for name in ("openai", "anthropic", "azure", "vertex", "groq", "mistral", "bedrock", "lmstudio"):
        assert config.providers[name].auth == "forward", name
    assert config.providers["ollama"].auth == "none"
    assert config.providers["ollama-gpu"].auth == "none"


@pytest.mark.parametrize("name", ["vertex", "bedrock"])
def test_ambient_auth_is_allowed_for_vertex_and_bedrock(name: str) -> None:
    config = parse(auth_off(f"providers: {{{name}: {{auth: ambient}}}}\n"))
    assert config.providers[name].auth == "ambient"


@pytest.mark.parametrize("name", ["openai", "anthropic", "azure", "groq", "mistral", "ollama", "lmstudio"])
def test_ambient_auth_is_an_error_for_other_types(name: str) -> None:
    errors = errors_of(auth_off(f"providers: {{{name}: {{auth: ambient}}}}\n"))
    assert errors == [f"providers.{name}.auth: ambient credentials exist only for vertex and bedrock providers"]


def test_forward_and_none_may_be_set_explicitly() -> None:
    config = parse(auth_off("providers: {ollama: {auth: forward}, openai: {auth: none}}\n"))
    assert config.providers["ollama"].auth == "forward"
    assert config.providers["openai"].auth == "none"


def test_an_unknown_auth_mode_is_an_error() -> None:
    errors = errors_of(auth_off("providers: {openai: {auth: bearer}}\n"))
    assert errors == ["providers.openai.auth: expected forward, ambient or none, got 'bearer'"]


# --- Secret, is_loopback, key scopes, default_config_path --------------------------------------


def test_secret_repr_and_str_never_show_the_value() -> None:
    secret = Secret("sk-live-0123456789")
    assert "sk-live" not in repr(secret)
    assert "sk-live" not in str(secret)
    assert "sk-live" not in f"{secret}"
    assert "sk-live" not in repr([secret])
    assert secret.reveal() == "sk-live-0123456789"


def test_a_provider_repr_never_shows_its_api_key() -> None:
    config = parse(auth_off("providers: {openai: {api_key: sk-hidden-value}}\n"))
    assert "sk-hidden-value" not in repr(config)
    assert "sk-hidden-value" not in repr(config.providers["openai"])


def test_secret_equality_hash_and_digest() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"
    assert len({Secret("a"), Secret("a"), Secret("b")}) == 2
    assert Secret("test").digest() == TEST_DIGEST


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.10.20.30", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("10.0.0.1", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


def test_a_route_carrying_the_callers_key_to_two_key_scopes_is_a_load_error() -> None:
    """DESIGN §14: within one request the caller's key reaches one key scope; a route that would
    carry it to two (a weighted openai/anthropic pair, or a second `type: openai` host) is refused
    at load, with its YAML path and the remedies."""
    errors = errors_of(auth_off("""
        providers:
          openai-eu: {type: openai, base_url: "https://eu.example.com/v1"}
        routes:
          mixed:
            endpoints: [{provider: openai}, {provider: anthropic, model: claude-3-5-sonnet-latest}]
          two-hosts:
            endpoints: [{provider: openai}, {provider: openai-eu, model: gpt-4o-mini}]
    """))
    assert len(errors) == 2
    mixed = next(e for e in errors if e.startswith("routes.mixed.endpoints[1]: "))
    assert "'anthropic'" in mixed and "'openai'" in mixed
    for remedy in ("api_key", "auth: none", "key_scope"):
        assert remedy in mixed
    assert any(e.startswith("routes.two-hosts.endpoints[1]: ") for e in errors)


def test_routes_within_one_key_scope_or_with_server_side_keys_load() -> None:
    config = parse(auth_off("""
        providers:
          openai-eu: {type: openai, base_url: "https://eu.example.com/v1", key_scope: openai}
          local: {type: openai, base_url: "http://127.0.0.1:9/v1", auth: none}
        routes:
          same-provider:
            endpoints: [{provider: openai}, {provider: openai, model: gpt-4o-mini}]
          shared-scope:
            endpoints: [{provider: openai}, {provider: openai-eu}]
          keyed:
            endpoints: [{provider: openai}, {provider: anthropic, api_key: server-side}]
          keyless:
            endpoints: [{provider: openai}, {provider: local}, {provider: ollama}]
    """))
    assert set(config.routes) == {"same-provider", "shared-scope", "keyed", "keyless"}
    assert config.providers["openai-eu"].scope == "openai"
    assert config.providers["anthropic"].scope == "anthropic"  # default: the provider's name


def test_default_config_path() -> None:
    assert default_config_path({"TENSORWALL_CONFIG": "/etc/tw.yaml"}) == "/etc/tw.yaml"
    assert default_config_path({}) == "config/tensorwall.yaml"
    assert default_config_path({"TENSORWALL_CONFIG": ""}) == "config/tensorwall.yaml"


def test_server_bounds_are_read_and_checked() -> None:
    config = parse(auth_off(
        "server: {header_timeout_seconds: 2.5, max_connections: 10, max_header_bytes: 4096,"
        " allowed_origins: ['https://app.example'], allowed_hosts: [gw.internal], metrics_port: 9100}\n"))
    server = config.server
    assert (server.header_timeout_seconds, server.max_connections, server.max_header_bytes) == (2.5, 10, 4096)
    assert (server.allowed_origins, server.allowed_hosts, server.metrics_port) == (
        ("https://app.example",), ("gw.internal",), 9100)
    with pytest.raises(ConfigError) as info:
        parse(auth_off("server: {header_timeout_seconds: 0, max_header_bytes: 10, allowed_origins: x}\n"))
    text = str(info.value)
    assert "server.header_timeout_seconds: must be greater than 0" in text
    assert "server.max_header_bytes: must be between 1024" in text
    assert "server.allowed_origins: expected a list of strings" in text


def test_key_scope_defaults_to_the_provider_name_and_betas_to_the_table() -> None:
    config = parse(auth_off(
        "providers:\n  openai-eu: {type: openai, key_scope: openai}\n  anthropic: {betas: ['*']}\n"))
    assert config.providers["openai"].key_scope == "openai"
    assert config.providers["openai-eu"].key_scope == "openai"
    assert config.providers["groq"].key_scope == "groq"
    assert config.providers["anthropic"].betas == ("*",)
    assert config.providers["groq"].betas is None


@pytest.mark.parametrize("broken", [
    "gateway_keys: []\nproviders:\n  openai: {api_key: sk-live-FAKE0123456789abcdef: oops}\n",
    "gateway_keys: []\nproviders:\n  openai:\n    api_key: sk-live-FAKE0123456789abcdef: oops\n",
    "gateway_keys: []\nproviders:\n  openai:\n    api_key: !sk-live-FAKE0123456789abcdef x\n",
    "gateway_keys: []\nproviders:\n  openai:\n    api_key: *sk-live-FAKE0123456789abcdef\n",
    "gateway_keys: []\nproviders:\n  openai:\n    api_key: \"sk-live-FAKE0123456789abcdef\x07\"\n",
    "gateway_keys: [sk-live-FAKE0123456789abcdef\n",
])
def test_invalid_yaml_names_the_position_and_never_the_line_that_may_hold_a_key(broken: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(broken, env={}, source="tw.yaml")
    message = str(info.value)
    assert "FAKE0123456789abcdef" not in message
    assert "sk-live" not in message
    assert re.search(r"tw\.yaml: not valid YAML: line \d+, column \d+: \S", info.value.errors[0]), message


# --- dialects a provider passes through natively (DESIGN §12, §14) ----------------------------------


def test_openai_and_azure_speak_responses_by_default_the_claude_carriers_messages_and_the_others_only_chat() -> None:
    providers = parse(auth_off()).providers
    assert providers["openai"].speaks == {"chat", "responses"} == providers["azure"].speaks
    claude = ("anthropic", "bedrock", "vertex")
    assert all(providers[name].speaks == {"chat", "messages"} for name in claude)
    assert all(providers[name].speaks == {"chat"} for name in PROVIDER_TYPES if name not in ("openai", "azure", *claude))


def test_a_providers_dialects_replace_its_types_and_chat_is_implied() -> None:
    providers = parse(auth_off("""\
        providers:
          groq: {dialects: [responses, completions]}
          openai: {dialects: [chat]}
          lmstudio: {dialects: [completions, completions]}
        """)).providers
    assert providers["groq"].speaks == {"chat", "responses", "completions"}
    assert providers["groq"].dialects == ("chat", "responses", "completions")
    assert providers["openai"].speaks == {"chat"}
    assert providers["lmstudio"].dialects == ("chat", "completions")


def test_an_unknown_dialect_or_one_the_type_cannot_pass_through_is_an_error_at_its_path() -> None:
    errors = errors_of(auth_off("""\
        providers:
          groq: {dialects: [chat, responsez]}
          vertex: {dialects: [responses]}
          azure: {dialects: chat}
        """))
    assert any(e.startswith("providers.groq.dialects[1]: unknown dialect 'responsez'") for e in errors)
    assert any(e.startswith("providers.vertex.dialects[0]: provider type 'vertex' cannot pass 'responses' "
                            "through natively") for e in errors)
    assert any(e.startswith("providers.azure.dialects: expected a list of strings") for e in errors)


# --- state ----------------------------------------------------------------------------------------


def test_state_defaults_sqlite_in_the_working_directory_or_systemds_state_directory(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    state = parse(auth_off()).state
    assert state == StateConfig(path=str(tmp_path / "tensorwall-state"))
    assert (state.backend, state.key_prefix, state.timeout_ms, state.fail_mode) == ("sqlite", "tw:", 250.0, "open")
    assert (state.responses, state.responses_ttl_seconds, state.secret, state.url) == (True, 604800, None, None)
    # systemd's StateDirectory= (a unit may list several, colon-separated: the first is ours).
    systemd = parse(auth_off(), env={"STATE_DIRECTORY": "/var/lib/tensorwall-proxy:/var/lib/other"}).state
    assert systemd.path == "/var/lib/tensorwall-proxy"
    given = parse(auth_off("state: {path: relative/dir}"), env={"STATE_DIRECTORY": "/var/lib/x"}).state
    assert given.path == str(tmp_path / "relative" / "dir")


def test_state_redis_takes_its_url_from_the_environment_and_a_shorter_default_timeout() -> None:
    state = parse(auth_off("""\
        state:
          backend: redis
          url: ${REDIS_URL}
          key_prefix: "gw1:"
          fail_mode: closed
          responses: off
          responses_ttl_seconds: 3600
        """), env={"REDIS_URL": "rediss://:pw-in-url@redis.internal:6380/2"}).state
    assert state.backend == "redis" and state.timeout_ms == 50.0 and state.timeout_seconds == 0.05
    assert state.url == Secret("rediss://:pw-in-url@redis.internal:6380/2")
    assert "pw-in-url" not in repr(state)
    assert (state.key_prefix, state.fail_mode, state.responses, state.responses_ttl_seconds) == (
        "gw1:", "closed", False, 3600)
    assert parse(auth_off("state: {backend: redis, url: 'redis://r', timeout_ms: 20}")).state.timeout_ms == 20.0


@pytest.mark.parametrize("value, expected", [("on", True), ("off", False), ("'on'", True), ("'off'", False),
                                             ("true", True), ("false", False)])
def test_state_responses_reads_on_and_off_quoted_or_not(value: str, expected: bool) -> None:
    assert parse(auth_off(f"state: {{responses: {value}}}")).state.responses is expected


def test_state_secret_comes_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("signing-secret-from-a-file\n")
    state = parse(auth_off("state: {secret: '${file:secret}'}"), base_dir=tmp_path).state
    assert state.secret == Secret("signing-secret-from-a-file")


def test_state_errors_name_their_yaml_paths_and_never_the_url() -> None:
    errors = errors_of(auth_off("""\
        state:
          backend: memcached
          url: "redis:/no-host-here:pw"
          timeout_ms: 600000
          key_prefix: "has space"
          fail_mode: maybe
          responses: sometimes
          responses_ttl_seconds: 0
          secret: ""
          extra: 1
        """))
    assert errors == [
        "state.extra: unknown key (expected one of: backend, fail_mode, key_prefix, path, responses, "
        "responses_ttl_seconds, secret, timeout_ms, url)",
        "state.backend: expected sqlite or redis, got 'memcached'",
        "state.url: expected a redis:// or rediss:// URL with a host (the value is not shown)",
        "state.key_prefix: expected at most 64 printable characters without spaces",
        "state.timeout_ms: must be at most 60000, got 600000",
        "state.fail_mode: expected open or closed, got 'maybe'",
        "state.responses: expected on or off, got 'sometimes'",
        "state.responses_ttl_seconds: must be at least 1, got 0",
        "state.secret: is empty (an unset ${VAR:-} default?); remove the key to send no credential",
    ]
    assert errors_of(auth_off("state: {backend: redis}")) == [
        "state.url: required with `backend: redis` (redis://host:6379/0, or rediss:// for TLS)"]
    assert errors_of(auth_off("state: {backend: redis, url: 'http://h:6379'}")) == [
        "state.url: expected a redis:// or rediss:// URL with a host (the value is not shown)"]
    # An unset variable is reported once, as itself.
    assert errors_of(auth_off("state: {backend: redis, url: '${REDIS_URL}'}")) == [
        "state.url: environment variable REDIS_URL is not set (use ${REDIS_URL:-} for an empty default)"]
    assert errors_of(auth_off("state: [sqlite]")) == ["state: expected a mapping, got list"]


# --- principals (DESIGN §13) ---------------------------------------------------------------------


def test_a_principal_has_a_name_a_key_models_an_expiry_and_limits() -> None:
    config = parse("""
        gateway_keys:
          - test
          - name: team-a
            key: ${TEAM_A_KEY}
            models: ["gpt-4*", claude-*, fast]
            expires: 2027-06-30
            limits: {requests_per_minute: 600, tokens_per_minute: 200000, tokens_per_day: 5000000, concurrent: 20}
          - {name: ops, key: "sha256:%s", expires: "2027-06-30T18:00:00+02:00"}
        routes:
          fast: {max_output_tokens: 512, endpoints: [{provider: openai, model: gpt-4o-mini}]}
        limits: {default_output_reservation: 1000}
    """ % ("b" * 64), {"TEAM_A_KEY": "team-a-secret"})
    plain, team, ops = config.gateway_keys
    assert plain.id == TEST_DIGEST and plain.limits is None and plain.models is None
    assert team.id == "team-a" and team.digest == key_digest("team-a-secret")
    assert team.models == ("gpt-4*", "claude-*", "fast")
    # A date: the key serves through that UTC day.
    assert team.expires_at == datetime.datetime(2027, 7, 1, tzinfo=datetime.UTC).timestamp()
    assert team.limits == Limits(600, 200000, 5000000, 20)
    assert ops.digest == "sha256:" + "b" * 64 and ops.limits is None
    assert ops.expires_at == datetime.datetime(2027, 6, 30, 16, tzinfo=datetime.UTC).timestamp()
    assert config.routes["fast"].max_output_tokens == 512
    assert config.limits.default_output_reservation == 1000


def test_the_output_reservation_defaults_to_4096() -> None:
    assert parse("gateway_keys: []").limits.default_output_reservation == 4096


@pytest.mark.parametrize(("entry", "error"), [
    ("{name: a}", "gateway_keys[1].key: required"),
    ("{name: 'bad name', key: k2}", "gateway_keys[1].name: a principal's name is 1 to 64"),
    ("{name: 'sha256:x', key: k2}", "gateway_keys[1].name: a principal's name is 1 to 64"),
    ("{key: k2, expires: soon}", "gateway_keys[1].expires: expected a date"),
    ("{key: k2, limits: {requests_per_minute: 0}}", "gateway_keys[1].limits.requests_per_minute: must be between 1"),
    ("{key: k2, limits: {rpm: 5}}", "gateway_keys[1].limits.rpm: unknown key"),
    ("{key: k2, models: gpt-4}", "gateway_keys[1].models: expected a list"),
    ("{key: k2, colour: red}", "gateway_keys[1].colour: unknown key"),
    ("{key: test}", "gateway_keys[1]: the same key as gateway_keys[0]"),
    ("{name: x, key: k2}\n  - {name: x, key: k3}", "gateway_keys[2]: the same name as gateway_keys[1]"),
])
def test_principal_errors_name_their_yaml_path(entry: str, error: str) -> None:
    errors = errors_of(f"gateway_keys:\n  - test\n  - {entry}\n")
    assert len(errors) == 1, errors
    assert errors[0].startswith(error), errors


def test_route_caps_and_limit_settings_are_checked() -> None:
    errors = errors_of("""
        routes:
          fast: {max_output_tokens: 0, endpoints: [{provider: openai}]}
        limits: {default_output_reservation: -1, other: 1}
    """)
    assert any(e.startswith("routes.fast.max_output_tokens: must be between 1") for e in errors), errors
    assert any(e.startswith("limits.default_output_reservation: must be between 0") for e in errors), errors
    assert any(e.startswith("limits.other: unknown key") for e in errors), errors
