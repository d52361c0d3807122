"""The layout's promises: every package ships, and docconv uses only deepseek_ocr's public names."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

from .conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: Import name -> source folder, as pyproject's package-dir maps them.
SOURCES = {"docconv": REPO / "docconv", "deepseek_ocr": REPO / "model"}


def packages_on_disk() -> set[str]:
    found = set()
    for name, root in SOURCES.items():
        for init in root.rglob("__init__.py"):
            parts = init.parent.relative_to(root).parts
            found.add(".".join((name, *parts)))
    return found


def test_every_package_is_in_the_wheel() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    assert set(setuptools["packages"]) == packages_on_disk()


def private_uses_of_the_model(path: Path) -> Iterator[str]:
    """``from deepseek_ocr.x import _y``, ``import deepseek_ocr._x`` and ``module._y`` on a model module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    model_modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "deepseek_ocr":
            for alias in node.names:
                if alias.name.startswith("_") or any(part.startswith("_") for part in node.module.split(".")):
                    yield f"{where}:{node.lineno}: from {node.module} import {alias.name}"
                model_modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "deepseek_ocr":
                    if any(part.startswith("_") for part in alias.name.split(".")):
                        yield f"{where}:{node.lineno}: import {alias.name}"
                    model_modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in model_modules
            and node.attr.startswith("_")
        ):
            yield f"{where}:{node.lineno}: {node.value.id}.{node.attr}"


def test_docconv_uses_nothing_private_of_the_model_package() -> None:
    found = [use for path in sorted(SOURCES["docconv"].rglob("*.py")) for use in private_uses_of_the_model(path)]
    assert found == []


def test_the_private_use_check_sees_each_form(tmp_path: Path) -> None:
    sample = tmp_path / "probe.py"
    sample.write_text(
        "import deepseek_ocr._hidden\nfrom deepseek_ocr.loading import _meta_model\n"
        "from deepseek_ocr import sam\nsam._private()\nsam.public()\n",
        encoding="utf-8",
    )
    assert len(list(private_uses_of_the_model(sample))) == 3
