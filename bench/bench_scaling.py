"""Benchmark of the scaling study on the default workload (digits_mlp, params.yaml as committed).

    python bench/bench_scaling.py            # full study + exhaustive grid, a few minutes on 2 CPU cores
    python bench/bench_scaling.py --no-grid  # only the study's wall time
    python bench/bench_scaling.py --threads 1   # override runtime.threads (shared or tiny-model machines)

1. Wall time of the full study the way a pipeline runs it: its waves' processes, one per batch size
   and wave (`python -m stages.scaling coarse|fill|trials --batch-size B`, process start included), then `summarize`,
   in a fresh temporary directory (no journal to replay; no probe/throughput outputs, so every
   size in scaling.batch_sizes is studied).
2. Compute (examples processed) of the study's coarse race against an exhaustive grid -- every
   learning rate at every size to its end, without early stopping or pruning -- with the best learning
   rate and steps to target per size from both, side by side: early stopping and pruning should only
   save compute.
   The refined result (after widening, refinement and seeds) is printed next to them.
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

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.core.config import load_params  # noqa: E402
from stages.search.coarse import best_learning_rate, best_steps, learning_rate_grid  # noqa: E402


def write_params(workdir: Path, threads: int | None) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    if threads is not None:
        raw.setdefault("runtime", {})["threads"] = threads
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def run_study(workdir: Path) -> tuple[float, dict[int, float]]:
    from stages.scaling.waves import study_commands

    params = load_params(workdir / "params.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    per_job: dict[str, float] = {}
    start = time.perf_counter()
    for args in study_commands(list(params.scaling.batch_sizes), params.scaling.adaptive):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "stages.scaling", *args], cwd=workdir, env=env, check=True,
                       stderr=subprocess.DEVNULL)
        per_job[" ".join(args)] = time.perf_counter() - t
        print(f"  {' '.join(args)}: {per_job[' '.join(args)]:.1f} s", flush=True)
    return time.perf_counter() - start, per_job


def exhaustive_grid(workdir: Path) -> pd.DataFrame:
    """Every grid rate at every size at the search seed, to its end: no early stopping, no pruning (each
    trial stops at the target, after its hold)."""
    from stages.core.context import setup
    from stages.search.coarse import Target, rung_search
    from stages.search.tune import make_pool, search_range

    ctx = setup(str(workdir / "params.yaml"))
    s, w = ctx.params.scaling, ctx.workload
    r = search_range(s, ctx.params.optimizer.name)
    grid = learning_rate_grid(r.low, r.high, s.lr_points, s.lr_grid, ctx.params.runtime.seed)
    rows = []
    for b in s.batch_sizes:
        t = time.perf_counter()
        pool = make_pool(w, ctx.params.optimizer, b, ctx.device, s, ctx.params.runtime.seed, s.max_steps)
        trials = rung_search(pool, grid, ctx.params.runtime.seed, Target(w.target_metric, w.target_value, w.target_direction),
                             first_rung=s.max_steps, max_steps=s.max_steps, resolution=s.eval_resolution,
                             margin=math.inf, widen_step=grid[1] / grid[0], low_limit=grid[0], high_limit=grid[-1],
                             early_stopping=False)
        trials = [x for x in trials if x.phase == "coarse"]
        rows.append({"batch_size": b,
                     "grid_best_learning_rate": best_learning_rate([(x.learning_rate, x.phase, x.result.steps_to_target) for x in trials]),
                     "grid_steps_to_target": best_steps([x.result for x in trials]),
                     "grid_examples": sum(x.result.examples_run for x in trials),
                     "grid_examples_to_max_steps": len(grid) * s.max_steps * b,
                     "grid_seconds": time.perf_counter() - t})
        print(f"  grid@{b}: {rows[-1]['grid_seconds']:.1f} s", flush=True)
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-grid", action="store_true", help="skip the exhaustive grid")
    ap.add_argument("--threads", type=int, default=None, help="override runtime.threads")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
        workdir = Path(tmp)
        write_params(workdir, args.threads)
        params = load_params(workdir / "params.yaml")
        from stages.search.tune import search_range

        r = search_range(params.scaling, params.optimizer.name)
        print(f"workload {params.workload.name}, batch sizes {params.scaling.batch_sizes}, {params.scaling.lr_points} "
              f"rates in [{r.low:g}, {r.high:g}] ({r.source}), max_steps {params.scaling.max_steps}, "
              f"seeds {params.scaling.seeds}, runtime.threads {params.runtime.threads}, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}")
        print("full study (its waves' processes, then summarize):")
        wall, _ = run_study(workdir)
        trials = pd.read_csv(workdir / "reports/scaling/trials.csv")
        refined = pd.read_csv(workdir / "reports/scaling/steps_to_target.csv")
        metrics = pd.concat([pd.read_json(workdir / f"reports/scaling/{name}.json", typ="series")
                             for name in ("diagnostics", "metrics")])
        print(f"study wall time: {wall:.1f} s  (B_crit {metrics['critical_batch_size']} "
              f"[{metrics['critical_batch_size_kind']}], noise scale {metrics['gradient_noise_scale']})")
        if args.no_grid:
            return
        print("exhaustive grid (every rate, no early stopping):")
        grid = exhaustive_grid(workdir)

    search_rows = trials[(trials["phase"] == "coarse")]
    study = []
    for b, part in search_rows.groupby("batch_size"):
        study.append({"batch_size": b,
                      "study_best_learning_rate": best_learning_rate([(r.learning_rate, r.phase, None if pd.isna(r.steps_to_target) else int(r.steps_to_target)) for r in part.itertuples()]),
                      "study_steps_to_target": part["steps_to_target"].min(),
                      "study_examples": int(part["examples_run"].sum())})
    table = pd.DataFrame(study).merge(grid, on="batch_size").merge(
        refined[["batch_size", "best_learning_rate", "steps_to_target", "trials_refine"]].rename(
            columns={"best_learning_rate": "refined_learning_rate", "steps_to_target": "refined_median_steps"}),
        on="batch_size")
    table["same_result"] = (table["study_best_learning_rate"] == table["grid_best_learning_rate"]) & \
                           (table["study_steps_to_target"] == table["grid_steps_to_target"])
    table["examples_ratio"] = table["study_examples"] / table["grid_examples"]
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 20)
    print(table[["batch_size", "study_best_learning_rate", "grid_best_learning_rate", "study_steps_to_target",
                 "grid_steps_to_target", "same_result", "refined_learning_rate", "refined_median_steps", "trials_refine", "study_examples", "grid_examples",
                 "grid_examples_to_max_steps", "examples_ratio"]].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    seeds = int(trials[trials["phase"] == "seed"]["examples_run"].sum())
    s, g, full = table["study_examples"].sum(), table["grid_examples"].sum(), table["grid_examples_to_max_steps"].sum()
    print(f"search examples: study {s:,} vs exhaustive grid {g:,} (ratio {s / g:.3f}, saved {1 - s / g:.1%}); "
          f"every trial to max_steps {full:,} (saved {1 - s / full:.1%}); seed reruns add {seeds:,}")
    print(f"all sizes give the same best rate and steps on the coarse grid: {bool(table['same_result'].all())}; "
          f"search cost (all examples / the best rates' runs alone): {metrics['search_cost_ratio']:.2f}")


if __name__ == "__main__":
    main()
