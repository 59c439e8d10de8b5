"""Deprecated: a partial params file as `dvc exp run --set-param` overrides. They rewrite params.yaml
(DVC applies them to the workspace, re-serialised: comments and formatting gone), so a branch that
commits afterwards carries the profile. Use a profile instead, which leaves params.yaml as it is:

    python -m stages.pipeline --profile small && dvc exp run      # or: dvc repro, snakemake -c2

Still works for a release, with a deprecation message on stderr:

    dvc exp run $(python -m stages.pipeline.overrides profiles/small/params.yaml)

Prints one `--set-param=KEY=VALUE` per line (one shell word each). On an error (a mistyped path, a
bad value) it prints the error on stderr and, on stdout, one argument no command accepts, so the
`dvc exp run $(...)` around it stops instead of running the experiment without the overrides.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from stages.core.config import PARAMS_FILE, read_file, validate
from stages.core.errors import ConfigError, KickoffError
from stages.core.profile import WHOLE, flatten, merge  # noqa: F401  (their home moved to stages/core/profile.py)
from stages.core.yamlfile import parse

FAILED = "--kickoff-overrides-failed-see-the-error-above"


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
    if not args.file.is_file():
        raise ConfigError(f"{args.file}: file not found; allowed: a YAML file with params.yaml's sections")
    try:
        overrides = parse(args.file.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{args.file}: not valid YAML ({str(e).splitlines()[0]}); allowed: a mapping of params sections") from None
    except ConfigError as e:  # a key given twice
        raise ConfigError(f"{args.file}: {e}") from None
    if not isinstance(overrides, dict):
        raise ConfigError(f"{args.file}: received {type(overrides).__name__}; allowed: a mapping of params sections")
    if args.params.is_file():  # stop here, not halfway through an experiment
        validate(merge(read_file(args.params), overrides), f"{args.params} with {args.file}")
    name = args.file.parent.name if args.file.name == "params.yaml" else str(args.file)
    print(f"kickoff: `python -m stages.pipeline.overrides` is deprecated: its overrides rewrite params.yaml; "
          f"run `python -m stages.pipeline --profile {name}` once, then `dvc exp run` (or `snakemake -c2`)",
          file=sys.stderr)
    print("\n".join(set_param_args(overrides)))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except KickoffError as e:  # one line, and an argument that stops the `dvc exp run $(...)` around it
        print(f"kickoff: error: {e}", file=sys.stderr)
        print(FAILED)
        sys.exit(2)
