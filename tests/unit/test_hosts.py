"""The Host/Origin rule of gateway auth off, as a pure function of the configuration and the bind."""

from __future__ import annotations

import pytest

from tensorwall_proxy.config import Config, parse_config
from tensorwall_proxy.hosts import HostGuard, host_name, host_rule, origin_allowed


def config(server: str = "", keys: str = "[]") -> Config:
    return parse_config(f"gateway_keys: {keys}\nserver: {{{server}}}\n")


@pytest.mark.parametrize(("value", "name"), [
    ("LocalHost:8000", "localhost"), ("[::1]:80", "::1"), ("[::1]", "::1"), ("127.0.0.1", "127.0.0.1"),
    ("example.com.", "example.com"), ("::1", "::1"), (" a.b:1 ", "a.b"),
])
def test_host_name_drops_the_port_brackets_case_and_trailing_dot(value: str, name: str) -> None:
    assert host_name(value) == name


def test_with_gateway_keys_there_is_no_rule() -> None:
    assert host_rule(config(keys="[some-key]"), "127.0.0.1") is None


def test_a_loopback_bind_answers_loopback_names_and_the_list() -> None:
    rule = host_rule(config("allowed_hosts: [proxy.lan]"), "127.0.0.1")
    assert rule is not None
    for host in ("localhost:1", "127.0.0.1", "[::1]:8000", "PROXY.LAN:8000"):
        assert rule.refusal({"Host": host}) is None, host
    refused = rule.refusal({"Host": "attacker.example"})
    assert refused is not None and refused.status == 403 and refused.code == "forbidden_host"
    assert rule.refusal({}) is None  # HTTP/1.0 without Host: no browser sends that


def test_a_non_loopback_bind_without_allowed_hosts_answers_any_host_but_still_checks_origin() -> None:
    rule = host_rule(config(), "0.0.0.0")
    assert rule is not None
    assert rule.refusal({"Host": "whatever.example"}) is None
    refused = rule.refusal({"Host": "whatever.example", "Origin": "https://attacker.example"})
    assert refused is not None and refused.code == "forbidden_origin"


def test_a_non_loopback_bind_with_allowed_hosts_answers_them_and_its_own_address() -> None:
    rule = host_rule(config("allowed_hosts: [gw.example]"), "192.0.2.7")
    assert rule is not None
    assert rule.refusal({"Host": "192.0.2.7:8000"}) is None
    assert rule.refusal({"Host": "gw.example"}) is None
    assert rule.refusal({"Host": "localhost"}) is None
    assert rule.refusal({"Host": "other.example"}) is not None
    wildcard = host_rule(config("allowed_hosts: [gw.example]"), "0.0.0.0")
    assert wildcard is not None and wildcard.refusal({"Host": "0.0.0.0"}) is not None


@pytest.mark.parametrize(("origin", "allowed"), [
    ("http://localhost:5173", True), ("https://127.0.0.1", True), ("http://[::1]:3000", True),
    ("https://app.example", True), ("https://APP.example/", True),
    ("null", False), ("https://attacker.example", False), ("http://localhost.attacker.example", False),
    ("http://user@localhost", False), ("file://", False), ("chrome-extension://abc", False),
])
def test_origins(origin: str, allowed: bool) -> None:
    assert origin_allowed(origin, frozenset({"https://app.example"})) is allowed


def test_the_guard_rebuilds_its_rule_when_the_configuration_changes() -> None:
    guard = HostGuard("127.0.0.1")
    first = config()
    rule = guard.rule(first)
    assert rule is not None and guard.rule(first) is rule
    assert guard.rule(config(keys="[k]")) is None
