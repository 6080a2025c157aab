"""The parts of scripts/bench.py (the command line, and in its docstring how to read the output).

    paths          the ways through the proxy: what the caller and a direct call send, the checks of answers
    lean_upstream  the fast upstream (and its paced model)
    servers        pinning, the servers (and the bare relay's app), CPU and RSS from /proc
    targets        direct / relay / proxy, the scenarios, the sanity check, one run's Measurement
    wrk, load      the load generators (wrk when installed; aiohttp workers, which also run the paced test)
    microbench     SigV4 signing timed alone
    summary        the summary table, its targets and judgements
    session        one run of it all, in order, and the JSON
"""
