"""The benchmark kit's pure parts, which every number of `make bench`'s summary goes through.

The kit runs servers and load generators only under scripts/bench.py; what is tested here is what
turns their counts into the summary: percentiles, per-request CPU, the answer checks, the targets'
judgements and the table.
"""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from scripts.benchkit.common import CONTENT_CHUNKS, STREAM_CHUNKS, percentile
from scripts.benchkit.lean_upstream import SHAPES, lean_app
from scripts.benchkit.load import split, spread
from scripts.benchkit.microbench import sigv4_microbench
from scripts.benchkit.paths import PATHS, check_openai, path_names
from scripts.benchkit.servers import Pinning, WindowCpu, bare_relay_app
from scripts.benchkit.summary import SummaryRow, limit_notes, markdown_table, summary_lines, summary_rows
from scripts.benchkit.targets import Measurement
from scripts.benchkit.wrk import lua_string, parse_done

C = 50
NO_PIN = Pinning(None, None, None, "none")


def run(path: str, target: str, scenario: str, rps: float, *, p50: float = 1.0, cpu_ms: float | None = None,
        errors: int = 0, ttfc: list[float] | None = None) -> Measurement:
    """A one-second run of `rps` requests whose hop spent `cpu_ms` of CPU on each."""
    hop_cpu = None if cpu_ms is None else cpu_ms * rps / 1000
    return Measurement(path, target, scenario, "wrk -t2", int(rps), int(rps) * 20, errors, [], 1.0, p50, p50 * 2,
                       0.5, 0.3, ttfc or [], hop_cpu=hop_cpu)


def path_results(path: str, relay_rps: float, proxy_rps: float, proxy_cpu_ms: float,
                 proxy_p50: float = 0.5) -> dict[tuple[str, str], Measurement]:
    results = {}
    for scenario in ("unary c=1", f"unary c={C}", "stream c=1", f"stream c={C}"):
        results["direct", scenario] = run(path, "direct", scenario, 10_000, p50=0.1)
        results["relay", scenario] = run(path, "relay", scenario, relay_rps, p50=0.4, cpu_ms=0.1)
        results["proxy", scenario] = run(path, "proxy", scenario, proxy_rps, p50=proxy_p50, cpu_ms=proxy_cpu_ms)
    return results


def rows_by_key(by_path: dict[str, dict[tuple[str, str], Measurement]],
                paced: dict[str, Measurement] | None = None, sigv4: float | None = None) -> dict[str, SummaryRow]:
    rows = summary_rows(by_path, paced, {"relay": {"idle": 40.0}, "proxy": {"idle": 45.0}}, sigv4, C)
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
    assert (direct.ttfc_p50_ms, direct.ttfc_p99_ms) == (11.0, 30.0)


@pytest.mark.parametrize("name", list(PATHS))
def test_each_lean_stream_passes_its_paths_check(name: str) -> None:
    # The lean upstream's answers (Bedrock's framed by the fake's event-stream encoder) read back whole.
    shape = SHAPES[name]()
    check = PATHS[name].direct_check
    assert check(shape.unary, False) == (0, None)
    stream = b"".join([*shape.events, *shape.end])
    chunks, problem = check(stream, True)
    assert problem is None
    assert chunks == {"openai": STREAM_CHUNKS, "anthropic": 23, "vertex": CONTENT_CHUNKS, "bedrock": 22}[name]
    assert check(stream[: len(stream) // 2], True)[1] is not None
    assert check(b"<html>busy</html>", False)[1] is not None


def test_the_callers_stream_check_wants_twenty_chunks_and_done() -> None:
    chunk = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
    assert check_openai(chunk * 20 + b"data: [DONE]\n\n", True) == (20, None)
    assert check_openai(chunk * 19 + b"data: [DONE]\n\n", True)[1] is not None
    assert check_openai(chunk * 20, True)[1] is not None


def test_a_translating_path_brings_the_baseline() -> None:
    assert path_names("vertex") == ["openai", "vertex"]
    assert path_names("openai") == ["openai"]
    assert path_names("bedrock,openai,bedrock") == ["openai", "bedrock"]


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
    paced = {"direct": run("openai", "direct", "paced", 500, ttfc=[10.0, 12.0]),
             "relay": run("openai", "relay", "paced", 500, ttfc=[10.5, 12.0], cpu_ms=0.6),
             "proxy": run("openai", "proxy", "paced", 500, ttfc=[14.0, 16.0], cpu_ms=1.2, errors=2)}
    by_path = {"openai": path_results("openai", 1000, 950, 0.2)}
    rows = rows_by_key(by_path=by_path, paced=paced)
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
    lines = summary_lines(list(summary_rows({"openai": results}, None, {}, None, C)), [], "wrk")
    assert any(line.startswith("targets met: ") and "n/a" in line for line in lines)


def test_markdown_table_is_aligned() -> None:
    rows = summary_rows({"openai": path_results("openai", 1000, 900, 0.2)}, None, {}, None, C)
    table = markdown_table(rows)
    assert len(table) == len(rows) + 2
    assert len({len(line) for line in table}) == 1
    assert table[1].startswith("|---") and table[1].count(":|") == 4  # the four number columns align right


def test_notes_name_capped_and_disturbed_runs() -> None:
    results = path_results("openai", 1000, 900, 0.2)
    results["proxy", f"unary c={C}"].generator_busiest = 0.95
    results["relay", "unary c=1"].other_cpu = 0.4
    notes = limit_notes({"openai": results}, None, NO_PIN, C)
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
    assert split(50, 2) == [25, 25]
    assert split(5, 2) == [3, 2]
    assert split(1, 4) == [1]
    delays = spread([2, 2], 0.2)
    assert sorted(d for worker in delays for d in worker) == pytest.approx([0.0, 0.05, 0.1, 0.15])
    assert spread([3], 0.0) == [(0.0, 0.0, 0.0)]


async def test_the_lean_upstream_answers_every_path_through_the_bare_relay() -> None:
    # Real servers on loopback: the lean upstream, the relay in front of it, each path's direct requests.
    runners = []
    try:
        upstream = web.AppRunner(lean_app(list(PATHS.values())))
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
                    url = URL(f"http://127.0.0.1:{port}{path.direct_target(stream)}", encoded=True)
                    async with session.post(url, data=path.direct_body(stream), headers=path.direct_headers) as resp:
                        assert resp.status == 200, (path.name, stream)
                        assert path.direct_check(await resp.read(), stream)[1] is None, (path.name, stream)
                async with session.post(URL(f"http://127.0.0.1:{port}{path.direct_path}", encoded=True),
                                        data=path.direct_body(False)) as resp:
                    assert resp.status == 401  # no key: refused, as a real API does first
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
