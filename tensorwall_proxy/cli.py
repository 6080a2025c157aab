"""The command line: ``serve``, ``check``, ``route MODEL``, ``keys`` and ``hash-key``."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import secrets
import sys
from collections.abc import Sequence

from .auth import NO_CREDENTIAL, ambient_warnings, credential_for
from .config import (
    Config,
    Principal,
    ProviderConfig,
    default_config_path,
    is_loopback,
    key_digest,
    load_config,
)
from .errors import ConfigError, GatewayError
from .observability import LOG_FORMAT, configure_logging
from .providers import ChatRequest, provider_for
from .router import LLMRouter, fallback_order


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{path}: {len(exc.errors)} error(s):", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return None


def _warnings(config: Config, host: str) -> list[str]:
    """What `serve` logs and `check` prints about a valid configuration served on ``host`` (DESIGN §14)."""
    closed = [f"providers.{p.name}: a server-side credential and no `models:`, so it serves only the routes "
              "under `routes:` (list its models, or `models: [\"*\"]` for every model)"
              for p in config.providers.values() if p.server_credential and not p.models]
    per_host = []
    if config.state.backend == "sqlite" and not is_loopback(host):
        # Reachable from other hosts, so perhaps one of several instances behind a balancer (§11).
        per_host.append(f"state.backend: sqlite on {host}: principals' limits and stored responses are per host "
                        f"({config.state.path}); instances behind one balancer need `backend: redis` to share them")
    return ambient_warnings(config.providers.values()) + closed + per_host


def cmd_serve(args: argparse.Namespace) -> int:
    from .lifecycle import UnsafeBind, check_bind, serve, supervise

    worker = args.channel_fd is not None  # started by a `--workers N` parent, which has warned already
    # Several processes write to the same log: then each line says which one speaks.
    configure_logging(process_tag=args.workers > 1 or worker)
    config = _load(args.config)
    if config is None:
        return 1
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    if args.workers < 1:
        print("tensorwall-proxy: --workers must be at least 1", file=sys.stderr)
        return 1
    if args.workers > 1 and port == 0:
        print("tensorwall-proxy: --workers needs a fixed port (port 0 would give each worker its own)",
              file=sys.stderr)
        return 1
    if not worker:
        for warning in _warnings(config, host):
            logging.getLogger("tensorwall_proxy").warning("%s", warning)
    try:
        check_bind(config, host, args.no_gateway_key, warn=not worker)
    except UnsafeBind as exc:
        print(f"tensorwall-proxy: {exc}", file=sys.stderr)
        return 1
    if args.workers > 1:
        return supervise(config, host, port, args.workers, allow_no_key=args.no_gateway_key)
    return serve(config, host, port, allow_no_key=args.no_gateway_key, channel_fd=args.channel_fd)


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    for warning in _warnings(config, config.server.host):
        print(f"warning: {warning}")
    print(f"{args.config}: ok ({len(config.routes)} routes, {len(config.providers)} providers, "
          f"gateway auth {'on' if config.gateway_keys else 'off'})")
    return 0


def describe_route(config: Config, model: str) -> list[str]:
    """Lines saying which endpoints would serve ``model``, in fallback order, and where each call goes."""
    router = LLMRouter.from_config(config)
    route = router.resolve(model)
    kind = "exact route" if route.name in config.routes else f"matched {route.label!r}"
    lines = [f"model:     {model}", f"route:     {route.label} ({kind}, strategy {route.strategy})"]
    ordered = fallback_order(route.endpoints)
    if len(route.endpoints) > 1:
        first = "all endpoints" if route.strategy == "weighted" else "the lowest priority number"
        lines.append(f"first attempt: picked by weight among {first}; then the fallback order below")
    lines.append("endpoints (fallback order):")
    probe = ChatRequest({"model": model, "messages": [{"role": "user", "content": ""}]})
    for rank, i in enumerate(ordered, 1):
        endpoint = route.endpoints[i]
        provider = config.providers[endpoint.provider]
        upstream_model = endpoint.model or model
        credential = credential_for(provider, endpoint.api_key, None)
        carries = {None: "the caller's key", "server": "api_key from the config", "ambient": "ambient credentials",
                   "none": "no credential"}[credential.kind if credential else None]
        if credential is None or credential.kind == "server":
            carries += f", sent as {provider.kind.auth_scheme}"
        if provider.unconfigured:
            where = provider.unconfigured
        else:
            try:
                call = provider_for(provider.type).build_request(probe, provider, upstream_model, NO_CREDENTIAL)
                where = f"{call.method} {call.url}"
            except GatewayError as exc:
                where = f"unavailable: {exc.message}"
        lines.append(f"  {rank}. provider={provider.name} (type {provider.type}) model={upstream_model} "
                     f"weight={endpoint.weight} priority={endpoint.priority}")
        lines.append(f"     {where}")
        if not provider.unconfigured:
            lines.extend(f"     {line}" for line in _native_calls(provider, upstream_model))
        lines.append(f"     credential: {carries}")
    lines.append(f"attempts per request: at most {config.retries.attempts}")
    return lines


def _native_calls(provider: ProviderConfig, model: str) -> list[str]:
    """Where a provider passes each dialect it speaks besides chat (DESIGN §12), one line each."""
    impl = provider_for(provider.type)
    probe = ChatRequest({"model": model, "messages": [{"role": "user", "content": ""}]}, native={"model": model})
    lines = []
    for dialect in sorted(provider.speaks - {"chat"}):
        if impl.native(dialect, provider, model):
            call = impl.build_native_request(dialect, probe, provider, model, NO_CREDENTIAL)
            lines.append(f"{dialect}: {call.method} {call.url} (passed through natively)")
    return lines


def cmd_route(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    try:
        lines = describe_route(config, args.model)
    except GatewayError as exc:
        print(f"tensorwall-proxy: {exc.message}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def describe_principal(principal: Principal) -> list[str]:
    """Lines naming a principal (never its key): its models, its expiry and its limits."""
    lines = [f"{principal.id}" + ("" if principal.name is None else f" (key {principal.digest[:19]}…)")]
    lines.append(f"  models:  {', '.join(principal.models) if principal.models is not None else 'all'}")
    if principal.expires_at is not None:
        at = datetime.datetime.fromtimestamp(principal.expires_at, datetime.UTC)
        lines.append(f"  expires: {at.strftime('%Y-%m-%dT%H:%M:%SZ')} (refused from then on)")
    limits = principal.limits
    if limits is None:
        lines.append("  limits:  none")
    else:
        given = [f"{name}={getattr(limits, name)}" for name in limits.__slots__ if getattr(limits, name) is not None]
        lines.append(f"  limits:  {', '.join(given)}")
    return lines


async def _usage(config: Config) -> dict[str, list[str]]:
    """Each limited principal's standing in the state store, as lines; StoreError when it is unreachable."""
    from .limits import standing
    from .state.holder import open_limits

    store = await open_limits(config.state)
    try:
        out: dict[str, list[str]] = {}
        for principal in config.gateway_keys:
            if principal.limits is None:
                continue
            counters, now = await store.counters(principal.id)
            now_standing = standing(counters, principal.limits, now)
            lines = []
            if now_standing.requests is not None:
                lines.append(f"requests left now {now_standing.requests.remaining}")
            if now_standing.tokens_per_minute is not None:
                lines.append(f"tokens left this minute {now_standing.tokens_per_minute.remaining}")
            if principal.limits.tokens_per_day is not None:
                lines.append(f"tokens used today {now_standing.tokens_today:.0f}")
            if principal.limits.concurrent is not None:
                lines.append(f"in flight {now_standing.leases}")
            out[principal.id] = lines
        return out
    finally:
        await store.close()


def cmd_keys(args: argparse.Namespace) -> int:
    from .state import StoreError

    config = _load(args.config)
    if config is None:
        return 1
    if not config.gateway_keys:
        print("gateway auth is off (gateway_keys: []): no principals")
        return 0
    usage: dict[str, list[str]] = {}
    note = ""
    if any(p.limits is not None for p in config.gateway_keys):
        try:
            usage = asyncio.run(_usage(config))
        except StoreError as exc:
            note = f"usage unknown: {exc}"
    for principal in config.gateway_keys:
        print("\n".join(describe_principal(principal)))
        if principal.id in usage:
            print(f"  usage:   {'; '.join(usage[principal.id]) or 'none yet'}")
    if note:
        print(note)
    return 0


def cmd_hash_key(args: argparse.Namespace) -> int:
    if args.key is None:
        key = "tw_" + secrets.token_urlsafe(32)
        print(f"key:    {key}")
        print(f"digest: {key_digest(key)}")
        print("Give the key to the caller (X-API-Key); put only the digest under gateway_keys.")
        return 0
    key = sys.stdin.readline().strip() if args.key == "-" else args.key
    if not key:
        print("tensorwall-proxy: empty key", file=sys.stderr)
        return 1
    print(key_digest(key))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tensorwall-proxy``."""
    parser = argparse.ArgumentParser(prog="tensorwall-proxy",
                                     description="One OpenAI-compatible base URL in front of nine LLM providers.")
    sub = parser.add_subparsers(dest="command", required=True)
    config_help = "YAML route table (default: $TENSORWALL_CONFIG, then config/tensorwall.yaml)"

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", default=default_config_path(), help=config_help)
    serve.add_argument("--host", help="bind address (default: server.host)")
    serve.add_argument("--port", type=int, help="port (default: server.port)")
    serve.add_argument("--workers", type=int, default=1,
                       help="worker processes sharing the port (SO_REUSEPORT) under one supervising parent "
                            "(default: 1, a single process)")
    serve.add_argument("--no-gateway-key", action="store_true",
                       help="allow serving with gateway_keys: [] on a non-loopback address")
    # Internal: set by a --workers parent on the processes it starts (the descriptor they report on).
    serve.add_argument("--channel-fd", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate a config: exit 0, or 1 with every error")
    check.add_argument("--config", default=default_config_path(), help=config_help)
    check.set_defaults(func=cmd_check)

    route = sub.add_parser("route", help="show which endpoints would serve a model (sends nothing)")
    route.add_argument("model")
    route.add_argument("--config", default=default_config_path(), help=config_help)
    route.set_defaults(func=cmd_route)

    keys = sub.add_parser("keys", help="list the principals, their models and limits, and their usage "
                                       "(when the state store is reachable)")
    keys.add_argument("--config", default=default_config_path(), help=config_help)
    keys.set_defaults(func=cmd_keys)

    hash_key = sub.add_parser("hash-key", help="make a new gateway key and its digest, or digest a given key")
    hash_key.add_argument("key", nargs="?", help="the key to digest, or - to read it from stdin")
    hash_key.set_defaults(func=cmd_hash_key)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tensorwall-proxy`` console script."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT.format(tag=""))
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
