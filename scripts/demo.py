"""`make demo`: the fake upstream as every provider, and the proxy in front of it on config/demo.yaml.

Starts scripts/fake_upstream.py on 127.0.0.1:9100 (DEMO_UPSTREAM_PORT) and then
`tensorwall-proxy serve --config config/demo.yaml` on 127.0.0.1:8000 (TENSORWALL_DEMO_PORT), prints
what to try, and stops both on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _wait_for_port(host: str, port: int, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the demo the way Ctrl-C does


def main() -> int:
    upstream_port = int(os.environ.get("DEMO_UPSTREAM_PORT", "9100"))
    proxy_port = int(os.environ.get("TENSORWALL_DEMO_PORT", "8000"))
    env = {**os.environ, "DEMO_UPSTREAM": f"http://127.0.0.1:{upstream_port}",
           "TENSORWALL_DEMO_PORT": str(proxy_port)}
    key = env.setdefault("TENSORWALL_DEMO_KEY", "demo-gateway-key")
    fake = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "fake_upstream.py"),
                             "--port", str(upstream_port)], env=env)
    proxy: subprocess.Popen[bytes] | None = None
    try:
        if not _wait_for_port("127.0.0.1", upstream_port):
            print("demo: the fake upstream did not start", file=sys.stderr)
            return 1
        proxy = subprocess.Popen([sys.executable, "-m", "tensorwall_proxy", "serve",
                                  "--config", str(ROOT / "config" / "demo.yaml")], env=env)
        if not _wait_for_port("127.0.0.1", proxy_port):
            print("demo: the proxy did not start", file=sys.stderr)
            return 1
        base = f"http://127.0.0.1:{proxy_port}"
        print(f"""
tensorwall-proxy demo: {base}/v1 in front of the fake upstream on port {upstream_port}.
Any Bearer key works as the provider key; the gateway key is {key!r}.

  curl {base}/v1/chat/completions -H 'X-API-Key: {key}' -H 'Authorization: Bearer sk-demo' \\
       -d '{{"model": "groq/llama3-70b", "messages": [{{"role": "user", "content": "Hello"}}], "stream": true}}'

  python -c "from openai import OpenAI; c = OpenAI(base_url='{base}/v1', api_key='sk-demo', \\
      default_headers={{'X-API-Key': '{key}'}}); \\
      print(c.chat.completions.create(model='gpt-4', messages=[{{'role': 'user', 'content': 'Hi'}}]).choices[0].message.content)"

Models to try: gpt-4 (70/30 openai/azure-eu), resilient (falls back), local, gpt-4o, azure/gpt-4o,
groq/llama3-70b, mistral-large-latest, claude-3-5-sonnet-20241022, ollama/llama3.2, lmstudio/qwen2.5,
text-embedding-3-small.
Ctrl-C stops both.
""", flush=True)
        signal.signal(signal.SIGTERM, _interrupt)
        while proxy.poll() is None and fake.poll() is None:
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for process in (proxy, fake):
            if process is not None and process.poll() is None:
                process.terminate()
        for process in (proxy, fake):
            if process is not None:
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()


if __name__ == "__main__":
    raise SystemExit(main())
