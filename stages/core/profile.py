"""Profiles: partial params files applied on top of params.yaml, which stays exactly as the branch has it.

    python -m stages.pipeline --profile small                   # dvc repro / dvc exp run / snakemake now run it
    python -m stages.pipeline --profile char_lm --profile small # several, applied in this order
    python -m stages.pipeline --no-profile                      # back to params.yaml alone

`--profile NAME` means `profiles/NAME/params.yaml` (or give a path). The active profiles are recorded
in the rendered dvc.yaml (`vars: [{kickoff_profiles: [...]}]`). The pipeline's first stage, settings,
depends on params.yaml and the profile files and writes the merged values in force, where every other
stage tracks its keys (stages/core/effective.py) -- so DVC (and Snakemake, which follows dvc.lock)
reruns exactly the stages whose values a profile changes, keys it adds later included (a render that
turns a profile on or off brings that file up to date itself: no file the stage depends on says which
profiles are active), and `dvc exp
run -S profiles/small/params.yaml:scaling.seeds=2` edits the profile, never params.yaml. Every stage
reads params.yaml merged with the active profiles (`load_params` in stages/core/config.py).

A mapping is merged key by key, so keys a profile does not name keep the branch's values -- except
`workload.kwargs`, which replaces the branch's as a whole (the arguments belong to one workload
factory: a profile that switches workload must not inherit the other's).
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

from stages.core.errors import ConfigError, yaml_error
from stages.core.yamlfile import parse

VAR = "kickoff_profiles"  # the dvc.yaml variable naming the active profiles
WHOLE = ("workload.kwargs",)  # mappings replaced as a whole, never merged key by key


def flatten(overrides: dict, prefix: str = "") -> dict[str, Any]:
    """{'scaling': {'max_steps': 300}} -> {'scaling.max_steps': 300}."""
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and value and full not in WHOLE:
            flat.update(flatten(value, f"{full}."))
        else:
            flat[full] = value
    return flat


def merge(params: dict, overrides: dict) -> dict:
    """params with `overrides` applied (a copy; neither argument changes)."""
    merged = copy.deepcopy(params)
    for key, value in flatten(overrides).items():
        node = merged
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):  # absent, or null in params.yaml (probe.plan_for)
                node[part] = {}
            node = node[part]
        node[leaf] = value
    return merged


def profile_path(name: str) -> str:
    """'small' -> 'profiles/small/params.yaml'; a path is kept as given."""
    return name if name.endswith((".yaml", ".yml")) or "/" in name else f"profiles/{name}/params.yaml"


def read_profile(path: str, root: Path) -> dict:
    """A profile's overrides, or ConfigError naming the file."""
    file = root / path
    if not file.is_file():
        known = sorted(p.parent.name for p in (root / "profiles").glob("*/params.yaml"))
        raise ConfigError(f"profile {path}: file not found; allowed: {', '.join(known) or 'none here'} "
                          f"(profiles/NAME/params.yaml) or the path of a partial params file")
    try:
        overrides = parse(file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"profile {yaml_error(path, e)}; allowed: a mapping of params.yaml sections") from None
    except ConfigError as e:  # a key given twice
        raise ConfigError(f"profile {path}: {e}") from None
    overrides = {} if overrides is None else overrides
    if not isinstance(overrides, dict):
        raise ConfigError(f"profile {path}: received {type(overrides).__name__}; allowed: a mapping of params.yaml sections")
    return overrides


def active_profile(dvc_yaml_text: str | None) -> str | None:
    """The active profiles recorded in a dvc.yaml text, as one label ('small', 'char_lm+small'), or
    None where the run uses params.yaml alone: what the reviews compare like with like."""
    paths = active_profiles(dvc_yaml_text)
    if not paths:
        return None
    return "+".join(Path(p).parent.name if Path(p).name == "params.yaml" else p for p in paths)


@functools.lru_cache(maxsize=16)
def _parsed(text: str) -> Any:
    return parse(text)


def load_yaml(text: str) -> Any:
    """The text read by kickoff's one YAML reader (stages/core/yamlfile.py: YAML 1.2, a key given twice
    refused), a fresh copy, parsed once per process per text: every stage reads params.yaml and
    dvc.yaml (120 KB) several times."""
    return copy.deepcopy(_parsed(text))


def active_profiles(dvc_yaml_text: str | None) -> list[str]:
    """The profile files a dvc.yaml text records as active (none for a missing or unreadable one)."""
    try:
        declared = _parsed(dvc_yaml_text or "") or {}
    except (yaml.YAMLError, ConfigError):
        return []
    for entry in (declared.get("vars") or []) if isinstance(declared, dict) else []:
        if isinstance(entry, dict) and VAR in entry:
            return [str(p) for p in entry[VAR] or []]
    return []


def profiles_in(root: Path) -> list[str]:
    """The active profiles of the project at `root` (its dvc.yaml)."""
    dvc_yaml = root / "dvc.yaml"
    return active_profiles(dvc_yaml.read_text() if dvc_yaml.is_file() else None)


def profile_files(root: Path) -> list[str]:
    """Every profile of the project at `root` (profiles/NAME/params.yaml), active or not, sorted."""
    return sorted(p.relative_to(root).as_posix() for p in (root / "profiles").glob("*/params.yaml"))


def apply_profiles(raw: dict, paths: list[str], root: Path) -> dict:
    for path in paths:
        raw = merge(raw, read_profile(path, root))
    return raw
