"""kickoff's learning-rate search next to a peer on the same objective: Optuna's TPE sampler with a
successive-halving pruner (issue 20 part 5). Needs the optional `bench` extra: pip install -e '.[bench]'.

    python bench/bench_peers.py                                   # digits_mlp, every scaling.batch_sizes
    python bench/bench_peers.py --sizes 64 256 --optuna-trials 12 --repeats 3   # a few sizes, quicker

The objective is kickoff's: steps to the target on the held reading (`stages.core.train.train_to_target`
with scaling.hold_factor and eval_resolution: the first crossing that holds), censored at
scaling.max_steps -- a trial that misses scores max_steps x (1 + its final distance to the target), so
the closer ones rank first. Both methods search params.yaml's [lr_min, lr_max] (log scale) with the
search seed (runtime.seed) for the model and the data order.

- kickoff: the real study at each size, as the pipeline runs it (its waves of `python -m stages.scaling`
  per size, smallest first, in a fresh temporary project with params.yaml's scaling settings and the
  workload as given, without the family stage), its trials read in the order they ran;
- Optuna: a study per size and repeat (sampler seed = the repeat), `--optuna-trials` trials; the
  pruner sees the distance to the target at each evaluation of the same schedule and stops a trial
  there (its examples count up to that step).

Per size it prints, for each method, the examples spent until its first trial within 10% of the rate
it ends up calling best (Optuna: the median over repeats), everything it spent, that rate, and the
steps to target found there (kickoff: the median over the rate's seeds, as scaling reports it; Optuna:
its best trial's value, one seed).
"""
from __future__ import annotations

import argparse
import math
import os
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

from stages.core.config import OptimizerSettings, ScalingSettings  # noqa: E402
from stages.search.tune import search_range  # noqa: E402
from stages.search.trial import train_to_target  # noqa: E402
from stages.scaling.tables import per_size_table  # noqa: E402
from stages.workloads.base import make_workload  # noqa: E402

WITHIN = 1.10  # "within 10% of its best rate": lr / best in [1/1.1, 1.1]


def write_params(workdir: Path, raw: dict, args: argparse.Namespace) -> None:
    raw = {**raw, "family": {**raw.get("family", {}), "candidates": None},  # the workload as given
           "runtime": {**raw.get("runtime", {}), "device": "cpu", "threads": 1}}
    raw["scaling"] = {**raw["scaling"], "batch_sizes": args.sizes, "max_steps": args.max_steps,
                      "noise_scale_batch_sizes": None,
                      "adaptive": False}  # every size searched: the comparison is per size
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def kickoff_trials(workdir: Path, sizes: list[int]) -> dict[int, pd.DataFrame]:
    """Each size's trials (trials/bs_B.csv: the coarse race's, then refinement's and the seeds', in the order
    they ran), from the study's jobs as the pipeline runs them (every size in wave 1 and refined: adaptive off)."""
    from stages.scaling.waves import study_commands

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for args in study_commands(sizes, adaptive=False)[:-1]:  # summarize is not needed
        done = subprocess.run([sys.executable, "-m", "stages.scaling", *args], cwd=workdir, env=env,
                              stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            sys.exit(f"`python -m stages.scaling {' '.join(args)}` failed (exit {done.returncode}):\n"
                     f"{done.stderr[-4000:]}")
    return {b: pd.read_csv(workdir / f"reports/scaling/trials/bs_{b}.csv") for b in sizes}


def examples_to_within(history: list[tuple[float, int]], best_lr: float | None) -> int | None:
    """Examples spent up to and including the first trial within 10% of `best_lr` ((rate, examples)
    per trial, in order); None without a best rate."""
    if best_lr is None:
        return None
    spent = 0
    for lr, examples in history:
        spent += examples
        if abs(math.log(lr / best_lr)) <= math.log(WITHIN) + 1e-12:
            return spent
    return None


def objective_value(steps_to_target: int | None, final: float, target: float, max_steps: int) -> float:
    """Steps to target, or censored: max_steps x (1 + the final distance to the target)."""
    if steps_to_target is not None:
        return float(steps_to_target)
    return max_steps * (1.0 + (abs(final - target) if math.isfinite(final) else 1.0))


def optuna_search(workload, optimizer: OptimizerSettings, batch_size: int, s: dict, seed: int, max_steps: int,
                  trials: int, sampler_seed: int) -> dict:
    """One Optuna study at one size: TPE + successive halving on kickoff's objective."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    history: list[tuple[float, int]] = []
    metric, target = workload.target_metric, workload.target_value

    def objective(trial: "optuna.Trial") -> float:
        lr = trial.suggest_float("lr", s["lr_min"], s["lr_max"], log=True)
        state = {"seen": None, "step": 0}

        def on_step(step: int, metrics: dict) -> None:
            state["step"] = step
            if metrics and metrics is not state["seen"]:  # a new evaluation (made after step - 1)
                state["seen"] = metrics
                value = metrics.get(metric, math.nan)
                trial.report(abs(value - target) if math.isfinite(value) else 1.0, step - 1)
                if trial.should_prune():
                    raise optuna.TrialPruned()

        try:
            r = train_to_target(workload, optimizer, lr, batch_size, seed, _cpu(), max_steps,
                                resolution=s["eval_resolution"], hold_factor=s["hold_factor"], on_step=on_step)
        except optuna.TrialPruned:
            history.append((lr, state["step"] * batch_size))
            raise
        history.append((lr, r.examples_run))
        return objective_value(r.steps_to_target, r.final_metrics.get(metric, math.nan), target, max_steps)

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=sampler_seed),
                                pruner=optuna.pruners.SuccessiveHalvingPruner())
    study.optimize(objective, n_trials=trials)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = min(done, key=lambda t: t.value) if done else None
    best_lr = best.params["lr"] if best else None
    reached = best is not None and best.value <= max_steps
    return {"examples_to_10pct": examples_to_within(history, best_lr), "examples": sum(e for _, e in history),
            "best_lr": best_lr, "steps": best.value if reached else None}


def _cpu():
    import torch

    return torch.device("cpu")


def main(argv: list[str] | None = None) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    s = raw["scaling"]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=s["batch_sizes"])
    ap.add_argument("--max-steps", type=int, default=s["max_steps"])
    ap.add_argument("--optuna-trials", type=int, default=20, help="Optuna trials per size and repeat")
    ap.add_argument("--repeats", type=int, default=3, help="Optuna studies per size (sampler seeds 0, 1, ...)")
    args = ap.parse_args(argv)
    try:
        import optuna  # noqa: F401
    except ImportError:
        sys.exit("bench_peers needs Optuna: pip install -e '.[bench]'")
    import torch

    torch.set_num_threads(1)
    workload = make_workload(raw["workload"]["name"], raw["workload"].get("kwargs"))
    optimizer = OptimizerSettings(**{k: v for k, v in raw["optimizer"].items()
                                     if k in OptimizerSettings.__dataclass_fields__})
    seed = int(raw.get("runtime", {}).get("seed", 0))
    lr = search_range(ScalingSettings(**{k: s[k] for k in ("lr_min", "lr_max") if k in s}), optimizer.name)
    settings = {"lr_min": lr.low, "lr_max": lr.high,
                "eval_resolution": float(s.get("eval_resolution", 0.05)), "hold_factor": float(s.get("hold_factor", 2.0))}
    print(f"{raw['workload']['name']} {raw['workload'].get('kwargs')}, {optimizer.name} momentum {optimizer.momentum:g}, "
          f"lr [{settings['lr_min']:g}, {settings['lr_max']:g}], max_steps {args.max_steps}, sizes {args.sizes}; "
          f"Optuna {args.optuna_trials} trials x {args.repeats} repeats per size; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmp:
        workdir = Path(tmp)
        write_params(workdir, raw, args)
        t = time.perf_counter()
        ours = kickoff_trials(workdir, sorted(args.sizes))
        print(f"kickoff: {time.perf_counter() - t:.0f} s", flush=True)
    rows = []
    for b in sorted(args.sizes):
        trials = ours[b]
        ran = trials[~trials["outcome"].isin(("skipped", "predicted"))]
        table = per_size_table(trials, [b], settings["eval_resolution"]).iloc[0]
        best_lr = float(table["best_learning_rate"]) if pd.notna(table["best_learning_rate"]) else None
        t = time.perf_counter()
        peers = [optuna_search(workload, optimizer, b, settings, seed, args.max_steps, args.optuna_trials, k)
                 for k in range(args.repeats)]
        to_10 = [p["examples_to_10pct"] for p in peers if p["examples_to_10pct"] is not None]
        steps = [p["steps"] for p in peers if p["steps"] is not None]
        rows.append({
            "batch_size": b,
            "kickoff_to_10pct": examples_to_within(list(zip(ran["learning_rate"], ran["examples_run"])), best_lr),
            "kickoff_examples": int(ran["examples_run"].sum()), "kickoff_lr": best_lr,
            "kickoff_steps": table["steps_to_target"],
            "optuna_to_10pct": float(np.median(to_10)) if to_10 else None,
            "optuna_examples": float(np.median([p["examples"] for p in peers])),
            "optuna_lr": float(np.median([p["best_lr"] for p in peers if p["best_lr"] is not None] or [math.nan])),
            "optuna_steps": float(np.median(steps)) if steps else None,
            "optuna_reached": f"{len(steps)}/{len(peers)}",
        })
        print(f"  optuna@{b}: {time.perf_counter() - t:.0f} s", flush=True)
    out = pd.DataFrame(rows)
    pd.set_option("display.width", 250)
    print(out.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print("(to_10pct: examples until the first trial within 10% of the rate the method calls best; Optuna: "
          "median over repeats; steps: kickoff's median over the best rate's seeds, Optuna's best trial, one seed)")
    both = out.dropna(subset=["kickoff_to_10pct", "optuna_to_10pct"])
    if len(both):
        fewer = (both["kickoff_to_10pct"] <= both["optuna_to_10pct"]).sum()
        print(f"kickoff spent no more examples to within 10% of its best rate at {fewer} of {len(both)} sizes; "
              f"in all, kickoff/Optuna examples: {out['kickoff_examples'].sum() / out['optuna_examples'].sum():.2f}")


if __name__ == "__main__":
    main()
