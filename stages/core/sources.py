"""The user's code, tracked: `workload.sources` must exist, be rendered into dvc.yaml, and cover every
module of the user's project that the settings name.

DVC and Snakemake rerun a stage when a file it lists changes; kickoff's own resume journal hashes the
modules the workload is built from (stages/core/tune.py). A module the settings name -- `workload.name:
my_project.model:make`, the dataset workload's `model: my_project.data:make_model`, a candidate's --
whose file lies in the project but not in `workload.sources` would make the two disagree: the tools
would call a stale answer up to date. `check_sources` refuses it in one line with the `sources:` line
to add. No torch here: the settings stage, Snakemake's start and `python -m stages` all run it.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any, Iterator

from stages.core.errors import ConfigError
from stages.core.profile import load_yaml

IMPORT_PATH = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):[A-Za-z_][A-Za-z0-9_]*$")
KICKOFF = "stages"  # kickoff's own package: its modules are tracked as code dependencies already


def check_sources(p: Any, root: Path | None = None) -> None:
    """Every `workload.sources` entry exists, dvc.yaml tracks it, and it covers every project module
    the settings name (`p`: Params, or a stage's declared part of them holding `workload`)."""
    root = Path.cwd() if root is None else root
    for i, src in enumerate(p.workload.sources):
        if not (root / src).exists():
            raise ConfigError(f"workload.sources[{i}]: received {src!r}, which does not exist; allowed: paths (files or folders) relative to {root}")
    _check_dvc_yaml_tracks(p.workload.sources, root / "dvc.yaml")
    check_listed(p.workload.name, p.workload.kwargs, _candidates(p), p.workload.sources, root)


def _candidates(p: Any) -> list[dict]:
    try:
        return list(p.family.candidates or [])
    except Exception:  # noqa: BLE001 - a stage that does not declare family.candidates: its own kwargs only
        return []


def _check_dvc_yaml_tracks(sources: list[str], dvc_yaml: Path) -> None:
    """dvc.yaml lists workload.sources literally (DVC cannot interpolate a list of deps), so after
    editing them the declaration must be re-rendered -- otherwise DVC would silently not track them."""
    if not sources or not dvc_yaml.exists():
        return
    declared = load_yaml(dvc_yaml.read_text()) or {}
    deps = set()
    for body in (declared.get("stages") or {}).values():
        body = body.get("do", body)
        deps.update(d for d in body.get("deps") or [] if isinstance(d, str))
    missing = [s for s in sources if s not in deps]
    if missing:
        raise ConfigError(f"workload.sources: {missing} are not tracked by {dvc_yaml.name}; "
                          f"run `python -m stages.pipeline` to re-render it from params.yaml")


def named_modules(name: str, kwargs: dict, candidates: list[dict]) -> Iterator[tuple[str, str]]:
    """(params key, module) for every `package.module:name` the workload settings name."""
    if IMPORT_PATH.match(str(name)):
        yield "workload.name", str(name).partition(":")[0]

    def walk(value: Any, key: str) -> Iterator[tuple[str, str]]:
        if isinstance(value, str) and IMPORT_PATH.match(value):
            yield key, value.partition(":")[0]
        elif isinstance(value, dict):
            for k, v in value.items():
                yield from walk(v, f"{key}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                yield from walk(v, f"{key}[{i}]")

    yield from walk(kwargs or {}, "workload.kwargs")
    for i, candidate in enumerate(candidates):
        yield from walk(candidate, f"family.candidates[{i}]")


def module_file(module: str) -> Path | None:
    """The file `module` would be imported from (its parent packages are imported to find it), or None."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError, AttributeError):
        return None  # the workload check names an import path that does not import
    origin = getattr(spec, "origin", None) if spec else None
    return Path(origin).resolve() if origin and origin not in ("built-in", "frozen") else None


def covered(file: Path, sources: list[str], root: Path) -> bool:
    """Is `file` tracked through `workload.sources` (listed, or inside a listed folder)?"""
    for src in sources:
        path = (root / src).resolve()
        if file == path or path in file.parents:
            return True
    return False


def unlisted(name: str, kwargs: dict, candidates: list[dict], sources: list[str], root: Path) -> list[tuple[str, str]]:
    """(params key, file relative to `root`) for each module the settings name whose file lies in the
    project at `root`, outside kickoff's own package, and is not covered by `sources` -- listed, inside a
    listed folder, or imported by a listed source (DVC and Snakemake track those too: imports.user_code)."""
    from stages.core.imports import user_code

    root = root.resolve()
    imported = {(root / f).resolve() for f in user_code(sources, root)[0]}
    found: list[tuple[str, str]] = []
    for key, module in named_modules(name, kwargs, candidates):
        file = module_file(module)
        if file is None or root not in file.parents or (root / KICKOFF) in file.parents:
            continue
        rel = file.relative_to(root).as_posix()
        if not covered(file, sources, root) and file not in imported and rel not in [f for _, f in found]:
            found.append((key, rel))
    return found


def sources_line(sources: list[str], missing: list[str]) -> str:
    """The `sources:` line to write under `workload:` in params.yaml."""
    return f"sources: [{', '.join([*sources, *(m for m in missing if m not in sources)])}]"


def check_listed(name: str, kwargs: dict, candidates: list[dict], sources: list[str], root: Path) -> None:
    """ConfigError naming the first module of the user's project the settings name that
    `workload.sources` does not cover, with the `sources:` line that covers them all."""
    missing = unlisted(name, kwargs, candidates, list(sources), root)
    if not missing:
        return
    key, file = missing[0]
    more = f" (and {', '.join(f for _, f in missing[1:])})" if len(missing) > 1 else ""
    raise ConfigError(f"{key}: its module's file {file}{more} is not in workload.sources, so DVC and Snakemake would "
                      f"not rerun anything when it changes; allowed: every file of your project the workload is built "
                      f"from, listed -- write `{sources_line(list(sources), [f for _, f in missing])}` under "
                      f"`workload:` in params.yaml, then run `python -m stages.pipeline`")
