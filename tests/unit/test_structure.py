"""The package's shape (DESIGN §2): every module imports alone, and no code outside ``providers/``
tests a provider's type by name — it asks the type's catalog entry instead."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tensorwall_proxy.providers.catalog import TYPE_NAMES

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "tensorwall_proxy"


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    # __main__ runs the command line when imported: `python -m` is its only use.
    return [n for n in names if not n.endswith(".__main__")]


def _import_alone(module: str) -> tuple[str, int, str]:
    # -W error: an import that only warns today (a deprecated name) is caught while it is cheap to fix.
    result = subprocess.run([sys.executable, "-W", "error", "-c", f"import {module}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    return module, result.returncode, result.stderr


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    """As aiohttp's tests/test_circular_imports.py: an import circle shows as an ImportError when
    the module on it is the first one imported, whichever order the test suite happened to use."""
    modules = _modules()
    assert "tensorwall_proxy.providers.catalog" in modules and "tensorwall_proxy.upstream" in modules
    with ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2))) as pool:
        failures = [(m, err.strip().splitlines()[-1:] or [f"exit {code}"])
                    for m, code, err in pool.map(_import_alone, modules) if code != 0]
    assert failures == []


# --- provider-type tests ------------------------------------------------------------------------

_TESTS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)
_TYPE_HOLDERS = frozenset({"provider", "provider_config", "prov", "endpoint", "config", "cfg"})


def _names_a_type(node: ast.expr) -> bool:
    """``provider.type`` (or ``provider_type``), or a provider type's name as a string."""
    if isinstance(node, ast.Attribute) and node.attr == "type":
        holder = node.value
        name = holder.attr if isinstance(holder, ast.Attribute) else getattr(holder, "id", "")
        return name in _TYPE_HOLDERS
    if isinstance(node, ast.Name):
        return node.id == "provider_type"
    if isinstance(node, ast.Constant):
        return node.value in TYPE_NAMES
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_names_a_type(e) for e in node.elts)
    return False


def type_tests(source: str) -> list[int]:
    """Lines that compare a provider's type (==, !=, in, not in) or match on it."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and all(isinstance(op, _TESTS) for op in node.ops):
            operands = [node.left, *node.comparators]
            kinds = [isinstance(e, ast.Attribute | ast.Name) and _names_a_type(e) for e in operands]
            literals = [isinstance(e, ast.Constant | ast.Tuple | ast.List | ast.Set) and _names_a_type(e)
                        for e in operands]
            if any(kinds) or (any(literals) and not all(isinstance(e, ast.Constant) for e in operands)):
                lines.append(node.lineno)
        elif isinstance(node, ast.Match) and _names_a_type(node.subject):
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("snippet", [
    'if provider.type == "vertex": pass',
    'ok = provider.type in ("vertex", "bedrock")',
    'ok = attempt.provider.type != "ollama"',
    'ok = name == "bedrock"',
    'ok = provider_type not in {"ollama"}',
    'match provider.type:\n    case "azure": pass',
])
def test_the_type_test_detector_sees(snippet: str) -> None:
    assert type_tests(snippet) == [1]


@pytest.mark.parametrize("snippet", [
    'ok = credential.kind == "ambient"',
    'impl = provider_for(provider.type)',
    'ok = provider.kind.ambient == "google"',
    'ok = event.type == "message_start"',
])
def test_the_type_test_detector_lets_pass(snippet: str) -> None:
    assert type_tests(snippet) == []


def test_no_provider_type_test_outside_providers() -> None:
    """DESIGN §2: outside providers/ no code asks `provider.type == ...`; it asks the type."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if (PACKAGE / "providers") in path.parents:
            continue
        found += [f"{path.relative_to(ROOT)}:{line}" for line in type_tests(path.read_text())]
    assert found == []


def test_no_translator_imports_another() -> None:
    """What two types share lives in a shared module (openai_wire, anthropic_wire, shapes, policy,
    ...), never in one translator that the other imports (DESIGN §14)."""
    from tensorwall_proxy.providers import PROVIDERS

    translators = {type(p).__module__ for p in PROVIDERS.values()}
    assert len(translators) == 5
    found = []
    for module in sorted(translators):
        path = ROOT / (module.replace(".", "/") + ".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                # `from .x import y` and `from . import x` inside providers/, or an absolute import.
                names = ([f"tensorwall_proxy.providers.{node.module or a.name}" for a in node.names]
                         if node.level == 1 else [node.module or ""])
                found += [f"{module} imports {n}" for n in names if n in translators and n != module]
    assert found == []
