"""The layering rules of docs/ARCHITECTURE.md, checked on every import of every module: top level,
inside functions and under ``if TYPE_CHECKING:`` alike (an import that runs late is still a
dependency, and a circle through one breaks as soon as someone moves it to the top).

Layers, low -> high (a module may import its own layer and the layers below, never above):

    base           policytrim (the version), errors, objective, io, limits, machine, runtime, windows
    simulators,    envs, policies
    policies
    configuration  config
    execution      rollout, data, preflight
    applications   train, eval, serve
    experiments    experiments (the demo, the ablations)
    front door     cli

Where the undecided ones sit, and why: ``runtime`` (the device check, torch threads) and
``machine`` (what the machine is, for result files) import nothing of ours but errors, and
everything from the engine up uses them: base. ``config`` validates task names against the envs'
task tables and is read by everything that runs, so it sits right above envs and policies (which
name an `EnvSettings` protocol, not the config class). ``preflight`` checks that what a run will
use is there (output, device, logging back-ends, and on main the simulator's package and a Ray
cluster, whose check lives with the Ray pool): it sits with the execution layer it checks, below
training and the experiments; collection, beside it, calls it too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import policytrim

PACKAGE = Path(policytrim.__file__).resolve().parent

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # windows: the window plan (policytrim.windows, on main since the decisions branch; imports errors only)
    ("base", ("policytrim", "errors", "objective", "io", "limits", "machine", "runtime", "windows", "progress")),
    ("simulators and policies", ("envs", "policies")),
    ("configuration", ("config",)),
    ("execution", ("rollout", "data", "preflight")),
    ("training, evaluation, serving", ("train", "eval", "serve")),
    ("experiments", ("experiments",)),
    ("command line", ("cli",)),
]


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _resolve(name: str, modules: set[str]) -> str | None:
    """The module an imported dotted name lives in (``policytrim.envs.base.InitialState`` ->
    ``policytrim.envs.base``), or None for a name outside the package."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(source: str, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The package's modules that ``source`` (module ``name``) imports anywhere in its body.

    ``from X import Y`` counts as an import of X.Y when that is a module, else of X; relative
    imports are resolved against ``name``. Importing X.Y also runs X's ``__init__``: when the
    importer is outside X, X counts as imported too (a package re-exporting its own modules is not
    a circle)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_package else name.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for target in targets:
            module = _resolve(target, modules)
            if module is None:
                continue
            found.add(module)
            parent = module.rpartition(".")[0]
            while parent and parent != "policytrim":
                if not (name == parent or name.startswith(parent + ".")):
                    found.add(parent)
                parent = parent.rpartition(".")[0]
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    names = set(mods)
    return {name: imports_of(path.read_text(), name, path.name == "__init__.py", names) for name, path in mods.items()}


def layer_of(module: str) -> int:
    """Index into LAYERS; KeyError for a module no layer names."""
    short = module.removeprefix("policytrim.") if module != "policytrim" else "policytrim"
    for i, (_, members) in enumerate(LAYERS):
        for member in members:
            if short == member or short.startswith(member + "."):
                return i
    raise KeyError(module)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports (as a path that starts and ends at the same module), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


# ---------------------------------------------------------------------------------------------
# the scanner itself


def test_scanner_sees_function_level_relative_and_type_checking_imports():
    modules = {
        "policytrim",
        "policytrim.a",
        "policytrim.a.x",
        "policytrim.b",
        "policytrim.c",
        "policytrim.d",
        "policytrim.e",
    }
    source = textwrap.dedent(
        """
        from typing import TYPE_CHECKING
        import numpy
        from policytrim.b import something
        if TYPE_CHECKING:
            from policytrim.c import Thing
        def late():
            import policytrim.d as d
            from .. import e
        """
    )
    assert imports_of(source, "policytrim.a.x", False, modules) == {
        "policytrim.b",
        "policytrim.c",
        "policytrim.d",
        "policytrim.e",
    }
    # importing a.x from outside package a runs a's __init__ first; from inside it does not count
    assert imports_of("from policytrim.a.x import f", "policytrim.b", False, modules) == {
        "policytrim.a.x",
        "policytrim.a",
    }
    assert imports_of("from policytrim.a.x import f", "policytrim.a", True, modules) == {"policytrim.a.x"}


def test_find_cycle_reports_the_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


# ---------------------------------------------------------------------------------------------
# the package


def test_every_module_has_a_layer():
    unplaced = []
    for name in _modules():
        try:
            layer_of(name)
        except KeyError:
            unplaced.append(name)
    assert not unplaced, f"modules no layer names (add them to LAYERS here and to docs/ARCHITECTURE.md): {unplaced}"


def test_every_import_points_down_or_sideways():
    graph = import_graph()
    upward = sorted(
        f"{name} ({LAYERS[layer_of(name)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})"
        for name, deps in graph.items()
        for dep in deps
        if layer_of(dep) > layer_of(name)
    )
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_no_circle_of_imports():
    cycle = find_cycle(import_graph())
    assert cycle is None, "a circle of imports: " + " -> ".join(cycle)


def test_no_library_module_imports_the_cli():
    offenders = {
        name: sorted(d for d in deps if layer_of(d) == len(LAYERS) - 1)
        for name, deps in import_graph().items()
        if layer_of(name) < len(LAYERS) - 1
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"library modules importing the CLI layer: {offenders}"


def test_importing_every_library_module_leaves_the_cli_unloaded():
    names = [
        n
        for n in _modules()
        if not (n == "policytrim.cli" or n.startswith("policytrim.cli.") or n.endswith("__main__"))
    ]
    code = (
        "import importlib, sys\n"
        + "".join(f"importlib.import_module({n!r})\n" for n in names)
        + "print(sorted(m for m in sys.modules if m.startswith('policytrim.cli')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", f"importing the library loaded {result.stdout.strip()}"


def test_evaluation_modules_import_in_one_direction():
    """evaluate <- compare <- suite: evaluate.py imports neither compare nor suite, compare not suite."""
    graph = import_graph()
    assert not {"policytrim.eval.compare", "policytrim.eval.suite"} & graph["policytrim.eval.evaluate"]
    assert "policytrim.eval.suite" not in graph["policytrim.eval.compare"]


def test_the_config_lists_the_heads_the_policy_builds():
    """config.HEADS validates policy.head; tinyvla.HEADS is what it builds (the policy layer cannot
    import the config): the two must agree."""
    from policytrim.config import HEADS
    from policytrim.policies.tinyvla import HEADS as BUILT

    assert tuple(HEADS) == tuple(BUILT)
