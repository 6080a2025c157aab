"""Benchmark: what tensorwall-proxy costs compared with calling the upstream directly and with a bare relay.

    python scripts/bench.py [--path openai,anthropic,vertex,bedrock] [--seconds 3] [--warmup 1]
                            [--concurrency 50] [--generator auto|wrk|aiohttp] [--quick]
                            [--no-relay] [--no-paced] [--upstream lean|fake] [--workers 2]
                            [--json bench-results.json] [--no-pin]

`make bench` runs it with no arguments: the four default paths, the relay, the paced test and the
SigV4 micro-benchmark, in about four minutes. `--quick` is a smoke run of about a minute (0.75 s
per run after 0.25 s of warm-up; `--seconds`/`--warmup` still override it).

What it does. It starts three servers as subprocesses on free 127.0.0.1 ports, pinned to CPUs
(printed at the top; benchkit/servers.py): an upstream (by default a lean aiohttp server,
benchkit/lean_upstream.py, which answers from pre-built bytes; `--upstream fake` uses tests/fakes
instead, which is heavier and records every request), the proxy (`python -m tensorwall_proxy
serve`) and a bare aiohttp relay of about thirty lines (benchkit/relay.py: same path, same bytes,
no parsing, no routing), the floor any aiohttp-based proxy pays for the extra hop. The relay runs
on the proxy's CPU and is part of every run (`--no-relay` skips it), since the proxy's targets are
ratios against it. Then, in the same run, it sends the same chat request *direct* (to the
upstream's own URL), *through the relay* (the same request) and *through the proxy*
(`/v1/chat/completions` with `X-API-Key` and the caller's `Authorization: Bearer`), in four
scenarios each:

    unary  c=1     one connection, one request after the other: latency p50/p99 and requests/s
    unary  c=N     N connections (default 50): requests/s, and the hop's CPU per request
    stream c=1     20-chunk SSE streams (to the caller), each read to the end: streams/s and chunks/s
    stream c=N

and a paced test (benchkit/paced.py; `--no-paced` skips it): 100 concurrent streams from an
upstream that sends its 20 chunks 10 ms apart, like a model, direct, through the relay and
through the proxy: time to first chunk and stream time, p50 and p99, and the hop's CPU as a share
of one core.

The load. With `--generator auto` (the default) it is wrk when `wrk` is on PATH
(benchkit/wrk.py: a Lua script per request, `--latency`, one thread at c=1 and at most two
otherwise), else `--workers` aiohttp processes, each with its own event loop and keep-alive session
(benchkit/load.py); `--generator` forces either. The paced test always uses the aiohttp workers,
the only generator that sees when a stream's first chunk arrives. Each run warms up first (an
unmeasured run of `--warmup` seconds), then the parent samples the CPU time of the upstream, the
hop (proxy or relay) and the load generator from /proc over exactly the measured window.

Before anything is measured, one unary and one streamed request per path and target, and one
paced stream per target, are checked whole (wrk itself reads bodies without looking at them);
a failure stops the run with the hop's log.

Paths. A path (`--path`; benchkit/paths.py) is one way through the proxy: which model the caller
asks for, how the proxy's provider is configured, which URL, headers and body a direct call uses
and how its answer is checked, and which shape the lean upstream speaks. There are five:

    openai     model gpt-4o: the proxy passes the OpenAI request and answer through
    anthropic  model claude-3-5-sonnet-20241022: the caller still speaks OpenAI to the proxy, which
               translates to Anthropic's Messages API (POST /anthropic/v1/messages, x-api-key,
               anthropic-version) and the answer and stream events back to OpenAI's shapes
    vertex     model gemini-2.5-flash: the proxy translates to Vertex AI's Gemini API (POST
               /vertex/v1/projects/bench-project/locations/us-central1/publishers/google/models/
               gemini-2.5-flash:generateContent, or :streamGenerateContent?alt=sse for streams),
               forwarding the caller's Bearer key as the OAuth token, and the answer back
    bedrock    model bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0 (the `provider/model` form):
               the proxy translates to AWS Bedrock's Converse API (POST /bedrock/model/anthropic.
               claude-3-5-sonnet-20240620-v1%3A0/converse, the model id percent-encoded, or
               /converse-stream for streams, answered as a binary AWS event stream), forwarding the
               caller's Bearer key as a Bedrock API key (`Authorization: Bearer`), and the answer back
    bedrock-sigv4  the same calls (model bedrock-sigv4/..., under /bedrock-sigv4/model/...) from a
               bedrock provider with AWS keys in its YAML, so the proxy signs every call with
               botocore's SigV4 instead (the lean upstream checks the `AWS4-HMAC-SHA256` scheme, not
               the signature): the cost of signing, against `bedrock`. Not in the default run.

`--path` takes a comma-separated list and defaults to openai, anthropic, vertex and bedrock. A
translating path always brings `openai` along as its baseline: `--path vertex` runs openai and
vertex, `--path openai` runs the passthrough alone, and `--path bedrock-sigv4` runs openai,
bedrock and bedrock-sigv4. All paths share one upstream, one proxy process (configured with every
path's provider) and one relay, and the scenarios interleave the paths (unary c=1 for every path
and target, then unary c=N, ...), so the paths see the same conditions. Each path gets its own
table; with more than one path, a "translation overhead" table sets each translating path's proxy
CPU per request/stream and added latency at c=1 against openai's, as a ratio and a difference:
what the translation costs on top of a passthrough hop. The paced test runs on the openai path
(model gpt-4o-paced, which the proxy routes to the openai provider and passes through).

SigV4. A micro-benchmark before the runs, in every run, times `tensorwall_proxy.upstream.
sign_sigv4` alone with timeit on the proxy's (idle) CPU, for one representative Converse call, in
microseconds per signature (benchkit/microbench.py). With `bedrock-sigv4`, a table sets that path
against `bedrock` alone: the same Converse calls, the same translation, a signature instead of an
API key, so `bedrock-sigv4-bedrock` in its CPU rows is what SigV4 costs the proxy per request (and
per stream: one signature each), and the micro-benchmark stands beside it. The difference in the
proxy also holds what goes with a signature there (the credentials frozen for each call, caches
colder than in a tight loop).

How to read it.
- The summary table at the end is the one to read first (and to paste: it is Markdown). A row per
  measurement; columns direct, relay, proxy, proxy/relay, the target and whether it was met. The
  targets: at c=N the proxy serves >= 0.9x the relay's requests/s and streams/s (openai path); at
  c=1 it adds at most 0.1 ms more to the p50 than the relay adds; in the paced test its time to
  first chunk p50 is within 5 ms of direct, and it uses < 0.5 of a core; its idle RSS is <= 50
  MiB; translating (anthropic, vertex, bedrock) costs it <= 1.5x the CPU per request and per
  stream of the openai passthrough (at c=N). Rows without a target are there to read the targets
  by; SigV4 is reported, not judged. Under the table, every relay or proxy run whose rate the load
  side capped is named: there proxy/relay is not the hops' ratio (benchkit/summary.py).
- `proxy/direct` below 1 for rates and above 1 for latencies is the cost of the extra hop;
  `proxy/relay` is what the proxy costs beyond the least an aiohttp hop can cost.
- `added ms` is proxy p50 - direct p50 (and p99): what one proxy hop adds. At c=1 nothing queues,
  so this is the hop itself: a second loopback round trip plus the proxy's work. Compare it with
  the relay's before blaming the proxy's code.
- `CPU ms/req` is the hop process's own user+system time divided by the requests completed in the
  same window. It does not depend on whether this machine could generate enough load: one core of
  proxy serves about 1000 / (ms per request) requests per second.
- "who was busy" gives every process's CPU as a share of one core per run (wrk's from its own
  /proc entry, the aiohttp workers' from their process time), and the "limit" lines say which one
  was saturated: the hop, the load generator (named, with its busiest thread or worker), or on 2
  CPUs the one CPU the generator shares with the upstream. A proxy rate capped by the load side is
  a lower bound, not the proxy's capacity; its CPU ms per request still holds. When no CPU was
  full, the run waited on something else: on a VM usually the wake-up of an idle vCPU, which the
  "wake-up probe" measures (a 1-byte ping-pong between the generator's CPU and the proxy's). On 2
  CPUs direct calls never cross CPUs (generator and upstream share one) while proxied ones cross
  four times per request, so slow wake-ups land on the hop's numbers only; `--no-pin` lets the
  scheduler keep most hand-offs on a running CPU.
- "others" in "who was busy" is the machine's busy time (/proc/stat) that none of the benchmark's
  processes account for, "steal" what the hypervisor took. A run where either passed 15% of a
  core is named as disturbed (under its verdicts, and under the summary when a row rests on it):
  something else ran on the machine, and the run's numbers are not the hop's alone. Rerun those
  on a quiet machine before reading them.
- Paced test: TTFC is from sending the request to receiving the first content-bearing SSE event
  (the first word, 10 ms after the role chunk), so direct's is about 10 ms plus a round trip; the
  proxy's minus direct's is what the hop adds before a user sees anything. Stream time is about
  190 ms of pacing plus the same. The hop's CPU share is what 100 slow streams cost it while it
  mostly waits.
- Streams: the caller gets 20 OpenAI chunks (role, 18 contents, finish) and [DONE] on every path.
  openai: the proxy asks the upstream for the usage chunk (to count tokens) and drops it, so the
  upstream sends one event more through the proxy than direct. anthropic: the upstream sends the
  same 23 named events either way (message_start, content_block_start, 18 text_delta,
  content_block_stop, message_delta, message_stop), and a direct run's chunks/s counts those events.
  vertex: the upstream sends the same 18 SSE events either way, one Gemini response per word (the
  last one with finishReason and usageMetadata), CRLF-framed and with no terminator, as Google
  sends them; the proxy makes the role chunk and a content chunk of the first, a content chunk of
  each other, and a content and the finish chunk of the last, and adds [DONE] when the upstream's
  response ends. A direct run's chunks/s counts those 18 events.
  bedrock: the upstream sends the same 22 event-stream messages either way (messageStart, 18
  contentBlockDelta, one per word, contentBlockStop, messageStop, metadata with the usage), each
  with its prelude, headers and CRCs; the proxy cuts them with botocore's parser and makes the role
  chunk of messageStart, a content chunk of each delta and the finish chunk of messageStop, and
  ends with [DONE] on metadata. A direct run cuts them by their length prefixes (cheap: it leaves
  the CRCs to the proxy, and to the lean upstream, which decodes its own frames with botocore's
  EventStreamBuffer once at start-up), and its chunks/s counts those 22 messages. With wrk,
  chunks/s is streams/s times the chunks the sanity check counted in that target's stream.
- RSS is of the one proxy (and relay) process that served every path: idle before the first run,
  loaded (the largest of the samples taken halfway through every run), the peak (VmHWM), and
  after the last run.

Every run is bounded (`--warmup` + `--seconds` each): by default 4 scenarios x 4 paths x 3 targets
(direct, relay, proxy) = 48 runs of 4 s (1 s warm-up + 3 s measured), then 3 paced runs of 4 s,
about four minutes in all; `--no-relay` makes it 32 runs, `--path bedrock-sigv4` 36. Results go
to `--json` (default ./bench-results.json): the summary rows with their targets and met flags, every
detailed run, the paced runs, the translation overhead, the SigV4 table and the micro-benchmark.

`--upstream fake` knows neither the `/bedrock-sigv4` prefix nor the paced model: measure
bedrock-sigv4 with the lean upstream; with the fake, the paced test is skipped.

The code is in scripts/benchkit/, a module for each part (its __init__ lists them); this file is
the command line, and how the benchmark starts its own servers (`--serve-lean-upstream PORT`,
`--serve-relay PORT --relay-to URL`, internal).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from benchkit.lean_upstream import lean_app
from benchkit.paths import BASELINE, DEFAULT_PATHS, PATHS, path_names
from benchkit.relay import bare_relay_app
from benchkit.servers import run_app
from benchkit.session import Options, run
from benchkit.wrk import find_wrk

QUICK_SECONDS, QUICK_WARMUP = 0.75, 0.25


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark tensorwall-proxy against direct upstream calls and a bare aiohttp relay.")
    parser.add_argument("--path", type=path_names, default=path_names(",".join(DEFAULT_PATHS)), metavar="PATH[,PATH]",
                        help=f"ways through the proxy to measure, of {', '.join(PATHS)} (default "
                             f"{','.join(DEFAULT_PATHS)}); a translating path brings {BASELINE} along as its "
                             "baseline, bedrock-sigv4 brings bedrock")
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
    parser.add_argument("--upstream", choices=("lean", "fake"), default="lean",
                        help="lean: fixed answers from benchkit/lean_upstream.py (default); fake: tests/fakes (heavier)")
    parser.add_argument("--no-relay", action="store_true",
                        help="skip the bare aiohttp relay (the baseline the proxy's targets are ratios against)")
    parser.add_argument("--relay", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old command lines
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
    if args.generator == "wrk" and find_wrk() is None:
        parser.error("--generator wrk: wrk is not on PATH")
    return args


def options(args: argparse.Namespace) -> Options:
    """The parsed command line as the session takes it, `auto` resolved."""
    generator = args.generator if args.generator != "auto" else ("wrk" if find_wrk() else "aiohttp")
    paced = not args.no_paced and args.upstream == "lean"
    if not args.no_paced and not paced:
        print("paced test skipped: the fake upstream has no paced model (use --upstream lean)")
    return Options(paths=list(args.path), seconds=args.seconds, warmup=args.warmup, concurrency=args.concurrency,
                   workers=args.workers, upstream=args.upstream, relay=not args.no_relay, paced=paced,
                   generator=generator, json=args.json, pin=not args.no_pin)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_lean_upstream is not None:
        return run_app(lean_app([PATHS[name] for name in args.path]), args.serve_lean_upstream)
    if args.serve_relay is not None:
        return run_app(bare_relay_app(args.relay_to), args.serve_relay)
    # SIGTERM ends us like Ctrl-C does, so the finally blocks stop the servers and workers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return run(options(args))
    except KeyboardInterrupt:
        print("interrupted; servers and workers stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
