"""The parts of scripts/bench.py, the benchmark of tensorwall-proxy against direct calls and a bare relay.

bench.py is the command line (and its docstring the guide to reading the output); this package
holds the rest, a module for each thing it owns:

    common         where things listen, keys, the prompt, limits, percentile, optional uvloop
    wire           the request bodies each provider API gets, and the checks that answers are whole
    eventstream    Bedrock's binary AWS event-stream framing
    paths          the ways through the proxy (openai, anthropic, vertex, bedrock, bedrock-sigv4)
                   and the proxy's config for them
    lean_upstream  the fast upstream (and its paced variant)
    relay          the bare aiohttp pass-through relay, the baseline
    servers        pinning, starting and stopping the servers, CPU and RSS from /proc
    wakeprobe      how long waking an idle CPU takes on this host
    targets        direct / relay / proxy targets, the scenarios, the sanity check
    measurement    one run's numbers (Measurement), whichever generator made them
    wrk            wrk as the load generator (the default when installed)
    load           the multi-process aiohttp load generator (fallback; and the paced test's)
    paced          100 concurrent paced streams: time to first chunk, stream time, hop CPU
    microbench     micro-benchmarks (SigV4 signing)
    report         the per-path tables, who was busy, what limited each run, translation overhead
    summary        the one summary table with targets, and the JSON file
    session        one run of it all, in order
"""
