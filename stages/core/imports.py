"""The modules a module reaches through its imports, read from the source (nothing is imported):
kickoff's own `stages` modules, and the user's modules that the listed `workload.sources` reach.

Two users need the same answer: the pipeline declaration (a stage's code dependencies, so editing a
module it uses makes it stale in DVC and Snakemake) and the scaling study's resume journal (a hash of
the code a trial runs, so a finished trial is reused only while that code is unchanged).

The user's project is where the listed sources live: the project root (where the stages run, first on
`sys.path`) and, for each listed file, the folder it is imported from (above its outermost package --
a project outside the clone, `pip install -e ../myproject`, listed as `../myproject/src/pkg/model.py`).
A listed source's imports that resolve to a file there are followed, transitively (module files and
the packages' `__init__.py` they pass through); anything else -- the standard library, site-packages,
a module found nowhere in the project -- is not the user's code and is not tracked.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from stages.core.io import write_cache

ROOT = Path(__file__).resolve().parents[2]  # the project root, holding the `stages` package
PACKAGE = "stages"


@lru_cache(maxsize=None)
def module_file(module: str) -> Path | None:
    rel = Path(*module.split("."))
    for candidate in (ROOT / rel.with_suffix(".py"), ROOT / rel / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


# What each of kickoff's own modules imports, by the hash of its source: parsing them all (~80 files, ~0.8 s)
# is what every `snakemake -n`, render and stage would otherwise pay before any work. A cache only: keyed
# by content, so an edited module is parsed again, and a cache that cannot be read or written costs time.
CACHE = ROOT / ".kickoff" / "cache" / "imports.json"
_parsed: dict[str, list[str]] | None = None


def _cached_names(source: bytes) -> tuple[str, list[str] | None]:
    global _parsed
    if _parsed is None:
        try:
            loaded = json.loads(CACHE.read_text())
            _parsed = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            _parsed = {}
    key = hashlib.blake2b(source, digest_size=16).hexdigest()
    names = _parsed.get(key)
    return key, names if isinstance(names, list) and all(isinstance(n, str) for n in names) else None


def _remember_names(key: str, names: list[str]) -> None:
    assert _parsed is not None
    _parsed[key] = names
    write_cache(CACHE, json.dumps(_parsed))


@lru_cache(maxsize=None)
def imports_of(module: str) -> frozenset[str]:
    """`stages.*` modules imported anywhere in `module` (top level or inside functions)."""
    path = module_file(module)
    if path is None:
        return frozenset()
    source = path.read_bytes()
    key, names = _cached_names(source)
    if names is None:
        try:
            tree = ast.parse(source)
        except SyntaxError:  # a user's module that does not parse: importing it names the line (workloads/base.import_path)
            return frozenset()
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.update([node.module] + [f"{node.module}.{a.name}" for a in node.names])
        names = sorted(n for n in found if n.split(".")[0] == PACKAGE)
        _remember_names(key, names)
    return frozenset(n for n in names if module_file(n) is not None)


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
    return list(_code_deps(module))


@lru_cache(maxsize=None)
def _code_deps(module: str) -> tuple[str, ...]:  # asked for every job of every stage while a DAG is built
    files = {str(module_file(m).relative_to(ROOT)) for m in reachable(module) if module_file(m) is not None}
    files.discard(f"{PACKAGE}/__init__.py")
    return tuple(sorted(files))


def code_hash(module: str) -> str:
    """A short hash of the contents of code_deps(module): changes when any of that code changes."""
    digest = hashlib.sha256()
    for rel in code_deps(module):
        digest.update(rel.encode() + b"\0" + (ROOT / rel).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------- the user's code

def _import_base(path: Path) -> Path:
    """The folder a module file is imported from: the one above its outermost package (a folder with
    an `__init__.py`), e.g. ../myproject/src for ../myproject/src/pkg/sub/model.py."""
    folder = path.parent
    while (folder / "__init__.py").is_file():
        folder = folder.parent
    return folder


def _module_name(path: Path, base: Path) -> tuple[str, bool]:
    """('pkg.sub.model', False) for base/pkg/sub/model.py; ('pkg.sub', True) for base/pkg/sub/__init__.py."""
    parts = path.relative_to(base).with_suffix("").parts
    return (".".join(parts[:-1]), True) if parts[-1] == "__init__" else (".".join(parts), False)


def _imported_names(path: Path, base: Path) -> set[str]:
    """Every module `path` may import, as absolute names: for `import a.b.c` a, a.b and a.b.c (importing
    a.b.c runs a/__init__.py and a/b/__init__.py too); for `from a.b import c` also a.b.c (c may be a
    module); relative imports resolved against the file's own package. Unreadable source: none."""
    try:
        tree = ast.parse(path.read_bytes())
    except (OSError, SyntaxError, ValueError):
        return set()
    name, is_package = _module_name(path, base)
    package = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 >= len(package):
                    continue  # above the top package: Python refuses it too
                anchor = package[:len(package) - (node.level - 1)]
                head = ".".join(anchor + ([node.module] if node.module else []))
            else:
                head = node.module or ""
            if not head:
                continue
            targets = [head] + [f"{head}.{a.name}" for a in node.names if a.name != "*"]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return found


def _outside_environment(path: Path) -> bool:
    """Not installed code: nothing under a site-packages folder or the interpreter's own library."""
    import sys

    if {"site-packages", "dist-packages"} & set(path.parts):
        return False
    stdlib = Path(os.__file__).resolve().parent
    return not path.is_relative_to(stdlib) and not path.is_relative_to(Path(sys.base_prefix).resolve() / "lib")


def _locate(module: str, bases: list[Path]) -> Path | None:
    """The file `module` is imported from, in the first of `bases` that has it."""
    rel = Path(*module.split("."))
    for base in bases:
        for candidate in (base / rel.with_suffix(".py"), base / rel / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def user_code(sources: list[str], root: Path | None = None) -> tuple[list[str], set[str]]:
    """The user's files that `sources` (the `workload.sources` entries: files or folders, relative to
    `root` or absolute) reach through their imports, transitively, and the `stages` modules they
    import. Files are paths as DVC and Snakemake take them: relative to `root` (`../myproject/pkg/x.py`
    for a project beside the clone), sorted, the listed sources and files inside a listed folder left out."""
    root = (ROOT if root is None else root).resolve()
    listed, folders = set(), []
    todo: list[Path] = []
    for src in sources:
        path = (root / src).resolve()
        if path.is_dir():
            folders.append(path)
            todo += sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.relative_to(path).parts)
        elif path.suffix == ".py" and path.is_file():
            listed.add(path)
            todo.append(path)
        elif path.is_file():
            listed.add(path)
    bases = [root] + [b for b in dict.fromkeys(_import_base(p) for p in todo) if b != root]
    bases = [b for b in bases if _outside_environment(b)]
    seen: set[Path] = set()
    kickoff: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        base = _import_base(path)
        for name in _imported_names(path, base):
            if name.split(".")[0] == PACKAGE:
                if module_file(name) is not None:
                    kickoff.add(name)
                continue
            found = _locate(name, bases)
            if found is not None and found.resolve() not in seen and _outside_environment(found.resolve()):
                todo.append(found.resolve())
    reached = {p for p in seen if p not in listed and not any(p.is_relative_to(f) for f in folders)}
    return sorted(Path(os.path.relpath(p, root)).as_posix() for p in reached), kickoff
