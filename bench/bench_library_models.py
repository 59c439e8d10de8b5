"""Library models end to end (issue 30): a transformers GPT-2 and a transformers image classifier, as they come.

    python bench/bench_library_models.py                 # both models
    python bench/bench_library_models.py --model gpt2    # one of them: gpt2, resnet

Each model is plugged into a copy of kickoff as a user project would be (its module in `my_models/`,
listed in workload.sources; the `dataset` workload; no wrapper): a byte-level GPT-2
(transformers.GPT2LMHeadModel from a config, a ModelOutput read as .logits, 32-byte windows of real text,
units: sequences of 32 bytes, loss in nats) and a ResNet image classifier
(transformers.ResNetForImageClassification on scikit-learn's 8x8 digits, its own loss from labels).
`dvc repro` runs the whole pipeline with a profile of their own -- the small profile's search (4
coarse rates, 3 refinement trials, two seeds, steps within 10%) over batch sizes 8..128. Printed per
model: the wall time of each stage (from `dvc repro`'s own "Running stage" lines), the choice, the
receipt (baseline measured / predicted steps and time to target), and whether the baseline holds
(reached the target, holds it at the end, steps within 0.85-1.15 of the prediction).
Needs the [hf] extra (transformers).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import make_project, tool_env  # noqa: E402  (the tests' project copy, reused)

M = "my_models.library_models"
SEARCH = {  # the small profile's search shape (profiles/small/params.yaml), over sizes these models fit
    "probe": {"batch_sizes": [8, 16, 32, 64, 128], "steps": 2},
    "throughput": {"warmup_steps": 2, "window_seconds": 0.02, "max_seconds_per_size": 0.3, "split_steps": 5,
                   "peak_seconds": 0.1, "max_workers": 2},
    "scaling": {"batch_sizes": [8, 16, 32, 64, 128], "lr_points": 4, "lr_refine_trials": 3, "max_steps": 600,
                "eval_resolution": 0.1, "seeds": 1, "bootstrap": 20},
    "runtime": {"device": "cpu", "seed": 0, "threads": 1},
    "optimizer": {"name": "adamw"},
    "family": {"candidates": None},
    "data": {"num_workers": 0},
}
MODELS = {
    "gpt2": {"workload": {"name": "dataset", "sources": ["my_models/library_models.py"], "kwargs": {
        "model": f"{M}:gpt2", "train": f"{M}:text_train", "validation": f"{M}:text_validation",
        "data_kwargs": {"windows": 2048}, "loss": "cross_entropy", "metrics": ["loss", "accuracy"],
        "target_metric": "loss", "target": 2.8, "example_unit": "sequence", "tokens_per_example": 32,
        "token_unit": "byte", "metric_units": {"loss": "nats"}}},
        "scaling": {"lr_min": 1.0e-3, "lr_max": 3.0e-2}},
    "resnet": {"workload": {"name": "dataset", "sources": ["my_models/library_models.py"], "kwargs": {
        "model": f"{M}:resnet", "train": f"{M}:digits_train", "validation": f"{M}:digits_validation",
        "loss": "model", "metrics": ["loss", "accuracy"], "target_metric": "accuracy", "target": 0.9,
        "example_unit": "image"}},
        "scaling": {"lr_min": 1.0e-3, "lr_max": 3.0e-2}},
}


def params_for(model: str) -> dict:
    params = {k: dict(v) if isinstance(v, dict) else v for k, v in SEARCH.items()}
    for key, value in MODELS[model].items():
        params[key] = {**params.get(key, {}), **value}
    return params


def repro(root: Path) -> tuple[dict[str, float], float]:
    """`dvc repro` in `root`; the wall time of each stage (from one 'Running stage' line to the next)."""
    started = time.perf_counter()
    marks: list[tuple[str, float]] = []
    proc = subprocess.Popen(["dvc", "repro"], cwd=root, env=tool_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    for line in proc.stdout:
        tail = (tail + [line])[-60:]
        if line.startswith("Running stage '"):
            marks.append((line.split("'")[1], time.perf_counter()))
    if proc.wait() != 0:
        raise SystemExit("dvc repro failed:\n" + "".join(tail))
    end = time.perf_counter()
    times: dict[str, float] = {}
    for (name, t), (_, t_next) in zip(marks, marks[1:] + [("end", end)]):
        group = name.split("@")[0]  # scaling_trials@16 -> scaling_trials, summed over its jobs
        times[group] = times.get(group, 0.0) + (t_next - t)
    return times, end - started


def figures(root: Path) -> dict:
    read = lambda rel: json.loads((root / rel).read_text())  # noqa: E731
    config = yaml.safe_load((root / "reports/select/initial_config.yaml").read_text())
    base = {**read("reports/baseline/diagnostics.json"), **read("reports/baseline/metrics.json")}
    select = read("reports/select/diagnostics.json")
    steps_ratio = base.get("steps_to_target_ratio")
    return {
        "choice": {k: config.get(k) for k in ("batch_size", "learning_rate", "learning_rate_schedule", "train_steps",
                                              "seed", "steps_to_target", "expected_time_to_target_s",
                                              "expected_training_time_s")},
        "tied_batch_sizes": select.get("tied_batch_sizes"), "edge_of_study": select.get("edge_of_study"),
        "sizes_to_add": select.get("sizes_to_add"),
        "receipt": {k: base.get(k) for k in ("measured_steps_to_target", "predicted_steps_to_target", "steps_to_target_ratio",
                                             "measured_time_to_target_s", "predicted_time_to_target_s", "time_to_target_ratio",
                                             "time_per_step_ratio", "first_reached_step", "train_seconds", "eval_seconds",
                                             "examples_to_target", "tokens_to_target", "epochs_to_target")},
        "baseline_holds": bool(base.get("reached_target") and base.get("final_meets_target") and steps_ratio is not None
                               and 0.85 <= steps_ratio <= 1.15),
        "report_header": next((line for line in (root / "reports/REPORT.md").read_text().splitlines()
                               if line.startswith("**Baseline check:**")), None),
    }


def bench(model: str, dest: Path) -> dict:
    (dest / "my_models").mkdir(parents=True)
    (dest / "my_models" / "__init__.py").write_text("")
    shutil.copy2(ROOT / "tests" / "library_models.py", dest / "my_models" / "library_models.py")
    make_project(dest, params_for(model))
    times, total = repro(dest)
    return {"model": model, "stage_seconds": {k: round(v, 1) for k, v in times.items()}, "total_seconds": round(total, 1),
            **figures(dest)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), action="append", help="a model (default: both)")
    ap.add_argument("--keep", action="store_true", help="keep the projects (their paths are printed)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_library_models_"))
    try:
        for model in args.model or sorted(MODELS):
            print(json.dumps(bench(model, tmp / model), indent=1), flush=True)
    finally:
        if args.keep:
            print(f"projects kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
