"""Benchmark: the staleness matrix -- do `dvc status` and `snakemake -n` agree on what to rerun?

    python bench/bench_staleness.py [--keep]

A small user-workload project (a noisy quadratic plugged in through params.yaml, with a team
profile active on top of it) is run once by Snakemake, which records itself in dvc.lock, and
committed. Then, in three states of a clone -- a fresh `git clone` (no .snakemake/), the clone
Snakemake ran in (its metadata present), and a clone where `dvc repro` ran last (Snakemake's
metadata out of date) -- each kind of change is made and undone: a params key of one stage, the
optimizer, a setting the optimizer ignores, workload kwargs, family candidates, a `data:` setting,
a key added to the active profile, a params.yaml key the profile overrides, `dvc exp run -S` on a
profile key (DVC's own rewrite of the file), the user's workload source, a helper module it imports
(not listed), a listed source of a project outside the clone, kickoff's own code, another built-in
workload's code. Snakemake plans first (it brings the settings stage's effective file up to date,
as `dvc repro` runs that stage first); a cell agrees when it planned exactly the jobs `dvc status`
then lists plus the jobs downstream of them. Prints the table (docs/team.md shows a measured one),
then the time of a no-op `dvc status`, `dvc repro` and `snakemake -n`. Exit status 1 if a cell
disagrees.
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


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import make_project, run, write_params  # noqa: E402  (the tests' project copy, reused)

USER_WORKLOAD = '''\
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "outside"))  # stands in for `pip install -e ../outside`

from stages.workloads.nqm import NoisyQuadratic
from userext.scale import target_scale  # the project outside the clone, listed in workload.sources by path
from userwl.helpers import default_dim  # a helper module, not listed: tracked through this import


def make(dim: int = default_dim(), target: float = 0.3):
    return NoisyQuadratic(dim=dim, target=target * target_scale())
'''
USER_HELPER = '''\
import os
import sys
from pathlib import Path


def default_dim() -> int:
    """8. With EDIT_WHILE_RUNNING=N in the environment, a scaling study's job sets scaling.max_steps to N in
    params.yaml as it builds this workload -- after it read its settings: a user's edit while the job
    runs, made at a known moment (tests/test_pipeline_declaration.py)."""
    value = os.environ.get("EDIT_WHILE_RUNNING")
    if value and Path(sys.argv[0]).parent.name == "scaling" and "--batch-size" in sys.argv:
        import yaml

        params = yaml.safe_load(Path("params.yaml").read_text())
        params["scaling"]["max_steps"] = int(value)
        Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return 8
'''
OUTSIDE_SOURCE = "def target_scale() -> float:\n    return 1.0\n"
OUTSIDE = "../outside/userext/scale.py"  # a project beside the clone (docs/own-model.md)

TINY = {
    "workload": {"name": "userwl.model:make", "kwargs": {"dim": 8, "target": 0.3}, "sources": ["userwl/model.py", OUTSIDE]},
    "family": {"candidates": [{"dim": 4}, {"dim": 8}], "rule": "smallest", "batch_size": 8, "max_steps": 200},
    "runtime": {"device": "cpu", "seed": 0, "threads": 1},
    "probe": {"min_batch_size": 4, "max_batch_size": 32, "steps": 1},
    "throughput": {"warmup_steps": 1, "window_seconds": 0.01, "min_windows": 6, "max_seconds_per_size": 0.2,
                   "split_steps": 3, "peak_seconds": 0.05},
    "scaling": {"batch_sizes": [4, 8, 16], "lr_min": 0.01, "lr_max": 0.3, "lr_points": 2, "lr_refine_trials": 1,
                "max_steps": 200, "seeds": 0, "bootstrap": 20},
}


def outside_project(beside: Path) -> None:
    """The user's project outside the clone, `outside/` next to the clone `beside`."""
    package = beside.parent / "outside" / "userext"
    if not package.is_dir():
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "scale.py").write_text(OUTSIDE_SOURCE)
# The team's profile, active on top of params.yaml (`python -m stages.pipeline --profile ci`)
PROFILE = "profiles/ci/params.yaml"
PROFILE_TEXT = "probe:\n  steps: 2\n"


def build(dest: Path) -> Path:
    """The project, with the profile active, run once by Snakemake (which records every job in dvc.lock), committed."""
    (dest / "userwl").mkdir(parents=True)
    (dest / "userwl" / "__init__.py").write_text("")
    (dest / "userwl" / "model.py").write_text(USER_WORKLOAD)
    (dest / "userwl" / "helpers.py").write_text(USER_HELPER)
    outside_project(dest)
    make_project(dest, TINY, commit=False)
    (dest / PROFILE).parent.mkdir(parents=True)
    (dest / PROFILE).write_text(PROFILE_TEXT)
    run([sys.executable, "-m", "stages.pipeline", "--profile", "ci"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "project, ci profile"], dest)
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
    from stages.core.config import read_raw
    from stages.pipeline.freshness import downstream as closure

    return closure(jobs, read_raw(root / "params.yaml"))


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


def profile_key(text: str) -> Callable[[Path], contextlib.AbstractContextManager]:
    """A key appended to the active profile by hand."""
    return lambda root: edited(root, PROFILE, lambda old: old + text)


def set_param(path: str, override: str) -> Callable[[Path], contextlib.AbstractContextManager]:
    """What `dvc exp run -S PATH:OVERRIDE` does to the file before it reproduces: DVC's own rewrite."""
    def apply(root: Path):
        @contextlib.contextmanager
        def cm():
            old = (root / path).read_text()
            run([sys.executable, "-c", "import sys; from dvc.utils.hydra import apply_overrides; "
                 "apply_overrides(sys.argv[1], [sys.argv[2]])", path, override], root)
            try:
                yield
            finally:
                (root / path).write_text(old)
        return cm()
    return apply


# (label, the change as a context manager factory, a job that must be stale / None: nothing may be)
CHANGES: list[tuple[str, Callable[[Path], contextlib.AbstractContextManager], str | None]] = [
    ("params key of one stage (throughput.split_steps)", param_change("throughput", "split_steps", 4), "throughput"),
    ("optimizer (optimizer.momentum)", param_change("optimizer", "momentum", 0.8), "scaling"),
    ("setting SGD ignores (optimizer.beta1)", param_change("optimizer", "beta1", 0.8), None),
    ("workload kwargs (target)", param_change("workload", "kwargs", {"dim": 8, "target": 0.25}), "probe"),
    ("family candidates", param_change("family", "candidates", [{"dim": 4}, {"dim": 16}]), "family_trial@candidate1"),
    ("data setting (data.num_workers)", param_change("data", "num_workers", 1), "throughput"),
    ("a key added to the active profile (select.device_cost_per_hour)",
     profile_key("select:\n  device_cost_per_hour: 2.0\n"), "select"),
    ("a params.yaml key the profile overrides (probe.steps)", param_change("probe", "steps", 3), None),
    ("`dvc exp run -S` on a profile key, a new one (+baseline.eval_every)",
     set_param(PROFILE, "+baseline.eval_every=3"), "baseline"),
    ("user workload source (userwl/model.py)", code_change("userwl/model.py"), "probe"),
    ("user workload's helper module, not listed (userwl/helpers.py)", code_change("userwl/helpers.py"), "probe"),
    (f"user workload source outside the clone ({OUTSIDE})", code_change(OUTSIDE), "probe"),
    ("kickoff's own code (stages/core/optim.py)", code_change("stages/core/optim.py"), "select"),
    ("another built-in workload (stages/workloads/char_lm.py)", code_change("stages/workloads/char_lm.py"), None),
]


SETTINGS_FILES = ("reports/settings", "dvc.lock")  # what bringing the settings up to date may write


@contextlib.contextmanager
def restored(root: Path, paths=SETTINGS_FILES) -> Iterator[None]:
    """Put the files under `paths` back as they were (the settings stage's outputs Snakemake brought up to date)."""
    files = [f for p in paths for f in ([root / p] if (root / p).is_file() else sorted((root / p).rglob("*")))]
    saved = {f: f.read_bytes() for f in files if f.is_file()}
    try:
        yield
    finally:
        for f, data in saved.items():
            f.write_bytes(data)


def cell(root: Path, change) -> tuple[bool, str]:
    """(agree, text) for one change in one clone: Snakemake's plan vs dvc status + downstream. Snakemake
    plans first: it brings the settings in force up to date, as `dvc repro` would run the settings stage
    first, and `dvc status` then lists exactly the jobs whose settings changed."""
    label, apply, must = change
    with restored(root), apply(root):
        plan = snakemake_plan(root)
        stale = dvc_stale(root)
    expected = downstream(root, stale)
    others = stale - {"settings"}
    agree = plan == expected and (must in others if must else not others)
    text = f"{len(stale)} + {len(expected - stale)}" if agree else f"DISAGREE dvc {sorted(stale)} snakemake {sorted(plan)}"
    return agree, text


def states(ran: Path, work: Path) -> dict[str, Path]:
    """The three clones of the matrix, made from the committed, Snakemake-run project `ran`."""
    fresh = work / "fresh"
    run(["git", "clone", "-q", str(ran), str(fresh)], work)
    outside_project(fresh)  # a teammate's clone has the project beside it too
    after_dvc = work / "after-dvc"
    shutil.copytree(ran, after_dvc, symlinks=True)  # keeps Snakemake's metadata of the first run
    write_params(after_dvc, {"select": {"objective": "resource"}})  # written back by PyYAML: the settings stage reruns too
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
    print("Cells: jobs `dvc status` lists (the settings stage among them where a settings file changed) + jobs "
          "downstream of them; Snakemake planned exactly those where no DISAGREE.\n")
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
