"""Every third-party import is declared in pyproject.toml, not merely installed by another package.

The modules of ``docconv/`` and ``model/`` (the ``deepseek_ocr`` package) must come from
``[project] dependencies``; an import guarded by ``try: ... except ImportError`` (an optional
feature, e.g. flash-attn) may instead come from a runtime extra. ``tests/`` and ``scripts/``
may also use the ``test`` extra. Import names map to distributions through
``importlib.metadata.packages_distributions()`` (``PIL`` -> pillow, ``yaml`` -> PyYAML); a
module that is not installed (an optional extra) maps to its own name, ``_`` read as ``-``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FIRST_PARTY = frozenset({"docconv", "deepseek_ocr", "tests", "generate_completions"})
RUNTIME_SOURCES = ("docconv", "model")
TEST_SOURCES = ("tests", "scripts")
TEST_EXTRA = "test"


@dataclass(frozen=True)
class ImportSite:
    module: str  # top-level module name
    where: str  # path:line
    guarded: bool  # inside ``try:`` with an ``except ImportError`` (or ModuleNotFoundError)


@dataclass(frozen=True)
class Declared:
    dependencies: frozenset[str]  # canonical distribution names
    extras: dict[str, frozenset[str]]


def declared(pyproject: Path = REPO / "pyproject.toml") -> Declared:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]

    def names(requirements: list[str]) -> frozenset[str]:
        return frozenset(canonicalize_name(Requirement(text).name) for text in requirements)

    extras = {extra: names(reqs) for extra, reqs in project.get("optional-dependencies", {}).items()}
    return Declared(names(project["dependencies"]), extras)


def import_sites(*directories: str) -> Iterator[ImportSite]:
    """Absolute imports of third-party modules in every .py file under the directories."""
    for directory in directories:
        for path in sorted((REPO / directory).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node, guarded in _imports(tree, guarded=False):
                if isinstance(node, ast.ImportFrom):
                    modules = [node.module] if node.level == 0 and node.module else []
                else:
                    modules = [alias.name for alias in node.names]
                for module in modules:
                    top = module.partition(".")[0]
                    if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                        yield ImportSite(top, f"{path.relative_to(REPO)}:{node.lineno}", guarded)


def _imports(node: ast.AST, guarded: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node, guarded
        return
    if isinstance(node, ast.Try) and _catches_import_error(node):
        for child in node.body:
            yield from _imports(child, True)
        for child in [*node.handlers, *node.orelse, *node.finalbody]:
            yield from _imports(child, guarded)
        return
    for child in ast.iter_child_nodes(node):
        yield from _imports(child, guarded)


def _catches_import_error(node: ast.Try) -> bool:
    caught: list[ast.expr] = []
    for handler in node.handlers:
        if handler.type is not None:
            caught += handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(name, ast.Name) and name.id in ("ImportError", "ModuleNotFoundError") for name in caught)


@cache
def _installed() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distributions(module: str) -> frozenset[str]:
    """Canonical names of the distributions that provide a top-level module."""
    return frozenset(canonicalize_name(name) for name in _installed().get(module, [module.replace("_", "-")]))


def undeclared(
    sites: Iterator[ImportSite], required: frozenset[str], optional: frozenset[str], where: str
) -> list[str]:
    """One line per import whose distribution is in neither ``required`` nor (when guarded) ``optional``."""
    problems = []
    for site in sites:
        allowed = required | optional if site.guarded else required
        provided_by = distributions(site.module)
        if not provided_by & allowed:
            problems.append(f"{site.where}: imports {site.module} ({', '.join(sorted(provided_by))}), not in {where}")
    return problems


def runtime_problems(deps: Declared) -> list[str]:
    optional = frozenset().union(*(names for extra, names in deps.extras.items() if extra != TEST_EXTRA))
    where = "[project] dependencies (or, imported under except ImportError, a runtime extra)"
    return undeclared(import_sites(*RUNTIME_SOURCES), deps.dependencies, optional, where)


def test_runtime_imports_are_declared_dependencies() -> None:
    assert runtime_problems(declared()) == []


def test_test_and_script_imports_are_declared_in_the_test_extra() -> None:
    deps = declared()
    required = deps.dependencies | deps.extras[TEST_EXTRA]
    where = "[project] dependencies or the test extra"
    assert undeclared(import_sites(*TEST_SOURCES), required, frozenset(), where) == []


def test_the_sources_are_actually_scanned() -> None:
    sites = {site.module: site for site in import_sites(*RUNTIME_SOURCES)}
    assert {"torch", "transformers", "httpx2", "PIL", "typer", "rich", "psutil"} <= set(sites)
    assert sites["flash_attn"].guarded and sites["flash_attn"].where.startswith("model/loading.py:")
    assert not sites["httpx2"].guarded
    assert "deepseek_ocr" not in sites and "os" not in sites


@pytest.mark.parametrize(
    ("drop", "from_extra", "expected"),
    [
        ("httpx2", None, "docconv/models/hub.py:"),  # a direct import
        ("pymupdf", None, "docconv/sources/pages.py:"),  # import name = distribution name
        ("pillow", None, "imports PIL (pillow)"),  # import name != distribution name
        ("flash-attn", "gpu", "model/loading.py:"),  # an optional import and its extra
    ],
)
def test_the_check_fails_when_a_dependency_is_not_declared(drop: str, from_extra: str | None, expected: str) -> None:
    deps = declared()
    if from_extra is None:
        deps = Declared(deps.dependencies - {drop}, deps.extras)
    else:
        deps = Declared(deps.dependencies, {**deps.extras, from_extra: deps.extras[from_extra] - {drop}})
    problems = runtime_problems(deps)
    assert problems and all(drop in problem for problem in problems), problems
    assert any(expected in problem for problem in problems), problems


def test_an_unguarded_import_in_an_extra_only_is_not_enough() -> None:
    deps = declared()
    moved = Declared(deps.dependencies - {"psutil"}, {**deps.extras, "gpu": deps.extras["gpu"] | {"psutil"}})
    assert any("imports psutil" in problem for problem in runtime_problems(moved))
