"""Stage `scaling`: steps to the target per batch size, the learning rate retuned per size, and the
critical batch size (McCandlish et al. 2018).

    python -m stages.scaling coarse --batch-size 64   # wave 1 (scaling_wave1@64): stages/scaling/trials.py
    python -m stages.scaling gaps                     # wave 2's plan (wave2.json)
    python -m stages.scaling fill --batch-size 32     # wave 2 (scaling_wave2@32)
    python -m stages.scaling contenders               # wave 3's plan (contenders.json)
    python -m stages.scaling trials --batch-size 64   # wave 3 (scaling_trials@64)
    python -m stages.scaling summarize                # the aggregate stage: stages/scaling/aggregate.py
    python -m stages.scaling fit TABLE.csv            # the fit alone, on any batch_size,steps_to_target[,seed] CSV
    python -m stages.scaling plan                     # the study's bill before it runs: stages/scaling/plan.py

`fit` prints one JSON object (critical_batch_size, kind, ci_low, ci_high, s_min, e_min, ...); a table
that cannot bound B_crit exits 2 with the reason on stderr. The subcommands import what they need
when they run, so `fit` starts without loading torch.
"""
from __future__ import annotations

import json
import math

from stages.core.cli import ArgumentParser
from stages.core.errors import ConfigError, StudyError


# ---------------------------------------------------------------------------- fit CLI

def main_fit(path: str, bootstrap: int, confidence: float) -> None:
    import pandas as pd

    from stages.scaling.fit import FitError, fit_critical_batch_size

    if bootstrap < 1:
        raise ConfigError(f"--bootstrap: received {bootstrap}; allowed: a positive number of resamples (default 200)")
    if not (math.isfinite(confidence) and 0 < confidence < 1):
        raise ConfigError(f"--confidence: received {confidence:g}; allowed: a level strictly between 0 and 1 (default 0.95)")
    try:
        table = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        problem = "not text (a binary file?)" if isinstance(e, UnicodeDecodeError) else str(e)
        raise ConfigError(f"{path}: cannot read it as CSV ({problem}); allowed: a CSV with "
                          f"batch_size,steps_to_target[,seed]") from None
    missing = {"batch_size", "steps_to_target"} - set(table.columns)
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(sorted(missing))}; received columns "
                          f"{', '.join(table.columns)}; allowed: a CSV with batch_size,steps_to_target[,seed]")
    batch_sizes = _numeric_column(path, table, "batch_size", "positive integers", integer=True, blank_ok=False)
    steps = _numeric_column(path, table, "steps_to_target", "positive numbers, or empty for 'not reached'",
                            integer=False, blank_ok=True)
    seeds = (_numeric_column(path, table, "seed", "integers", integer=True, blank_ok=False, positive=False)
             if "seed" in table else None)
    try:
        fit = fit_critical_batch_size(batch_sizes, steps, seeds,
                                      bootstrap=bootstrap, confidence=confidence)
    except FitError as e:
        raise StudyError(f"{path}: {e}") from None
    out = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in fit.as_dict().items()}
    print(json.dumps(out))


def _numeric_column(path: str, table, column: str, allowed: str, *, integer: bool, blank_ok: bool,
                    positive: bool = True):
    """The column as numbers; text, NaN/inf, non-integers or non-positive values are a ConfigError
    naming the row (a steps value `abc` must not silently count as 'not reached')."""
    import pandas as pd

    raw = table[column]
    values = pd.to_numeric(raw, errors="coerce")
    for row, (text, value) in enumerate(zip(raw, values), start=2):  # row 1 is the header
        if pd.isna(text) and blank_ok:
            continue
        bad = (pd.isna(value) or not math.isfinite(value) or (integer and value != int(value))
               or (positive and value <= 0))
        if bad:
            raise ConfigError(f"{path}: row {row}, column {column}: received {text!r}; allowed: {allowed}")
    return values.astype(int) if integer else values


def parser() -> ArgumentParser:
    """The command line (its errors are one line: stages/core/cli.ArgumentParser)."""
    ap = ArgumentParser(prog="python -m stages.scaling", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name, help in (("coarse", "wave 1: the coarse learning-rate search at one batch size"),
                       ("fill", "wave 2: the coarse search at one batch size from its neighbours (or its prediction)"),
                       ("trials", "wave 3: refinement, hold and seed reruns at one batch size (or its coarse answer)")):
        t = sub.add_parser(name, help=help)
        t.add_argument("--batch-size", type=int, required=True)
    sub.add_parser("gaps", help="wave 2's plan from wave 1: which sizes are searched and which predicted")
    sub.add_parser("contenders", help="wave 3's plan from waves 1 and 2: which sizes are refined, and why")
    sub.add_parser("summarize", help="aggregate the per-size trials: tables, fit, noise scale, plots")
    sub.add_parser("plan", help="estimate the study's trials, examples and wall time before it runs")
    f = sub.add_parser("fit", help="fit S(B) = S_min (1 + B_crit / B) to a CSV and print one JSON object")
    f.add_argument("table", help="CSV with columns batch_size,steps_to_target (optional seed)")
    f.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (default 200)")
    f.add_argument("--confidence", type=float, default=0.95, help="confidence level (default 0.95)")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command in ("coarse", "fill"):
        from stages.scaling.trials import main_coarse

        main_coarse(args.batch_size, 1 if args.command == "coarse" else 2)
    elif args.command == "gaps":
        from stages.scaling.trials import main_gaps

        main_gaps()
    elif args.command == "contenders":
        from stages.scaling.trials import main_contenders

        main_contenders()
    elif args.command == "trials":
        from stages.scaling.trials import main_trials

        main_trials(args.batch_size)
    elif args.command == "plan":
        from stages.scaling.trials import main_plan

        main_plan()
    elif args.command == "summarize":
        from stages.scaling.aggregate import main_summarize

        main_summarize()
    else:
        main_fit(args.table, args.bootstrap, args.confidence)

