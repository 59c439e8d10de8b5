"""Benchmarks of the throughput stage (run on demand, not part of pytest):

    python bench/bench_throughput.py                  # both
    python bench/bench_throughput.py overhead         # 1. instrumentation overhead
    python bench/bench_throughput.py repeatability    # 2. two runs of the stage agree

1. Instrumentation overhead: kickoff's measured examples/s (stages.throughput.measure_sizes, the code
   the stage runs) against a bare hand-written training loop of the same model and batch size, both
   on the default workload (params.yaml), alternating in one process. Both sides are summarised
   the same way (median over windows of ~the same length), so the ratio isolates what kickoff
   adds: the step function, the window loop, interleaving. Target: kickoff within 2%.
2. Repeatability: two runs of `python -m stages.throughput` on the default workload in a temporary
   copy (probe outputs from reports/probe/ if present, else every power of two up to 1024); for
   each size the two medians agree when their intervals overlap. Prints both, and the seconds each
   run took.

`--threads N` overrides runtime.threads for both benchmarks (on a shared 2-core machine, 2 torch
threads suffer whenever another process wakes up: each parallel region waits for a descheduled thread).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.core.config import load_params  # noqa: E402
from stages.core.context import setup  # noqa: E402
from stages.throughput.stage import MEASURE_LR, measure_sizes  # noqa: E402


def bare_loop(workload, batch_size: int, seconds: float, window_s: float, kickoff_step: bool = False) -> list[float]:
    """examples/s of back-to-back windows of a hand-written loop (no kickoff timer, no interleaving).

    The default is a bare loop with the same math as a training step on this workload (loss as
    sum / count); `kickoff_step` runs kickoff's own step path instead (`to_device` + `train_step`),
    to separate what the step path costs from what the measurement adds."""
    from stages.core.optim import build_optimizer
    from stages.core.train import build_model, train_step
    from stages.workloads.base import to_device

    params = load_params(ROOT / "params.yaml")
    cpu = torch.device("cpu")
    if kickoff_step:
        model = build_model(workload, 0, cpu)
        opt = build_optimizer(model.parameters(), params.optimizer, MEASURE_LR)
    else:
        torch.manual_seed(0)
        model = workload.init_model()
        opt = torch.optim.SGD(model.parameters(), lr=MEASURE_LR, momentum=params.optimizer.momentum)
    data = workload.batches("train", batch_size, 0)

    def run(n: int) -> float:
        start = time.perf_counter()
        if kickoff_step:
            for _ in range(n):
                train_step(model, opt, workload, to_device(next(data), cpu))
        else:
            for _ in range(n):
                x, y = next(data)
                opt.zero_grad(set_to_none=True)
                loss_sum, count = workload.loss(model, (x, y))
                (loss_sum / count).backward()
                opt.step()
        return time.perf_counter() - start

    run(20)  # warm-up
    n = max(1, int(window_s / (run(50) / 50)))
    samples, spent = [], 0.0
    while spent < seconds:
        t = run(n)
        spent += t
        samples.append(batch_size * n / t)
    return samples


def overhead(threads: int | None, sizes: list[int], rounds: int, seconds: float) -> None:
    params = load_params(ROOT / "params.yaml")
    if threads:
        params = dataclasses.replace(params, runtime=dataclasses.replace(params.runtime, threads=threads))
    ctx = setup(params=params)
    if ctx.device.type != "cpu":
        raise SystemExit("the overhead benchmark's bare loop is written for the CPU (runtime.device: cpu)")
    # Short rounds (the stage's own settings, time cap `seconds`) so the sides alternate often and
    # share the machine's slow spells; the median over rounds then compares like with like.
    s = dataclasses.replace(params.throughput, max_seconds_per_size=seconds)
    print(f"1. instrumentation overhead: {ctx.workload.name}, {ctx.threads} threads, {rounds} alternating rounds per size")
    print(f"{'batch':>6} {'round':>5} {'bare ex/s':>12} {'kickoff ex/s':>13} {'kickoff/bare':>13} {'step path/bare':>15}")
    summary = []
    for b in sizes:
        ratios, step_ratios, instr = [], [], []
        for r in range(rounds):
            sides = {
                "kick": lambda: [w["examples_per_s"] for w in measure_sizes(ctx, [b], s)[0] if w["mode"] == "pipeline"],
                "bare": lambda: bare_loop(ctx.workload, b, seconds, s.window_seconds),
                "path": lambda: bare_loop(ctx.workload, b, seconds, s.window_seconds, kickoff_step=True),
            }
            order = list(sides)[r % 3:] + list(sides)[:r % 3]  # rotate: no side is always first
            got = {name: float(np.median(sides[name]())) for name in order}
            kick, bare, path = got["kick"], got["bare"], got["path"]
            ratios.append(kick / bare)
            step_ratios.append(path / bare)
            instr.append(kick / path)
            print(f"{b:>6} {r:>5} {bare:>12,.0f} {kick:>13,.0f} {kick / bare:>13.3f} {path / bare:>15.3f}")
        summary.append((b, float(np.median(ratios)), min(ratios), max(ratios), float(np.median(step_ratios)),
                        float(np.median(instr))))
    print("summary, medians over rounds (target: kickoff/bare >= 0.98):")
    print("  kickoff/bare = the stage's examples/s against a bare loop; step path/bare = kickoff's step (to_device +")
    print("  train_step) in a plain loop against the bare loop; measurement = kickoff/step path (what timing adds)")
    for b, med, lo, hi, step, ins in summary:
        print(f"  batch {b:>5}: kickoff/bare {med:.3f} (rounds {lo:.3f}-{hi:.3f}) -> "
              f"{'within 2%' if med >= 0.98 else 'NOT within 2%'}; step path/bare {step:.3f}; measurement {ins:.3f}")


def repeatability(threads: int | None) -> None:
    print("2. repeatability: two runs of `python -m stages.throughput` on the default workload")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        if threads:
            params["runtime"]["threads"] = threads
        (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        probe = tmp / "reports" / "probe"
        if (ROOT / "reports" / "probe" / "probe.csv").exists():
            shutil.copytree(ROOT / "reports" / "probe", probe)
        else:
            probe.mkdir(parents=True)
            pd.DataFrame({"batch_size": [2**k for k in range(11)], "status": "fits"}).to_csv(probe / "probe.csv", index=False)
            (probe / "metrics.json").write_text(json.dumps({"max_batch_size": 1024, "device": "cpu"}))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        runs, seconds = [], []
        for _ in range(2):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "stages.throughput"], cwd=tmp, env=env, check=True,
                           stderr=subprocess.DEVNULL)
            seconds.append(time.perf_counter() - t0)
            runs.append(pd.read_csv(tmp / "reports" / "throughput" / "throughput.csv"))
            runs[-1]["largest"] = json.loads((tmp / "reports" / "throughput" / "metrics.json").read_text())["largest_useful_batch_size"]
    a, b = runs
    print(f"run 1: {seconds[0]:.1f} s, run 2: {seconds[1]:.1f} s (wall, including start-up)")
    print(f"{'batch':>6} {'run 1 ex/s [interval]':>34} {'run 2 ex/s [interval]':>34} {'ratio':>6} {'agree':>6} {'regimes':>24}")
    agree = 0
    for (_, r1), (_, r2) in zip(a.iterrows(), b.iterrows()):
        ok = r1.examples_per_s_ci_low <= r2.examples_per_s_ci_high and r2.examples_per_s_ci_low <= r1.examples_per_s_ci_high
        agree += ok
        fmt = lambda r: f"{r.examples_per_s:,.0f} [{r.examples_per_s_ci_low:,.0f}, {r.examples_per_s_ci_high:,.0f}]"  # noqa: E731
        print(f"{int(r1.batch_size):>6} {fmt(r1):>34} {fmt(r2):>34} {r2.examples_per_s / r1.examples_per_s:>6.3f} "
              f"{'yes' if ok else 'NO':>6} {r1.regime + '/' + r2.regime:>24}")
    print(f"intervals overlap at {agree} of {len(a)} sizes; largest useful batch size: "
          f"{int(a.largest.iloc[0])} and {int(b.largest.iloc[0])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", nargs="?", choices=("overhead", "repeatability", "both"), default="both")
    ap.add_argument("--threads", type=int, default=None, help="override runtime.threads")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 32, 512], help="batch sizes for the overhead benchmark")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=0.3, help="throughput.max_seconds_per_size in each overhead round")
    args = ap.parse_args()
    os.chdir(ROOT)
    if args.which in ("overhead", "both"):
        overhead(args.threads, args.sizes, args.rounds, args.seconds)
    if args.which in ("repeatability", "both"):
        repeatability(args.threads)


if __name__ == "__main__":
    main()
