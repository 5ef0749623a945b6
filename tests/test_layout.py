"""The import layout, checked statically: every import statement in the three packages (lazy
ones inside functions and ``if TYPE_CHECKING`` blocks included) read with :mod:`ast`, nothing
imported. The rules are the one direction described in ``docs/architecture.md``:

- ``timesclip_darts`` (the library) imports neither ``timesclip_export`` nor ``timesclip_cli``;
- ``timesclip_export`` never imports ``timesclip_cli``;
- the runtime side of ``timesclip_export`` takes only a few numpy/torch-only library modules;
- inside ``timesclip_export``: bundle <- runtime <- service, and bundle/runtime <- exporter;
- no import cycle among the modules of the three packages.

Package ``__init__`` files resolve their public names through lazy ``importlib`` maps, which are
not import statements and so are not edges here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Source folder -> installed package name (pyproject.toml: package-dir maps export/).
PACKAGE_DIRS = {
    "timesclip_darts": "timesclip_darts",
    "export": "timesclip_export",
    "timesclip_cli": "timesclip_cli",
}

# What the runtime side may take from the library: numpy/numba-only modules, and the torch
# ones the torch vision path draws with.
RUNTIME_SIDE = (
    "timesclip_export.bundle",
    "timesclip_export.runtime",
    "timesclip_export.service",
    "timesclip_export.errors",
)
RUNTIME_LIBRARY_MODULES = frozenset(
    {
        "timesclip_darts.checks",
        "timesclip_darts.scaling",
        "timesclip_darts.line_raster",
        "timesclip_darts.rendering",
        "timesclip_darts.preprocessor",
        "timesclip_darts.likelihoods",
        "timesclip_darts.atomic_files",
    }
)

# Subpackage of timesclip_export -> the subpackages it must not import.
ROOM_FORBIDDEN = {
    "timesclip_export.bundle": (
        "timesclip_export.exporter",
        "timesclip_export.runtime",
        "timesclip_export.service",
    ),
    "timesclip_export.runtime": ("timesclip_export.exporter", "timesclip_export.service"),
    "timesclip_export.service": ("timesclip_export.exporter",),
    "timesclip_export.exporter": ("timesclip_export.service",),
}

Edge = tuple[str, str]


# --- the checker ------------------------------------------------------------------------------


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def discover_modules(root: Path, package_dirs: Mapping[str, str]) -> dict[str, tuple[Path, bool]]:
    """Module name -> (source file, is a package ``__init__``) for every ``.py`` file."""
    modules: dict[str, tuple[Path, bool]] = {}
    for folder, package in package_dirs.items():
        base = root / folder
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            modules[".".join([package, *parts])] = (path, is_package)
    return modules


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    package = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 > len(package) - 1:
        raise ValueError(f"{module}: relative import beyond the top-level package")
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, target] if target else base)


def imports_of(
    module: str, is_package: bool, source: str, known_modules: Iterable[str]
) -> list[str]:
    """Every module ``source`` imports, at any depth of the syntax tree.

    ``from pkg import name`` counts as importing ``pkg.name`` when that is a known module,
    otherwise as importing ``pkg``.
    """
    known = set(known_modules)
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve_relative(module, is_package, node.level, node.module)
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append(candidate if candidate in known else base)
    return found


def collect_edges(root: Path, package_dirs: Mapping[str, str]) -> list[Edge]:
    """(importing module, imported module) for every import statement in the packages."""
    modules = discover_modules(root, package_dirs)
    edges: list[Edge] = []
    for name, (path, is_package) in modules.items():
        source = path.read_text(encoding="utf-8")
        edges.extend((name, target) for target in imports_of(name, is_package, source, modules))
    return sorted(set(edges))


def module_graph(edges: Iterable[Edge], packages: Iterable[str]) -> dict[str, set[str]]:
    """The import graph restricted to modules inside ``packages`` (self-edges kept)."""
    packages = tuple(packages)
    inside = lambda module: any(_within(module, p) for p in packages)  # noqa: E731
    graph: dict[str, set[str]] = {}
    for source, target in edges:
        if inside(source) and inside(target):
            graph.setdefault(source, set()).add(target)
            graph.setdefault(target, set())
    return graph


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components with a cycle (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = 0
    nodes = set(graph) | {t for targets in graph.values() for t in targets}
    successors = {n: sorted(graph.get(n, ())) for n in nodes}

    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, iter(successors[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(successors[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in successors[node]:
                    cycles.append(sorted(component))
    return sorted(cycles)


def _report(edges: Iterable[Edge]) -> str:
    return "\n".join(f"  {source} -> {target}" for source, target in sorted(set(edges)))


# --- the rules on today's code ----------------------------------------------------------------


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return collect_edges(ROOT, PACKAGE_DIRS)


def test_the_walk_sees_all_three_packages(edges: list[Edge]) -> None:
    modules = discover_modules(ROOT, PACKAGE_DIRS)
    for package in PACKAGE_DIRS.values():
        assert package in modules, f"package {package} not found under {ROOT}"
    # A lazy import inside a function (bundle.format -> line_raster) is seen.
    assert ("timesclip_export.bundle.format", "timesclip_darts.line_raster") in edges


def test_library_imports_neither_export_nor_cli(edges: list[Edge]) -> None:
    bad = [
        (s, t)
        for s, t in edges
        if _within(s, "timesclip_darts")
        and (_within(t, "timesclip_export") or _within(t, "timesclip_cli"))
    ]
    assert not bad, (
        "timesclip_darts must not import timesclip_export or timesclip_cli:\n" + _report(bad)
    )


def test_export_never_imports_cli(edges: list[Edge]) -> None:
    bad = [
        (s, t) for s, t in edges if _within(s, "timesclip_export") and _within(t, "timesclip_cli")
    ]
    assert not bad, "timesclip_export must not import timesclip_cli:\n" + _report(bad)


def test_runtime_side_takes_only_light_library_modules(edges: list[Edge]) -> None:
    bad = [
        (s, t)
        for s, t in edges
        if any(_within(s, side) for side in RUNTIME_SIDE)
        and _within(t, "timesclip_darts")
        and t not in RUNTIME_LIBRARY_MODULES
    ]
    assert not bad, (
        "the runtime side (bundle, runtime, service, errors) may import from timesclip_darts only "
        + ", ".join(sorted(RUNTIME_LIBRARY_MODULES))
        + ":\n"
        + _report(bad)
    )


def test_rooms_import_in_one_direction(edges: list[Edge]) -> None:
    bad = [
        (s, t)
        for s, t in edges
        for room, forbidden in ROOM_FORBIDDEN.items()
        if _within(s, room) and any(_within(t, f) for f in forbidden)
    ]
    assert not bad, (
        "timesclip_export rooms import one way (bundle <- runtime <- service; "
        "bundle/runtime <- exporter):\n" + _report(bad)
    )


def test_no_import_cycles(edges: list[Edge]) -> None:
    graph = module_graph(edges, PACKAGE_DIRS.values())
    cycles = find_cycles(graph)
    details = []
    for cycle in cycles:
        members = set(cycle)
        inner = [(s, t) for s in cycle for t in sorted(graph[s]) if t in members]
        details.append(" <-> ".join(cycle) + "\n" + _report(inner))
    assert not cycles, "import cycles among the packages' modules:\n" + "\n".join(details)


# --- the checker can fail ---------------------------------------------------------------------


def test_find_cycles_reports_a_synthetic_cycle() -> None:
    edges = [
        ("pkg.a", "pkg.b"),
        ("pkg.b", "pkg.c"),
        ("pkg.c", "pkg.a"),
        ("pkg.c", "pkg.d"),
        ("pkg.e", "pkg.e"),
        ("pkg.d", "numpy"),
    ]
    graph = module_graph(edges, ["pkg"])
    assert "numpy" not in graph
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"], ["pkg.e"]]
    assert find_cycles(module_graph(edges[1:4], ["pkg"])) == []


def test_collection_finds_lazy_relative_and_type_checking_imports(tmp_path: Path) -> None:
    package = tmp_path / "fake"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .. import helpers\n")
    (package / "helpers.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fake.sub.leaf import Thing\n"
    )
    (package / "sub" / "leaf.py").write_text(
        "def late():\n    from . import other\n    from ..helpers import x\n    import os.path\n"
    )
    (package / "sub" / "other.py").write_text("from fake import sub\n")
    # A folder installed under another name (as export/ is) names its modules by that name.
    renamed = collect_edges(tmp_path, {"fake": "fake_pkg"})
    assert ("fake_pkg.sub", "fake_pkg.helpers") in renamed
    edges = collect_edges(tmp_path, {"fake": "fake"})
    assert set(edges) == {
        ("fake.sub", "fake.helpers"),
        ("fake.helpers", "typing"),
        ("fake.helpers", "fake.sub.leaf"),
        ("fake.sub.leaf", "fake.sub.other"),
        ("fake.sub.leaf", "fake.helpers"),
        ("fake.sub.leaf", "os.path"),
        ("fake.sub.other", "fake.sub"),
    }
    cycles = find_cycles(module_graph(edges, ["fake"]))
    assert cycles == [["fake.helpers", "fake.sub", "fake.sub.leaf", "fake.sub.other"]]
