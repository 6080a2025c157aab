"""Failure paths leave no reference cycles behind.

The serving process collects young garbage only every 10,000 allocations (lifecycle.tune_gc), so
a failure that parks the request, its body and its frames in a cycle holds them that long; under
an outage that is megabytes. An exception kept past its handler holds its traceback, whose frames
hold the exception again: these tests send failing requests through an in-process proxy and
check that the collector, set to keep what it finds, finds nothing of ours.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import socket
from typing import Any

from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from tensorwall_proxy.app import build_app
from tensorwall_proxy.config import parse_config


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _upstream(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if body["model"] == "fail-500":
        return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500)
    if body["model"] == "stall":
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n')
        await asyncio.sleep(5)
        return response
    if body.get("stream"):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}'
                             b"\n\ndata: [DONE]\n\n")
        return response
    return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                           "finish_reason": "stop"}]})


def _ours(garbage: list[Any]) -> list[str]:
    found = []
    for thing in garbage:
        if type(thing).__module__.startswith("tensorwall_proxy"):
            found.append(type(thing).__qualname__)
        elif type(thing).__name__ == "frame" and "tensorwall_proxy" in thing.f_code.co_filename:
            found.append(f"frame {thing.f_code.co_name}")
    return found


async def _failing_requests() -> list[str]:
    upstream = web.Application()
    upstream.router.add_post("/v1/chat/completions", _upstream)
    upstream_server = TestServer(upstream, host="127.0.0.1")
    await upstream_server.start_server()
    base = f"http://127.0.0.1:{upstream_server.port}/v1"
    config = parse_config(f"""
gateway_keys: []
providers:
  openai: {{base_url: "{base}"}}
  backup: {{type: openai, base_url: "{base}", key_scope: openai}}
  dead: {{type: openai, base_url: "http://127.0.0.1:{_closed_port()}/v1", key_scope: openai}}
routes:
  flaky:
    strategy: priority
    endpoints: [{{provider: openai, model: fail-500, priority: 0}}, {{provider: backup, model: m, priority: 1}}]
  broken: {{endpoints: [{{provider: openai, model: fail-500}}]}}
  dead-first:
    strategy: priority
    endpoints: [{{provider: dead, model: m, priority: 0}}, {{provider: openai, model: m, priority: 1}}]
  dead: {{endpoints: [{{provider: dead, model: m}}]}}
  stall: {{timeouts: {{idle: 0.05, total: 0.05}}, endpoints: [{{provider: openai, model: stall}}]}}
""")
    proxy = TestServer(build_app(config), host="127.0.0.1")
    await proxy.start_server()
    url = f"http://127.0.0.1:{proxy.port}/v1/chat/completions"
    routes = ["flaky", "broken", "dead-first", "dead", "stall"]
    try:
        async with ClientSession() as client:
            async def send(route: str, stream: bool) -> None:
                body = {"model": route, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
                async with client.post(url, json=body, headers={"Authorization": "Bearer sk-test"}) as response:
                    await response.read()

            for route, stream in itertools.product(routes, (False, True)):
                await send(route, stream)  # warm: connections, caches, lazily made objects
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                for _ in range(3):
                    for route, stream in itertools.product(routes, (False, True)):
                        await send(route, stream)
                gc.collect()
                return _ours(gc.garbage)
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
    finally:
        await proxy.close()
        await upstream_server.close()


def test_failures_leave_no_reference_cycles_of_ours() -> None:
    assert asyncio.run(_failing_requests()) == []
