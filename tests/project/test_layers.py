"""The package's import structure: the layer contract, no cycles, no private names across modules.

The contract itself lives in pyproject.toml ([tool.importlinter]); `lint-imports` checks it by
hand. These tests fail on the first import that points up a layer, closes a cycle (module-level
or inside a function: grimp sees both), or reaches for another module's private name.
"""

from __future__ import annotations

import ast

import grimp
import pytest
from importlinter.cli import lint_imports

from tests.helpers import ROOT

PACKAGE = ROOT / "opsd_platform"


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("opsd_platform", cache_dir=None)


def test_the_layer_contract_is_kept():
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0, \
        "an import points up a layer: run `lint-imports` for the chain"


def strongly_connected(graph) -> list[list[str]]:
    """Tarjan's components of the module import graph with more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        on_stack.add(m)
        for n in graph.find_modules_directly_imported_by(m):
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in on_stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            comp = []
            while True:
                n = stack.pop()
                on_stack.discard(n)
                comp.append(n)
                if n == m:
                    break
            if len(comp) > 1 or m in graph.find_modules_directly_imported_by(m):
                found.append(sorted(comp))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return found


def test_no_import_cycles(graph):
    cycles = strongly_connected(graph)
    assert not cycles, "import cycles (function-level imports count): " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle():
    class Toy:  # the smallest graph with a cycle, so the test above can fail
        modules = {"a", "b", "c"}
        edges = {"a": {"b"}, "b": {"a"}, "c": {"a"}}

        def find_modules_directly_imported_by(self, m):
            return self.edges[m]

    assert strongly_connected(Toy()) == [["a", "b"]]


def private_imports() -> list[str]:
    """`from opsd_platform.x import _name` anywhere in the package, naming file and line."""
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("opsd_platform"):
                bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}.{a.name}"
                        for a in node.names if a.name.startswith("_")]
    return bad


def test_no_private_names_imported_across_modules():
    bad = private_imports()
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


# Modules allowed past 500 lines: data catalogues, declared here with what they hold.
CATALOGUES = {"worlds/pyfunc/bank.py": "the pyfunc task templates, one short function per task"}
# Over the limit and not yet split (none left): each capped at its size, so it can only shrink.
NOT_YET_SPLIT: dict[str, int] = {}
MAX_LINES = 500


def test_no_module_over_500_lines_but_declared_catalogues():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.rglob("*.py")}
    over = {name: n for name, n in sizes.items()
            if n > MAX_LINES and name not in CATALOGUES and n > NOT_YET_SPLIT.get(name, MAX_LINES)}
    assert not over, f"modules over {MAX_LINES} lines (split them, or declare a data catalogue): {over}"


def test_the_top_level_holds_at_most_8_modules():
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert len(top) <= 8, f"{len(top)} modules at the top of opsd_platform/ (stages go in subpackages): {top}"


def readme_tree() -> set[str]:
    """The files of the layout tree (docs/layout.md, linked from the README), as paths under
    opsd_platform/ (from its indentation)."""
    text = (ROOT / "docs" / "layout.md").read_text(encoding="utf-8")
    block = text[text.index("opsd_platform/\n├"):]
    block = block[:block.index("```")]
    paths, stack = set(), []
    for line in block.splitlines()[1:]:
        marker = max(line.find("├── "), line.find("└── "))
        if marker < 0:
            continue
        depth, name = marker // 4, line[marker + 4:].split()[0]
        stack = stack[:depth] + [name.rstrip("/")]
        if name.endswith(".py"):
            paths.add("/".join(stack))
    return paths


def test_the_readme_layout_lists_every_module():
    files = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    tree = readme_tree()
    assert tree == files, f"docs/layout.md: missing {sorted(files - tree)}, stale {sorted(tree - files)}"


def test_every_from_import_of_the_package_resolves():
    """`from opsd_platform.x import name` anywhere in the package, function-level ones included,
    names something that exists (a name left behind by a move fails here, not in the one slow
    test that reaches it)."""
    import importlib

    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name.endswith("_program.py"):  # programs the sandbox runs, not modules
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("opsd_platform"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ImportError:
                            bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}")
    assert not bad, "imports of names that do not exist:\n" + "\n".join(bad)


# Exceptions that stay where they are raised: failures of the machine or of our code, not of the
# user's input, so they keep their traceback (opsd_platform/errors.py says why).
INTERNAL_EXCEPTIONS = {"SandboxError", "_Deadline"}


def test_every_deliberate_exception_is_defined_in_errors():
    """One hierarchy: a class derived from an exception is defined in errors.py (or declared
    internal above), and every user error there is one the CLI prints as one line (exit 2)."""
    import opsd_platform.errors as errors

    defined = {name for name, obj in vars(errors).items() if isinstance(obj, type) and issubclass(obj, BaseException)}
    stray = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            bases = [getattr(b, "id", getattr(b, "attr", "")) for b in getattr(node, "bases", [])]
            if isinstance(node, ast.ClassDef) and any(b in defined or b.endswith(("Error", "Exception", "Interrupt")) for b in bases):
                if node.name not in INTERNAL_EXCEPTIONS:
                    stray.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not stray, f"define these in opsd_platform/errors.py: {stray}"
    user = {n for n in defined if issubclass(getattr(errors, n), errors.UserError)}
    assert user == {"UserError", "ConfigError", "CLIError", "WorldError", "ModelLoadError", "TrackingError",
                    "CheckpointError", "LawError", "RegistryError", "ExportError", "CompareError"}
    assert not issubclass(errors.StopTraining, errors.UserError) and issubclass(errors.WorkerInterrupted, KeyboardInterrupt)


def test_the_readme_is_a_front_door_of_at_most_200_lines():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move reference material to docs/"
