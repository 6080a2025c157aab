"""Serving processes for the tests that need a real `serve`: started in a session of their own,
output to a file, killed with their workers at the end; and their memory, read from /proc."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVE = [sys.executable, "-m", "tensorwall_proxy", "serve"]
# Defaults come from the environment; the tests must not depend on the machine's (nor on a
# NOTIFY_SOCKET the test run itself may have been started with).
CLEAN_ENV = {k: v for k, v in os.environ.items()
             if not k.endswith(("_API_URL", "_ENDPOINT"))
             and k not in ("TENSORWALL_CONFIG", "AWS_REGION", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Proc:
    """A subprocess whose output goes to a file, so a test can wait for a log line without a pipe to drain."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.popen = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      cwd=ROOT, env=env or CLEAN_ENV, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> list[re.Match[str]]:
        """Wait until ``pattern`` matches ``count`` times in the output; the matches."""
        deadline = time.monotonic() + timeout
        while True:
            matches = list(re.finditer(pattern, self.log()))
            if len(matches) >= count:
                return matches
            if self.popen.poll() is not None:
                pytest.fail(f"exited ({self.popen.returncode}) before logging {pattern!r}:\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {pattern!r} after {timeout}s:\n{self.log()}")
            time.sleep(0.02)

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float = 10.0) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {timeout}s later:\n{self.log()}")

    def close(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)  # its own session: the workers go with it
            self.popen.wait(5)
        self._log.close()


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tensorwall.yaml"
    path.write_text(text)
    return path


def start_proxy(spawn: Callable[..., Proc], config: Path, *args: str, env: dict[str, str] | None = None
                ) -> tuple[Proc, int]:
    """`serve` on a free port; returns once it listens (all workers, with --workers)."""
    port = free_port()
    proc = spawn(*SERVE, "--config", str(config), "--port", str(port), *args, env=env)
    workers = args[args.index("--workers") + 1] if "--workers" in args else "1"
    proc.wait_log(r"listening on http" if workers == "1" else rf"all {workers} workers serving")
    return proc, port


def request(port: int, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One request on a new connection (closed after), like a client that does not keep connections."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        sent = {"Connection": "close", **(headers or {})}
        if body is not None:
            sent["Content-Type"] = "application/json"
        connection.request("GET" if body is None else "POST", path,
                           body=None if body is None else json.dumps(body), headers=sent)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()



def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) * 1024
    return values


def reset_peak(pid: int) -> int:
    """Start a new high-water mark for ``pid``; its resident set now."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return memory(pid)["VmRSS"]
