"""Benchmark: the fake-tensor memory estimate (probe.plan_for) against the memory the probe measures.

    python bench/bench_memory_plan.py [--workload synthetic_cnn] [--batch-sizes 256 512 1024 2048 4096]

Runs the probe's real trials (stages.probe.stage.run_probe: fresh processes, `probe.steps` training
steps and the evaluation forward on the fake batch) and, for the same sizes, the fake-tensor
estimate (stages.probe.plan.estimate_peak). On the CPU the measured value is the trial's growth in
resident memory, peak RSS minus the RSS at trial start (what the process held before the model was
built: interpreter, libraries, workload data), since the estimate counts tensors only; on CUDA it is
torch.cuda.max_memory_allocated. Prints estimate / measured per batch size: the goal is within 15%
where activations dominate (the CNN at large batch sizes). A memory benchmark: the figures do not
depend on the machine's load.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="synthetic_cnn")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"])
    args = ap.parse_args()

    import torch

    from stages.core.config import validate
    from stages.core.device import resolve_device
    from stages.core.log import human_bytes
    from stages.probe.plan import estimate_peak
    from stages.probe.stage import run_probe
    from stages.workloads.base import make_workload

    params = validate({"workload": {"name": args.workload}, "optimizer": {"name": args.optimizer},
                       "runtime": {"device": args.device},
                       "probe": {"batch_sizes": args.batch_sizes, "steps": 2, "memory_budget": "16GiB"}})
    device = resolve_device(args.device)
    workload = make_workload(args.workload)
    outcome = run_probe(params, device, workload.num_train_examples)
    print(f"{args.workload}, {args.optimizer}, {device.type}: fake-tensor estimate vs the probe's measured peak "
          f"({'peak RSS - RSS at trial start' if device.type == 'cpu' else 'max_memory_allocated'})")
    print(f"{'batch':>6} {'measured':>11} {'estimate':>11} {'est/meas':>9} {'activ.':>7} {'temp.':>7} {'wkspace':>7} {'est s':>6}")
    for rec in sorted((r for r in outcome.records if r.status == "fits"), key=lambda r: r.batch_size):
        measured = rec.peak_memory_bytes - (rec.baseline_memory_bytes or 0)
        start = time.perf_counter()
        est = estimate_peak(workload, params.optimizer, rec.batch_size, params.probe.steps)
        seconds = time.perf_counter() - start
        if est.status != "estimated":
            print(f"{rec.batch_size:>6} refused: {est.reason}")
            continue
        share = {k: f"{v / est.peak_bytes:7.0%}" for k, v in est.categories.items()}
        print(f"{rec.batch_size:>6} {human_bytes(measured):>11} {human_bytes(est.peak_bytes):>11} "
              f"{est.peak_bytes / measured:>9.3f} {share['activations']} {share['temporaries']} {share['workspace']} "
              f"{seconds:>6.2f}")
    print(f"torch {torch.__version__}; the goal: est/meas within [0.85, 1.15] at the large sizes")


if __name__ == "__main__":
    main()
