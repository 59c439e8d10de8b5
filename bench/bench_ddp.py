"""Benchmark of the data-parallel throughput measurement (run on demand, not part of pytest):

    python bench/bench_ddp.py                       # digits_mlp (params.yaml's kwargs), batch 512 per device, [1, 2]
    python bench/bench_ddp.py --batch-size 128 --devices 1 2 --repeats 2

Times DistributedDataParallel with stages/throughput/ddp.py -- the code the throughput stage runs for
`throughput.devices` -- on the CPU (gloo, one process per device with runtime.threads threads) and prints,
per device count, examples/s with its interval, the scaling efficiency with its interval, compute and
communication per step, and each group's wall time (spawn included). With --repeats > 1 the efficiency's
repeatability: the runs agree when their intervals overlap. Meaningful only on an otherwise idle machine
with at least max(devices) x threads free cores.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.core.config import load_params  # noqa: E402
from stages.throughput import ddp, timing  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=512, help="per-device batch size")
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    p = load_params(ROOT / "params.yaml")
    s = p.throughput
    rule = timing.StopRule(s.min_windows, s.relative_precision, s.max_seconds_per_size, s.confidence)
    for run in range(args.repeats):
        results = [ddp.run_group(ddp.GroupJob(p.workload.name, dict(p.workload.kwargs), p.optimizer, p.runtime.seed,
                                              p.runtime.threads, "cpu", n, args.batch_size, s.warmup_steps,
                                              s.window_seconds, s.min_window_steps, rule, s.device_timeout_s))
                   for n in args.devices]
        print(f"run {run + 1}: {p.workload.name}, batch {args.batch_size} per device, {p.runtime.threads} thread(s) "
              f"per process")
        for r in ddp.summarise(results, s.confidence):
            if r["status"] != "ok":
                print(f"  {r['devices']} device(s): {r['status']} -- {r['reason']}")
                continue
            print(f"  {r['devices']} device(s): {r['examples_per_s']:,.0f} examples/s [{r['examples_per_s_ci_low']:,.0f}, "
                  f"{r['examples_per_s_ci_high']:,.0f}], efficiency {r['scaling_efficiency']:.3f} "
                  f"[{r['scaling_efficiency_ci_low']:.3f}, {r['scaling_efficiency_ci_high']:.3f}], compute "
                  f"{r['compute_s'] * 1e3:.3g} ms, communication {r['communication_s'] * 1e3:.3g} ms per step, "
                  f"group {r['group_seconds']:.1f} s")


if __name__ == "__main__":
    main()
