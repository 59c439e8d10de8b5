"""The scaling study's wall time, old commit against new, side by side in one run (issue 20).

    python bench/bench_study_time.py                      # before issue 20 (0f805e2) vs HEAD, default digits_mlp
    python bench/bench_study_time.py --old HEAD~3 --repeats 2
    python bench/bench_study_time.py --set scaling.batch_sizes=[256,512] --set scaling.max_steps=200   # quicker

Each commit is checked out into its own temporary clone (`git clone --shared`, nothing is fetched),
given the same earlier-stage results -- reports/family, probe and throughput as committed at --new,
so both studies see the same model, feasible sizes and time per step -- and runs the stages' own
commands as `dvc repro` runs them: `python -m stages.scaling trials --batch-size B` for every size,
smallest first, then `python -m stages.scaling summarize` (the timed part: the scaling study), then
`python -m stages.select` (untimed) for the configuration each study leads to. No journal is shared:
every trial trains. With --repeats N the commits alternate (old, new, old, new, ...) so a busy
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
BEFORE_ISSUE_20 = "0f805e2"  # main before the study-cost work (issue 20)
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
    raw.setdefault("runtime", {}).update(device="cpu")
    for key, value in overrides:
        set_value(raw, key, value)
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run([sys.executable, "-m", "stages.pipeline"], project)
    return list(raw["scaling"]["batch_sizes"])


def run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(cwd), "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed in {cwd} (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def study(project: Path, sizes: list[int]) -> dict:
    """One scaling study (timed) and select (untimed) in a prepared project."""
    shutil.rmtree(project / ".kickoff", ignore_errors=True)  # no journal: every trial trains
    shutil.rmtree(project / "reports/scaling", ignore_errors=True)
    start = time.perf_counter()
    for b in sorted(sizes):  # dvc repro's order: the fan-out's items as listed
        run([sys.executable, "-m", "stages.scaling", "trials", "--batch-size", str(b)], project)
    run([sys.executable, "-m", "stages.scaling", "summarize"], project)
    wall = time.perf_counter() - start
    run([sys.executable, "-m", "stages.select"], project)
    metrics = json.loads((project / "reports/scaling/metrics.json").read_text())
    config = yaml.safe_load((project / "reports/select/initial_config.yaml").read_text())
    return {"wall_s": wall, "trials": metrics.get("trials"), "examples": metrics.get("examples_run"),
            "chosen": (config["batch_size"], round(float(config["learning_rate"]), 4), config["train_steps"])}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default=BEFORE_ISSUE_20, help=f"the commit to compare against (default {BEFORE_ISSUE_20}: "
                                                           f"before issue 20)")
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
        results: dict[str, list[dict]] = {"old": [], "new": []}
        for k in range(args.repeats):
            for label in ("old", "new"):
                r = study(projects[label], sizes[label])
                results[label].append(r)
                print(f"[bench] repeat {k + 1}/{args.repeats} {label} ({names[label]}): {r['wall_s']:.1f} s, "
                      f"{r['trials']} trials, {r['examples']} examples, chose batch {r['chosen'][0]}, "
                      f"lr {r['chosen'][1]}, {r['chosen'][2]} steps", file=sys.stderr, flush=True)
    print(f"{'commit':<16} {'study wall s':>12} {'trials':>7} {'examples':>10}  chosen (batch, lr, steps)")
    for label in ("old", "new"):
        rs = results[label]
        examples = [r["examples"] for r in rs if r["examples"] is not None]  # not recorded before issue 20
        print(f"{label + ' ' + names[label]:<16} {statistics.median(r['wall_s'] for r in rs):>12.1f} "
              f"{statistics.median(r['trials'] for r in rs):>7.0f} "
              f"{f'{statistics.median(examples):.0f}' if examples else 'n/a':>10}  "
              f"{', '.join(str(r['chosen']) for r in rs)}")
    old = statistics.median(r["wall_s"] for r in results["old"])
    new = statistics.median(r["wall_s"] for r in results["new"])
    same = {r["chosen"] for r in results["old"]} == {r["chosen"] for r in results["new"]}
    print(f"new / old study wall time: {new / old:.2f} ({1 - new / old:.0%} less); "
          f"same chosen configuration: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
