"""Do the imports point one way? The layer table of the project, and a walk that enforces it.

Every first-party module (``selfimprove_rl``, ``envs``, ``policies``, ``experiments``) has a
layer in :data:`LAYERS`; a module may import its own layer or a lower one, never a higher one,
and the first-party import graph has no cycle. The walk reads each file's AST, so it sees
imports at module level, inside functions and classes, and under ``if TYPE_CHECKING:`` (a
typing-only import is still a dependency; it is left out of the cycle check only, since
deferring an annotation import is the accepted way to describe a type without importing it).

The layers, lowest first (README, "For contributors"):

====  ============  ==================================================================
 0    base          errors, files, async and retry helpers, embeddings, statistics
 1    models        the model servers a backend talks to (simulated model, local LLM)
 2    domain        backend, checkpoint, prompt, program, registry, replay, evals, cache
 3    envs          the Gymnasium envs (``envs/``)
 4    policies      the agents (``policies/``)
 5    workflow      config, runner, run state and report, compare
 6    integrations  Phoenix telemetry, publishing, optimizer tracing (``telemetry/``)
 7    app           the composition root: the CLI and the demo wire integrations in
====  ============  ==================================================================
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("selfimprove_rl", "envs", "policies", "experiments")

LAYER_NAMES = ("base", "models", "domain", "envs", "policies", "workflow", "integrations", "app")

# Module (or package prefix) -> layer; the longest matching prefix wins.
LAYERS: dict[str, str] = {
    "selfimprove_rl.errors": "base",
    "selfimprove_rl.fileio": "base",
    "selfimprove_rl.aio": "base",
    "selfimprove_rl.retry": "base",
    "selfimprove_rl.embeddings": "base",
    "selfimprove_rl.processes": "base",
    "selfimprove_rl.sequential": "base",
    "selfimprove_rl.stats": "base",
    "selfimprove_rl.simulated": "models",
    "selfimprove_rl.local_llm": "models",
    "selfimprove_rl": "domain",  # the package itself (re-exports domain types only)
    "selfimprove_rl.backend": "domain",
    "selfimprove_rl.cache": "domain",
    "selfimprove_rl.checkpoint": "domain",
    "selfimprove_rl.evals": "domain",
    "selfimprove_rl.mimic": "domain",
    "selfimprove_rl.program": "domain",
    "selfimprove_rl.program_data": "domain",
    "selfimprove_rl.program_replay": "domain",
    "selfimprove_rl.program_state": "domain",
    "selfimprove_rl.prompt": "domain",
    "selfimprove_rl.registry": "domain",
    "selfimprove_rl.replay": "domain",
    "envs": "envs",
    "policies": "policies",
    "selfimprove_rl.config": "workflow",
    "selfimprove_rl.hooks": "workflow",
    "selfimprove_rl.runner": "workflow",
    "selfimprove_rl.run_state": "workflow",
    "selfimprove_rl.report": "workflow",
    "selfimprove_rl.report_budget": "workflow",
    "selfimprove_rl.compare": "workflow",
    "selfimprove_rl.gate": "workflow",
    "selfimprove_rl.config_files": "workflow",
    "selfimprove_rl.ray_executor": "workflow",
    "experiments": "workflow",
    "selfimprove_rl.telemetry": "integrations",
    "selfimprove_rl.cli": "app",
    "selfimprove_rl.demo": "app",
}

# Keys that name a package only, not what lies under it: a new module of ``selfimprove_rl``
# must be given its layer explicitly.
PACKAGE_ONLY = frozenset({"selfimprove_rl"})

# Imports ruled out even where the layers allow them: policies see the Gymnasium API and our
# public types, never the simulator that answers in tests and demos.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "policies": ("selfimprove_rl.simulated", "selfimprove_rl.local_llm"),
}


@dataclass(frozen=True)
class Import:
    """One first-party import: who imports what, where, and whether only for type checking."""

    module: str
    target: str
    path: str
    line: int
    typing_only: bool


def module_name(path: Path, root: Path) -> str:
    """Return the dotted name of a source file under ``root`` (a package is its ``__init__``)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, typing_only: bool = False) -> Iterable[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for inner in child.body:
                yield inner, True
                yield from _walk(inner, True)
            for inner in child.orelse:
                yield inner, typing_only
                yield from _walk(inner, typing_only)
            continue
        yield child, typing_only
        yield from _walk(child, typing_only)


def imports_of(
    source: str,
    module: str,
    *,
    path: str = "<string>",
    is_package: bool = False,
    known: Iterable[str] = (),
) -> list[Import]:
    """Return every first-party import in ``source`` (any depth), resolved to a module name.

    ``from a import b`` points at ``a.b`` when ``a.b`` is a known module, else at ``a``.
    """
    modules = set(known)
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: list[Import] = []
    for node, typing_only in _walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            for alias in node.names:
                sub = f"{origin}.{alias.name}"
                targets.append(sub if sub in modules else origin)
        for target in dict.fromkeys(targets):
            if target.split(".")[0] in ROOTS:
                found.append(Import(module, target, path, getattr(node, "lineno", 0), typing_only))
    return found


def project_imports(repo: Path = REPO) -> tuple[list[str], list[Import]]:
    """Return every first-party module and every import in them."""
    files = {
        module_name(p, repo): p
        for r in ROOTS
        if (repo / r).is_dir()
        for p in sorted((repo / r).rglob("*.py"))
    }
    found: list[Import] = []
    for name, path in files.items():
        found += imports_of(
            path.read_text(),
            name,
            path=str(path.relative_to(repo)),
            is_package=path.name == "__init__.py",
            known=files,
        )
    return sorted(files), found


def layer_of(module: str, layers: Mapping[str, str] = LAYERS) -> str | None:
    """Return the layer of a module by its longest listed prefix, or None when unlisted."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in layers and (end == len(parts) or prefix not in PACKAGE_ONLY):
            return layers[prefix]
    return None


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_violations(
    found: Iterable[Import],
    layers: Mapping[str, str] = LAYERS,
    forbidden: Mapping[str, tuple[str, ...]] = FORBIDDEN,
) -> list[str]:
    """Return one line per upward or forbidden import: ``path:line: a (layer) imports b``."""
    rank = {name: i for i, name in enumerate(LAYER_NAMES)}
    problems: list[str] = []
    for imp in found:
        own, theirs = layer_of(imp.module, layers), layer_of(imp.target, layers)
        where = f"{imp.path}:{imp.line}: {imp.module} ({own})"
        if own is None or theirs is None:
            unlisted = imp.module if own is None else imp.target
            problems.append(f"{where} imports {imp.target}: {unlisted} has no layer in LAYERS")
        elif rank[theirs] > rank[own]:
            problems.append(f"{where} imports {imp.target} ({theirs}), a higher layer")
        for owner, banned in forbidden.items():
            if _under(imp.module, owner) and any(_under(imp.target, b) for b in banned):
                problems.append(f"{where} imports {imp.target}, which {owner} must not import")
    return problems


def import_cycles(found: Iterable[Import]) -> list[list[Import]]:
    """Return one cycle per knot of runtime imports, each as the imports that close it.

    A knot is a strongly connected component of the graph (modules that all reach each
    other); the cycle shown is a shortest one through its first module.
    """
    graph: dict[str, dict[str, Import]] = {}
    for imp in found:
        if not imp.typing_only and imp.target != imp.module:
            graph.setdefault(imp.module, {}).setdefault(imp.target, imp)
    cycles: list[list[Import]] = []
    for knot in _knots(graph):
        first = min(knot)
        # Breadth-first from ``first`` inside the knot, back to ``first``.
        previous: dict[str, Import] = {}
        frontier, found_back = [first], None
        while frontier and found_back is None:
            following: list[str] = []
            for node in frontier:
                for target, imp in sorted(graph.get(node, {}).items()):
                    if target == first:
                        found_back = imp
                        break
                    if target in knot and target not in previous:
                        previous[target] = imp
                        following.append(target)
                if found_back is not None:
                    break
            frontier = following
        assert found_back is not None
        cycle = [found_back]
        while cycle[0].module != first:
            cycle.insert(0, previous[cycle[0].module])
        cycles.append(cycle)
    return cycles


def _knots(graph: Mapping[str, Mapping[str, Import]]) -> list[set[str]]:
    """Return the strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    knots: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            knot: set[str] = set()
            while True:
                member = stack.pop()
                knot.add(member)
                if member == node:
                    break
            if len(knot) > 1:
                knots.append(knot)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(knots, key=min)


def describe_cycle(cycle: list[Import]) -> str:
    """Return a cycle as ``a (path:line) -> b (path:line) -> a``."""
    steps = [f"{imp.module} ({imp.path}:{imp.line})" for imp in cycle]
    return " -> ".join([*steps, cycle[0].module])


# ---------------------------------------------------------------------- the project
def test_every_module_has_a_layer() -> None:
    modules, _ = project_imports()
    unlisted = [m for m in modules if layer_of(m) is None]
    assert not unlisted, f"add these modules to LAYERS in {__file__}: {unlisted}"
    assert set(LAYERS.values()) <= set(LAYER_NAMES)


def test_no_import_points_up_or_at_a_forbidden_module() -> None:
    _, found = project_imports()
    assert found, "the walk found no first-party import at all"
    problems = layer_violations(found)
    assert not problems, "imports against the layers:\n" + "\n".join(problems)


def test_no_import_cycle() -> None:
    _, found = project_imports()
    cycles = import_cycles(found)
    assert not cycles, "import cycles:\n" + "\n".join(describe_cycle(c) for c in cycles)


# ---------------------------------------------------------------------- the walk can fail
def _synthetic(files: dict[str, str]) -> list[Import]:
    found: list[Import] = []
    for name, source in files.items():
        found += imports_of(source, name, path=f"{name}.py", known=files)
    return found


def test_an_upward_import_inside_a_function_is_named_with_its_line() -> None:
    found = _synthetic(
        {
            "selfimprove_rl.replay": (
                "import json\n\n\ndef replay():\n    from selfimprove_rl.runner import x\n"
            ),
            "selfimprove_rl.runner": "from selfimprove_rl.replay import replay\n",
        }
    )
    problems = layer_violations(found)
    assert problems == [
        "selfimprove_rl.replay.py:5: selfimprove_rl.replay (domain) imports "
        "selfimprove_rl.runner (workflow), a higher layer"
    ]


def test_runner_importing_telemetry_is_a_violation() -> None:
    found = _synthetic({"selfimprove_rl.runner": "from selfimprove_rl.telemetry import X\n"})
    (problem,) = layer_violations(found)
    assert problem.endswith(
        "selfimprove_rl.runner (workflow) imports selfimprove_rl.telemetry (integrations), "
        "a higher layer"
    )


def test_a_typing_only_import_still_counts_for_layers_but_not_for_cycles() -> None:
    found = _synthetic(
        {
            "envs.a": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from policies.b import B\n"
            ),
            "policies.b": "import envs.a\n",
        }
    )
    assert [i.typing_only for i in found] == [True, False]
    assert len(layer_violations(found)) == 1
    assert import_cycles(found) == []


def test_a_cycle_is_found_and_described() -> None:
    found = _synthetic(
        {
            "selfimprove_rl.prompt": "from . import registry\n",
            "selfimprove_rl.registry": "def f():\n    import selfimprove_rl.prompt\n",
        }
    )
    assert layer_violations(found) == []
    (cycle,) = import_cycles(found)
    assert describe_cycle(cycle) == (
        "selfimprove_rl.prompt (selfimprove_rl.prompt.py:1) -> "
        "selfimprove_rl.registry (selfimprove_rl.registry.py:2) -> selfimprove_rl.prompt"
    )


def test_a_policy_importing_the_simulator_is_forbidden() -> None:
    found = _synthetic({"policies.x": "from selfimprove_rl.simulated.sop import parse_sop\n"})
    assert layer_violations(found) == [
        "policies.x.py:1: policies.x (policies) imports selfimprove_rl.simulated.sop, which "
        "policies must not import"
    ]


def test_an_unlisted_module_is_reported() -> None:
    found = _synthetic({"selfimprove_rl.newthing": "from selfimprove_rl import errors\n"})
    assert layer_of("selfimprove_rl.newthing") is None
    (problem,) = layer_violations(found)
    assert problem.endswith("selfimprove_rl.newthing has no layer in LAYERS")


@pytest.mark.parametrize("relative", ["from .. import prompt", "from ..prompt import x"])
def test_relative_imports_resolve(relative: str) -> None:
    (imp,) = imports_of(
        relative + "\n", "selfimprove_rl.evals.base", known={"selfimprove_rl.prompt"}
    )
    assert imp.target == "selfimprove_rl.prompt"
