"""One pipeline declaration, two tools: DVC and Snakemake must see the same stages, commands, inputs,
outputs and params, and mark the same stages stale when a param or a source file changes.

Everything here goes through the real `dvc` and `snakemake` commands in a temporary git repository.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from stages.pipeline import declaration as pipeline
from tests.conftest import ROOT, make_project, run, write_params

pytestmark = pytest.mark.e2e

# A user workload plugged in through params.yaml (docs/own-model.md's recipe): a small noisy quadratic.
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
    "throughput": {"warmup_steps": 1, "window_seconds": 0.01, "min_windows": 6, "max_seconds_per_size": 0.2, "split_steps": 3, "peak_seconds": 0.05},
    "scaling": {"batch_sizes": [4, 8, 16], "lr_min": 0.01, "lr_max": 0.3, "lr_points": 2, "lr_refine_trials": 1, "max_steps": 200,
                "seeds": 0, "bootstrap": 20},
}

TINY_FULL = {**yaml.safe_load((ROOT / "params.yaml").read_text()), **TINY}
FANOUT = [f"scaling_trials@{b}" for b in TINY["scaling"]["batch_sizes"]]
FAMILY_FANOUT = [f"family_trial@candidate{i}" for i in range(len(TINY["family"]["candidates"]))]
USES_WORKLOAD = {*FAMILY_FANOUT, "probe", "throughput", *FANOUT, "scaling", "select", "baseline"}
DOWNSTREAM_OF_THROUGHPUT = {"throughput", *FANOUT, "scaling", "select", "baseline", "report"}


def dvc_view(root: Path) -> dict[str, dict]:
    """Stages as DVC's own loader resolves dvc.yaml (foreach expanded, ${} interpolated)."""
    script = (
        "import json\n"
        "from dvc.repo import Repo\n"
        "from dvc.dependency.param import ParamsDependency\n"
        "out = {}\n"
        "for s in Repo('.').index.stages:\n"
        "    params = [d for d in s.deps if isinstance(d, ParamsDependency)]\n"
        "    out[s.addressing.split(':')[-1]] = {\n"
        "        'cmd': s.cmd,\n"
        "        'deps': sorted(d.def_path for d in s.deps if not isinstance(d, ParamsDependency)),\n"
        "        'params': sorted(k for d in params for k in d.params),\n"
        "        'outs': sorted(o.def_path for o in s.outs)}\n"
        "print(json.dumps(out))\n")
    return json.loads(run([sys.executable, "-c", script], root).stdout)


def files(listing: str) -> list[str]:
    """A dry run's file list, without flag notes such as ' (update)' (outputs kept while a job runs)."""
    return sorted(re.sub(r" \([a-z ]+\)$", "", f) for f in listing.split(", ") if f)


def snakemake_jobs(root: Path, *args: str) -> dict[str, dict]:
    """Jobs of a Snakemake dry run: name (fan-out as name@wildcard) -> input, output, shell, reason."""
    text = run([sys.executable, "-m", "snakemake", "-n", "-p", *args], root).stdout
    jobs: dict[str, dict] = {}
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", text):
        m = re.search(r"^(?:local)?rule (\w+):$", block, re.M)
        if not m:
            continue
        fields = dict(re.findall(r"^    (\w+): (.*)$", block, re.M))
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        name = m.group(1)
        if "wildcards" in fields:
            name += "@" + fields["wildcards"].split("=", 1)[1]
        jobs[name] = {"input": files(fields.get("input", "")), "output": files(fields.get("output", "")),
                      "shell": shell.group(1) if shell else None, "reason": fields.get("reason", "")}
    jobs.pop("all", None)
    return jobs


def dvc_stale(root: Path) -> set[str]:
    status = json.loads(run(["dvc", "status", "--json"], root).stdout or "{}")
    return {name.split(":")[-1] for name in status}


def edited(root: Path, path: str, new_text: str):
    """Context manager: write new_text into path, restore it afterwards."""
    import contextlib

    @contextlib.contextmanager
    def cm():
        file = root / path
        old = file.read_text()
        file.write_text(new_text)
        try:
            yield
        finally:
            file.write_text(old)

    return cm()


@pytest.fixture(scope="module")
def ran_project(tmp_path_factory) -> Path:
    """A temporary project with a user workload, run once by Snakemake; DVC records the same run."""
    root = tmp_path_factory.mktemp("decl")
    (root / "userwl").mkdir()
    (root / "userwl" / "__init__.py").write_text("")
    (root / "userwl" / "model.py").write_text(USER_WORKLOAD)
    make_project(root, TINY)
    run([sys.executable, "-m", "snakemake", "-c2"], root, timeout=900)
    run(["dvc", "commit", "--force", "--quiet"], root)  # DVC: record this run's deps/params/outs in dvc.lock
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "ran"], root)
    return root


def test_dvc_yaml_is_up_to_date_with_the_declaration():
    proc = run([sys.executable, "-m", "stages.pipeline", "--check"], ROOT, check=False)
    assert proc.returncode == 0, proc.stderr


def test_both_tools_see_the_same_stages_commands_inputs_and_outputs(ran_project):
    dvc = dvc_view(ran_project)
    snake = snakemake_jobs(ran_project, "--forceall")
    assert set(dvc) == set(snake) == {s.name for s in pipeline.STAGES if not s.foreach} | set(FANOUT) | set(FAMILY_FANOUT)
    for name, d in dvc.items():
        s = snake[name]
        assert s["shell"].split(" 2> ")[0] == d["cmd"], name
        assert s["output"] == d["outs"], name
        assert d["params"] == sorted(pipeline.stage(name.split("@")[0]).params), name
        # DVC lists a fan-out's per-item files as their folder; every Snakemake input must be covered.
        for path in s["input"]:
            assert any(path == dep or path.startswith(dep + "/") for dep in d["deps"]), (name, path)
        for dep in d["deps"]:
            assert any(path == dep or path.startswith(dep + "/") for path in s["input"]), (name, dep)
        assert "userwl/model.py" in d["deps"] if name in USES_WORKLOAD else "userwl/model.py" not in d["deps"]


def test_after_one_run_both_tools_agree_nothing_is_stale(ran_project):
    assert dvc_stale(ran_project) == set()
    assert snakemake_jobs(ran_project) == {}


def job_names(stage: pipeline.Stage) -> list[str]:
    items = pipeline.items_of(stage, TINY_FULL) if stage.foreach else [None]
    return [f"{stage.name}@{b}" if stage.foreach else stage.name for b in items]


def job_outputs(stage: pipeline.Stage, job: str) -> set[str]:
    item = job.partition("@")[2]
    return {o.path.replace(f"{{{stage.foreach[0]}}}", item) if stage.foreach else o.path for o in stage.outputs}


def readers_of(key: str) -> set[str]:
    """Jobs whose stage reads `key` (directly, or through its whole section)."""
    section = key.split(".")[0]
    return {j for s in pipeline.STAGES if any(p in (section, key) for p in s.params) for j in job_names(s)}


def downstream_closure(jobs: set[str]) -> set[str]:
    """Jobs plus everything that reads their outputs, transitively (the set Snakemake will run)."""
    produced = {}
    for s in pipeline.STAGES:
        for j in job_names(s):
            produced[j] = job_outputs(s, j)
    closure, changed = set(jobs), True
    while changed:
        changed = False
        for s in pipeline.STAGES:
            inputs = set(pipeline.snakemake_inputs(s, yaml.safe_load(yaml.safe_dump(TINY_FULL))))
            for j in job_names(s):
                if j not in closure and any(produced[u] & inputs for u in closure):
                    closure.add(j)
                    changed = True
    return closure


def own_reason(root: Path, job: str, marker: str) -> bool:
    """Does Snakemake want to rerun `job` for its OWN reason (not because an upstream job reruns)?
    Only that rule is allowed to run, and its outputs are the targets."""
    name, _, item = job.partition("@")
    s = pipeline.stage(name)
    targets = sorted(job_outputs(s, job))
    jobs = snakemake_jobs(root, *targets, "--allowed-rules", name)  # last: it takes several values
    return marker in jobs.get(job, {}).get("reason", "")


def reason_jobs(jobs: dict, marker: str) -> set[str]:
    return {name for name, job in jobs.items() if marker in job["reason"]}


PARAMS_MARKER = "Params have changed"

# (params key, new value): one key of every section (weight decay, which the probe ignores, has its own test below)
PARAM_CHANGES = [
    ("workload.kwargs", {"dim": 8, "target": 0.2}),
    ("optimizer.name", "adam"),
    ("runtime.seed", 1),
    ("probe.steps", 2),
    ("throughput.split_steps", 4),
    ("scaling.lr_points", 3),
    ("select.objective", "resource"),
    ("family.candidates", [{"dim": 4}, {"dim": 16}]),  # issue 13: the family and every stage training its choice
    ("baseline.eval_every", 5),
    ("data.num_workers", 2),  # the stages that read batches; not the probe (fake batches), not the baseline (initial_config)
]


@pytest.mark.parametrize("key, value", PARAM_CHANGES, ids=[k for k, _ in PARAM_CHANGES])
def test_a_param_change_marks_the_same_stages_stale_in_both_tools(ran_project, key, value):
    section, name = key.split(".")
    readers = readers_of(key)
    original = (ran_project / "params.yaml").read_text()
    try:
        write_params(ran_project, {section: {name: value}})
        assert dvc_stale(ran_project) == readers
        jobs = snakemake_jobs(ran_project)
        # Snakemake names only the first reason: a reader downstream of another reader shows
        # "input files updated by another job" instead, so compare the first readers and the run set.
        first_readers = {j for j in readers if not (downstream_closure(readers - {j}) & {j})}
        assert first_readers <= reason_jobs(jobs, PARAMS_MARKER) <= readers
        assert set(jobs) == downstream_closure(readers)
    finally:
        (ran_project / "params.yaml").write_text(original)


def test_an_optimizer_value_marks_exactly_the_stages_that_read_it(ran_project):
    """Weight decay changes a step's work and the training result, not the probe's memory. The baseline
    takes its optimizer from select's initial_config.yaml, so it reruns only through that file."""
    original = (ran_project / "params.yaml").read_text()
    try:
        write_params(ran_project, {"optimizer": {"weight_decay": 1.0e-4}})
        stale = dvc_stale(ran_project)
        assert stale == readers_of("optimizer.weight_decay") == {*FAMILY_FANOUT, "throughput", *FANOUT, "scaling", "select"}
        for job in ["probe", FANOUT[0], "baseline"]:  # one reader, one not, one through initial_config.yaml
            assert own_reason(ran_project, job, PARAMS_MARKER) == (job in stale), job
        # Snakemake cannot know the family's choice stays the same: it reruns everything after it
        assert set(snakemake_jobs(ran_project)) == downstream_closure(stale)
    finally:
        (ran_project / "params.yaml").write_text(original)


def test_a_stage_only_setting_marks_only_that_stage_and_those_downstream(ran_project):
    original = (ran_project / "params.yaml").read_text()
    try:
        write_params(ran_project, {"throughput": {"split_steps": 4}})
        assert dvc_stale(ran_project) == {"throughput"}
        jobs = snakemake_jobs(ran_project)
        assert reason_jobs(jobs, PARAMS_MARKER) == {"throughput"}
        assert set(jobs) == DOWNSTREAM_OF_THROUGHPUT
    finally:
        (ran_project / "params.yaml").write_text(original)


def test_editing_the_user_workload_source_marks_the_stages_that_use_it(ran_project):
    with edited(ran_project, "userwl/model.py", USER_WORKLOAD + "\n# a tweak to the model\n"):
        assert dvc_stale(ran_project) == USES_WORKLOAD
        marker = "Updated input files: userwl/model.py"
        for job in [FAMILY_FANOUT[0], FANOUT[0], "baseline", "report"]:  # report builds no workload
            assert own_reason(ran_project, job, marker) == (job in USES_WORKLOAD), job
        assert set(snakemake_jobs(ran_project)) == downstream_closure(USES_WORKLOAD)


def test_editing_a_shared_module_marks_the_stages_that_import_it(ran_project):
    """stages/core/optim.py is imported by every training stage, never by report: both tools agree."""
    path = "stages/core/optim.py"
    original = (ran_project / path).read_text()
    importers = {j for s in pipeline.STAGES if path in pipeline.code_deps(s.module) for j in job_names(s)}
    assert "report" not in importers and "probe" in importers
    with edited(ran_project, path, original + "\n# comment\n"):
        assert dvc_stale(ran_project) == importers
        assert set(snakemake_jobs(ran_project)) == downstream_closure(importers)
