"""The command line as an operator runs it: the installed console script in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tensorwall_proxy.config import key_digest
from tests.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "tensorwall_proxy"]
# Defaults come from the environment; the tests must not depend on the machine's.
CLEAN_ENV = {k: v for k, v in os.environ.items()
             if not k.endswith(("_API_URL", "_ENDPOINT")) and k not in ("TENSORWALL_CONFIG", "AWS_REGION")}


def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, input=stdin, timeout=30, cwd=ROOT,
                          env=env or CLEAN_ENV)


def test_check_default_and_demo_configs() -> None:
    for path in ("config/tensorwall.yaml", "config/demo.yaml"):
        result = run("check", "--config", path)
        assert result.returncode == 0, result.stderr
        assert "ok" in result.stdout


def test_check_reports_every_error_with_its_yaml_path(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("""
gateway_keys: ["${UNSET_GATEWAY_KEY_FOR_TEST}"]
providers:
  openai: {base_url: "not a url"}
routes:
  gpt-4:
    strategy: fastest
    endpoints:
      - {provider: openai, weight: 70}
      - {provider: azur, weight: 30}
timeouts: {connect: -1}
""")
    result = run("check", "--config", str(config))
    assert result.returncode == 1
    for expected in (
        "gateway_keys[0]: environment variable UNSET_GATEWAY_KEY_FOR_TEST is not set",
        "providers.openai.base_url: expected an http(s) URL",
        "routes.gpt-4.strategy: expected weighted or priority",
        "routes.gpt-4.endpoints[1].provider: unknown provider 'azur'",
        "timeouts.connect: must be greater than 0",
    ):
        assert expected in result.stderr, result.stderr


def test_check_refuses_a_route_carrying_the_callers_key_to_two_key_scopes(tmp_path: Path) -> None:
    """DESIGN §14: a route that would carry the caller's key to two key scopes is a load error (it
    used to be a warning while the key still went to the first type picked, which could be either)."""
    config = tmp_path / "mixed.yaml"
    config.write_text("""
gateway_keys: []
routes:
  mixed:
    endpoints:
      - {provider: openai, model: gpt-4o}
      - {provider: anthropic, model: claude-3-5-sonnet-latest}
""")
    result = run("check", "--config", str(config))
    assert result.returncode == 1
    assert "routes.mixed.endpoints[1]: would carry the caller's key to provider 'anthropic'" in result.stderr
    for remedy in ("api_key", "auth: none", "key_scope"):
        assert remedy in result.stderr


def _ambient_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The clean environment with a home of its own (no ~/.aws, no gcloud ADC) plus ``extra``."""
    env = {k: v for k, v in CLEAN_ENV.items()
           if not k.startswith(("AWS_", "GOOGLE_", "CLOUDSDK_"))}
    return {**env, "HOME": str(tmp_path), **extra}


def test_serve_logs_one_warning_when_ambient_credentials_exist_but_auth_is_forward(tmp_path: Path) -> None:
    stderr = serve_until_sigterm(
        _ambient_env(tmp_path, AWS_ACCESS_KEY_ID="AKIAHOSTROLE00000000", AWS_SECRET_ACCESS_KEY="host-secret"))
    warnings = [line for line in stderr.splitlines() if "auth: ambient" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0], stderr
    assert "providers.bedrock.auth: ambient" in warnings[0]
    assert "host-secret" not in stderr


def test_check_warns_when_ambient_credentials_exist_but_auth_is_forward(tmp_path: Path) -> None:
    """DESIGN §14: forward never falls back to the host's identity; `check` says which setting would use it."""
    quiet = run("check", "--config", "config/tensorwall.yaml", env=_ambient_env(tmp_path))
    assert quiet.returncode == 0, quiet.stderr
    assert "auth: ambient" not in quiet.stdout + quiet.stderr
    aws = _ambient_env(tmp_path, AWS_ACCESS_KEY_ID="AKIAHOSTROLE00000000", AWS_SECRET_ACCESS_KEY="host-secret")
    result = run("check", "--config", "config/tensorwall.yaml", env=aws)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and "providers.bedrock.auth: ambient" in lines[0], result.stdout
    assert "host-secret" not in result.stdout and "AKIAHOSTROLE" not in result.stdout
    adc = tmp_path / ".config" / "gcloud" / "application_default_credentials.json"
    adc.parent.mkdir(parents=True)
    adc.write_text("{}")
    result = run("check", "--config", "config/tensorwall.yaml", env=_ambient_env(tmp_path))
    assert [line for line in result.stdout.splitlines() if line.startswith("warning:")] == [
        line for line in result.stdout.splitlines() if "providers.vertex.auth: ambient" in line]
    assert "providers.vertex.auth: ambient" in result.stdout


@pytest.mark.parametrize(("model", "expected"), [
    ("gpt-4o", "POST https://api.openai.com/v1/chat/completions"),
    ("azure/gpt-4", "endpoint is empty (set AZURE_OPENAI_ENDPOINT"),
    ("ollama/mistral", "POST http://localhost:11434/v1/chat/completions"),
    ("groq/llama3-70b", "POST https://api.groq.com/openai/v1/chat/completions"),
    ("mistral-large-latest", "POST https://api.mistral.ai/v1/chat/completions"),
])
def test_route_prints_the_upstream_url(model: str, expected: str) -> None:
    result = run("route", model, "--config", "config/tensorwall.yaml")
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


def test_route_with_azure_configured_shows_the_deployment_url() -> None:
    env = {**CLEAN_ENV, "AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com"}
    result = run("route", "azure/gpt-4", "--config", "config/tensorwall.yaml", env=env)
    assert "POST https://res.openai.azure.com/openai/deployments/gpt-4/chat/completions?api-version=2024-10-21" \
        in result.stdout


def test_route_shows_where_native_dialects_go() -> None:
    env = {**CLEAN_ENV, "AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com"}
    result = run("route", "azure/gpt-4", "--config", "config/tensorwall.yaml", env=env)
    assert "responses: POST https://res.openai.azure.com/openai/v1/responses (passed through natively)" \
        in result.stdout
    result = run("route", "gpt-4o", "--config", "config/tensorwall.yaml")
    assert "responses: POST https://api.openai.com/v1/responses (passed through natively)" in result.stdout
    result = run("route", "groq/llama3-70b", "--config", "config/tensorwall.yaml")
    assert "passed through natively" not in result.stdout


def test_route_shows_the_fallback_order() -> None:
    result = run("route", "gpt-4", "--config", "config/demo.yaml")
    lines = result.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if "1. provider=openai" in line)
    second = next(i for i, line in enumerate(lines) if "2. provider=azure-eu" in line)
    assert first < second
    assert "weight=70" in lines[first] and "weight=30" in lines[second]


def test_route_unknown_model_exits_1() -> None:
    result = run("route", "no-such-model", "--config", "config/tensorwall.yaml")
    assert result.returncode == 1
    assert "does not exist" in result.stderr


def test_hash_key_digests_a_given_key_and_stdin() -> None:
    assert run("hash-key", "secret").stdout.strip() == key_digest("secret")
    assert run("hash-key", "-", stdin="secret\n").stdout.strip() == key_digest("secret")


def test_hash_key_makes_a_new_key_whose_digest_it_prints() -> None:
    lines = dict(line.split(":", 1) for line in run("hash-key").stdout.splitlines()[:2])
    key, digest = lines["key"].strip(), lines["digest"].strip()
    assert len(key) > 30 and digest == key_digest(key)


def test_serve_refuses_a_public_address_without_gateway_keys() -> None:
    result = run("serve", "--config", "config/tensorwall.yaml", "--host", "0.0.0.0", "--port", str(free_port()))
    assert result.returncode == 1
    assert "--no-gateway-key" in result.stderr


def serve_until_sigterm(env: dict[str, str]) -> str:
    """`serve` on the default config until it answers /healthz, then SIGTERM; it must exit 0. Its stderr."""
    port = free_port()
    process = subprocess.Popen([*CLI, "serve", "--config", "config/tensorwall.yaml", "--port", str(port)],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    assert b"200 OK" in sock.recv(1024)
                    break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "the proxy did not start"
                time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate()
    return stderr


def test_serve_answers_and_stops_cleanly_on_sigterm() -> None:
    stderr = serve_until_sigterm(CLEAN_ENV)
    assert "gateway auth is off" in stderr


def test_serving_the_default_config_imports_neither_google_auth_nor_botocore() -> None:
    """They cost about 30 MiB between them: a Vertex or Bedrock provider imports its library when
    it first needs it, not at start-up (the idle RSS stays under 50 MiB with the default config)."""
    script = (
        "import sys, asyncio\n"
        "from tensorwall_proxy.app import build_app\n"
        "from tensorwall_proxy.cli import build_parser\n"
        "from tensorwall_proxy.config import load_config\n"
        "from tensorwall_proxy import lifecycle\n"
        "from aiohttp import web\n"
        "async def main():\n"
        "    runner = web.AppRunner(build_app(load_config('config/tensorwall.yaml')))\n"
        "    await runner.setup()\n"
        "    await runner.cleanup()\n"
        "asyncio.run(main())\n"
        # The start-up warning about ambient credentials looks for them without the SDKs.
        "from tensorwall_proxy.auth import ambient_warnings\n"
        "assert ambient_warnings(load_config('config/tensorwall.yaml').providers.values(),\n"
        "                        {'AWS_ACCESS_KEY_ID': 'x', 'GOOGLE_APPLICATION_CREDENTIALS': '/x'})\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('botocore', 'aiobotocore', 'google', 'requests')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_check_shows_where_the_yaml_is_broken_but_not_the_line(tmp_path: Path) -> None:
    """The broken line may be the one with a key pasted in: `check` prints its position only."""
    config = tmp_path / "broken.yaml"
    config.write_text("gateway_keys: []\nproviders:\n  openai:\n    api_key: sk-live-FAKE0123456789abcdef: x\n")
    result = run("check", "--config", str(config))
    assert result.returncode == 1
    assert "line 4, column" in result.stderr and "mapping values are not allowed here" in result.stderr
    assert "FAKE0123456789abcdef" not in result.stdout + result.stderr


def test_keys_lists_principals_with_their_usage_and_never_a_key(tmp_path: Path) -> None:
    import asyncio

    from tensorwall_proxy.config import load_config
    from tensorwall_proxy.limits import Ask
    from tensorwall_proxy.state.holder import open_limits

    config = tmp_path / "tensorwall.yaml"
    config.write_text(f"""gateway_keys:
  - plain-secret-key
  - name: team-a
    key: team-a-secret-key
    models: ["gpt-4*", fast]
    expires: 2027-06-30
    limits: {{requests_per_minute: 6, tokens_per_day: 1000, concurrent: 2}}
state: {{path: {tmp_path / 'state'}}}
""")
    loaded = load_config(config)
    team = loaded.gateway_keys[1]
    assert team.limits is not None

    async def use() -> None:
        store = await open_limits(loaded.state)
        try:
            await store.check("team-a", team.limits, Ask(tokens=120, lease="x"))  # type: ignore[arg-type]
        finally:
            await store.close()

    asyncio.run(use())
    result = run("keys", "--config", str(config))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert key_digest("plain-secret-key") in out and "team-a (key sha256:" in out
    assert "models:  gpt-4*, fast" in out and "expires: 2027-07-01T00:00:00Z" in out
    assert "limits:  requests_per_minute=6, tokens_per_day=1000, concurrent=2" in out
    assert "usage:   requests left now 5; tokens used today 120; in flight 1" in out
    assert "secret-key" not in out  # the keys themselves never appear
