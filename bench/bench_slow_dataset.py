"""The slow-Dataset case end to end (issue 21 part 1): is the recommendation measured the way it is trained?

    python bench/bench_slow_dataset.py              # the full case: sleep 2 ms per example, sizes 8..64
    python bench/bench_slow_dataset.py --quick      # what tests/test_one_measurement.py runs

A torch Dataset that sleeps `sleep_per_example_s` in every __getitem__ (a slow decoder), through the
`dataset` workload with `data.num_workers: 0`, runs probe -> throughput -> scaling -> select ->
baseline (the stage mains, in a temporary folder). Printed: the workers throughput recommends, the
setting it timed every batch size with, the chosen batch size, and baseline's measured / predicted
time per step and time to target (goal: time to target within 0.85-1.15). Then throughput and select
run again with the recommended workers configured from the start (`data.num_workers` as recommended):
the chosen batch size must be the same.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

F = "tests.dataset_fakes"


def case(sleep_s: float, sizes: list[int], n: int, quick: bool) -> dict:
    """The params of the case: a tiny MLP on 8 features (tests/dataset_fakes.py), `n` training examples."""
    timing = ({"warmup_steps": 2, "window_seconds": 0.05, "max_seconds_per_size": 0.6, "split_steps": 5,
               "peak_seconds": 0.05} if quick else {"window_seconds": 0.1, "max_seconds_per_size": 2.0})
    return {
        "workload": {"name": "dataset", "kwargs": {
            "model": f"{F}:model", "train": f"{F}:train_set", "validation": f"{F}:validation_set", "target": 0.8,
            "data_kwargs": {"n": n, "sleep_per_example_s": sleep_s}}},
        "runtime": {"device": "cpu", "seed": 0, "threads": 1},
        "probe": {"batch_sizes": sizes, "steps": 1},
        "throughput": {**timing, "max_workers": 2},
        "scaling": {"batch_sizes": sizes, "lr_min": 0.1, "lr_max": 1.0, "lr_points": 3, "max_steps": 300,
                    "seeds": 0, "lr_refine_trials": 0, "bootstrap": 20, "hold_factor": 1.5},
        "select": {"step_budget_margin": 1.2},
        "data": {"num_workers": 0},
    }


def run(params: dict, root: Path, log=print) -> dict:
    """The pipeline's stage mains in `root` (cwd changed for the duration); the figures of the case."""
    from stages.baseline.stage import main as baseline
    from stages.probe.stage import main as probe
    from stages.scaling.stage import main as scaling
    from stages.select.stage import main as select
    from stages.throughput.stage import main as throughput

    here, argv = os.getcwd(), sys.argv
    os.chdir(root)
    sys.argv = ["stage"]
    try:
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        started = time.perf_counter()
        probe()
        throughput()
        from stages.scaling.waves import study_commands

        for args in study_commands(list(params["scaling"]["batch_sizes"]), params["scaling"].get("adaptive", True)):
            scaling(args)
        select()
        baseline()
        figures = read(root)
        figures["seconds"] = time.perf_counter() - started
        # The same, started with the recommended workers configured: the same choice?
        again = {**params, "data": {**params["data"], "num_workers": figures["recommended_num_workers"]}}
        (root / "params.yaml").write_text(yaml.safe_dump(again))
        throughput()
        # select on the first run's study: a shortcut (the pipeline would rerun the study, which reads throughput's
        # verdict) -- so when the new verdict puts every size the study could use past the largest useful one,
        # select refuses, and that is recorded, with throughput's new verdict, instead of a second choice
        from stages.select.decide import NotReasonable

        try:
            select()
        except NotReasonable as e:
            thr = json.loads((root / "reports/throughput/metrics.json").read_text())
            figures.update({"batch_size_when_started_with_them": None, "refused_when_started_with_them": str(e),
                            "largest_useful_when_started_with_them": thr.get("largest_useful_batch_size")})
            return figures
        second = read(root)
        figures["batch_size_when_started_with_them"] = second["batch_size"]
        figures["tied_batch_sizes_when_started_with_them"] = second["tied_batch_sizes"]
        figures["predicted_time_to_target_by_size_when_started_with_them"] = second["time_to_target_by_size"]
        figures["not_considered_when_started_with_them"] = second["why_not_considered_by_size"]
        return figures
    finally:
        os.chdir(here)
        sys.argv = argv


def read(root: Path) -> dict:
    thr = {**json.loads((root / "reports/throughput/metrics.json").read_text()),
           **json.loads((root / "reports/throughput/diagnostics.json").read_text())}
    config = yaml.safe_load((root / "reports/select/initial_config.yaml").read_text())
    base_path = root / "reports/baseline/diagnostics.json"
    base = json.loads(base_path.read_text()) if base_path.exists() else {}
    import pandas as pd

    select_d = json.loads((root / "reports/select/diagnostics.json").read_text())
    decision = pd.read_csv(root / "reports/select/decision.csv")
    timed = decision[decision["training_time_s"].notna()]
    # every size with a predicted time to target, considered or not: a rerun's throughput may put the size the
    # first run chose beyond where throughput stops rising (two sizes within noise), and it is compared all the same
    return {"recommended_num_workers": thr["recommended_num_workers"],
            "tied_batch_sizes": select_d.get("tied_batch_sizes"),
            "time_to_target_by_size": {int(b): float(t) for b, t in zip(timed["batch_size"], timed["training_time_s"])},
            "why_not_considered_by_size": {int(b): str(w) for b, w, c in zip(decision["batch_size"], decision["why"].fillna(""),
                                                                             decision["considered"].astype(bool)) if not c},
            "measured_with_num_workers": thr["measured_with_num_workers"],
            "input_bound_batch_sizes": thr["input_bound_batch_sizes"],
            "batch_size": config["batch_size"], "data": config.get("data"),
            "predicted_time_per_step_s": base.get("predicted_time_per_step_s"),
            "measured_time_per_step_s": base.get("measured_time_per_step_s"),
            "time_per_step_ratio": base.get("time_per_step_ratio"),
            "predicted_time_to_target_s": base.get("predicted_time_to_target_s"),
            "measured_time_to_target_s": base.get("measured_time_to_target_s"),
            "time_to_target_ratio": base.get("time_to_target_ratio"),
            "steps_to_target_ratio": base.get("steps_to_target_ratio")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the test's smaller case")
    ap.add_argument("--sleep", type=float, default=2.0e-3, help="seconds of sleep per example")
    args = ap.parse_args()
    sizes = [8, 16, 32] if args.quick else [8, 16, 32, 64]
    with tempfile.TemporaryDirectory() as tmp:
        figures = run(case(args.sleep, sizes, 256 if args.quick else 512, args.quick), Path(tmp))
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
