"""The parts of scripts/bench.py (the command line, and how to read the output); from paths (the ways
through the proxy) to session (one run of it all), each module's docstring says what it owns."""
