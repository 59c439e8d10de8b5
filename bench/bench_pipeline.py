"""Benchmark: the README's main command -- the whole pipeline on the default workload, from a clean
reports/ -- must finish in under 5 minutes on a 2-core CPU.

    python bench/bench_pipeline.py [--keep] [--limit-s 300]

Copies the project into a temporary git repository (as the tests do), runs `dvc repro` there and
prints the wall time of every stage (from the moment dvc starts it to the moment the next one starts,
so dvc's own hashing is included), the total, and the ratio to the limit. Exit status 1 if the
pipeline fails or the total exceeds the limit.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import make_project, tool_env  # noqa: E402  (the tests' project copy, reused)

RUNNING = re.compile(r"Running stage '([^']+)'")


def run_pipeline(project: Path, force: bool = False) -> tuple[int, list[tuple[str, float]], float, str]:
    """Run `dvc repro` (`--force`: every stage, even where up to date), streaming its output; returns
    (exit code, [(stage, seconds)], total seconds, output)."""
    start = time.perf_counter()
    # Own process group: if the benchmark is interrupted, dvc and the stage it runs go with it.
    proc = subprocess.Popen(["dvc", "repro", *(["--force"] if force else [])], cwd=project, env=tool_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
    stages: list[tuple[str, float]] = []  # (name, start offset)
    lines = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.append(line)
            m = RUNNING.search(line)
            if m:
                stages.append((m.group(1), time.perf_counter() - start))
                print(f"  {stages[-1][1]:7.1f} s  start {m.group(1)}", file=sys.stderr, flush=True)
        code = proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
    total = time.perf_counter() - start
    ends = [s for _, s in stages[1:]] + [total]
    return code, [(name, end - begin) for (name, begin), end in zip(stages, ends)], total, "".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="keep the temporary project (its reports/) and print its path")
    ap.add_argument("--limit-s", type=float, default=300.0, help="time limit for the whole pipeline, seconds")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup (kill dvc's group) on `timeout`
    tmp = Path(tempfile.mkdtemp(prefix="kickoff-bench-"))
    project = make_project(tmp / "project")
    print(f"project copy: {project}; cpus: {os.cpu_count()}; running dvc repro ...", file=sys.stderr)
    code, stages, total, output = run_pipeline(project)
    if code != 0:
        print(output[-6000:])
        print(f"dvc repro failed (exit {code}) after {total:.1f} s")
        return 1
    width = max([len(n) for n, _ in stages] + [5])
    print(f"{'stage':<{width}}  {'wall s':>8}  {'share':>6}")
    for name, seconds in stages:
        print(f"{name:<{width}}  {seconds:8.1f}  {seconds / total:6.1%}")
    verdict = "PASS" if total <= args.limit_s else "FAIL"
    print(f"{'total':<{width}}  {total:8.1f}  limit {args.limit_s:.0f} s  ratio {total / args.limit_s:.2f}  {verdict}")
    if args.keep:
        print(f"kept: {project}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
