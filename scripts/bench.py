"""Benchmark: what tensorwall-proxy costs compared with calling the upstream directly and with a bare relay.

    python scripts/bench.py [--path openai,anthropic,…,limits-redis] [--seconds 3] [--warmup 1]
                            [--concurrency 50] [--generator auto|wrk|aiohttp] [--workers 2]
                            [--quick] [--no-paced] [--no-pin] [--json bench-results.json]

`make bench` runs it with no arguments, in about four minutes; `--quick` is a smoke run of about a
minute (0.75 s per run after 0.25 s of warm-up). The code is in scripts/benchkit/.

It starts three servers on free 127.0.0.1 ports, pinned to CPUs (the proxy alone on one): a lean
upstream answering from pre-built bytes (benchkit/lean_upstream.py; the test suite's fake would
measure itself), the proxy (`python -m tensorwall_proxy serve`) and a bare aiohttp relay of about
thirty lines (same path, same bytes, no parsing), the floor any aiohttp hop pays. In the same run,
for every path, it sends the provider's request direct and through the relay, and the caller's
request (chat completions, Responses or Messages) through the proxy, which sends that same provider request:

    openai               chat, model gpt-4o, passed through (the baseline of every CPU target)
    anthropic            chat, model claude-3-5-sonnet-20241022, translated to Anthropic's Messages API
    vertex               chat, model gemini-2.5-flash, translated to Vertex AI's Gemini API
    bedrock              chat, model bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0, translated to
                         Bedrock's Converse API (streams as the binary AWS event stream), Bedrock API key
    responses-openai     Responses (`POST /v1/responses`, store false), model gpt-4o, passed through to
                         OpenAI's /responses (native); the proxy's CPU per request <= 1.1x openai's
    responses-anthropic  Responses, store false, claude-3-5-sonnet-20241022, translated to Anthropic's
                         Messages API; <= 1.5x openai's, like every translating path
    responses-stored     the same with store true: the proxy keeps the conversation; it may add at
                         most 0.2 ms to responses-anthropic's p50 at c=1
    messages-anthropic   Messages (`POST /v1/messages`, the gateway key as X-API-Key, the provider key as
                         a Bearer), claude-3-5-sonnet-20241022, passed through to Anthropic's /messages
                         (native); <= 1.1x openai's CPU per request
    messages-openai      Messages, gpt-4o, translated to OpenAI's chat; <= 1.5x openai's
    limits-sqlite        openai's request under a principal's key with limits never reached: every
                         request checked and settled in SQLite; requests/s at c=N >= 0.8x openai's, p50
                         at c=1 <= openai's + 0.1 ms
    limits-redis         the same through a second proxy whose state store is Redis ($REDIS_URL, default
                         redis://127.0.0.1:6379/0; a key prefix of the run's own, deleted at the end;
                         skipped with a line saying so when no Redis answers); p50 <= openai's + 0.3 ms

in four scenarios (unary and 20-chunk streams, at c=1 and c=--concurrency), then a paced test: 100
concurrent streams whose chunks come 10 ms apart, like a model's. The load is wrk when installed,
else `--workers` aiohttp processes (always those for the paced test, the only generator that sees a
stream's first chunk). Each run warms up, then the CPU time of the upstream, the hop and the load
generator is read from /proc over exactly the measured window. Before anything is measured every
target's answers are checked whole; a failure stops the run with the hop's log. SigV4 signing is
timed alone (timeit) on the proxy's idle CPU.

A path brings what it is compared with (openai, and responses-anthropic for responses-stored). The
sanity check also reads which URL the proxy's request reached on the upstream: where that is not the
direct call's (a native path the proxy translated), the summary says so under the table.

How to read it: the summary table at the end (Markdown, to paste). A row per measurement; columns
direct, relay, proxy, proxy/relay, the target and whether it was met (benchkit/summary.py). `CPU
ms/req` is the hop's own CPU time per request in the same window: one core of proxy serves about
1000 / that requests a second, whatever the load generator managed. Under the table, every judged
run that the load side capped (its ratio is then not the hops') or that other work on the machine
disturbed is named. `--json` keeps the summary and every run.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

# `tests.fakes` (the event-stream encoder) lives in the repository, not in the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchkit.lean_upstream import lean_app
from benchkit.paths import PATHS, path_names
from benchkit.servers import bare_relay_app, run_app
from benchkit.session import run

QUICK_SECONDS, QUICK_WARMUP = 0.75, 0.25


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark tensorwall-proxy against direct upstream calls and a bare aiohttp relay.")
    parser.add_argument("--path", type=path_names, default=path_names(",".join(PATHS)), metavar="PATH[,PATH]",
                        help=f"ways through the proxy to measure, of {', '.join(PATHS)} (default all); a "
                             "path brings what it is compared with (openai; responses-stored: responses-anthropic)")
    parser.add_argument("--seconds", type=float, help="measured seconds per run (default 3; --quick 0.75)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds before each run (default 1; --quick 0.25)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run of about a minute: --seconds {QUICK_SECONDS:g} --warmup {QUICK_WARMUP:g}")
    parser.add_argument("--concurrency", type=int, default=50,
                        help="connections of the concurrent runs (default 50)")
    parser.add_argument("--generator", choices=("auto", "wrk", "aiohttp"), default="auto",
                        help="load generator: wrk, the aiohttp worker processes, or auto (default: wrk when "
                             "installed); the paced test always uses aiohttp")
    parser.add_argument("--workers", type=int, default=2,
                        help="aiohttp load generator processes (default 2; also the paced test's)")
    parser.add_argument("--no-paced", action="store_true", help="skip the paced test (100 streams, 10 ms between chunks)")
    parser.add_argument("--json", default="bench-results.json",
                        help="where to write the results (default ./bench-results.json)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    # Internal: how the benchmark runs its own servers in subprocesses.
    parser.add_argument("--serve-lean-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-relay", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--relay-to", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = QUICK_SECONDS if args.quick else 3.0
    if args.warmup is None:
        args.warmup = QUICK_WARMUP if args.quick else 1.0
    if args.seconds <= 0 or args.warmup < 0 or args.concurrency < 1 or args.workers < 1:
        parser.error("--seconds must be > 0, --warmup >= 0, --concurrency and --workers >= 1")
    if args.generator == "wrk" and shutil.which("wrk") is None:
        parser.error("--generator wrk: wrk is not on PATH")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_lean_upstream is not None:
        return run_app(lean_app(), args.serve_lean_upstream)
    if args.serve_relay is not None:
        return run_app(bare_relay_app(args.relay_to), args.serve_relay)
    # SIGTERM ends us like Ctrl-C does, so the finally blocks stop the servers and workers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        args.generator = args.generator if args.generator != "auto" else ("wrk" if shutil.which("wrk") else "aiohttp")
        return run(args)
    except KeyboardInterrupt:
        print("interrupted; servers and workers stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
