"""A rerun after a change against a fresh study of the changed project (issue 26 part 5: "a rerun after a
weight-decay change at most 1/3 of a fresh study's examples, with the same choice or a tie").

    python bench/bench_rerun.py                  # char_lm (profiles char_lm + small), weight_decay 0.01 -> 0.1
    python bench/bench_rerun.py --profile none --change optimizer.weight_decay=1e-4   # digits_mlp, params.yaml
    python bench/bench_rerun.py --set scaling.batch_sizes=[32,64] --set scaling.max_steps=300   # quicker

Three scaling studies, each its waves' jobs (`stages.scaling` coarse / gaps / fill / contenders / trials /
summarize, in the order `dvc repro` runs them, in this process), in fresh temporary projects:

1. *before*: the project as configured;
2. *rerun*: the same project after `--change`, its previous answer (reports/scaling/steps_to_target.csv)
   in the workspace, as a `dvc repro` after the edit finds it: each size's search starts from it;
3. *fresh*: the changed project with nothing before it.

Every size in scaling.batch_sizes is studied: no probe or throughput outputs, so no noisy throughput
verdict decides which sizes are studied (on a busy machine it can add or remove the largest sizes and
swamp the comparison), and wave 3's contenders are weighed by examples to the target. The figures are
examples and trials (deterministic on the CPU for a given seed), the size whose best rate needs the fewest
examples to the target, each size's best rate and steps, B_crit with its interval, and wall time.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.core.profile import merge  # noqa: E402


def parse_sets(ap: argparse.ArgumentParser, items: list[str], flag: str) -> dict:
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            ap.error(f"{flag}: received {item!r}; allowed: KEY=YAML, e.g. scaling.max_steps=200")
        out = merge(out, {key: yaml.safe_load(value)})
    return out


def project(args: argparse.Namespace, ap: argparse.ArgumentParser) -> tuple[dict, dict]:
    """(params before the change, after it): params.yaml with the profiles, the workload as given (no
    family candidates), on the CPU, and the --set overrides."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name in [] if args.profile == ["none"] else args.profile:
        path = ROOT / "profiles" / name / "params.yaml"
        if not path.exists():
            ap.error(f"--profile: received {name!r}; allowed: none or one of "
                     f"{sorted(p.parent.name for p in (ROOT / 'profiles').glob('*/params.yaml'))}")
        raw = merge(raw, yaml.safe_load(path.read_text()) or {})
    raw = merge(raw, {"family": {"candidates": None}, "runtime": {"device": "cpu", "threads": args.threads}})
    raw = merge(raw, parse_sets(ap, args.set, "--set"))
    return raw, merge(raw, parse_sets(ap, args.change, "--change"))


def study(workdir: Path, raw: dict, label: str) -> dict:
    """The study's jobs in `workdir` with params `raw`; its figures."""
    from stages.scaling import stage as scaling
    from stages.scaling.waves import study_commands

    (workdir / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    sizes = list(raw["scaling"]["batch_sizes"])
    cwd, start = Path.cwd(), time.perf_counter()
    os.chdir(workdir)
    try:
        for job in study_commands(sizes, raw["scaling"].get("adaptive", True)):
            t = time.perf_counter()
            with contextlib.redirect_stderr(io.StringIO()):  # the jobs' progress lines: their figures follow
                scaling.main(job)
            print(f"  {label}: {' '.join(job)}: {time.perf_counter() - t:.1f} s", flush=True)
    finally:
        os.chdir(cwd)
    wall = time.perf_counter() - start
    trials = pd.read_csv(workdir / "reports/scaling/trials.csv")
    table = pd.read_csv(workdir / "reports/scaling/steps_to_target.csv")
    metrics = json.loads((workdir / "reports/scaling/metrics.json").read_text())
    reached = table[table["status"] == "reached"].copy()
    reached["examples_to_target"] = reached["batch_size"] * reached["steps_to_target"]
    best = reached.loc[reached["examples_to_target"].idxmin()] if len(reached) else None
    reused = sorted({int(b) for b, p in zip(trials["batch_size"], trials.get("prior", pd.Series(dtype=str)))
                     if isinstance(p, str) and "previous study" in p})
    return {"label": label, "wall_s": wall, "examples": int(trials["examples_run"].sum()), "trials": len(trials),
            "b_crit": metrics.get("critical_batch_size"), "ci": (metrics.get("ci_low"), metrics.get("ci_high")),
            "best_size": None if best is None else int(best["batch_size"]),
            "best_lr": None if best is None else float(best["best_learning_rate"]),
            "best_steps": None if best is None else float(best["steps_to_target"]),
            "table": table.set_index("batch_size"), "reused": reused}


def _num(x, fmt: str = ".3g") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def report(runs: list[dict]) -> None:
    for r in runs:
        print(f"{r['label']:>6}: {r['examples']:,} examples, {r['trials']} trials, wall {r['wall_s']:.0f} s; "
              f"fewest examples to the target at bs {r['best_size']} (lr {_num(r['best_lr'], '.4g')}, "
              f"{_num(r['best_steps'], 'g')} steps); B_crit {_num(r['b_crit'])} ({_num(r['ci'][0])}-{_num(r['ci'][1])})"
              + (f"; started from the previous answer at bs {r['reused']}" if r["reused"] else ""))
    _, rerun, fresh = runs
    print("per size (best rate / steps to target):")
    for b in fresh["table"].index:
        cells = []
        for r in runs:
            row = r["table"].loc[b] if b in r["table"].index else None
            cells.append("-" if row is None or row["status"] != "reached"
                         else f"{row['best_learning_rate']:.4g} / {row['steps_to_target']:g}")
        print(f"  bs {b}: before {cells[0]}; rerun {cells[1]}; fresh {cells[2]}")
    same = rerun["best_size"] == fresh["best_size"]
    print(f"rerun / fresh examples: {rerun['examples'] / fresh['examples']:.2f} (goal <= 0.33); "
          f"trials {rerun['trials']} / {fresh['trials']}; wall {rerun['wall_s'] / fresh['wall_s']:.2f}; "
          f"same size with the fewest examples to the target: {'yes' if same else 'no'}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", action="append", default=None,
                    help="profiles/<name>/params.yaml applied in order (default: char_lm, small; 'none': params.yaml alone)")
    ap.add_argument("--change", action="append", default=None, metavar="KEY=YAML",
                    help="the edit between the first study and the rerun (default: optimizer.weight_decay=0.1)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=YAML", help="override a setting for all three")
    ap.add_argument("--threads", type=int, default=1, help="runtime.threads")
    args = ap.parse_args(argv)
    args.profile = args.profile or ["char_lm", "small"]
    args.change = args.change or ["optimizer.weight_decay=0.1"]
    before, after = project(args, ap)
    s = after["scaling"]
    print(f"workload {after['workload']['name']}, optimizer {after['optimizer']['name']}, change {', '.join(args.change)}; "
          f"batch sizes {s['batch_sizes']}, max_steps {s['max_steps']}, seeds {s['seeds']}; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_rerun_") as tmp:
        first, fresh = Path(tmp) / "project", Path(tmp) / "fresh"
        first.mkdir()
        fresh.mkdir()
        runs = [study(first, before, "before"), study(first, after, "rerun"), study(fresh, after, "fresh")]
    report(runs)


if __name__ == "__main__":
    main()
