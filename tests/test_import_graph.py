"""The packages' import graph, read with ``ast`` (nothing is imported): no cycles, even through
imports inside functions; the layering ``synth`` / ``sas_model`` below ``pipelines``, and inside
``pipelines`` its sub-packages in their documented order; scripts that run without ``sys.path`` edits
and whose folders shadow no module."""

from __future__ import annotations

import ast
import importlib.metadata
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("synth", "sas_model", "pipelines")


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module → project modules it imports, at module level or inside a function."""
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(f"{target}."):
                    edges[name].add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_even_through_function_level_imports():
    assert _cycles(_edges(_modules())) == []


def test_synth_and_sas_model_import_neither_pipelines_nor_each_other():
    edges = _edges(_modules())
    crossing = sorted(
        (name, target)
        for name, targets in edges.items()
        for target in targets
        if name.split(".")[0] != "pipelines" and target.split(".")[0] != name.split(".")[0]
    )
    assert crossing == []


# pipelines' helper sub-packages, lowest first: each imports only from its left (and synth, sas_model).
# The entry points (pipelines/*.py) may import any of them; ``bench`` sits above the entry points.
PIPELINES_LAYERS = ("cli", "tracking", "training", "tuning", "inference")


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "pipelines" or len(parts) < 2:
        return None
    if parts[1] in PIPELINES_LAYERS:
        return PIPELINES_LAYERS.index(parts[1])
    return len(PIPELINES_LAYERS) + (1 if parts[1] == "bench" else 0)  # entry points, then bench


def test_pipelines_sub_packages_import_only_downwards():
    upward = sorted(
        (name, target)
        for name, targets in _edges(_modules()).items()
        for target in targets
        if _layer(name) is not None
        and _layer(target) is not None
        and _layer(target) > _layer(name)
        and not (name.split(".")[1] == target.split(".")[1] == "inference")  # tuning and inference are peers
    )
    assert upward == []


ENTRY_POINTS = {"train", "tune", "evaluate", "predict", "main_job", "demo", "pretrain"}


def test_no_module_imports_an_entry_script():
    """Entry scripts are run, not imported: libraries, tools and other entry scripts call what the
    scripts call (even from inside a function)."""
    scripts = {f"pipelines.{name}" for name in ENTRY_POINTS}
    importing = sorted(
        (name, target) for name, targets in _edges(_modules()).items() for target in targets & scripts
    )
    assert importing == []


def test_every_pipelines_module_lives_in_a_known_place():
    for name in _modules():
        parts = name.split(".")
        if parts[0] == "pipelines" and len(parts) > 1:
            assert parts[1] in ENTRY_POINTS or parts[1] in (*PIPELINES_LAYERS, "bench"), name


def test_no_module_edits_sys_path():
    edits = [
        str(path.relative_to(REPO))
        for path in _modules().values()
        if "sys.path.insert" in path.read_text() or "sys.path[0] =" in path.read_text()
    ]
    assert edits == []


def test_script_folders_shadow_no_installed_or_standard_module():
    """``python pipelines/train.py`` puts ``pipelines/`` first on ``sys.path``: a file or folder there named
    like a module that something imports (``tracking``, ``data``, ...) would be imported instead of it."""
    installed = set(sys.stdlib_module_names) | set(importlib.metadata.packages_distributions())
    script_folders = {path.parent for path in _modules().values() if "__main__" in path.read_text()}
    shadowing = sorted(
        str(entry.relative_to(REPO))
        for folder in script_folders
        for entry in folder.iterdir()
        if (entry.suffix == ".py" or (entry / "__init__.py").exists()) and entry.stem in installed
    )
    assert shadowing == []
