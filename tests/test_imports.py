"""The import graph of ``puma_mdm``, read with ``ast`` (every import statement, at module or
function level, relative ones resolved): the command line (``puma_mdm.cli``) depends on the
library and never the other way round, its command modules share only ``cli.args``, and no
import cycle passes through it."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

import puma_mdm

CLI = "puma_mdm.cli"
SHARED = f"{CLI}.args"  # the one cli module that command modules import
ENTRY_POINT = "__main__"  # `python -m PACKAGE`: imported by nothing, so it may import the CLI


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(node: ast.Import | ast.ImportFrom, package: str, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that one import statement in ``package`` names."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names} & modules
    base = node.module or ""
    if node.level:  # relative: `from . import x`, `from ..a import b`
        parts = package.split(".")
        base = ".".join([*parts[: len(parts) - node.level + 1], *filter(None, [node.module])])
    named = {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import submodule`
    return (named & modules) | ({base} & modules if named - modules else set())


def import_graph(root: Path) -> dict[str, set[str]]:
    """Each module of the package in ``root`` → the modules of that package it imports."""
    files = {module_name(path, root): path for path in root.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                targets |= imported(node, package, set(files))
        graph[name] = targets - {name}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: strongly connected components of two or more modules, sorted."""
    reach = {module: reachable(graph, module) for module in graph}
    components = {
        frozenset(other for other in reach[module] if module in reach[other])
        for module in graph
        if module in reach[module]
    }
    return sorted(sorted(component) for component in components)


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


@functools.cache
def package_graph() -> dict[str, set[str]]:
    return import_graph(Path(puma_mdm.__file__).parent)


def test_graph_reads_every_kind_of_import(tmp_path):
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    sources = {
        "__init__.py": "",
        "a.py": "from pkg import b\n",
        "b.py": "def f():\n    from .sub import c\n",  # function level, relative
        "sub/__init__.py": "from ..a import NAME\n",  # a name, not a module: the module a
        "sub/c.py": "import pkg.a\nfrom . import d\nimport os\n",
        "sub/d.py": "",
    }
    for name, text in sources.items():
        (root / name).write_text(text)
    graph = import_graph(root)
    assert graph == {
        "pkg": set(),
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.sub.c"},
        "pkg.sub": {"pkg.a"},
        "pkg.sub.c": {"pkg.a", "pkg.sub.d"},
        "pkg.sub.d": set(),
    }
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]


def test_library_never_imports_the_cli():
    offenders = {
        module: sorted(m for m in targets if within(m, CLI))
        for module, targets in package_graph().items()
        if not within(module, CLI) and module.rpartition(".")[2] != ENTRY_POINT
    }
    assert {module: cli for module, cli in offenders.items() if cli} == {}


def test_command_modules_share_only_the_argument_helpers():
    graph = package_graph()
    commands = [m for m in graph if within(m, CLI) and m not in (CLI, f"{CLI}.{ENTRY_POINT}")]
    assert SHARED in commands and len(commands) > 5
    allowed = {module: set() if module == SHARED else {SHARED} for module in commands}
    imports = {module: {m for m in graph[module] if within(m, CLI)} for module in commands}
    assert {m: sorted(cli) for m, cli in imports.items() if not cli <= allowed[m]} == {}


@pytest.mark.parametrize("scope", [CLI, "puma_mdm"])
def test_no_import_cycle(scope):
    found = [cycle for cycle in cycles(package_graph()) if any(within(m, scope) for m in cycle)]
    assert found == []


def test_the_network_and_the_sampler_know_no_model_kind():
    """Kinds live in kinds.py: the Transformer and the sampling loop import neither the optional
    Hugging Face package nor MDM-Prime, and nothing below kinds.py imports it."""
    graph = package_graph()
    for module in ("puma_mdm.model", "puma_mdm.sampling"):
        assert [
            m for m in graph[module] if within(m, "puma_mdm.hf") or within(m, "puma_mdm.prime")
        ] == []
    below = {"puma_mdm.model", "puma_mdm.sampling", "puma_mdm.masking", "puma_mdm.prime"}
    users = sorted(m for m in graph if "puma_mdm.kinds" in graph[m])
    assert not [m for m in users if any(within(m, b) for b in below)], users
