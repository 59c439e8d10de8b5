"""The scaling study on `nqm` against its ground truth (stages/workloads/nqm_theory.py).

    python bench/bench_nqm.py                      # dim 100, target 0.05, SGD (momentum 0), sizes 1..4096 (x4)
    python bench/bench_nqm.py --sizes 4 16 64 256 1024 4096 --max-steps 3000   # quicker

Runs the real study the way the pipeline does (its three waves of `python -m stages.scaling` processes,
one per batch size and wave, then `summarize`, in a fresh temporary directory with the committed
params.yaml's scaling settings and the nqm workload), then prints per batch size the study's steps to target
(median over seeds, with the seeds' interval) next to the closed form's with a finely tuned rate,
both B_crit values from the same McCandlish fit, and the search cost.

How the comparison is made fair:
- Same model: the closed form uses the workload's own curvature spectrum, noise model (covariance
  H / B) and its fixed theta_0 (init_seed), and the same optimizer settings.
- Same reading: the study sees the loss on its evaluation schedule (every step, then every ~5%),
  so the closed form's step is also shown rounded up to that schedule (`exact_on_schedule`).
- Not the same statistic: the closed form gives the first step at which the *expected* loss is at
  the target; a trial is one trajectory, read as the study reads it: steps to target is the first
  crossing that then *holds* through scaling.hold_factor x its step (a crossing that a fluctuation
  undoes does not count). Under large gradient noise -- small batch sizes -- one trajectory's loss
  scatters about its expectation, so holding below the target takes longer than the expectation's
  crossing. So the bench also measures that statistic at the ground-truth rate: the real workload
  trained with several seeds at the closed form's tuned rate and at a few smaller ones, read exactly
  as a trial is (`mc_sustained`: the best rate's median). Where it differs from the expectation's step by more than 15% the
  size is marked noise-dominated: there the study is judged against `mc_sustained`.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.core.config import OptimizerSettings  # noqa: E402
from stages.search.trial import eval_schedule, train_to_target  # noqa: E402
from stages.workloads.nqm import NoisyQuadratic  # noqa: E402
from stages.scaling.fit import FitError, fit_critical_batch_size  # noqa: E402
from stages.scaling.waves import study_commands  # noqa: E402
from stages.workloads.nqm_theory import NqmModel, tuned_steps_to_target  # noqa: E402

NOISE_DOMINATED = 0.15  # median sustained crossing this far from the expectation's step: the statistic differs
MC_SEEDS = 5            # trajectories at the ground-truth rate per size
MC_RATE_FACTORS = (1.0, 0.75, 0.56, 0.42, 0.32, 0.24)  # rates tried for the sustained yardstick, x the expectation's optimum


def write_params(workdir: Path, args: argparse.Namespace) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["workload"] = {"name": "nqm", "kwargs": {"dim": args.dim, "target": args.target}, "sources": []}
    # params.yaml's family candidates are overrides of the default workload's kwargs (hidden: ...), which
    # nqm does not take: the study runs on nqm as given, without the family stage.
    raw["family"] = {**raw.get("family", {}), "candidates": None}
    raw["optimizer"] = {**raw.get("optimizer", {}), "name": "sgd", "momentum": args.momentum, "nesterov": False,
                        "weight_decay": 0.0}
    raw["runtime"] = {**raw.get("runtime", {}), "device": "cpu", "threads": 1}
    raw["scaling"] = {**raw.get("scaling", {}), "batch_sizes": args.sizes, "lr_min": args.lr_min,
                      "lr_max": args.lr_max, "max_steps": args.max_steps, "noise_scale_batch_sizes": None,
                      **({"seeds": args.seeds} if args.seeds is not None else {})}
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def run_stage(args: list[str], workdir: Path) -> None:
    """One stage process; its stderr (one progress line per trial) is kept, and shown if it fails."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "stages.scaling", *args], cwd=workdir, env=env,
                          stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"`python -m stages.scaling {' '.join(args)}` failed (exit {done.returncode}):\n{done.stderr[-4000:]}")


def run_study(workdir: Path, sizes: list[int]) -> float:
    start = time.perf_counter()
    for args in study_commands(sizes):
        t = time.perf_counter()
        run_stage(args, workdir)
        print(f"  {' '.join(args)}: {time.perf_counter() - t:.1f} s", flush=True)
    return time.perf_counter() - start


def on_schedule(steps: int | None, max_steps: int, resolution: float) -> int | None:
    """The first evaluation step at or after `steps` (what a trial on that schedule would report)."""
    if steps is None:
        return None
    return next(s for s in eval_schedule(max_steps, resolution) if s >= steps)


def sustained_crossings(args: argparse.Namespace, batch_size: int, learning_rate: float, resolution: float,
                        hold_factor: float) -> float | None:
    """Median over MC_SEEDS trajectories of the real workload at this rate: steps to target as a trial
    reads them (the first crossing that holds through hold_factor x its step)."""
    import torch

    torch.set_num_threads(1)
    w = NoisyQuadratic(dim=args.dim, target=args.target)
    opt = OptimizerSettings(name="sgd", momentum=args.momentum)
    steps = [train_to_target(w, opt, learning_rate, batch_size, 1000 + k, torch.device("cpu"), args.max_steps,
                             resolution=resolution, hold_factor=hold_factor).steps_to_target for k in range(MC_SEEDS)]
    return float(np.median([math.inf if x is None else x for x in steps]))


def fit_value(sizes: list[int], steps: list[float]) -> tuple[str, float | None]:
    try:
        f = fit_critical_batch_size(sizes, steps, bootstrap=10)
    except FitError as e:
        return f"not determined ({e})", None
    return f"{f.critical_batch_size:.4g} ({f.kind})", (f.critical_batch_size if f.kind == "estimate" else None)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16, 64, 256, 1024, 4096])
    ap.add_argument("--dim", type=int, default=100)
    ap.add_argument("--target", type=float, default=0.05)
    ap.add_argument("--momentum", type=float, default=0.0)
    ap.add_argument("--lr-min", type=float, default=3.0e-3)
    ap.add_argument("--lr-max", type=float, default=3.0)
    ap.add_argument("--max-steps", type=int, default=8000)
    ap.add_argument("--seeds", type=int, default=None, help="scaling.seeds (default: params.yaml's)")
    ap.add_argument("--keep", type=Path, default=None, help="copy the study's reports/scaling/ here (trials.csv, notes.md, ...)")
    args = ap.parse_args(argv)

    model = NqmModel.from_workload(dim=args.dim, momentum=args.momentum)
    print(f"nqm dim {args.dim}, target {args.target}, sgd momentum {args.momentum}, sizes {args.sizes}, "
          f"lr [{args.lr_min:g}, {args.lr_max:g}], max_steps {args.max_steps}; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    t = time.perf_counter()
    exact = {b: tuned_steps_to_target(model, b, args.target, lr_min=1e-4, lr_max=10.0, max_steps=args.max_steps)
             for b in args.sizes}
    print(f"closed form, finely tuned rate per size: {time.perf_counter() - t:.1f} s")

    with tempfile.TemporaryDirectory(prefix="bench_nqm_") as tmp:
        workdir = Path(tmp)
        write_params(workdir, args)
        print("study (one process per batch size, then summarize):")
        wall = run_study(workdir, args.sizes)
        table = pd.read_csv(workdir / "reports/scaling/steps_to_target.csv")
        metrics = pd.concat([pd.read_json(workdir / f"reports/scaling/{name}.json", typ="series")
                             for name in ("diagnostics", "metrics")])
        scaling = yaml.safe_load((workdir / "params.yaml").read_text())["scaling"]
        resolution, hold_factor = scaling.get("eval_resolution", 0.05), 2.0  # the yardstick holds to 2x: a settled crossing
        confidence = (workdir / "reports/scaling/notes.md").read_text()
        trials = pd.read_csv(workdir / "reports/scaling/trials.csv")
        if args.keep is not None:
            shutil.copytree(workdir / "reports/scaling", args.keep, dirs_exist_ok=True)

    # The sustained statistic has its own best rate (a smaller one holds below the target sooner under
    # noise), so the yardstick is tuned for it too: the best median over rates at and below the
    # expectation's optimum.
    mc = {b: min(sustained_crossings(args, b, exact[b][0] * m, resolution, hold_factor) for m in MC_RATE_FACTORS)
          for b in args.sizes if exact[b][1] is not None and b in set(table.loc[table["status"] != "predicted", "batch_size"])}
    rows = []
    for r in table.itertuples():
        lr_exact, steps_exact = exact[r.batch_size]
        crossing = mc.get(r.batch_size, math.nan)
        noisy = bool(steps_exact and abs(crossing / steps_exact - 1) > NOISE_DOMINATED)
        yardstick = crossing if noisy else steps_exact
        rows.append({"batch_size": r.batch_size, "status": r.status,
                     "study_lr": r.best_learning_rate, "exact_lr": lr_exact,
                     "study_steps": r.steps_to_target, "ci_low": r.steps_to_target_ci_low, "ci_high": r.steps_to_target_ci_high,
                     "exact_steps": steps_exact,
                     "exact_on_schedule": on_schedule(steps_exact, args.max_steps, resolution),
                     "mc_sustained": crossing, "noise_dominated": noisy,
                     "study/yardstick": r.steps_to_target / yardstick if yardstick else math.nan,
                     "lr_bracket": f"{r.lr_bracket_low:.3g}..{r.lr_bracket_high:.3g}" if r.status == "reached" else "",
                     "trials": f"{r.trials_coarse:g}/{r.trials_widen:g}/{r.trials_refine:g}/{r.trials_seed:g}"})
    out = pd.DataFrame(rows)
    pd.set_option("display.width", 250)
    print(out.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print("(yardstick: exact_steps, or mc_sustained where noise-dominated; trials: coarse/widen/refine/seed)")

    # where the study measured (scaling.adaptive predicts the sizes below two perfect-scaling halvings)
    predicted = [int(b) for b in table.loc[table["status"] == "predicted", "batch_size"]]
    sizes = [b for b in args.sizes if exact[b][1] is not None and b not in predicted]
    if predicted:
        print(f"predicted, not trained: {predicted} (saved about {metrics.get('predicted_examples_saved')} examples); "
              f"the closed form's B_crit below is fitted on the measured sizes {sizes}")
    text, truth = fit_value(sizes, [exact[b][1] for b in sizes])
    print(f"B_crit closed form (expected loss): {text}")
    text, truth_mc = fit_value(sizes, [mc[b] for b in sizes])
    print(f"B_crit of the median sustained crossing at the ground-truth rates: {text}")
    low, high = metrics.get("ci_low"), metrics.get("ci_high")
    print(f"B_crit study: {metrics['critical_batch_size']} ({metrics['critical_batch_size_kind']}, "
          f"95% interval {low} .. {high})")
    for name, value in (("closed form", truth), ("sustained-crossing", truth_mc)):
        if value is not None and metrics["critical_batch_size"] is not None:
            ratio = metrics["critical_batch_size"] / value
            inside = (low is None or low <= value) and (high is None or value <= high)
            print(f"study / {name}: {ratio:.3f} (goal within 0.75..1.25: {0.75 <= ratio <= 1.25}); "
                  f"interval contains it: {inside}")
    refined = set(metrics.get("refined_batch_sizes") or [])
    print(f"refined in wave 3: {sorted(refined)}; left coarse: {metrics.get('coarse_only_batch_sizes')}")
    judged = out[out["status"] == "reached"]
    within = np.abs(judged["study/yardstick"] - 1) <= 0.15
    print(f"steps within 15% of the yardstick: {int(within.sum())} of {len(judged)} sizes "
          f"({', '.join(str(b) for b in judged[~within]['batch_size']) or 'none'} outside)")
    print(f"search cost (all examples / the best rates' runs alone): {metrics['search_cost_ratio']:.2f}; "
          f"trials by phase {metrics['trials_by_phase']}; study wall time {wall:.0f} s")
    ran = trials[~trials["outcome"].isin(("skipped", "predicted"))]
    top = ran.loc[ran["examples_run"].idxmax()]
    print(f"largest single trial: {top['examples_run'] / ran['examples_run'].sum():.1%} of the study's "
          f"{int(ran['examples_run'].sum())} examples (bs {int(top['batch_size'])}, lr {top['learning_rate']:.3g}, "
          f"{top['phase']}, {top['outcome']}, {int(top['steps_run'])} steps; goal <= 20%)")
    share = ran.groupby(["batch_size", "phase"])["examples_run"].sum().unstack(fill_value=0)
    print("examples by size and phase (the search cost's make-up):")
    print((share.div(share.sum(axis=1), axis=0)).to_string(float_format=lambda x: f"{x:.2f}"))
    print("\n" + confidence)


if __name__ == "__main__":
    main()
