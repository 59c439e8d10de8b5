"""One pipeline declaration, two tools: DVC and Snakemake must see the same stages, commands, inputs,
outputs and params; Snakemake plans exactly what `dvc status` lists (plus what is downstream) for
every kind of change, on a fresh clone, with its own metadata present, and after `dvc repro`; after a
Snakemake run dvc.lock is up to date; a failing job costs no committed output; a profile leaves
params.yaml as it is.

Everything here goes through the real `dvc` and `snakemake` commands in a temporary git repository.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from bench.bench_staleness import (CHANGES, TINY, build, downstream, dvc_stale, matrix, param_change,
                                   planned_jobs, snakemake_plan, states)
from stages.core import provenance
from stages.pipeline import declaration as pipeline
from tests.conftest import ROOT, run

pytestmark = pytest.mark.e2e

TINY_FULL = {**yaml.safe_load((ROOT / "params.yaml").read_text()), **TINY}
FANOUT = [f"scaling_trials@{b}" for b in TINY["scaling"]["batch_sizes"]]
FAMILY_FANOUT = [f"family_trial@candidate{i}" for i in range(len(TINY["family"]["candidates"]))]
USES_WORKLOAD = {*FAMILY_FANOUT, "probe", "throughput", *FANOUT, "scaling", "select", "baseline"}


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


def snakemake_jobs(root: Path, *args: str) -> dict[str, dict]:
    """Jobs of a Snakemake dry run: name (fan-out as name@wildcard) -> input, output, shell."""
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
        jobs[name] = {"input": sorted(f for f in fields.get("input", "").split(", ") if f),
                      "output": sorted(f for f in fields.get("output", "").split(", ") if f),
                      "shell": shell.group(1) if shell else None}
    jobs.pop("all", None)
    return jobs


@pytest.fixture(scope="module")
def ran_project(tmp_path_factory) -> Path:
    """A temporary project with a user workload, run once by Snakemake (which records every job in
    dvc.lock) and committed."""
    return build(tmp_path_factory.mktemp("decl") / "ran")


@pytest.fixture(scope="module")
def clones(ran_project, tmp_path_factory) -> dict[str, Path]:
    """A fresh clone, the clone Snakemake ran in, and one where `dvc repro` ran last."""
    return states(ran_project, tmp_path_factory.mktemp("clones"))


def test_dvc_yaml_is_up_to_date_with_the_declaration():
    proc = run([sys.executable, "-m", "stages.pipeline", "--check"], ROOT, check=False)
    assert proc.returncode == 0, proc.stderr


def test_both_tools_see_the_same_stages_commands_inputs_and_outputs(ran_project):
    """Snakemake's rule for a job runs DVC's command, reads its code, and waits for the stamps of the
    jobs whose outputs DVC lists as its deps; its one output is the job's stamp."""
    dvc = dvc_view(ran_project)
    snake = snakemake_jobs(ran_project, "--forceall")
    assert set(dvc) == set(snake) == {s.name for s in pipeline.STAGES if not s.foreach} | set(FANOUT) | set(FAMILY_FANOUT)
    for name, d in dvc.items():
        s = snake[name]
        assert s["shell"].startswith(f"python -m stages.pipeline.record --skip-if-current {name} || "), name
        assert s["shell"].split(" || (", 1)[1].split(" 2> ")[0] == d["cmd"], name
        assert s["shell"].endswith(f"python -m stages.pipeline.record {name})"), name
        assert s["output"] == [str(provenance.stamp_path(name))], name
        stage = pipeline.stage(name.split("@")[0])
        assert d["params"] == sorted(pipeline.tracked_keys(stage, TINY_FULL)), name
        assert d["outs"] == sorted(o.path.replace(f"{{{stage.foreach[0]}}}", name.partition("@")[2])
                                   if stage.foreach else o.path for o in stage.outputs), name
        code = [p for p in s["input"] if not p.startswith(str(provenance.STAMP_DIR))]
        assert sorted(code) == sorted(dep for dep in d["deps"] if not dep.startswith("reports/")), name
        producers = {p.removeprefix(str(provenance.STAMP_DIR) + "/").removesuffix(".done").replace("/", "@")
                     for p in s["input"] if p.startswith(str(provenance.STAMP_DIR))}
        outputs_read = [dep for dep in d["deps"] if dep.startswith("reports/")]
        assert all(any(dep == o or o.startswith(dep + "/") for p in producers for o in dvc[p]["outs"])
                   for dep in outputs_read), name
        assert "userwl/model.py" in d["deps"] if name in USES_WORKLOAD else "userwl/model.py" not in d["deps"]
        assert not any(dep.endswith("char_lm.py") for dep in d["deps"]), name  # only the configured workload's code


def test_after_a_snakemake_run_dvc_status_is_clean_and_after_dvc_repro_snakemake_plans_nothing(clones):
    for state, root in clones.items():  # Snakemake ran last in two of them, dvc repro in the third
        assert dvc_stale(root) == set(), state
        assert snakemake_plan(root) == set(), state


def test_the_staleness_matrix_agrees_in_every_state(clones):
    """Every kind of change on a fresh clone, and one of each family (params, code, the family's
    candidates) with Snakemake's metadata present and after dvc repro ran last (15 cells): Snakemake plans exactly
    the jobs `dvc status` lists plus those downstream of them. bench/bench_staleness.py runs every cell."""
    ok, table = matrix({"fresh clone": clones["fresh clone"]})
    assert ok, table
    kinds = [c for c in CHANGES if c[0].startswith(("optimizer", "family", "user workload"))]
    ok, table = matrix({k: v for k, v in clones.items() if k != "fresh clone"}, kinds)
    assert ok, table


# One key of every other section, in a fresh clone: the stage that reads it and those downstream.
MORE_CHANGES = [
    ("runtime.seed", 1, "probe"), ("scaling.lr_points", 3, "scaling_trials@8"),
    ("select.objective", "resource", "select"), ("baseline.eval_every", 5, "baseline"),
]


@pytest.mark.parametrize("key, value, reader", MORE_CHANGES, ids=[k for k, _, _ in MORE_CHANGES])
def test_a_key_of_each_section_marks_the_same_jobs_in_both_tools(clones, key, value, reader):
    root = clones["fresh clone"]
    with param_change(*key.split("."), value)(root):
        stale = dvc_stale(root)
        assert reader in stale
        assert snakemake_plan(root) == downstream(root, stale)


def test_a_job_that_fails_keeps_the_committed_outputs_and_stays_stale(clones):
    """Snakemake deletes a job's declared outputs before it runs: they are stamps, so a failing job
    costs no committed result, and dvc.lock still lists the job, so the next run plans it again."""
    root = clones["fresh clone"]
    outputs = sorted((root / "reports/select").iterdir())
    before = {p: p.read_bytes() for p in outputs}
    stage = root / "stages/select/stage.py"
    original = stage.read_text()
    stage.write_text(original.replace("def main(", "def main(*_):\n    raise RuntimeError('boom')\n\n\ndef _old_main(", 1))
    try:
        proc = run([sys.executable, "-m", "snakemake", "-c1"], root, check=False)
        assert proc.returncode != 0 and "boom" in proc.stderr + proc.stdout
        assert {p: p.read_bytes() for p in outputs} == before
        assert "select" in dvc_stale(root)
        assert "select" in snakemake_plan(root)
    finally:
        stage.write_text(original)
    run([sys.executable, "-m", "snakemake", "-c2"], root)  # the edit undone: select runs again and records itself
    assert dvc_stale(root) == set() and snakemake_plan(root) == set()


def test_a_profile_changes_no_params_yaml_and_both_tools_plan_its_stages(clones):
    """`python -m stages.pipeline --profile NAME` leaves params.yaml byte for byte; DVC tracks the
    profile's keys (so only the stages reading them are stale) and Snakemake plans the same."""
    root = clones["fresh clone"]
    (root / "profiles/tiny").mkdir()
    (root / "profiles/tiny/params.yaml").write_text("select:\n  objective: resource\n")
    params_before = (root / "params.yaml").read_bytes()
    try:
        run([sys.executable, "-m", "stages.pipeline", "--profile", "tiny"], root)
        assert (root / "params.yaml").read_bytes() == params_before
        assert dvc_stale(root) == {"select"}
        assert snakemake_plan(root) == {"select", "baseline", "report"}
        run([sys.executable, "-m", "stages.pipeline", "--check"], root)  # the profile is what dvc.yaml records
        proc = run([sys.executable, "-m", "stages"], root)  # the stages read params.yaml + the profile
        assert "objective: resource" in proc.stdout
    finally:
        run([sys.executable, "-m", "stages.pipeline", "--no-profile"], root)
        shutil.rmtree(root / "profiles/tiny")
    assert dvc_stale(root) == set()


def test_a_render_check_that_passed_is_remembered_until_one_of_its_inputs_changes(tmp_path):
    """Every stage process checks that dvc.yaml is what params.yaml renders; a pass is remembered in
    .kickoff/cache/rendered, and any change to what the render reads checks afresh."""
    from stages.core.errors import ConfigError
    from stages.pipeline.declaration import RENDER_CHECKED, check_rendered

    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    check_rendered(tmp_path)
    assert (tmp_path / RENDER_CHECKED).is_file()
    saved = (tmp_path / "params.yaml").read_text()
    raw = yaml.safe_load(saved)
    raw["optimizer"]["name"] = "adam"  # decides which optimizer keys the stages track
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError, match="dvc.yaml is out of date"):
        check_rendered(tmp_path)
    (tmp_path / "params.yaml").write_text(saved)
    check_rendered(tmp_path)
    dvc_yaml = (tmp_path / "dvc.yaml").read_text()
    (tmp_path / "dvc.yaml").write_text(dvc_yaml.replace("- scaling.give_up_margin\n", "", 1))  # a hand edit
    with pytest.raises(ConfigError, match="dvc.yaml is out of date"):
        check_rendered(tmp_path)


# ---------------------------------------------------------------------------- forced jobs, --config, storage

def dvc_would_run(root: Path, *args: str) -> set[str]:
    """The stages `dvc repro --dry ARGS` would run."""
    return set(re.findall(r"^Running stage '([^']+)'", run(["dvc", "repro", "--dry", *args], root).stdout, re.M))


def manifest_times(root: Path) -> dict[str, int]:
    """Job -> its manifest's mtime (each job writes its manifest last, and only when its stage ran)."""
    from stages.core import outputs as out

    params = pipeline.effective_params(yaml.safe_load((root / "params.yaml").read_text()), root)
    times = {}
    for s in pipeline.STAGES:
        manifest = out.MANIFESTS[s.cmd]
        for item in pipeline.items_of(s, params) if s.foreach else [None]:
            path = root / (manifest.at(**{s.foreach[0]: item}) if s.foreach else manifest.path)
            times[f"{s.name}@{item}" if s.foreach else s.name] = path.stat().st_mtime_ns
    return times


def ran_stages(root: Path, *args: str) -> tuple[set[str], set[str]]:
    """(jobs Snakemake planned, jobs whose stage ran) for `snakemake -c1 ARGS`."""
    before = manifest_times(root)
    proc = run([sys.executable, "-m", "snakemake", "-c1", *args], root)
    after = manifest_times(root)
    return planned_jobs(proc.stdout + proc.stderr), {job for job, t in after.items() if t != before[job]}


def test_snakemake_forced_jobs_re_measure_what_dvc_repro_force_would_and_record_it(ran_project, tmp_path):
    """--forceall, -F, -f and -R plan and re-measure the jobs `dvc repro --force` (with a target, -s)
    would, instead of skipping them as current; each forced job records itself in dvc.lock."""
    root = tmp_path / "clone"
    run(["git", "clone", "-q", str(ran_project), str(root)], tmp_path)
    assert snakemake_plan(root, "--forceall") == dvc_would_run(root, "--force") == set(manifest_times(root))
    assert snakemake_plan(root, "-F", "family") == dvc_would_run(root, "--force", "family") == {*FAMILY_FANOUT, "family"}

    # -f: the target alone, re-measured (throughput's timings) and recorded: dvc status finds it current
    planned, ran = ran_stages(root, "-f", "throughput")
    assert planned == ran == dvc_would_run(root, "--force", "-s", "throughput") == {"throughput"}
    assert "throughput" not in dvc_stale(root)

    # -R: the rule's jobs re-measured, then each job downstream runs only if what it reads changed, as
    # `dvc repro` would after them: select's decision is the same, so baseline and report are skipped
    run(["git", "checkout", "-q", "."], root)  # throughput's committed results back
    planned, ran = ran_stages(root, "-R", "select")
    assert planned == {"select", "baseline", "report"} and ran == {"select"}
    assert dvc_stale(root) == set()


def test_snakemake_config_on_the_command_line_is_refused_with_one_line(ran_project, tmp_path):
    """The stages read params.yaml, never Snakemake's config: --config and another --configfile would be
    silently ignored, so they stop the run before anything is planned, saying how to change a setting."""
    other = tmp_path / "other.yaml"
    other.write_text("select:\n  objective: resource\n")
    for args in (["--config", "select={objective: resource}"], ["--configfile", str(other)]):
        proc = run([sys.executable, "-m", "snakemake", "-n", *args], ran_project, check=False)
        assert proc.returncode != 0
        line = next(ln.strip() for ln in (proc.stdout + proc.stderr).splitlines()
                    if ln.strip().startswith("snakemake --config"))
        assert "objective" in line or str(other) in line
        assert "params.yaml" in line and "dvc exp run -S" in line
    assert dvc_stale(ran_project) == set()


def test_the_kubernetes_profile_refuses_at_start_naming_the_shared_volume(ran_project):
    """Snakemake's Kubernetes executor moves files only through object storage, which would carry each
    job's stamp and none of the stages' files or dvc.lock: refused before any job, with one line."""
    pytest.importorskip("snakemake_executor_plugin_kubernetes", reason="pip install -e '.[cluster]'")
    proc = run([sys.executable, "-m", "snakemake", "--profile", "profiles/kubernetes"], ran_project, check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    line = next(ln.strip() for ln in text.splitlines() if ln.strip().startswith("default-storage-provider"))
    assert "received 's3'" in line and "PersistentVolumeClaim" in line and "project folder" in line
    assert "s3://" not in text  # refused before Snakemake looked at the bucket
