"""Benchmark: is the recommendation repeatable, and does the baseline confirm its predictions?

    python bench/bench_repeatability.py                   # 5 x `dvc repro --force`, default workload (digits_mlp)
    python bench/bench_repeatability.py --workload nqm    # the noisy quadratic model (SGD, momentum 0)
    python bench/bench_repeatability.py --runs 3

Copies the project into a temporary git repository (as the tests do) and runs the whole pipeline
`--runs` times on this machine, each measured afresh. Prints one row per run -- select's batch size,
learning rate and step budget, whether the baseline ends meeting the target, and the baseline's
measured/predicted steps and time to target -- then the goals of the trust issue side by side:
  - the same batch size and learning rate in at least 4 of 5 runs;
  - every baseline ends meeting its target;
  - measured/predicted time to target within 0.85-1.15;
  - the study's search cost (examples trained by the whole study / examples of the best rates' runs).
Exit status 1 if a run fails.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_pipeline import run_pipeline  # noqa: E402
from tests.conftest import make_project  # noqa: E402

NQM = {"workload": {"name": "nqm", "kwargs": {"dim": 100, "target": 0.05}, "sources": []},
       "optimizer": {"name": "sgd", "momentum": 0.0},
       "scaling": {"batch_sizes": [4, 16, 64, 256, 1024], "lr_min": 3.0e-3, "lr_max": 3.0, "max_steps": 3000}}


def read(project: Path, stage: str) -> dict:
    """A stage's metrics.json with its diagnostics.json (the timings and the rest)."""
    return {**json.loads((project / f"reports/{stage}/diagnostics.json").read_text()),
            **json.loads((project / f"reports/{stage}/metrics.json").read_text())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workload", choices=["digits_mlp", "nqm"], default="digits_mlp")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kickoff-repeat-") as tmp:
        project = make_project(Path(tmp) / "project", NQM if args.workload == "nqm" else None)
        rows = []
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs}: dvc repro --force ...", file=sys.stderr, flush=True)
            code, _stages, total, output = run_pipeline(project, force=True)
            if code != 0:
                print(output[-6000:])
                print(f"run {i + 1}: dvc repro failed (exit {code})")
                return 1
            sel, base, sc = read(project, "select"), read(project, "baseline"), read(project, "scaling")
            rows.append({"run": i + 1, "seconds": total, "batch_size": sel["batch_size"],
                         "learning_rate": sel["learning_rate"], "train_steps": sel["train_steps"], "tie": sel["tie"],
                         "b_crit": sc.get("critical_batch_size"), "search_cost": sc.get("search_cost_ratio"),
                         "meets_target": base["final_meets_target"],
                         "steps_ratio": base["steps_to_target_ratio"], "time_ratio": base["time_to_target_ratio"]})
    print(f"workload {args.workload}, {args.runs} runs of `dvc repro --force` on one machine")
    print(f"{'run':>3} {'wall s':>7} {'batch':>6} {'lr':>8} {'steps':>6} {'B_crit':>7} {'cost':>5} {'meets':>6} "
          f"{'steps m/p':>9} {'time m/p':>8}  tie")
    for r in rows:
        b_crit = "n/a" if r["b_crit"] is None else f"{r['b_crit']:.0f}"
        print(f"{r['run']:>3} {r['seconds']:7.1f} {r['batch_size']:>6} {r['learning_rate']:8.3g} {r['train_steps']:>6} "
              f"{b_crit:>7} {r['search_cost']:5.1f} {str(r['meets_target']):>6} {r['steps_ratio']:9.2f} "
              f"{r['time_ratio']:8.2f}  {r['tie']}")
    choices = collections.Counter((r["batch_size"], round(r["learning_rate"], 6)) for r in rows)
    (choice, count), = choices.most_common(1)
    met = sum(bool(r["meets_target"]) for r in rows)
    ratios = [r["time_ratio"] for r in rows]
    within = sum(0.85 <= x <= 1.15 for x in ratios)
    print(f"same choice (batch {choice[0]}, lr {choice[1]:.3g}): {count}/{len(rows)} runs (goal: >= 4 of 5)")
    print(f"baselines meeting the target at the end of their budget: {met}/{len(rows)} (goal: all)")
    print(f"measured/predicted time to target: median {statistics.median(ratios):.2f}, range {min(ratios):.2f}-"
          f"{max(ratios):.2f}, within 0.85-1.15 in {within}/{len(rows)} runs")
    print(f"search cost (scaling metrics): median {statistics.median(r['search_cost'] for r in rows):.1f}x (goal: <= 4x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
