"""The layering rules of docs/ARCHITECTURE.md: the CLI is the top floor (nothing in the library
imports it) and the evaluation modules import each other in one direction only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import policytrim

PACKAGE = Path(policytrim.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path) -> set[str]:
    """Modules a file imports anywhere (top level or inside functions), as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_library_module_imports_the_cli():
    offenders = {
        name: sorted(i for i in _imports(path) if i == "policytrim.cli" or i.startswith("policytrim.cli."))
        for name, path in _modules().items()
        if not (name == "policytrim.cli" or name.startswith("policytrim.cli."))
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"library modules importing the CLI layer: {offenders}"


def test_importing_every_library_module_leaves_the_cli_unloaded():
    names = [n for n in _modules() if not (n == "policytrim.cli" or n.startswith("policytrim.cli.") or n.endswith("__main__"))]
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({n!r})\n" for n in names) + "print(sorted(m for m in sys.modules if m.startswith('policytrim.cli')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", f"importing the library loaded {result.stdout.strip()}"


def test_evaluation_modules_import_in_one_direction():
    """evaluate <- compare <- suite: evaluate.py imports neither compare nor suite, compare not suite."""
    mods = _modules()
    assert not {"policytrim.eval.compare", "policytrim.eval.suite"} & _imports(mods["policytrim.eval.evaluate"])
    assert "policytrim.eval.suite" not in _imports(mods["policytrim.eval.compare"])
