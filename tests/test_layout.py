"""The layout's rules: the core is Ray-free, the engine stands apart from its users, every folder says what it is."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import vlray

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "vlray"


def _imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` in the file names (absolute imports; vlray uses no others)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _core_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_no_file_of_the_core_imports_ray_or_the_actors() -> None:
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in _imported_modules(p)
                                                  if m.split(".")[0] in {"ray", "actors", "jobs"})
                 for p in _core_files()}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_importing_every_core_module_loads_no_ray() -> None:
    # In a fresh interpreter: a transitive import of ray (through a library, say) counts too.
    code = ("import importlib, pkgutil, sys, vlray\n"
            "for m in pkgutil.walk_packages(vlray.__path__, 'vlray.'): importlib.import_module(m.name)\n"
            "print(sorted(n for n in sys.modules if n == 'ray' or n.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("forbidden", ["vlray.serving", "vlray.batch", "vlray.static"])
def test_the_engine_does_not_import_its_users(forbidden: str) -> None:
    offenders = [str(p.relative_to(ROOT)) for p in sorted((CORE / "engine").rglob("*.py"))
                 if any(m == forbidden or m.startswith(forbidden + ".") for m in _imported_modules(p))]
    assert offenders == []


def test_the_install_puts_no_generic_engine_package_on_the_path(tmp_path: Path) -> None:
    # From a folder outside the repo, only what `pip install -e .` installed is importable.
    code = "import importlib.util as u; print(u.find_spec('engine') is None, u.find_spec('vlray') is not None)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]


@pytest.mark.parametrize("package", ["vlray", "actors", "jobs"])
def test_every_folder_says_what_it_is_for_and_stays_small(package: str) -> None:
    for folder in [p.parent for p in sorted((ROOT / package).rglob("__init__.py"))]:
        init = folder / "__init__.py"
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init} has no docstring"
        modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= 15, f"{folder} holds {len(modules)} modules"


def test_every_core_module_is_a_real_package_member() -> None:
    # A folder without __init__.py would import as a namespace package and hide from walk_packages.
    found = {m.name for m in pkgutil.walk_packages(vlray.__path__, "vlray.")}
    for path in _core_files():
        dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if dotted.endswith(".__init__"):
            dotted = dotted[: -len(".__init__")]
        assert dotted == "vlray" or dotted in found, dotted
