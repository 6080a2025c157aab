"""The benchmark kit's parts, which every number of `make bench`'s summary goes through.

The kit runs its load generators only under scripts/bench.py; what is tested here is what turns
their counts into the summary (percentiles, per-request CPU, the targets' judgements, the table),
the answer checks, the requests wrk and the aiohttp workers send, and every path's requests answered
whole by the lean upstream, through the bare relay and through the proxy itself.
"""

from __future__ import annotations

import asyncio
import http.client
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from yarl import URL

from scripts.benchkit.lean_upstream import SHAPES, lean_app
from scripts.benchkit.load import load_specs, one_request, spread
from scripts.benchkit.microbench import sigv4_microbench
from scripts.benchkit.paths import (
    ANTHROPIC_VERSION,
    CALLER_KEY,
    CONTENT_CHUNKS,
    GATEWAY_KEY,
    LIMITED_KEY,
    PATHS,
    PROMPT,
    STREAM_CHUNKS,
    check_messages,
    check_openai,
    check_responses,
    path_names,
    proxy_config,
)
from scripts.benchkit.servers import Pinning, WindowCpu, bare_relay_app, http_request, redis_state
from scripts.benchkit.summary import SummaryRow, limit_notes, markdown_table, summary_lines, summary_rows
from scripts.benchkit.targets import PACED, Measurement, Target, load_scenarios, percentile, sanity_check
from scripts.benchkit.wrk import lua_script, lua_string, parse_done
from tests.conftest import Proxy, ServerThread, redis_keys

C = 50
NO_PIN = Pinning(None, None, None, "none")


def run(path: str, target: str, scenario: str, rps: float, *, p50: float = 1.0, cpu_ms: float | None = None,
        errors: int = 0, ttfc: list[float] | None = None) -> Measurement:
    """A one-second run of `rps` requests whose hop spent `cpu_ms` of CPU on each."""
    hop_cpu = None if cpu_ms is None else cpu_ms * rps / 1000
    ttfc_p50, ttfc_p99 = (percentile(ttfc, q) if ttfc else None for q in (50, 99))
    return Measurement(path, target, scenario, "wrk -t2", int(rps), int(rps) * 20, errors, [], 1.0, p50, p50 * 2,
                       0.5, 0.3, ttfc_p50, ttfc_p99, hop_cpu=hop_cpu)


def path_results(path: str, relay_rps: float, proxy_rps: float, proxy_cpu_ms: float,
                 proxy_p50: float = 0.5) -> dict[tuple[str, str], Measurement]:
    results = {}
    for scenario in ("unary c=1", f"unary c={C}", "stream c=1", f"stream c={C}"):
        results["direct", scenario] = run(path, "direct", scenario, 10_000, p50=0.1)
        results["relay", scenario] = run(path, "relay", scenario, relay_rps, p50=0.4, cpu_ms=0.1)
        results["proxy", scenario] = run(path, "proxy", scenario, proxy_rps, p50=proxy_p50, cpu_ms=proxy_cpu_ms)
    return results


def rows_by_key(by_path: dict[str, dict[tuple[str, str], Measurement]],
                sigv4: float | None = None) -> dict[str, SummaryRow]:
    rows = summary_rows(by_path, {"relay": {"idle": 40.0}, "proxy": {"idle": 45.0}}, sigv4, C)
    return {row.key: row for row in rows}


def test_percentile_is_nearest_rank() -> None:
    ordered = [float(i) for i in range(1, 101)]
    assert percentile(ordered, 50) == 50.0
    assert percentile(ordered, 99) == 99.0
    assert percentile(ordered, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0


def test_measurement_rates_and_cpu_per_request() -> None:
    m = run("openai", "proxy", f"unary c={C}", 5000, cpu_ms=0.2)
    assert m.rps == 5000
    assert m.chunks_per_s == 100_000
    assert m.hop_cpu_ms_per_req == pytest.approx(0.2)
    m.with_window(WindowCpu([0.4, 2.0], wall=2.0, machine_busy=3.4, steal=0.0), hop_rss=44.0)
    assert (m.upstream_cpu, m.hop_cpu, m.hop_rss_mib) == (0.2, 1.0, 44.0)
    assert m.other_cpu == pytest.approx(1.7 - 0.5 - 0.2 - 1.0)  # the machine's busy share less ours
    direct = run("openai", "direct", "paced stream c=100", 500, ttfc=[10.0, 11.0, 30.0]).with_window(
        WindowCpu([0.5], wall=1.0, machine_busy=1.0, steal=0.0), None)
    assert direct.hop_cpu is None and direct.hop_cpu_ms_per_req is None


@pytest.mark.parametrize("name", list(PATHS))
def test_each_lean_stream_passes_its_paths_check(name: str) -> None:
    # The lean upstream's answers (Bedrock's framed by the fake's event-stream encoder) read back whole.
    shape = SHAPES[PATHS[name].upstream]()
    check = PATHS[name].direct.check
    assert check(shape.unary, False) == (0, None)
    stream = b"".join([*shape.events, *shape.end])
    chunks, problem = check(stream, True)
    assert problem is None
    assert chunks == {"openai": STREAM_CHUNKS, "responses": 26, "anthropic": 23, "vertex": CONTENT_CHUNKS,
                      "bedrock": 22}[PATHS[name].upstream]
    assert check(stream[: len(stream) // 2], True)[1] is not None
    assert check(stream[: stream.rfind(shape.events[-1][:14])], True)[1] is not None  # all but the last event
    assert check(b"<html>busy</html>", False)[1] is not None


def test_the_lean_responses_stream_follows_openais_grammar() -> None:
    shape = SHAPES["responses"]()
    events = [orjson.loads(e.split(b"\ndata: ", 1)[1]) for e in shape.events]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"].removeprefix("response.") for e in events] == [
        "created", "in_progress", "output_item.added", "content_part.added", *["output_text.delta"] * CONTENT_CHUNKS,
        "output_text.done", "content_part.done", "output_item.done", "completed"]
    assert all(e.startswith(b"event: " + orjson.loads(e.split(b"\ndata: ", 1)[1])["type"].encode() + b"\n")
               for e in shape.events)
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    completed = events[-1]["response"]
    assert completed["output"][0]["content"][0]["text"] == text == events[-4]["text"]
    assert completed["usage"]["total_tokens"] == completed["usage"]["input_tokens"] + completed["usage"]["output_tokens"]
    assert orjson.loads(shape.unary) == completed


def test_the_callers_stream_check_wants_twenty_chunks_and_done() -> None:
    chunk = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
    assert check_openai(chunk * 20 + b"data: [DONE]\n\n", True) == (20, None)
    assert check_openai(chunk * 19 + b"data: [DONE]\n\n", True)[1] is not None
    assert check_openai(chunk * 20, True)[1] is not None


def test_a_path_brings_what_it_is_compared_with() -> None:
    assert path_names("vertex") == ["openai", "vertex"]
    assert path_names("openai") == ["openai"]
    assert path_names("bedrock,openai,bedrock") == ["openai", "bedrock"]
    assert path_names("responses-stored") == ["openai", "responses-anthropic", "responses-stored"]
    assert path_names("limits-redis,messages-openai") == ["openai", "limits-redis", "messages-openai"]


def test_each_path_says_what_the_caller_sends_beside_the_direct_call() -> None:
    chat, native = PATHS["anthropic"], PATHS["responses-openai"]
    translated, stored = PATHS["responses-anthropic"], PATHS["responses-stored"]
    assert chat.caller.path == "/v1/chat/completions" and chat.caller.check is check_openai
    assert {p.caller.path for p in (native, translated, stored)} == {"/v1/responses"}
    assert {p.caller.check for p in (native, translated, stored)} == {check_responses}
    assert orjson.loads(translated.caller.body(True)) == {
        "model": "claude-3-5-sonnet-20241022", "input": orjson.loads(chat.caller.body(False))["messages"][0]["content"],
        "max_output_tokens": 64, "store": False, "stream": True}
    assert orjson.loads(stored.caller.body(False))["store"] is True
    # Native: the proxy sends the caller's body on OpenAI's own URL; translated: Anthropic's call.
    assert native.direct.path == "/openai/v1/responses" and native.upstream == "responses"
    assert native.direct.body(True) == native.caller.body(True)
    assert translated.direct == stored.direct == chat.direct
    assert (native.cpu_ratio, translated.cpu_ratio, stored.cpu_ratio, stored.reference) == (
        1.1, 1.5, None, "responses-anthropic")


def test_messages_paths_send_anthropics_request_with_the_gateway_key_beside_the_provider_key() -> None:
    native, translated = PATHS["messages-anthropic"], PATHS["messages-openai"]
    for path, model in ((native, "claude-3-5-sonnet-20241022"), (translated, "gpt-4o")):
        assert path.caller.path == "/v1/messages" and path.caller.check is check_messages
        assert path.caller.headers == {"X-API-Key": GATEWAY_KEY, "Authorization": f"Bearer {CALLER_KEY}",
                                       "Content-Type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        assert orjson.loads(path.caller.body(True)) == {
            "model": model, "max_tokens": 64, "stream": True,
            "messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}]}
    # Native: the caller's body as it came, on Anthropic's URL with the provider key as x-api-key.
    assert native.direct == PATHS["anthropic"].direct and native.direct.body(True) == native.caller.body(True)
    assert native.direct.headers["x-api-key"] == CALLER_KEY and "X-API-Key" not in native.direct.headers
    assert translated.direct == PATHS["openai"].direct and translated.upstream == "openai"
    assert (native.cpu_ratio, translated.cpu_ratio) == (1.1, 1.5)


def test_limits_paths_are_the_chat_passthrough_under_a_limited_principals_key() -> None:
    base = PATHS["openai"]
    for name, added, proxy in (("limits-sqlite", 0.1, "proxy"), ("limits-redis", 0.3, "proxy-redis")):
        path = PATHS[name]
        assert path.caller.headers == {**base.caller.headers, "X-API-Key": LIMITED_KEY}
        assert (path.caller.path, path.caller.body(True), path.direct) == (
            base.caller.path, base.caller.body(True), base.direct)
        assert (path.reference, path.added_p50_ms, path.rps_ratio, path.cpu_ratio, path.proxy) == (
            "openai", added, 0.8, None, proxy)
    config = orjson.loads(proxy_config("http://127.0.0.1:1", {"backend": "redis", "url": "redis://x"}))
    assert config["gateway_keys"][0] == GATEWAY_KEY and config["state"]["backend"] == "redis"
    limited = config["gateway_keys"][1]
    assert limited["key"] == LIMITED_KEY and set(limited["limits"]) == {
        "requests_per_minute", "tokens_per_minute", "concurrent"}
    assert "state" not in orjson.loads(proxy_config("http://127.0.0.1:1"))  # SQLite in STATE_DIRECTORY


def test_the_messages_check_wants_every_text_delta_and_message_stop_last() -> None:
    def event(kind: str, delta: str = "") -> bytes:
        data = {"type": kind, **({"delta": {"type": delta, "text": "x"}} if delta else {})}
        return f"event: {kind}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"

    deltas = [event("content_block_delta", "text_delta")] * CONTENT_CHUNKS
    whole = [event("message_start"), *deltas, event("message_delta"), event("message_stop")]
    assert check_messages(b"".join(whole), True) == (CONTENT_CHUNKS + 3, None)
    assert check_messages(b"".join(whole[:-1]), True)[1] is not None  # no message_stop
    assert check_messages(b"".join([*whole, event("error")]), True)[1] is not None  # an in-band error last
    assert check_messages(b"".join(whole[2:]), True)[1] is not None  # a delta short
    assert check_messages(b'{"type":"message","content":[],"stop_reason":"end_turn"}', False) == (0, None)
    assert check_messages(b'{"type":"error","error":{"type":"api_error"}}', False)[1] is not None


def test_the_responses_check_wants_every_delta_and_completed_last() -> None:
    def stream(*kinds: str, named: bool = True) -> bytes:
        return b"".join((f"event: {k}\n" if named else "").encode() + b'data: {"type":"' + k.encode() + b'"}\n\n'
                        for k in kinds)

    kinds = ["response.created", *["response.output_text.delta"] * CONTENT_CHUNKS, "response.completed"]
    assert check_responses(stream(*kinds), True) == (CONTENT_CHUNKS + 2, None)
    assert check_responses(stream(*kinds, named=False), True) == (CONTENT_CHUNKS + 2, None)  # data lines only
    assert check_responses(stream(*kinds, "response.failed"), True)[1] is not None
    assert check_responses(stream(*kinds[1:]), True) == (CONTENT_CHUNKS + 1, None)
    assert check_responses(stream(*kinds[2:]), True)[1] is not None  # a delta short
    assert check_responses(b'{"object":"response","output":[]}', False) == (0, None)
    assert check_responses(b'{"object":"chat.completion","choices":[]}', False)[1] is not None


@pytest.mark.parametrize("name", ["responses-openai", "responses-stored"])
def test_wrk_sends_the_callers_body_to_the_callers_url(name: str) -> None:
    path = PATHS[name]
    proxy = lua_script(Target("proxy", name, 1, path.caller, None), True)
    direct = lua_script(Target("direct", name, 1, path.direct, None), False)
    assert 'wrk.path = "/v1/responses"' in proxy and '\\"stream\\":true' in proxy
    assert f'\\"store\\":{str(name == "responses-stored").lower()}' in proxy
    assert '"X-API-Key"' in proxy and '"X-API-Key"' not in direct
    assert f"wrk.path = {lua_string(path.direct.path.encode())}" in direct


def test_throughput_target_is_nine_tenths_of_the_relay() -> None:
    rows = rows_by_key(by_path={"openai": path_results("openai", relay_rps=1000, proxy_rps=900, proxy_cpu_ms=0.2)})
    assert rows[f"openai.unary c={C}.rps"].met is True
    rows = rows_by_key(by_path={"openai": path_results("openai", relay_rps=1000, proxy_rps=899, proxy_cpu_ms=0.2)})
    row = rows[f"openai.unary c={C}.rps"]
    assert row.met is False
    assert row.cells()[4] == "0.90" and row.met_text() == "NOT MET"


def test_added_latency_is_judged_against_the_relays() -> None:
    # direct p50 0.1 ms, relay 0.4 ms: the relay adds 0.3, so the proxy may add up to 0.4.
    ok = rows_by_key(by_path={"openai": path_results("openai", 1000, 900, 0.2, proxy_p50=0.5)})
    late = rows_by_key(by_path={"openai": path_results("openai", 1000, 900, 0.2, proxy_p50=0.51)})
    assert ok["openai.unary c=1.added_p50"].met is True
    assert late["openai.unary c=1.added_p50"].met is False


def test_responses_paths_are_judged_against_the_chat_passthrough_and_their_unstored_twin() -> None:
    by_path = {"openai": path_results("openai", 1000, 900, proxy_cpu_ms=0.2),
               "responses-openai": path_results("responses-openai", 1000, 880, proxy_cpu_ms=0.23),
               "responses-anthropic": path_results("responses-anthropic", 1000, 800, proxy_cpu_ms=0.29, proxy_p50=0.6),
               "responses-stored": path_results("responses-stored", 1000, 700, proxy_cpu_ms=0.4, proxy_p50=0.85)}
    rows = rows_by_key(by_path=by_path)
    assert rows[f"responses-openai.unary c={C}.cpu_ms"].met is False  # 1.15x: native is held to 1.1x
    assert rows[f"responses-anthropic.stream c={C}.cpu_ms"].met is True  # 1.45x of 1.5x
    stored_cpu = rows[f"responses-stored.unary c={C}.cpu_ms"]
    assert stored_cpu.met_text() == "" and "is 2.00x" in stored_cpu.target  # reported, not judged
    added = rows["responses-stored.unary c=1.added_p50"]
    assert added.proxy == pytest.approx(0.25) and added.met is False
    assert added.target == "proxy <= 0.2 ms (relay: 0.000)"  # the same direct call on both paths
    by_path["responses-stored"] = path_results("responses-stored", 1000, 700, proxy_cpu_ms=0.4, proxy_p50=0.79)
    assert rows_by_key(by_path=by_path)["responses-stored.stream c=1.added_p50"].met is True
    assert "responses-stored.unary c=1.added_p50" not in rows_by_key(by_path={
        p: r for p, r in by_path.items() if p != "responses-anthropic"})


def test_limits_are_judged_against_the_passthrough_without_them() -> None:
    # openai: 900 requests/s at c=N, p50 0.5 ms at c=1. Limits on may cost a fifth of the rate and add
    # 0.1 ms (SQLite) or 0.3 ms (Redis) to the p50, in the same run.
    by_path = {"openai": path_results("openai", 1000, 900, proxy_cpu_ms=0.2),
               "limits-sqlite": path_results("limits-sqlite", 1000, 720, proxy_cpu_ms=0.25, proxy_p50=0.6),
               "limits-redis": path_results("limits-redis", 1000, 719, proxy_cpu_ms=0.3, proxy_p50=0.81)}
    rows = rows_by_key(by_path=by_path)
    assert rows[f"limits-sqlite.unary c={C}.rps"].met is True  # 0.8x exactly
    assert rows[f"limits-redis.unary c={C}.rps"].met is False
    assert rows[f"limits-redis.unary c={C}.rps"].target == "proxy >= 0.8x openai's 900"
    assert rows["limits-sqlite.unary c=1.added_p50"].proxy == pytest.approx(0.1)
    assert rows["limits-sqlite.unary c=1.added_p50"].met is True
    assert rows["limits-redis.stream c=1.added_p50"].met is False  # 0.31 ms
    assert rows["limits-redis.stream c=1.added_p50"].target.startswith("proxy <= 0.3 ms")
    assert rows[f"limits-sqlite.unary c={C}.cpu_ms"].met_text() == ""  # reported, not judged
    assert f"responses-stored.unary c={C}.rps" not in rows_by_key(by_path={  # no rate target of its own
        "openai": by_path["openai"], "responses-anthropic": path_results("responses-anthropic", 1000, 800, 0.3),
        "responses-stored": path_results("responses-stored", 1000, 100, 0.3)})


def test_messages_cpu_is_judged_native_and_translated() -> None:
    by_path = {"openai": path_results("openai", 1000, 900, proxy_cpu_ms=0.2),
               "messages-anthropic": path_results("messages-anthropic", 1000, 880, proxy_cpu_ms=0.22),
               "messages-openai": path_results("messages-openai", 1000, 800, proxy_cpu_ms=0.31)}
    rows = rows_by_key(by_path=by_path)
    assert rows[f"messages-anthropic.unary c={C}.cpu_ms"].met is True  # 1.1x exactly
    assert rows[f"messages-openai.stream c={C}.cpu_ms"].met is False  # 1.55x of 1.5x
    assert rows[f"messages-openai.stream c={C}.cpu_ms"].target.startswith("<= 1.5x openai's")


def test_translation_cpu_is_judged_against_the_passthrough() -> None:
    by_path = {"openai": path_results("openai", 1000, 900, proxy_cpu_ms=0.2),
               "anthropic": path_results("anthropic", 1000, 800, proxy_cpu_ms=0.3),
               "bedrock": path_results("bedrock", 1000, 700, proxy_cpu_ms=0.31)}
    rows = rows_by_key(by_path=by_path, sigv4=62.0)
    assert rows[f"anthropic.unary c={C}.cpu_ms"].met is True  # 1.5x exactly
    assert rows[f"bedrock.stream c={C}.cpu_ms"].met is False  # 1.55x
    assert "is 1.55x" in rows[f"bedrock.stream c={C}.cpu_ms"].target
    sigv4 = rows["sigv4.microbench_us"]
    assert sigv4.met_text() == "" and "20% of bedrock's proxy CPU/req" in sigv4.target


def test_paced_rss_and_failed_requests() -> None:
    by_path = {"openai": path_results("openai", 1000, 950, 0.2)}
    assert "paced.ttfc_p50" not in rows_by_key(by_path=by_path)
    by_path["openai"].update({("direct", PACED.name): run("openai", "direct", PACED.name, 500, ttfc=[10.0, 12.0]),
                              ("relay", PACED.name): run("openai", "relay", PACED.name, 500, ttfc=[10.5, 12.0], cpu_ms=0.6),
                              ("proxy", PACED.name): run("openai", "proxy", PACED.name, 500, ttfc=[14.0, 16.0],
                                                         cpu_ms=1.2, errors=2)})
    rows = rows_by_key(by_path=by_path)
    assert rows["paced.ttfc_p50"].met is True  # 14 <= 10 + 5
    assert rows["paced.hop_cpu"].met is False  # 0.6 of a core
    assert rows["rss.idle"].met is True
    assert rows["errors"].met is False and rows["errors"].proxy == 2


def test_targets_without_their_reference_are_not_judged() -> None:
    results = path_results("openai", 1000, 900, 0.2)
    results = {key: m for key, m in results.items() if key[0] != "relay"}
    rows = rows_by_key(by_path={"openai": results})
    assert rows[f"openai.unary c={C}.rps"].met is None
    assert rows[f"openai.unary c={C}.rps"].met_text() == "n/a"
    lines = summary_lines(list(summary_rows({"openai": results}, {}, None, C)), [], "wrk")
    assert any(line.startswith("targets met: ") and "n/a" in line for line in lines)


def test_markdown_table_is_aligned() -> None:
    rows = summary_rows({"openai": path_results("openai", 1000, 900, 0.2)}, {}, None, C)
    table = markdown_table(rows)
    assert len(table) == len(rows) + 2
    assert len({len(line) for line in table}) == 1
    assert table[1].startswith("|---") and table[1].count(":|") == 4  # the four number columns align right


def test_notes_name_capped_and_disturbed_runs() -> None:
    results = path_results("openai", 1000, 900, 0.2)
    results["proxy", f"unary c={C}"].generator_busiest = 0.95
    results["relay", "unary c=1"].other_cpu = 0.4
    notes = limit_notes({"openai": results}, NO_PIN, C)
    assert any("openai proxy unary c=50: the load side was the limit" in note for note in notes)
    assert any("1 of 12 runs disturbed" in note for note in notes)


def test_wrk_lua_strings_and_done_line() -> None:
    assert lua_string(b'a"b\\c\n\x00') == '"a\\"b\\\\c\\010\\000"'
    numbers = parse_done('Running 1s test\nWRKJSON {"requests": 12, "p50_us": 250}\n')
    assert numbers == {"requests": 12, "p50_us": 250}
    with pytest.raises(RuntimeError, match="no results"):
        parse_done("unable to connect")


@pytest.mark.slow
def test_the_sigv4_micro_benchmark_signs_with_the_proxys_own_function() -> None:
    best, median = sigv4_microbench(None, batches=1)
    assert 0 < best == median < 10_000  # microseconds per signature


def test_connections_split_and_spread_over_workers() -> None:
    assert [len(d) for d in spread(50, 2, 0.0)] == [25, 25]
    assert [len(d) for d in spread(5, 2, 0.0)] == [3, 2]
    assert spread(1, 4, 0.0) == [(0.0,)]
    first, second = spread(4, 2, 0.2)
    assert (first, second) == (pytest.approx((0.0, 0.1)), pytest.approx((0.05, 0.15)))  # interleaved
    assert spread(3, 1, 0.0) == [(0.0, 0.0, 0.0)]


async def test_the_lean_upstream_answers_every_path_through_the_bare_relay() -> None:
    # Real servers on loopback: the lean upstream, the relay in front of it, each path's direct requests.
    runners = []
    try:
        upstream = web.AppRunner(lean_app())
        runners.append(upstream)
        await upstream.setup()
        await web.TCPSite(upstream, "127.0.0.1", 0).start()
        relay = web.AppRunner(bare_relay_app(f"http://127.0.0.1:{upstream.addresses[0][1]}"))
        runners.append(relay)
        await relay.setup()
        await web.TCPSite(relay, "127.0.0.1", 0).start()
        port = relay.addresses[0][1]
        async with aiohttp.ClientSession() as session:
            for path in PATHS.values():
                for stream in (False, True):
                    url = URL(f"http://127.0.0.1:{port}{path.direct.url_path(stream)}", encoded=True)
                    async with session.post(url, data=path.direct.body(stream), headers=path.direct.headers) as resp:
                        assert resp.status == 200, (path.name, stream)
                        assert path.direct.check(await resp.read(), stream)[1] is None, (path.name, stream)
                async with session.post(URL(f"http://127.0.0.1:{port}{path.direct.path}", encoded=True),
                                        data=path.direct.body(False)) as resp:
                    assert resp.status == 401  # no key: refused, as a real API does first
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


@pytest.fixture
def lean_url(servers: ServerThread) -> Iterator[str]:
    """The lean upstream on the test servers' loop."""
    async def start() -> web.AppRunner:
        runner = web.AppRunner(lean_app())
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    runner = servers.run(start())
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    servers.run(runner.cleanup())


def test_every_paths_callers_requests_come_back_whole_through_the_proxy(
        lean_url: str, make_proxy: Callable[..., Proxy]) -> None:
    # The proxy on the bench's own config in front of the lean upstream: each path's caller call, and
    # where the proxy sent it (the upstream's last URL), as the bench's sanity check reads them.
    proxy = make_proxy(text=proxy_config(lean_url))
    upstream_port, proxy_port = (int(url.rsplit(":", 1)[1]) for url in (lean_url, proxy.url))
    targets = [Target(name, path.name, port, call, None) for path in PATHS.values()
               for name, port, call in (("direct", upstream_port, path.direct), ("proxy", proxy_port, path.caller))]
    problems, chunks, detours = sanity_check(targets, upstream_port)
    assert problems == []
    assert {chunks[name, "proxy"] for name in ("responses-openai", "responses-anthropic", "responses-stored")} == {26}
    assert chunks["openai", "proxy"] == chunks["anthropic", "proxy"] == chunks["limits-sqlite", "proxy"] == STREAM_CHUNKS
    # Native: Anthropic's 23 events as they came; translated: the same grammar with the ping it sends.
    assert (chunks["messages-anthropic", "proxy"], chunks["messages-openai", "proxy"]) == (23, 24)
    assert detours == []  # responses-openai and messages-anthropic included: passed through, not translated
    # The limited principal's requests are checked and settled (its budget in the answer's headers,
    # counters in STATE_DIRECTORY's limits.db); the plain key's carry no limits.
    for name, limited in (("openai", False), ("limits-sqlite", True)):
        conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=10)
        caller = PATHS[name].caller
        conn.request("POST", caller.path, caller.body(False), caller.headers)
        response = conn.getresponse()
        assert response.status == 200 and caller.check(response.read(), False)[1] is None
        assert (response.getheader("x-ratelimit-limit-requests") == str(10**12)) is limited
        conn.close()
    assert (Path(proxy.config.state.path) / "limits.db").is_file()
    # The stored variant's answers are kept (in STATE_DIRECTORY's SQLite files, where the bench's proxy
    # keeps them: its temporary directory), the other's not.
    for name, kept in (("responses-anthropic", False), ("responses-stored", True)):
        caller = PATHS[name].caller
        status, body = http_request(proxy_port, "POST", caller.path, caller.body(False), caller.headers)
        assert status == 200 and orjson.loads(body)["store"] is kept
    assert (Path(proxy.config.state.path) / "responses.db").is_file()

    async def aiohttp_generator_requests() -> list[tuple[str, str, int, str | None]]:
        # What the aiohttp load generator's workers send, one request each, through the proxy.
        sent = []
        async with aiohttp.ClientSession() as session:
            for target in (t for t in targets if t.name == "proxy"):
                for scenario in load_scenarios(1)[::2]:
                    spec, = load_specs(target, scenario, workers=2, warmup=0.0, seconds=0.0)
                    chunks, problem, _ = await one_request(session, spec, 0.0)
                    sent.append((target.bench_path, spec.url.path, chunks, problem))
        return sent

    sent = asyncio.run(aiohttp_generator_requests())
    assert {(path, url) for path, url, *_ in sent if path.startswith("messages-")} == {
        (name, "/v1/messages") for name in ("messages-anthropic", "messages-openai")}
    assert [problem for *_, problem in sent] == [None] * len(sent)
    assert {(path, url, chunks) for path, url, chunks, _ in sent if path.startswith("responses-")} == {
        (name, "/v1/responses", chunks) for name in ("responses-openai", "responses-anthropic", "responses-stored")
        for chunks in (0, 26)}


def test_limits_redis_goes_through_a_proxy_over_redis_under_a_prefix_of_the_runs_own(
        lean_url: str, make_proxy: Callable[..., Proxy], redis_url: str) -> None:
    caller, plain = PATHS["limits-redis"].caller, PATHS["openai"].caller
    with redis_state(redis_url) as state:
        assert state is not None and state["url"] == redis_url
        prefix = state["key_prefix"]
        proxy = make_proxy(text=proxy_config(lean_url, state))
        port = int(proxy.url.rsplit(":", 1)[1])
        status, body = http_request(port, "POST", plain.path, plain.body(False), plain.headers)
        assert status == 200 and redis_keys(prefix) == []  # a key without limits touches no store
        for stream in (False, True):
            status, body = http_request(port, "POST", caller.path, caller.body(stream), caller.headers)
            assert status == 200 and caller.check(body, stream)[1] is None
        assert any(b"{tw:bench-limited}" in key for key in redis_keys(prefix))  # the principal's counters
    assert redis_keys(prefix) == []  # deleted on the way out
    with redis_state("redis://127.0.0.1:1/0") as nothing, redis_state(None) as unasked:
        assert nothing is None and unasked is None  # limits-redis is then skipped
