"""Failure paths leave no reference cycles behind.

The serving process collects young garbage only every 10,000 allocations (lifecycle.tune_gc), so
a failure that parks the request, its body and its frames in a cycle holds them that long; under
an outage that is megabytes. An exception kept past its handler holds its traceback, whose frames
hold the exception again. The rule lives in one idiom, ``errors.detach``: the handler that keeps
an exception past its ``except`` block, passes it on, or is the last to handle it, detaches it
there (``failure = detach(exc)``, ``error_response(detach(exc), ...)``); detach drops the frames
of the exceptions it was raised from or during as well.

These tests check the idiom itself, and then send failing requests through an in-process proxy
and check that the collector, set to keep what it finds, finds nothing of ours.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import socket
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from tensorwall_proxy.app import build_app
from tensorwall_proxy.config import parse_config
from tensorwall_proxy.errors import GatewayError, UpstreamError, detach


class _ConnectError(Exception):
    """Shaped like aiohttp's ClientConnectorError: the operating system's error in ``os_error``."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__("could not connect")
        self.os_error = os_error


def _raise_chain() -> UpstreamError:
    try:
        try:
            try:
                raise ConnectionRefusedError(111, "Connection refused")
            except OSError as refused:
                raise _ConnectError(refused) from None
        except _ConnectError as connect:
            raise UpstreamError("connect", 502, "Could not connect to upstream 'x'.") from connect
    except UpstreamError as exc:
        return detach(exc)


def test_detach_drops_the_traceback_of_an_exception_and_of_its_chain() -> None:
    exc = _raise_chain()
    cause = exc.__cause__
    assert isinstance(cause, _ConnectError) and isinstance(cause.os_error, ConnectionRefusedError)
    chain = [exc, cause, cause.os_error, cause.__context__]
    assert cause.__context__ is cause.os_error  # raised during its handling, then suppressed
    assert [e.__traceback__ for e in chain if e is not None] == [None, None, None, None]
    error = GatewayError(500, "boom")
    assert detach(error) is error  # detached in place, and handed back for `failure = detach(exc)`


def _keep(detaching: bool) -> None:
    """A frame that keeps the exception it caught, as the relay keeps its last failure."""
    try:
        raise GatewayError(500, "kept past its handler")
    except GatewayError as exc:
        failure = detach(exc) if detaching else exc
    assert failure.status == 500


def _garbage_after(work: Any) -> list[str]:
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        work()
        gc.collect()
        return _ours(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def test_a_kept_exception_is_a_cycle_unless_detached() -> None:
    """What the idiom is for, and proof that the end-to-end check below can see a cycle."""
    assert "GatewayError" in _garbage_after(lambda: _keep(detaching=False))
    assert _garbage_after(lambda: _keep(detaching=True)) == []


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

            async def refused() -> None:
                # Refused before the endpoint runs (the Host rule of auth off) and by it (bad JSON).
                async with client.post(url, json={"model": "flaky", "messages": []},
                                       headers={"Host": "elsewhere.example"}) as response:
                    assert response.status == 403
                async with client.post(url, data=b"{not json", headers={"Authorization": "Bearer sk-test"}) as response:
                    assert response.status == 400

            for route, stream in itertools.product(routes, (False, True)):
                await send(route, stream)  # warm: connections, caches, lazily made objects
            await refused()
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                for _ in range(3):
                    for route, stream in itertools.product(routes, (False, True)):
                        await send(route, stream)
                    await refused()
                gc.collect()
                return _ours(gc.garbage)
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
    finally:
        await proxy.close()
        await upstream_server.close()


@pytest.mark.slow
def test_failures_leave_no_reference_cycles_of_ours() -> None:
    assert asyncio.run(_failing_requests()) == []
