"""The scaling study, old commit against new, side by side in one run: wall time with 1 and 2 job slots,
trials, examples, the cost in training runs of the chosen configuration, the choice and B_crit (issues
20, 26, 27).

    python bench/bench_study_time.py                      # the serial descent (4d77986) vs HEAD's waves, digits_mlp
    python bench/bench_study_time.py --slots 1 2 --repeats 2
    python bench/bench_study_time.py --set scaling.batch_sizes=[256,512] --set scaling.max_steps=200   # quicker

Each commit is checked out into its own temporary clone (`git clone --shared`, nothing is fetched),
given the same earlier-stage results -- reports/family, probe and throughput as committed at --new,
so both studies see the same model, feasible sizes and time per step -- and runs the stages' own
commands as `dvc repro` runs them -- a commit with the waves (stages/scaling/waves.py): each wave's
jobs, then the plan between waves; an older one: `python -m stages.scaling trials --batch-size B` for
every size, smallest first -- then `python -m stages.scaling summarize` (the timed part: the scaling
study), then `python -m stages.select` (untimed) for the configuration each study leads to. With
`--slots 2` the jobs that may run at once (a wave's; an older commit's per-size jobs, which wait on each
other's locks in its descent) run two at a time, as a cluster with two devices would. No journal is
shared: every trial trains. With --repeats N the commits alternate (old, new, old, new, ...) so a busy
machine slows both alike; the medians are compared.

Prints per commit: wall seconds of the study, trials, examples, and the chosen batch size, learning
rate and step budget; then new/old wall time and whether the chosen configuration is the same.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BEFORE_WAVES = "4d77986"  # main before the waves (issues 26, 27): the serial descent
EARLIER = ("reports/family", "reports/probe", "reports/throughput")


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def checkout(rev: str, where: Path) -> str:
    """A clone of this repository at `rev` (its short hash returned)."""
    subprocess.run(["git", "clone", "--quiet", "--shared", "--no-checkout", str(ROOT), str(where)], check=True)
    git("checkout", "--quiet", rev, cwd=where)
    return git("rev-parse", "--short", "HEAD", cwd=where)


def set_value(raw: dict, key: str, value) -> None:
    node = raw
    *path, last = key.split(".")
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value


def prepare(project: Path, earlier_from: Path, overrides: list[tuple[str, object]]) -> list[int]:
    """The earlier stages' results copied in, params.yaml overridden (dvc.yaml re-rendered where the
    commit renders it); returns the study's batch sizes."""
    for part in EARLIER:
        if (project / part).exists():
            shutil.rmtree(project / part)
        shutil.copytree(earlier_from / part, project / part)
    raw = yaml.safe_load((project / "params.yaml").read_text())
    for key, value in overrides:
        set_value(raw, key, value)
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run([sys.executable, "-m", "stages.pipeline"], project)
    if (project / "stages/settings").is_dir():  # the settings in force, where the stages track their keys
        run([sys.executable, "-m", "stages.settings"], project)
    return list(raw["scaling"]["batch_sizes"])


def run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(cwd), "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed in {cwd} (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def job_groups(project: Path, sizes: list[int]) -> list[list[list[str]]]:
    """The study's jobs as groups that may run at once, in order: a commit with the waves runs its waves
    (the plan between them alone); an older one its per-size jobs (one group: with its descent they wait on
    each other's locks, so more slots do not help it)."""
    if (project / "stages/scaling/waves.py").exists():
        raw = yaml.safe_load((project / "params.yaml").read_text())
        adaptive = (raw.get("scaling") or {}).get("adaptive", True)
        down = sorted(sizes, reverse=True)
        first, second = (sorted(down[0::2]), sorted(down[1::2])) if adaptive else (sorted(sizes), [])
        groups = [[["coarse", "--batch-size", str(b)] for b in first], [["gaps"]]]
        groups += [[["fill", "--batch-size", str(b)] for b in second]] if second else []
        return groups + [[["contenders"]], [["trials", "--batch-size", str(b)] for b in sorted(sizes)]]
    return [[["trials", "--batch-size", str(b)] for b in sorted(sizes)]]


def run_group(jobs: list[list[str]], project: Path, slots: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(project), "DVC_NO_ANALYTICS": "1"}
    waiting, running = list(jobs), []
    while waiting or running:
        while waiting and len(running) < slots:
            args = waiting.pop(0)
            running.append((args, subprocess.Popen([sys.executable, "-m", "stages.scaling", *args], cwd=project, env=env,
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)))
        args, proc = running.pop(0)
        _, err = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"python -m stages.scaling {' '.join(args)} failed in {project} (exit {proc.returncode}):\n{err[-3000:]}")


def study(project: Path, sizes: list[int], slots: int = 1) -> dict:
    """One scaling study (timed) and select (untimed) in a prepared project."""
    shutil.rmtree(project / ".kickoff", ignore_errors=True)  # no journal: every trial trains
    shutil.rmtree(project / "reports/scaling", ignore_errors=True)
    start = time.perf_counter()
    for group in job_groups(project, sizes):
        run_group(group, project, slots)
    run([sys.executable, "-m", "stages.scaling", "summarize"], project)
    wall = time.perf_counter() - start
    run([sys.executable, "-m", "stages.select"], project)
    metrics = json.loads((project / "reports/scaling/metrics.json").read_text())
    select = json.loads((project / "reports/select/metrics.json").read_text())
    config = yaml.safe_load((project / "reports/select/initial_config.yaml").read_text())
    return {"wall_s": wall, "trials": metrics.get("trials"), "examples": metrics.get("examples_run"),
            "runs": select.get("study_training_runs"), "b_crit": metrics.get("critical_batch_size"),
            "b_crit_ci": (metrics.get("ci_low"), metrics.get("ci_high")),
            "chosen": (config["batch_size"], round(float(config["learning_rate"]), 4), config["train_steps"]),
            "tied": _tied_sizes(select.get("tie"))}


def _tied_sizes(tie) -> set[int]:
    """The batch sizes select declared tied ("256~512: chose 512 (...)"); none where it declared no tie."""
    head = str(tie or "").split(":", 1)[0]
    return {int(b) for b in head.split("~") if b.strip().isdigit()} if "~" in head else set()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default=BEFORE_WAVES, help=f"the commit to compare against (default {BEFORE_WAVES}: "
                                                        f"the serial descent, before the waves)")
    ap.add_argument("--slots", type=int, nargs="+", default=[1], help="job slots to time each study with (e.g. 1 2)")
    ap.add_argument("--new", default="HEAD", help="the commit measured (default HEAD; commit your changes first)")
    ap.add_argument("--repeats", type=int, default=1, help="studies per commit, alternating (medians compared)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                    help="override a params.yaml key in both projects, e.g. scaling.batch_sizes=[256,512]")
    args = ap.parse_args(argv)
    overrides = []
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set: received {item!r}; allowed: KEY=YAML, e.g. scaling.max_steps=200")
        overrides.append((key, yaml.safe_load(value)))
    with tempfile.TemporaryDirectory(prefix="kickoff-study-time-") as tmp:
        projects, names = {}, {}
        for label, rev in (("new", args.new), ("old", args.old)):
            projects[label] = Path(tmp) / label
            names[label] = checkout(rev, projects[label])
        earlier = Path(tmp) / "earlier"  # the earlier stages' results as committed at --new, for both
        for part in EARLIER:
            shutil.copytree(projects["new"] / part, earlier / part)
        sizes = {label: prepare(projects[label], earlier, overrides) for label in ("new", "old")}
        results: dict[tuple[str, int], list[dict]] = {}
        for k in range(args.repeats):
            for slots in args.slots:
                for label in ("old", "new"):
                    r = study(projects[label], sizes[label], slots)
                    results.setdefault((label, slots), []).append(r)
                    print(f"[bench] repeat {k + 1}/{args.repeats} {label} ({names[label]}), {slots} slot(s): "
                          f"{r['wall_s']:.1f} s, {r['trials']} trials, {r['examples']} examples, chose batch "
                          f"{r['chosen'][0]}, lr {r['chosen'][1]}, {r['chosen'][2]} steps", file=sys.stderr, flush=True)
    print(f"{'commit':<16} {'slots':>5} {'wall s':>8} {'trials':>7} {'examples':>10} {'runs':>6}  B_crit (interval)  "
          f"chosen (batch, lr, steps)")
    for (label, slots), rs in sorted(results.items(), key=lambda kv: (kv[0][0] != "old", kv[0][1])):
        examples = [r["examples"] for r in rs if r["examples"] is not None]  # not recorded before issue 20
        runs = [r["runs"] for r in rs if r["runs"] is not None]
        b = rs[-1]
        crit = (f"{b['b_crit']:.0f} ({b['b_crit_ci'][0] or 0:.0f}-{b['b_crit_ci'][1] or 0:.0f})"
                if b["b_crit"] is not None else "n/a")
        print(f"{label + ' ' + names[label]:<16} {slots:>5} {statistics.median(r['wall_s'] for r in rs):>8.1f} "
              f"{statistics.median(r['trials'] for r in rs):>7.0f} "
              f"{f'{statistics.median(examples):.0f}' if examples else 'n/a':>10} "
              f"{f'{statistics.median(runs):.1f}' if runs else 'n/a':>6}  {crit:<18} "
              f"{', '.join(str(r['chosen']) for r in rs)}")
    for slots in args.slots:
        old = statistics.median(r["wall_s"] for r in results[("old", slots)])
        new = statistics.median(r["wall_s"] for r in results[("new", slots)])
        same = {r["chosen"] for r in results[("old", slots)]} == {r["chosen"] for r in results[("new", slots)]}
        old_sizes = {r["chosen"][0] for r in results[("old", slots)]}
        tied = not same and all(old_sizes <= r["tied"] for r in results[("new", slots)])
        print(f"{slots} slot(s): new / old study wall time {new / old:.2f} ({abs(1 - new / old):.0%} {'less' if new <= old else 'more'}); "
              f"same chosen configuration: {'yes' if same else 'no, but a declared tie with it' if tied else 'NO'}")
    if len(args.slots) > 1:
        for label in ("old", "new"):
            walls = {s: statistics.median(r["wall_s"] for r in results[(label, s)]) for s in args.slots}
            first = min(args.slots)
            print(f"{label}: " + ", ".join(f"{s} slots {walls[first] / walls[s]:.2f}x faster than {first}"
                                           for s in args.slots if s != first))


if __name__ == "__main__":
    main()
