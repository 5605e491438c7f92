"""The shape of the code, read with ``ast`` (nothing is imported): thin entry scripts, no
command-line ``Namespace`` below them, few long functions, and few function-level imports of the
project's own modules, each with its reason on the line."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("synth", "sas_model", "pipelines")
LIBRARY_DIRS = tuple(
    REPO / d
    for d in (
        "synth",
        "sas_model",
        *(f"pipelines/{p}" for p in ("cli", "tracking", "training", "tuning", "inference")),
    )
)
ENTRY_SCRIPTS = sorted((REPO / "pipelines").glob("*.py"))
MAX_ENTRY_LINES = 150
MAX_FUNCTION_LINES = 80
MAX_LONG_FUNCTIONS = 2
MAX_FUNCTION_LEVEL_IMPORTS = 25


def _sources() -> dict[Path, str]:
    return {p: p.read_text() for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _is_library(path: Path, text: str) -> bool:
    return any(path.is_relative_to(d) for d in LIBRARY_DIRS) and '__name__ == "__main__"' not in text


def _functions(tree: ast.AST):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_library_module_takes_the_command_line():
    found = []
    for path, text in _sources().items():
        if not _is_library(path, text):
            continue
        rel = path.relative_to(REPO)
        if "Namespace" in text:
            found.append(f"{rel}: mentions Namespace")
        for fn in _functions(ast.parse(text)):
            params = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
            if any(a.arg == "args" for a in params):
                found.append(f"{rel}:{fn.lineno} {fn.name}(args)")
    assert found == []


def test_entry_scripts_are_thin():
    long = {
        str(p.relative_to(REPO)): n
        for p in ENTRY_SCRIPTS
        if p.name != "__init__.py" and (n := len(p.read_text().splitlines())) > MAX_ENTRY_LINES
    }
    assert long == {}


def test_few_long_functions():
    long = sorted(
        f"{path.relative_to(REPO)}:{fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
        for path, text in _sources().items()
        for fn in _functions(ast.parse(text))
        if fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES
    )
    assert len(long) <= MAX_LONG_FUNCTIONS, long


def _function_level_project_imports() -> list[tuple[str, str]]:
    """(place, the import's first line) for each import of a project module inside a function."""
    found = []
    for path, text in _sources().items():
        lines = text.splitlines()
        for fn in _functions(ast.parse(text)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = ["pipelines" if node.level else (node.module or "")]
                else:
                    continue
                if any(name.split(".")[0] in PACKAGES for name in names):
                    found.append((f"{path.relative_to(REPO)}:{node.lineno}", lines[node.lineno - 1]))
    return sorted(set(found))


def test_function_level_project_imports_are_few_and_explained():
    """Imports inside functions only where start-up time (Ray, torch, MLflow behind a module) or an
    optional dependency needs it, and each says which on its line."""
    found = _function_level_project_imports()
    assert len(found) <= MAX_FUNCTION_LEVEL_IMPORTS, [place for place, _ in found]
    unexplained = [place for place, line in found if "#" not in line]
    assert unexplained == []
