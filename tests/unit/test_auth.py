"""How every door reads a request's credentials (DESIGN §14): ``GatewayKeys.admit`` over the headers
as aiohttp holds them, with gateway keys on and off."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from tensorwall_proxy.auth import GatewayKeys, check_model, may_use
from tensorwall_proxy.config import Principal, key_digest
from tensorwall_proxy.errors import GatewayError

ON = GatewayKeys([key_digest("gw-one"), key_digest("gw-two")])
OFF = GatewayKeys([])


def _headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def _caller(keys: GatewayKeys, *pairs: tuple[str, str]) -> str | None:
    _, secret = keys.admit(_headers(*pairs))
    return secret.reveal() if secret is not None else None


def _refused(keys: GatewayKeys, *pairs: tuple[str, str]) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        keys.admit(_headers(*pairs))
    return caught.value


@pytest.mark.parametrize(("pairs", "caller"), [
    ((("X-API-Key", "gw-one"),), None),
    ((("x-api-key", "gw-one"), ("Authorization", "Bearer sk-provider")), "sk-provider"),
    ((("Authorization", "Bearer gw-two"),), None),  # a Bearer that is a gateway key is consumed
    ((("X-API-Key", "gw-one"), ("Authorization", "Bearer gw-one")), None),  # the same key in both
    ((("X-API-Key", "gw-one"), ("X-API-Key", "gw-one")), None),  # sent twice, the same value
    ((("X-API-Key", "gw-one"), ("Authorization", "Basic abc")), None),  # not a Bearer: no provider key
])
def test_keys_on(pairs: tuple[tuple[str, str], ...], caller: str | None) -> None:
    assert _caller(ON, *pairs) == caller


@pytest.mark.parametrize(("pairs", "key"), [
    ((("X-API-Key", "gw-one"),), "gw-one"),
    ((("X-API-Key", "gw-one"), ("Authorization", "Bearer sk-provider")), "gw-one"),
    ((("Authorization", "Bearer gw-two"),), "gw-two"),
    ((("X-API-Key", "gw-two"), ("Authorization", "Bearer gw-two")), "gw-two"),
])
def test_the_principal_is_the_gateway_keys_digest(pairs: tuple[tuple[str, str], ...], key: str) -> None:
    principal, _ = ON.admit(_headers(*pairs))
    assert principal is not None and principal.id == key_digest(key)
    assert OFF.admit(_headers(*pairs))[0] is None  # keys off: nobody in particular


@pytest.mark.parametrize(("pairs", "header"), [
    ((), "X-API-Key"),
    ((("Authorization", "Bearer sk-provider"),), "X-API-Key"),
    ((("X-API-Key", "wrong"),), "X-API-Key"),
    ((("X-API-Key", ""), ("Authorization", "Bearer sk-provider")), "X-API-Key"),
    ((("X-API-Key", key_digest("gw-one")),), "X-API-Key"),  # a digest is not the key
    ((("X-API-Key", "gw-one"), ("Authorization", "Bearer gw-two")), "Authorization"),  # two different keys
    ((("X-API-Key", "gw-one"), ("X-API-Key", "gw-two")), "X-API-Key"),
    ((("X-API-Key", "gw-one"), ("Authorization", "Bearer a"), ("Authorization", "Bearer b")), "Authorization"),
])
def test_keys_on_refusals_name_the_header(pairs: tuple[tuple[str, str], ...], header: str) -> None:
    error = _refused(ON, *pairs)
    assert error.status == 401 and error.code == "invalid_gateway_key" and error.param == header
    assert header in error.message and "sk-provider" not in error.message


@pytest.mark.parametrize(("pairs", "caller"), [
    ((), None),
    ((("x-api-key", "sk-ant-key"),), "sk-ant-key"),
    ((("Authorization", "Bearer sk-bearer"), ("x-api-key", "sk-ant-key")), "sk-bearer"),
    ((("Authorization", "Bearer sk-bearer"),), "sk-bearer"),
])
def test_keys_off_the_bearer_else_x_api_key_is_the_provider_key(pairs: tuple[tuple[str, str], ...],
                                                                 caller: str | None) -> None:
    assert _caller(OFF, *pairs) == caller


def test_keys_off_still_refuses_a_header_sent_twice_differently() -> None:
    assert _refused(OFF, ("x-api-key", "a-key"), ("x-api-key", "b-key")).status == 401


@pytest.mark.parametrize("keys", [ON, OFF])
def test_a_key_that_is_not_visible_ascii_is_a_400(keys: GatewayKeys) -> None:
    error = _refused(keys, ("X-API-Key", "gw-one"), ("Authorization", "Bearer sk-\udcff"))
    assert error.status == 400 and error.code == "invalid_authorization_header"
    if keys is OFF:
        assert _refused(OFF, ("x-api-key", "k\u00e9y")).code == "invalid_authorization_header"


def test_a_named_principal_is_its_name_and_an_expired_key_is_refused_like_a_wrong_one() -> None:
    now = [1_000.0]
    keys = GatewayKeys([Principal(key_digest("gw-named"), name="team-a", expires_at=2_000.0),
                        key_digest("gw-plain")], clock=lambda: now[0])
    principal, _ = keys.admit(_headers(("Authorization", "Bearer gw-named")))
    assert principal is not None and principal.id == "team-a"
    now[0] = 2_000.0
    for pairs in ((("X-API-Key", "gw-named"),), (("Authorization", "Bearer gw-named"),)):
        error = _refused(keys, *pairs)
        assert error.status == 401 and error.code == "invalid_gateway_key"
    # An expired Bearer is not a gateway key any more: with a valid X-API-Key it is the caller's key.
    assert _caller(keys, ("X-API-Key", "gw-plain"), ("Authorization", "Bearer gw-named")) == "gw-named"


@pytest.mark.parametrize(("models", "model", "allowed"), [
    (None, "anything", True),
    (("gpt-4*", "fast"), "gpt-4o", True),
    (("gpt-4*", "fast"), "fast", True),
    (("gpt-4*", "fast"), "faster", False),
    (("gpt-4*",), "GPT-4o", False),  # globs are case-sensitive, as model names are
    ((), "gpt-4o", False),
])
def test_the_allowlist_is_globs_over_public_names(models: tuple[str, ...] | None, model: str, allowed: bool) -> None:
    principal = Principal(key_digest("k"), models=models)
    assert may_use(principal, model) is allowed
    if allowed:
        check_model(principal, model)
    else:
        with pytest.raises(GatewayError) as refused:
            check_model(principal, model)
        assert (refused.value.status, refused.value.type, refused.value.code) == \
            (403, "permission_error", "model_not_allowed")
    assert may_use(None, model)  # keys off: every model
