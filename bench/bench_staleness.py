"""Benchmark: the staleness matrix -- do `dvc status` and `snakemake -n` agree on what to rerun?

    python bench/bench_staleness.py [--keep]

A small user-workload project (a noisy quadratic plugged in through params.yaml) is run once by
Snakemake, which records itself in dvc.lock, and committed. Then, in three states of a clone --
a fresh `git clone` (no .snakemake/), the clone Snakemake ran in (its metadata present), and a
clone where `dvc repro` ran last (Snakemake's metadata out of date) -- each kind of change is made
and undone: a params key of one stage, the optimizer, a setting the optimizer ignores, workload
kwargs, family candidates, a `data:` setting, the user's workload source, kickoff's own code,
another built-in workload's code. A cell agrees when Snakemake plans exactly the jobs `dvc status`
lists plus the jobs downstream of them. Prints the table (docs/team.md shows a measured one), then
the time of a no-op `dvc status`, `dvc repro` and `snakemake -n`. Exit status 1 if a cell disagrees.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import make_project, run, write_params  # noqa: E402  (the tests' project copy, reused)

USER_WORKLOAD = '''\
from stages.workloads.nqm import NoisyQuadratic


def make(dim: int = 8, target: float = 0.3):
    return NoisyQuadratic(dim=dim, target=target)
'''

TINY = {
    "workload": {"name": "userwl.model:make", "kwargs": {"dim": 8, "target": 0.3}, "sources": ["userwl/model.py"]},
    "family": {"candidates": [{"dim": 4}, {"dim": 8}], "rule": "smallest", "batch_size": 8, "max_steps": 200},
    "runtime": {"device": "cpu", "seed": 0, "threads": 1},
    "probe": {"min_batch_size": 4, "max_batch_size": 32, "steps": 1},
    "throughput": {"warmup_steps": 1, "window_seconds": 0.01, "min_windows": 6, "max_seconds_per_size": 0.2,
                   "split_steps": 3, "peak_seconds": 0.05},
    "scaling": {"batch_sizes": [4, 8, 16], "lr_min": 0.01, "lr_max": 0.3, "lr_points": 2, "lr_refine_trials": 1,
                "max_steps": 200, "seeds": 0, "bootstrap": 20},
}


def build(dest: Path) -> Path:
    """The project, run once by Snakemake (which records every job in dvc.lock), committed."""
    (dest / "userwl").mkdir(parents=True)
    (dest / "userwl" / "__init__.py").write_text("")
    (dest / "userwl" / "model.py").write_text(USER_WORKLOAD)
    make_project(dest, TINY)
    run([sys.executable, "-m", "snakemake", "-c2"], dest, timeout=900)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "ran"], dest)
    return dest


def dvc_stale(root: Path) -> set[str]:
    status = json.loads(run(["dvc", "status", "--json"], root).stdout or "{}")
    return {name.rsplit(":", 1)[-1] for name in status}


def snakemake_plan(root: Path, *args: str) -> set[str]:
    """The jobs a Snakemake dry run plans, as DVC names them ('scaling_trials@8')."""
    return planned_jobs(run([sys.executable, "-m", "snakemake", "-n", *args], root).stdout)


def planned_jobs(text: str) -> set[str]:
    """The jobs in Snakemake's output (a dry run's or a real run's), as DVC names them."""
    jobs = set()
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", text):
        m = re.search(r"^(?:local)?rule (\w+):$", block, re.M)
        if not m or m.group(1) == "all":
            continue
        wildcards = re.search(r"^    wildcards: \w+=(\S+)$", block, re.M)
        jobs.add(m.group(1) + (f"@{wildcards.group(1)}" if wildcards else ""))
    return jobs


def downstream(root: Path, jobs: set[str]) -> set[str]:
    """`jobs` and everything that reads from them, per the declaration (the clone's code is this one's)."""
    from stages.pipeline.declaration import effective_params
    from stages.pipeline.freshness import downstream as closure

    return closure(jobs, effective_params(yaml.safe_load((root / "params.yaml").read_text()), root))


@contextlib.contextmanager
def edited(root: Path, path: str, change: Callable[[str], str]) -> Iterator[None]:
    file = root / path
    old = file.read_text()
    file.write_text(change(old))
    try:
        yield
    finally:
        file.write_text(old)


def param_change(section: str, key: str, value) -> Callable[[Path], contextlib.AbstractContextManager]:
    def apply(root: Path):
        @contextlib.contextmanager
        def cm():
            old = (root / "params.yaml").read_text()
            write_params(root, {section: {key: value}})
            try:
                yield
            finally:
                (root / "params.yaml").write_text(old)
        return cm()
    return apply


def code_change(path: str) -> Callable[[Path], contextlib.AbstractContextManager]:
    return lambda root: edited(root, path, lambda text: text + "\n# a comment\n")


# (label, the change as a context manager factory, a job that must be stale / None: nothing may be)
CHANGES: list[tuple[str, Callable[[Path], contextlib.AbstractContextManager], str | None]] = [
    ("params key of one stage (throughput.split_steps)", param_change("throughput", "split_steps", 4), "throughput"),
    ("optimizer (optimizer.momentum)", param_change("optimizer", "momentum", 0.8), "scaling"),
    ("setting SGD ignores (optimizer.beta1)", param_change("optimizer", "beta1", 0.8), None),
    ("workload kwargs (target)", param_change("workload", "kwargs", {"dim": 8, "target": 0.25}), "probe"),
    ("family candidates", param_change("family", "candidates", [{"dim": 4}, {"dim": 16}]), "family_trial@candidate1"),
    ("data setting (data.num_workers)", param_change("data", "num_workers", 1), "throughput"),
    ("user workload source (userwl/model.py)", code_change("userwl/model.py"), "probe"),
    ("kickoff's own code (stages/core/optim.py)", code_change("stages/core/optim.py"), "select"),
    ("another built-in workload (stages/workloads/char_lm.py)", code_change("stages/workloads/char_lm.py"), None),
]


def cell(root: Path, change) -> tuple[bool, str]:
    """(agree, text) for one change in one clone: Snakemake's plan vs dvc status + downstream."""
    label, apply, must = change
    with apply(root):
        stale = dvc_stale(root)
        plan = snakemake_plan(root)
    expected = downstream(root, stale)
    agree = plan == expected and (must in stale if must else not stale)
    text = f"{len(stale)} + {len(expected - stale)}" if agree else f"DISAGREE dvc {sorted(stale)} snakemake {sorted(plan)}"
    return agree, text


def states(ran: Path, work: Path) -> dict[str, Path]:
    """The three clones of the matrix, made from the committed, Snakemake-run project `ran`."""
    fresh = work / "fresh"
    run(["git", "clone", "-q", str(ran), str(fresh)], work)
    after_dvc = work / "after-dvc"
    shutil.copytree(ran, after_dvc, symlinks=True)  # keeps Snakemake's metadata of the first run
    write_params(after_dvc, {"select": {"objective": "resource"}})
    run(["dvc", "repro"], after_dvc, timeout=900)  # DVC runs select, baseline, report; Snakemake's record is now old
    run(["git", "commit", "-q", "-am", "select by resource, run by dvc"], after_dvc)
    return {"fresh clone": fresh, "with .snakemake/": ran, "after dvc repro": after_dvc}


def matrix(clones: dict[str, Path], changes=CHANGES) -> tuple[bool, str]:
    """All cells; (every cell agrees, a markdown table: 'dvc status jobs + downstream jobs' per cell)."""
    lines = ["| change | " + " | ".join(clones) + " |", "|---" * (len(clones) + 1) + "|"]
    ok = True
    for change in changes:
        cells = []
        for root in clones.values():
            agree, text = cell(root, change)
            ok &= agree
            cells.append(text)
        lines.append(f"| {change[0]} | " + " | ".join(cells) + " |")
    return ok, "\n".join(lines)


def timed(cmd: list[str], root: Path, repeat: int = 3) -> float:
    """The median wall time of `cmd` in `root`, seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run(cmd, root)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="keep the temporary projects and print where")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kickoff-staleness-"))
    print(f"building the project and running it with snakemake in {work} ...", file=sys.stderr)
    ran = build(work / "ran")
    clones = states(ran, work)
    ok, table = matrix(clones)
    print("Cells: jobs `dvc status` lists + jobs downstream of them; Snakemake planned exactly those where no "
          "DISAGREE.\n")
    print(table)
    fresh = clones["fresh clone"]
    print(f"\nno-op timings (median of 3, in the fresh clone): dvc status {timed(['dvc', 'status'], fresh):.2f} s, "
          f"dvc repro {timed(['dvc', 'repro'], fresh):.2f} s, "
          f"snakemake -n {timed([sys.executable, '-m', 'snakemake', '-n'], fresh):.2f} s "
          f"(goals: 2 s, 2 s, 5 s on an idle 2-core machine)")
    if args.keep:
        print(f"kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
