"""Benchmark: wall time of the probe on the default workload, and the share spent outside training.

    python bench/bench_probe.py [--repeats N]

Runs, from one process and on the same params.yaml (the project's, in a temporary folder):
  1. the stage command `python -m stages.probe` (interpreter start, imports, validation, trials, outputs);
  2. the probe itself (`run_probe`) with each trial forked from the warm trial server (the default on
     Linux) and with each trial a freshly spawned interpreter (the fallback elsewhere).
For each it prints the wall time, the time inside the training steps and evaluation forward
(`train_seconds` summed over trials) and the share outside them (process start, imports, model
build), plus the mean overhead per trial.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def stage_command(cwd: Path) -> tuple[float, pd.DataFrame]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "stages.probe"], cwd=cwd, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    return wall, pd.read_csv(cwd / "reports/probe/probe.csv")


def in_process(isolation: str) -> tuple[float, float, list]:
    """(wall of runner start + load + all trials, of which server start, records)."""
    from stages.core.context import setup
    from stages.probe.stage import run_probe
    from stages.probe.trials import TrialRunner

    ctx = setup()
    start = time.perf_counter()
    with TrialRunner(isolation) as runner:
        outcome = run_probe(ctx.params, ctx.device, ctx.workload.num_train_examples, runner)
    return time.perf_counter() - start, outcome.metrics["seconds"], outcome.records


def row(name: str, wall: float, records) -> str:
    tried = [r for r in records if r.status != "capped"]
    train = sum(r.train_seconds or 0.0 for r in tried)
    per_trial = statistics.mean((r.seconds or 0.0) - (r.train_seconds or 0.0) for r in tried)
    fixed = wall - sum(r.seconds or 0.0 for r in tried)
    return (f"{name:<34} {wall:9.2f} {train:9.2f} {1 - train / wall:10.1%} {fixed:9.2f} {per_trial * 1000:12.0f} {len(tried):7d}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1, help="runs of each variant (the best is shown)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_probe_"))
    try:
        shutil.copy(ROOT / "params.yaml", work / "params.yaml")
        os.chdir(work)
        from stages.core.log import info

        results = []
        best = min((stage_command(work) for _ in range(args.repeats)), key=lambda r: r[0])
        records = [_Row(r) for r in best[1].to_dict("records")]
        results.append(row("stage command (fork server)", best[0], records))
        for isolation in ("fork_server", "spawn"):
            info("bench", f"run_probe with isolation={isolation}")
            wall, _, recs = min((in_process(isolation) for _ in range(args.repeats)), key=lambda r: r[0])
            results.append(row(f"run_probe, trials via {isolation}", wall, recs))
        print(f"probe on the default workload ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")
        print(f"{'variant':<34} {'wall s':>9} {'train s':>9} {'outside %':>10} {'fixed s':>9} {'ms/trial out':>12} {'trials':>7}")
        print("\n".join(results))
        print("outside % = share of the wall time not spent in training steps and the evaluation forward;\n"
              "fixed s = wall time outside the trials (interpreter and server start, imports, validation, outputs);\n"
              "ms/trial out = mean per-trial time outside the steps (fork or interpreter start, imports, model build).")
    finally:
        os.chdir(ROOT)
        shutil.rmtree(work, ignore_errors=True)


class _Row:
    """A probe.csv row with attribute access, like a TrialRecord."""

    def __init__(self, d: dict):
        self.__dict__.update({k: (None if isinstance(v, float) and v != v else v) for k, v in d.items()})


if __name__ == "__main__":
    main()
