"""The package's layers and its import graph, checked on every test run.

`pyproject.toml` declares the contracts (`[tool.importlinter]`: layers import downwards
only, the lower layers need no Ray); these tests run them with import-linter and add what it
does not check: no import cycle anywhere in the package, no method package importing another
(whichever packages exist), and no module below the trainer importing Ray Train or Tune.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
from helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "rayaccel"


def test_import_linter_contracts_are_kept():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in graph.modules:
                continue
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return groups


def test_the_package_has_no_import_cycle():
    graph = grimp.build_graph("rayaccel", cache_dir=None, exclude_type_checking_imports=True)
    # A package's __init__ that imports its own submodules is not a cycle between modules.
    for module in list(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if module.startswith(imported + "."):
                graph.remove_import(importer=module, imported=imported)
    assert _cycles(graph) == []


def test_method_packages_never_import_each_other():
    """Each folder under rayaccel/methods/ is one method; it may use the hook points
    (`methods.base`) but no other method, so a method stays in its own package."""
    graph = grimp.build_graph("rayaccel", cache_dir=None, exclude_type_checking_imports=True)
    packages = sorted(
        p.name for p in (PACKAGE / "methods").iterdir() if (p / "__init__.py").is_file()
    )
    assert {"etpp", "infobatch", "agvm", "tricks"} <= set(packages)
    crossings = []
    for importer in packages:
        for imported in packages:
            if importer == imported:
                continue
            chains = graph.find_shortest_chains(
                importer=f"rayaccel.methods.{importer}",
                imported=f"rayaccel.methods.{imported}",
                as_packages=True,
            )
            crossings.extend(" -> ".join(chain) for chain in chains)
    assert crossings == []


def test_no_module_below_the_trainer_imports_ray_train_or_tune():
    lower = ["core", "methods", "optim", "data", "models", "config", "plan.py"]
    offenders = []
    for part in lower:
        for path in (
            sorted((PACKAGE / part).rglob("*.py"))
            if (PACKAGE / part).is_dir()
            else [PACKAGE / part]
        ):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else []
                )
                for name in names:
                    if name.startswith(("ray.train", "ray.tune")):
                        offenders.append(f"{path.relative_to(REPO_ROOT)}: {name}")
    assert offenders == []
