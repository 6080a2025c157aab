"""Run the test suite's fake upstream by hand, for demos and load tests.

    python scripts/fake_upstream.py [--host 127.0.0.1] [--port 9100] [--delay 2.0]

It serves until Ctrl-C or SIGTERM and exits 0. Point a provider's base URL at the flavor's prefix
(`http://127.0.0.1:9100/groq/openai/v1`, ...); see tests/fakes/upstream.py for the fault words.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

# `tests.fakes` lives in the repository, not in the installed package: import it from the checkout
# this script belongs to, wherever it is run from.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes import FLAVORS, FakeUpstream


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the fake LLM upstream (tests/fakes) by hand.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9100, help="port to listen on, 0 for any (default 9100)")
    parser.add_argument(
        "--delay", type=float, default=2.0, help="seconds the slow-* faults wait (default 2.0)"
    )
    parser.add_argument("--access-log", action="store_true", help="log every request to stderr")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    """Start the fake, print where it listens, and wait for SIGINT or SIGTERM."""
    fake = FakeUpstream(delay=args.delay, access_log=args.access_log)
    base_url = await fake.start(args.host, args.port)
    prefixes = " ".join(f"/{name}" for name in FLAVORS)
    print(f"fake upstream on {base_url} (flavors: {prefixes}; bare /v1 = openai)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # add_signal_handler is missing on Windows; Ctrl-C then raises KeyboardInterrupt instead.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.access_log:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
