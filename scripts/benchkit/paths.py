"""Paths: one way through the proxy each, and what the upstream must look like for it.

A path is which model the caller asks for, how the proxy's provider is configured, which URL,
headers and body a direct call uses and how its answer is checked, and which shape the lean
upstream speaks. The bench.py docstring lists the five; `proxy_config` writes the one YAML that
configures every path's provider in one proxy process.

Adding a path: an entry in `PATHS` and its lean handler in `lean_upstream.LEAN_SHAPES`; a path whose
streams go to another URL than its unary calls (vertex, bedrock) names it in `direct_stream_path`; a
variant of a path in one setting (bedrock-sigv4) names that path in `variant_of`, and may time what
the setting adds alone in `microbench` (every path's micro-benchmark runs in every benchmark).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from .common import CALLER_KEY, GATEWAY_KEY, Json
from .microbench import MicroBench, sigv4_microbench
from .wire import (
    ANTHROPIC_MODEL,
    ANTHROPIC_VERSION,
    BEDROCK_MODEL,
    BEDROCK_MODEL_SEGMENT,
    BEDROCK_REGION,
    BEDROCK_SIGV4_KEY,
    OPENAI_MODEL,
    VERTEX_LOCATION,
    VERTEX_MODEL,
    VERTEX_MODEL_PATH,
    VERTEX_PROJECT,
    Check,
    anthropic_body,
    bedrock_body,
    check_anthropic,
    check_bedrock,
    check_openai,
    check_vertex,
    openai_body,
    vertex_body,
)


@dataclass(frozen=True)
class BenchPath:
    """What one path needs: the caller's model, the proxy config, the direct call, the lean shape."""

    name: str
    model: str
    provider_config: Callable[[str], Json]  # upstream base URL -> `providers:` section of the config
    direct_path: str  # the upstream URL path a direct call uses (the one the proxy calls)
    direct_headers: dict[str, str]
    direct_body: Callable[[bool], bytes]  # stream? -> the body a direct call sends
    direct_check: Check
    lean_routes: tuple[str, ...]  # upstream paths the lean server answers
    lean_shape: str  # key of lean_upstream.LEAN_SHAPES
    direct_stream_path: str | None = None  # a stream's URL path (and query), when not direct_path
    variant_of: str | None = None  # the path this one differs from in one setting: run and compared with it
    default: bool = True  # part of the default run
    microbench: Callable[[], MicroBench] | None = None  # what the path adds, timed alone

    def direct_target(self, stream: bool) -> str:
        """The URL path (and query) a direct call, unary or streamed, sends its request to."""
        return self.direct_stream_path if stream and self.direct_stream_path else self.direct_path


# A SigV4 call's headers for direct runs (the lean upstream checks the scheme only; the proxy's
# own signatures are of this size).
SIGV4_SAMPLE_HEADERS: Final = {
    "Authorization": (f"AWS4-HMAC-SHA256 Credential={BEDROCK_SIGV4_KEY[0]}/20240620/{BEDROCK_REGION}/bedrock/"
                      f"aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature={'0' * 64}"),
    "X-Amz-Date": "20240620T120000Z",
}


def bedrock_path(name: str, provider: Json, auth_headers: dict[str, str], *,
                 variant_of: str | None = None, default: bool = True,
                 microbench: Callable[[], MicroBench] | None = None) -> BenchPath:
    """A Converse path: the provider `name` (extra settings `provider`) under the upstream's `/name`.

    The caller asks for `name/<model id>`, which the `provider/model` form routes to that provider
    with the model id as is; the proxy calls `/name/model/<model id percent-encoded>/converse`. The
    lean upstream's shape of the same name checks how the call is authenticated.
    """
    model_path = f"/{name}/model/{BEDROCK_MODEL_SEGMENT}"
    # aiohttp routes on the decoded path (`…v1:0`); the lean handler checks the raw one itself.
    route = f"/{name}/model/{BEDROCK_MODEL}"
    return BenchPath(
        name=name,
        model=f"{name}/{BEDROCK_MODEL}",
        provider_config=lambda base: {name: {**provider, "region": BEDROCK_REGION, "base_url": f"{base}/{name}"}},
        direct_path=f"{model_path}/converse",
        direct_headers={**auth_headers, "Content-Type": "application/json"},
        direct_body=bedrock_body,
        direct_check=check_bedrock,
        lean_routes=(f"{route}/converse", f"{route}/converse-stream"),
        lean_shape=name,
        direct_stream_path=f"{model_path}/converse-stream",
        variant_of=variant_of,
        default=default,
        microbench=microbench,
    )


PATHS: Final[dict[str, BenchPath]] = {
    "openai": BenchPath(
        name="openai",
        model=OPENAI_MODEL,  # the built-in pattern `gpt-*` sends it to the openai provider
        provider_config=lambda base: {"openai": {"base_url": f"{base}/openai/v1"}},
        direct_path="/openai/v1/chat/completions",
        # The upstream sees the same key the proxy forwards from the caller.
        direct_headers={"Authorization": f"Bearer {CALLER_KEY}", "Content-Type": "application/json"},
        direct_body=openai_body,
        direct_check=check_openai,
        lean_routes=("/openai/v1/chat/completions", "/v1/chat/completions"),
        lean_shape="openai",
    ),
    "anthropic": BenchPath(
        name="anthropic",
        model=ANTHROPIC_MODEL,  # the built-in pattern `claude-*` sends it to anthropic
        provider_config=lambda base: {"anthropic": {"base_url": f"{base}/anthropic/v1"}},
        direct_path="/anthropic/v1/messages",
        # The proxy forwards the caller's Bearer key as Anthropic's x-api-key, with a pinned version.
        direct_headers={"x-api-key": CALLER_KEY, "anthropic-version": ANTHROPIC_VERSION,
                        "Content-Type": "application/json"},
        direct_body=anthropic_body,
        direct_check=check_anthropic,
        lean_routes=("/anthropic/v1/messages",),
        lean_shape="anthropic",
    ),
    "vertex": BenchPath(
        name="vertex",
        model=VERTEX_MODEL,  # the built-in pattern `gemini-*` sends it to vertex
        provider_config=lambda base: {"vertex": {"project": VERTEX_PROJECT, "location": VERTEX_LOCATION,
                                                 "base_url": f"{base}/vertex"}},
        direct_path=f"{VERTEX_MODEL_PATH}:generateContent",
        # The proxy forwards the caller's Bearer key as the OAuth access token.
        direct_headers={"Authorization": f"Bearer {CALLER_KEY}", "Content-Type": "application/json"},
        direct_body=vertex_body,
        direct_check=check_vertex,
        # aiohttp routes on the path alone: the lean handler checks `alt=sse` itself.
        lean_routes=(f"{VERTEX_MODEL_PATH}:generateContent", f"{VERTEX_MODEL_PATH}:streamGenerateContent"),
        lean_shape="vertex",
        direct_stream_path=f"{VERTEX_MODEL_PATH}:streamGenerateContent?alt=sse",
    ),
    # The proxy forwards the caller's Bearer key as a Bedrock API key (`Authorization: Bearer`).
    "bedrock": bedrock_path("bedrock", {}, {"Authorization": f"Bearer {CALLER_KEY}"}),
    # YAML AWS keys: the proxy signs every call with botocore's SigV4, whatever the caller sends.
    "bedrock-sigv4": bedrock_path(
        "bedrock-sigv4",
        {"type": "bedrock", "aws_access_key_id": BEDROCK_SIGV4_KEY[0], "aws_secret_access_key": BEDROCK_SIGV4_KEY[1]},
        SIGV4_SAMPLE_HEADERS, variant_of="bedrock", default=False,
        microbench=sigv4_microbench),
}
BASELINE: Final = "openai"  # the passthrough every translating path is compared with
DEFAULT_PATHS: Final = tuple(name for name, path in PATHS.items() if path.default)


def proxy_config(paths: Sequence[BenchPath], upstream_base: str) -> str:
    """The proxy's YAML (JSON is YAML): one gateway key, every path's provider, short timeouts.

    The paced test needs nothing of its own here: its model (`gpt-4o-paced`) matches the built-in
    `gpt-*` rule, so it goes to the openai provider, which passes the model string to the upstream.
    """
    providers: Json = {}
    for path in paths:
        providers.update(path.provider_config(upstream_base))
    config = {
        "gateway_keys": [GATEWAY_KEY],
        "providers": providers,
        "timeouts": {"connect": 5, "first_byte": 30, "idle": 30, "total": 60},
        # The default SIGTERM drain is 60 s; the benchmark has nothing in flight when it stops.
        "server": {"drain_seconds": 1},
    }
    return json.dumps(config, indent=2)


def path_names(text: str) -> list[str]:
    """`--path`: comma-separated path names, the openai baseline first when a translating path is
    asked for, and a variant's path just before the variant."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PATHS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown path {', '.join(unknown) or repr(text)}; "
                                         f"choose from {', '.join(PATHS)}")
    # A translation's cost is only readable next to the passthrough's, a variant's next to its path's.
    wanted = [BASELINE] if any(n != BASELINE for n in names) else []
    for name in names:
        variant_of = PATHS[name].variant_of
        wanted += [variant_of, name] if variant_of else [name]
    return list(dict.fromkeys(wanted))  # in order, once each
