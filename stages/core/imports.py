"""The `stages` modules a module reaches through its imports, read from the source (nothing is imported).

Two users need the same answer: the pipeline declaration (a stage's code dependencies, so editing a
module it uses makes it stale in DVC and Snakemake) and the scaling study's resume journal (a hash of
the code a trial runs, so a finished trial is reused only while that code is unchanged).
"""
from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the project root, holding the `stages` package
PACKAGE = "stages"


@lru_cache(maxsize=None)
def module_file(module: str) -> Path | None:
    rel = Path(*module.split("."))
    for candidate in (ROOT / rel.with_suffix(".py"), ROOT / rel / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


@lru_cache(maxsize=None)
def imports_of(module: str) -> frozenset[str]:
    """`stages.*` modules imported anywhere in `module` (top level or inside functions)."""
    path = module_file(module)
    if path is None:
        return frozenset()
    try:
        tree = ast.parse(path.read_text())
    except SyntaxError:  # a user's module that does not parse: importing it names the line (workloads/base.import_path)
        return frozenset()
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] == PACKAGE and module_file(n) is not None)
    return frozenset(found)


def reachable(module: str) -> set[str]:
    """`module` and every stages module it reaches through imports."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(imports_of(m))
    return seen


def code_deps(module: str) -> list[str]:
    """The files of `module` and of every stages module it reaches, relative to the root, sorted."""
    files = {str(module_file(m).relative_to(ROOT)) for m in reachable(module) if module_file(m) is not None}
    files.discard(f"{PACKAGE}/__init__.py")
    return sorted(files)


def code_hash(module: str) -> str:
    """A short hash of the contents of code_deps(module): changes when any of that code changes."""
    digest = hashlib.sha256()
    for rel in code_deps(module):
        digest.update(rel.encode() + b"\0" + (ROOT / rel).read_bytes() + b"\0")
    return digest.hexdigest()[:16]
