"""Apply a partial params file (such as the small CI configuration) on top of params.yaml as
`dvc exp run --set-param` overrides, so the experiment keeps whatever else the branch changed.

    dvc exp run $(python -m stages.pipeline.overrides profiles/small/params.yaml)    # an experiment with them
    python -m stages.pipeline.overrides profiles/small/params.yaml                   # just print them

Prints one `--set-param=KEY=VALUE` per line (one shell word each: values are written without
spaces). A mapping is walked down to its leaves, so keys the file does not name keep the
branch's values -- except `workload.kwargs`, which replaces the branch's as a whole (the arguments
belong to one workload factory: a profile that switches workload must not inherit the other's). Floats keep a decimal point and a signed exponent (`1.0e-05`) so Snakemake's
YAML 1.1 reads them back as numbers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from stages.core.config import PARAMS_FILE, validate
from stages.core.cli import run_main
from stages.core.errors import ConfigError

def _value(value: Any) -> str:
    """A value in Hydra's override grammar (what `dvc exp run -S` parses)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text.replace("e", ".0e", 1) if "e" in text and "." not in text else text
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if not text or any(c in text for c in " ,:[]{}()='\"\\"):
        raise ConfigError(f"{text!r}: a string with spaces or punctuation cannot be passed as an override; "
                          "allowed: plain words such as auto, cpu, 6GiB")
    return text


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
    """params with `overrides` applied exactly as `dvc exp run` with set_param_args() applies them."""
    merged = yaml.safe_load(yaml.safe_dump(params))
    for key, value in flatten(overrides).items():
        node = merged
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return merged


def set_param_args(overrides: dict) -> list[str]:
    """A WHOLE mapping is deleted, then added back (Hydra's `~key`, `+key=`): a plain `key={...}`
    would merge into the branch's mapping, and a new key under it is refused in struct mode."""
    args = []
    for key, value in flatten(overrides).items():
        if key in WHOLE:
            args += [f"--set-param=~{key}", f"--set-param=+{key}={_value(value)}"]
        else:
            args.append(f"--set-param={key}={_value(value)}")
    return args


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", type=Path, help="a partial params file, e.g. profiles/small/params.yaml")
    ap.add_argument("--params", type=Path, default=Path(PARAMS_FILE),
                    help="the params.yaml the overrides must validate against (default: ./params.yaml)")
    args = ap.parse_args(argv)
    if not args.file.exists():
        raise ConfigError(f"{args.file}: file not found; allowed: a YAML file with params.yaml's sections")
    overrides = yaml.safe_load(args.file.read_text()) or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{args.file}: received {type(overrides).__name__}; allowed: a mapping of params sections")
    if args.params.exists():  # stop here, not halfway through an experiment
        validate(merge(yaml.safe_load(args.params.read_text()), overrides),
                 f"{args.params} with {args.file}")
    print("\n".join(set_param_args(overrides)))


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]), lock=False)  # prints arguments, writes nothing
