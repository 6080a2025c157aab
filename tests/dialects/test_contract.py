"""The Dialect contract: which dialect's shape an unmatched path gets, and the relay knowing none."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tensorwall_proxy import relay
from tensorwall_proxy.dialects import Dialect, PathTable
from tensorwall_proxy.dialects.chat import CHAT, COMPLETIONS
from tensorwall_proxy.dialects.messages import MESSAGES
from tensorwall_proxy.errors import GatewayError

# --- the path table: which dialect's shape an unmatched path gets ------------------------------


def test_the_longest_prefix_picks_the_dialect_and_known_paths_say_their_methods() -> None:
    messages = MESSAGES
    dialects: tuple[Dialect, ...] = (CHAT, COMPLETIONS, messages)
    table = PathTable(dialects, default=CHAT)
    assert table.dialect("/v1/messages/batches") is messages
    assert table.dialect("/v1/messages") is messages
    assert table.dialect("/v1/messagesX") is not messages
    assert table.dialect("/v1/completions") is COMPLETIONS
    assert table.dialect("/v1/whatever") in (CHAT, COMPLETIONS)
    assert table.dialect("/elsewhere").error_body(GatewayError(404, "x")) == GatewayError(404, "x").body()
    assert table.allowed("/v1/chat/completions") == "POST"
    assert table.allowed("/v1/models") == "GET, HEAD"
    assert table.allowed("/v1/models/openai/gpt-4o") == "GET, HEAD"
    assert table.allowed("/v1/models/") is None
    assert table.allowed("/v1/messages/count_tokens") == "POST"
    assert table.allowed("/v1/chat/completions/x") is None
    assert table.allowed("/v1/chat.completions") is None  # a dot in a path is a literal dot


def test_the_relay_knows_no_dialect() -> None:
    """relay.py takes the Dialect protocol and nothing of any dialect module, and builds no error
    body or event of its own: what the caller receives is the request's dialect's to make."""
    source = Path(relay.__file__).read_text()
    tree = ast.parse(source)
    from_dialects = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                     and (node.module or "").startswith("dialects")]
    assert [sorted(a.name for a in node.names) for node in from_dialects] == [["Catalog", "Dialect"]]
    assert all(node.module == "dialects" for node in from_dialects)
    assert ".body()" not in source  # GatewayError.body() is OpenAI's shape: dialect.error_event makes events
    assert "text_completion" not in source and "chat.completion" not in source


def test_the_dialects_import_no_aiohttp() -> None:
    """Dialects are pure (DESIGN §2): imported alone, in a fresh interpreter, they load no aiohttp."""
    code = ("import sys, tensorwall_proxy.dialects.chat, tensorwall_proxy.dialects.messages; "
            "print('aiohttp' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.strip() == "False"
