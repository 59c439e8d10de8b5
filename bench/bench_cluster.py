"""The study's wall time on a real SLURM scheduler with 1 and 2 job slots, against the ideal its DAG allows.

    python bench/bench_cluster.py                           # the small profile on digits_mlp, 1 then 2 slots
    python bench/bench_cluster.py --slots 1 2 4             # more slots (the node is given that many CPUs)
    python bench/bench_cluster.py --set scaling.adaptive=false   # any params.yaml key, YAML values
    python bench/bench_cluster.py --tiny                    # seconds, not minutes: the staleness matrix's tiny project

For each slot count a single-node SLURM (tests/slurm_cluster.py: Debian's slurm-wlm and munge, installed
where missing and possible; needs root or password-less sudo) is started with that many CPUs, a fresh
copy of the project is made with the profile's params, and the whole pipeline runs through
`snakemake --profile` -- profiles/slurm with what belongs to the test cluster (`cluster_profile`) --
one SLURM job per kickoff job, every job measured afresh (no journal is shared between the runs).

From the scheduler's own start and end times (scontrol) and the declared DAG
(stages/pipeline/freshness.py: which job reads which), it prints per slot count: Snakemake's wall time,
the scheduler's makespan (first job's start to last job's end), the most jobs running at once, the jobs'
summed run time (more with more slots: the jobs share the machine's cores), the median wait of a job for
its inputs (from the end of the last job it reads from to its own start: Snakemake's polls and the
submission), and the critical path -- the longest chain of jobs that read one another -- then the speed-up of N slots over 1
against the ideal one: with N slots no schedule beats max(critical path, summed run time / N), computed
from the 1-slot run's job times. A team reads what more devices buy: the ideal is what the DAG's shape
allows (today the family's candidates and the scaling study's per-size jobs are the wide parts), the gap
to it is scheduling and polling overhead.

Exit status 1 if a run fails; 0 with a line saying why, and no figures, where no SLURM can be started.
"""
from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_staleness import TINY  # noqa: E402
from stages.pipeline import declaration as pipeline  # noqa: E402
from stages.pipeline.freshness import all_jobs, job_name, upstream_jobs  # noqa: E402
from tests.conftest import make_project, run  # noqa: E402  (the tests' project copy, reused)
from tests.slurm_cluster import Cluster, Job, SlurmUnavailable, start  # noqa: E402

TEST_PROFILE = "profiles/slurm-test"  # written into the temporary project: profiles/slurm for the test cluster


# ---------------------------------------------------------------------------- the DAG

def project_params(root: Path) -> dict:
    """params.yaml with the active profiles applied, as the Snakefile plans with it."""
    return pipeline.effective_params(yaml.safe_load((root / "params.yaml").read_text()), root)


def readers_graph(params: dict) -> dict[str, set[str]]:
    """job -> the jobs it reads from (as DVC names them), for every job of the pipeline."""
    graph = {}
    for s in pipeline.STAGES:
        if pipeline.present(s, params):
            for item in pipeline.items_of(s, params) if s.foreach else [None]:
                graph[job_name(s, item)] = set(upstream_jobs(s, params))
    assert set(graph) == set(all_jobs(params))
    return graph


def waves(params: dict) -> list[list[str]]:
    """The jobs grouped by their depth in the DAG (the longest chain of jobs before them): no job of a
    group reads, even indirectly, from another of its group, so a group's jobs may all run at once."""
    graph, depth = readers_graph(params), {}

    def level(job: str) -> int:
        if job not in depth:
            depth[job] = 1 + max((level(u) for u in graph[job]), default=-1)
        return depth[job]

    groups: dict[int, list[str]] = {}
    for job in graph:
        groups.setdefault(level(job), []).append(job)
    return [sorted(groups[d]) for d in sorted(groups)]


def critical_path(seconds: dict[str, float], params: dict) -> tuple[float, list[str]]:
    """The longest chain of jobs that read one another, by the jobs' run times: (its seconds, its jobs)."""
    graph, best = readers_graph(params), {}

    def longest(job: str) -> tuple[float, list[str]]:
        if job not in best:
            before = max((longest(u) for u in graph[job]), default=(0.0, []), key=lambda x: x[0])
            best[job] = (before[0] + seconds.get(job, 0.0), [*before[1], job])
        return best[job]

    return max((longest(j) for j in graph), key=lambda x: x[0])


def overlapping(jobs: list[Job]) -> int:
    """The most of `jobs` running at one moment, by the scheduler's start and end times."""
    events = sorted([(j.start, 1) for j in jobs if j.start and j.end] + [(j.end, -1) for j in jobs if j.start and j.end],
                    key=lambda e: (e[0], e[1]))  # an end before a start at the same second: not an overlap
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


# ---------------------------------------------------------------------------- a run on the scheduler

def cluster_profile(root: Path, name: str = TEST_PROFILE, retries: int = 0) -> str:
    """profiles/slurm with what belongs to the test cluster, written into `root/name`: no account (no
    accounting database), no GPU requested (the node has none), job states from squeue, the first poll after
    a second (jobs here take seconds), and `retries` resubmissions (0: a cancelled job stays cancelled). The
    partitions stay the profile's: the test cluster has them (tests/slurm_cluster.start)."""
    profile = yaml.safe_load((root / "profiles/slurm/config.yaml").read_text())
    profile["default-resources"].pop("slurm_account", None)
    per_rule = profile.setdefault("set-resources", {})
    for s in pipeline.STAGES:
        if s.resources.get("gpu"):
            per_rule.setdefault(s.name, {})["gpu"] = 0
    profile.update({"slurm-no-account": True, "slurm-status-command": "squeue",
                    "slurm-init-seconds-before-status-checks": 1, "slurm-keep-successful-logs": True,
                    "latency-wait": 5, "retries": retries})
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return name


def profile_partitions() -> tuple[str, ...]:
    """The partitions profiles/slurm submits to (default first): the test cluster offers exactly these."""
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    default = profile["default-resources"]["slurm_partition"]
    others = {r["slurm_partition"] for r in profile.get("set-resources", {}).values() if "slurm_partition" in r}
    return (default, *sorted(others - {default}))


def snakemake_on(cluster: Cluster, root: Path, *args: str, timeout: float = 1800, check: bool = True):
    """`snakemake --profile profiles/slurm-test ARGS` in `root`, submitting to `cluster`."""
    return run([sys.executable, "-m", "snakemake", "--profile", cluster_profile(root), *args], root,
               check=check, timeout=timeout, env=cluster.env)


@dataclass
class Run:
    slots: int
    wall_s: float               # Snakemake's, submission to the last job collected
    jobs: dict[str, Job]        # kickoff job -> its SLURM job
    params: dict

    @property
    def seconds(self) -> dict[str, float]:
        return {name: j.seconds or 0.0 for name, j in self.jobs.items()}

    @property
    def makespan_s(self) -> float:
        return (max(j.end for j in self.jobs.values()) - min(j.start for j in self.jobs.values())).total_seconds()

    @property
    def waits_s(self) -> list[float]:
        """Per job that reads another's outputs: seconds from the last of those jobs' end to its own start
        -- Snakemake noticing the end (its polls), submitting, the scheduler starting the job."""
        graph = readers_graph(self.params)
        return [(j.start - max(self.jobs[u].end for u in graph[name])).total_seconds()
                for name, j in self.jobs.items() if graph[name]]


def kickoff_jobs(cluster: Cluster) -> dict[str, Job]:
    """The completed SLURM jobs by the kickoff job they ran (the last, where one ran twice)."""
    return {j.kickoff_job: j for j in cluster.jobs() if j.kickoff_job and j.state == "COMPLETED"}


def study(slots: int, work: Path, overrides: dict, profiles: list[str]) -> Run:
    """A fresh project run once through SLURM with `slots` job slots."""
    cluster = start(work / f"slurm-{slots}", slots=slots, partitions=profile_partitions())
    try:
        root = make_project(work / f"kickoff-{slots}", overrides, commit=False)
        if profiles:
            run([sys.executable, "-m", "stages.pipeline", *(a for p in profiles for a in ("--profile", p))], root)
        run(["git", "add", "-A"], root)
        run(["git", "commit", "-q", "-m", "project"], root)
        began = time.monotonic()
        snakemake_on(cluster, root)
        wall = time.monotonic() - began
        params = project_params(root)
        jobs = kickoff_jobs(cluster)
        missing = set(all_jobs(params)) - set(jobs)
        if missing:
            raise RuntimeError(f"no completed SLURM job for {sorted(missing)}")
        return Run(slots, wall, jobs, params)
    finally:
        cluster.stop()


def report(runs: list[Run]) -> str:
    base = runs[0]
    total = sum(base.seconds.values())
    path_s, path = critical_path(base.seconds, base.params)
    lines = [f"jobs: {len(base.jobs)}; their run time summed ({base.slots} slot{'s' * (base.slots > 1)}): {total:.0f} s; "
             f"critical path {path_s:.0f} s: {' -> '.join(path)}",
             "", "| slots | snakemake wall | scheduler makespan | jobs at once (most) | run time summed | "
                 "wait for inputs (median) | ideal wall | speed-up | ideal speed-up |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        ideal = max(path_s, total / r.slots)
        lines.append(f"| {r.slots} | {r.wall_s:.0f} s | {r.makespan_s:.0f} s | {overlapping(list(r.jobs.values()))} | "
                     f"{sum(r.seconds.values()):.0f} s | {statistics.median(r.waits_s):.0f} s | "
                     f"{ideal:.0f} s | {base.wall_s / r.wall_s:.2f} | {(max(path_s, total / base.slots)) / ideal:.2f} |")
    lines.append("\nspeed-up: snakemake wall time with the first slot count / with this one; ideal: what the DAG's "
                 "critical path and the summed run time allow, from the first run's job times; wait for inputs: "
                 "from the end of the last job a job reads from to its start (Snakemake's polls, the submission)")
    return "\n".join(lines)


# the staleness matrix's tiny project, on the built-in nqm (no user module to copy)
TINY_OVERRIDES = {**TINY, "workload": {"name": "nqm", "kwargs": {"dim": 8, "target": 0.3}, "sources": []}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", type=int, nargs="+", default=[1, 2], help="job slots of each run (default: 1 2)")
    ap.add_argument("--profile", action="append", help="params profile(s) to run with (default: small)")
    ap.add_argument("--tiny", action="store_true", help="the tiny nqm project instead (seconds per job; smoke runs)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a params.yaml key (YAML value)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary projects and clusters' logs")
    args = ap.parse_args(argv)
    overrides: dict = copy.deepcopy(TINY_OVERRIDES) if args.tiny else {}
    for item in args.set:
        key, _, value = item.partition("=")
        node = overrides
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    profiles = [] if args.tiny and not args.profile else (args.profile or ["small"])
    work = Path(tempfile.mkdtemp(prefix="kickoff-cluster-"))
    runs = []
    try:
        for slots in args.slots:
            print(f"{slots} slot(s): the pipeline through SLURM in {work} ...", file=sys.stderr, flush=True)
            runs.append(study(slots, work, overrides, profiles))
    except SlurmUnavailable as e:
        print(f"bench_cluster: skipped: {e}")
        return 0
    finally:
        if args.keep:
            print(f"kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    what = "the tiny nqm project" if args.tiny else f"profile {' + '.join(profiles) or 'none'}"
    print(f"The pipeline on a single-node SLURM ({what}{', ' + ', '.join(args.set) if args.set else ''}):\n")
    print(report(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
