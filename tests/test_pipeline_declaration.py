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

from bench.bench_staleness import (CHANGES, OUTSIDE, PROFILE, TINY, build, cell, downstream, dvc_stale, matrix,
                                   outside_project, param_change, planned_jobs, restored, snakemake_plan, states)
from stages.core import provenance
from stages.pipeline import declaration as pipeline
from tests.conftest import ROOT, run, write_params

pytestmark = pytest.mark.e2e

EFFECTIVE = "reports/settings/effective.yaml"  # the settings in force, where every stage tracks its keys
TINY_FULL = {**yaml.safe_load((ROOT / "params.yaml").read_text()), **TINY}
WAVE1, WAVE2 = pipeline.wave_sizes(TINY["scaling"]["batch_sizes"])
FANOUT = ([f"scaling_wave1@{b}" for b in WAVE1] + [f"scaling_wave2@{b}" for b in WAVE2]
          + [f"scaling_trials@{b}" for b in TINY["scaling"]["batch_sizes"]])
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
        for user_file in ("userwl/model.py", "userwl/helpers.py", OUTSIDE):  # listed, imported, outside the clone
            assert (user_file in d["deps"]) == (name in USES_WORKLOAD), (name, user_file)
        assert not any(dep.endswith("char_lm.py") for dep in d["deps"]), name  # only the configured workload's code


def test_after_a_snakemake_run_dvc_status_is_clean_and_after_dvc_repro_snakemake_plans_nothing(clones):
    for state, root in clones.items():  # Snakemake ran last in two of them, dvc repro in the third
        assert dvc_stale(root) == set(), state
        assert snakemake_plan(root) == set(), state


def test_the_staleness_matrix_agrees_in_every_state(clones):
    """Every kind of change on a fresh clone, and one of each family (params, code -- the listed source and
    the helper it imports --, the family's candidates) with Snakemake's metadata present and after dvc
    repro ran last (19 cells): Snakemake plans exactly the jobs `dvc status` lists plus those downstream of
    them. bench/bench_staleness.py runs every cell in every state."""
    ok, table = matrix({"fresh clone": clones["fresh clone"]})
    assert ok, table
    kinds = [c for c in CHANGES if c[0].startswith(("optimizer", "family", "user workload"))
             and "outside the clone" not in c[0]]  # the same mechanism as the helper: once, on the fresh clone
    ok, table = matrix({k: v for k, v in clones.items() if k != "fresh clone"}, kinds)
    assert ok, table


# One key of every other section, in a fresh clone: the stage that reads it and those downstream.
MORE_CHANGES = [
    ("runtime.seed", 1, "probe"), ("scaling.lr_points", 3, f"scaling_wave1@{WAVE1[0]}"),
    ("select.objective", "resource", "select"), ("baseline.eval_every", 5, "baseline"),
]


@pytest.mark.parametrize("key, value, reader", MORE_CHANGES, ids=[k for k, _, _ in MORE_CHANGES])
def test_a_key_of_each_section_marks_the_same_jobs_in_both_tools(clones, key, value, reader):
    agree, text = cell(clones["fresh clone"], (key, param_change(*key.split("."), value), reader))
    assert agree, text


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
    """`python -m stages.pipeline --profile NAME` leaves params.yaml byte for byte; the stages track their
    keys in the settings in force, so only the stages whose values the profile changes are stale: the render
    brings the settings in force up to date, as Snakemake does before it plans and `dvc repro` by running the
    settings stage first, so `dvc status` lists them at once."""
    root = clones["fresh clone"]
    (root / "profiles/tiny").mkdir()
    (root / "profiles/tiny/params.yaml").write_text("select:\n  objective: resource\n")
    params_before = (root / "params.yaml").read_bytes()
    readers = jobs_reading("select.objective")  # select, and which sizes contend in the study
    try:
        with restored(root):
            run([sys.executable, "-m", "stages.pipeline", "--add-profile", "tiny"], root)  # on top of ci
            assert (root / "params.yaml").read_bytes() == params_before
            assert dvc_stale(root) == {"settings", *readers}  # the effective file holds the profile's values
            proc = run([sys.executable, "-m", "snakemake", "-n"], root)
            said = (f"kickoff: {PROFILE}, profiles/tiny/params.yaml override 2 params.yaml keys: probe.steps 1 -> 2 "
                    f"({PROFILE}); select.objective time -> resource (profiles/tiny/params.yaml) (")
            assert said in proc.stderr, proc.stderr  # where Snakemake starts, which keys the profiles override
            assert snakemake_plan(root) == downstream(root, {"settings", *readers})
            assert dvc_stale(root) == {"settings", *readers}
            run([sys.executable, "-m", "stages.pipeline", "--check"], root)  # the profile is what dvc.yaml records
            proc = run([sys.executable, "-m", "stages"], root)  # the stages read params.yaml + the profiles
            assert "objective: resource" in proc.stdout and proc.stderr.startswith(said), proc.stderr
    finally:
        shutil.rmtree(root / "profiles/tiny")  # first: every profile's file is a dependency of the settings stage
        run([sys.executable, "-m", "stages.pipeline", "--profile", "ci"], root)
    assert dvc_stale(root) == set()


def test_switching_to_a_profile_already_in_the_project_reruns_what_it_changes_under_dvc_repro(clones):
    """The settings stage depends on every profile file, active or not, so turning one that is already there
    off (or on) changes none of its dependencies: the render brings the settings in force up to date, so
    `dvc status` lists the stages whose values change and `dvc repro` runs them with those values -- rather
    than skip the settings stage and stop at the first stage that reads the settings it left behind."""
    root = clones["fresh clone"]
    readers = jobs_reading("probe.steps")  # the ci profile sets probe.steps 2; params.yaml says 1
    try:
        proc = run([sys.executable, "-m", "stages.pipeline", "--no-profile"], root)
        assert f"brought {EFFECTIVE} up to date with the active profiles" in proc.stderr, proc.stderr
        assert dvc_stale(root) == {"settings", *readers}
        assert snakemake_plan(root) == downstream(root, {"settings", *readers})
        proc = run(["dvc", "repro", "probe"], root)
        assert _dvc_ran(proc.stdout) == {"settings", *readers}, proc.stdout
        assert yaml.safe_load((root / EFFECTIVE).read_text())["probe"]["steps"] == 1
    finally:
        run([sys.executable, "-m", "stages.pipeline", "--profile", "ci"], root)
        run(["git", "checkout", "--", "."], root)  # the committed results and dvc.lock, as the other tests expect
    assert dvc_stale(root) == set()


def _dvc_ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def jobs_reading(key: str) -> set[str]:
    """The jobs whose tracked settings include `key` (TINY's pipeline)."""
    return {f"{s.name}@{item}" if s.foreach else s.name for s in pipeline.STAGES if pipeline.present(s, TINY_FULL)
            and key in pipeline.tracked_keys(s, TINY_FULL) for item in (pipeline.items_of(s, TINY_FULL) if s.foreach else [None])}


def reran_what_reads(root: Path, output: str, key: str) -> None:
    """`dvc exp run` on `key` ran the settings stage and every job that reads the key, and nothing but what
    follows from them (a downstream job whose inputs came out the same is skipped)."""
    ran, readers = _dvc_ran(output), jobs_reading(key)
    assert {"settings", *readers} <= ran <= downstream(root, {"settings", *readers}), (key, sorted(ran), sorted(readers))


def test_experiments_on_profile_keys_rerun_what_they_change_and_an_applied_one_commits_clean(clones):
    """Issue 28 parts 1 and 3, through the real `dvc exp run`: `-S` on a new key of the active profile reruns
    the stages that read it; `-S` on a params.yaml key the profile overrides reruns nothing, saying in one line
    which file holds the value in force; an experiment applied and committed, after the documented regenerator,
    keeps params.yaml's generated comments and leaves both tools with nothing to do, in a fresh clone too."""
    root = clones["fresh clone"]
    head = run(["git", "rev-parse", "HEAD"], root).stdout.strip()
    try:
        proc = run(["dvc", "exp", "run", "-S", f"{PROFILE}:+select.objective=resource"], root)
        reran_what_reads(root, proc.stdout, "select.objective")
        assert yaml.safe_load((root / "reports/select/initial_config.yaml").read_text())["objective"] == "resource"
        assert snakemake_plan(root) == set() and dvc_stale(root) == set()  # after the other tool ran
        run(["git", "checkout", "-q", "--force", head], root)

        proc = run(["dvc", "exp", "run", "-S", "probe.steps=5"], root)  # the ci profile sets probe.steps: 2
        assert _dvc_ran(proc.stdout) == {"settings"}, proc.stdout
        said = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("kickoff: probe.steps:")]
        assert said == [f"kickoff: probe.steps: params.yaml now says 5 (was 1), but {PROFILE} sets 2, the value in force: "
                        f"nothing reruns for this edit (change it in {PROFILE}, or run params.yaml alone: "
                        f"`python -m stages.pipeline --no-profile`)"], proc.stdout + proc.stderr
        run(["git", "checkout", "-q", "--force", head], root)

        # committed: DVC re-serialised params.yaml (comments gone); one command restores them
        proc = run(["dvc", "exp", "run", "-n", "cost", "-S", "select.device_cost_per_hour=1.5"], root)
        reran_what_reads(root, proc.stdout, "select.device_cost_per_hour")
        run(["git", "checkout", "-q", "--force", head], root)
        run(["dvc", "exp", "apply", "cost"], root)
        assert "#" not in (root / "params.yaml").read_text()  # what DVC wrote
        run([sys.executable, "-m", "stages.pipeline.docs"], root)  # docs/team.md: the one command
        assert dvc_stale(root) == {"settings"}  # params.yaml's bytes changed, not its values
        assert _dvc_ran(run(["dvc", "repro"], root).stdout) == {"settings"}  # the values did not change: nothing else
        run(["git", "add", "-A"], root)
        run(["git", "commit", "-q", "-m", "a device cost"], root)
        from stages.pipeline import docs
        assert docs.params_with_comments((root / "params.yaml").read_text()) == (root / "params.yaml").read_text()
        assert yaml.safe_load((root / "params.yaml").read_text())["select"]["device_cost_per_hour"] == 1.5
        fresh = root.parent / "committed-experiment"
        run(["git", "clone", "-q", str(root), str(fresh)], root.parent)
        for clone in (root, fresh):
            assert dvc_stale(clone) == set() and snakemake_plan(clone) == set(), clone
    finally:
        run(["git", "checkout", "-q", "--force", head], root)
        run(["git", "reset", "-q", "--hard", head], root)
        shutil.rmtree(root.parent / "committed-experiment", ignore_errors=True)
    assert dvc_stale(root) == set()


@pytest.mark.parametrize("edit, dvc_says, snakemake_says", [
    (lambda text: text + "scalling:\n  max_steps: 100\n",
     "params.yaml + profiles/ci/params.yaml: scalling: unknown section; allowed sections: workload, family",
     "params.yaml + profiles/ci/params.yaml: scalling: unknown section; allowed sections: workload, family"),
    (lambda text: text.replace("  max_steps: 200\n", "  max_steps: 200\n  max_steps: 150\n", 1),
     'found duplicate key "max_steps"',  # DVC reads params.yaml itself (for ${...} in dvc.yaml) and refuses first
     "params.yaml: family.max_steps: given twice (lines"),
], ids=["misspelt-section", "duplicate-key"])
def test_a_misspelt_section_and_a_duplicate_key_are_refused_by_dvc_repro_as_by_snakemake(clones, edit, dvc_says,
                                                                                          snakemake_says):
    root = clones["fresh clone"]
    before = (root / "params.yaml").read_text()
    try:
        (root / "params.yaml").write_text(edit(before))
        dvc = run(["dvc", "repro"], root, check=False)
        assert dvc.returncode != 0 and dvc_says in dvc.stdout + dvc.stderr, dvc.stdout + dvc.stderr
        assert not _dvc_ran(dvc.stdout) - {"settings"}  # nothing after the settings stage ran
        snake = run([sys.executable, "-m", "snakemake", "-n"], root, check=False)
        assert snake.returncode != 0 and snakemake_says in snake.stdout + snake.stderr, snake.stdout + snake.stderr
    finally:
        (root / "params.yaml").write_text(before)
    assert dvc_stale(root) == set()


def test_a_render_after_a_size_and_a_candidate_leave_removes_their_files_and_lock_entries(clones):
    """A batch size and a family candidate dropped from params.yaml: `python -m stages` says dvc.yaml must be
    re-rendered (the waves list their sizes); `python -m stages.pipeline` names the jobs that left and
    removes their files and dvc.lock entries; then both tools plan the same rerun (the stages that read
    the lists) and DVC reads the edited lock. The smallest size leaves, so the others keep their waves."""
    root = clones["fresh clone"]
    small = min(TINY["scaling"]["batch_sizes"])
    kept = sorted(set(TINY["scaling"]["batch_sizes"]) - {small})
    assert pipeline.wave_sizes(kept)[0] == [b for b in WAVE1 if b != small]  # the sizes that stay keep their wave
    left = [f"scaling_wave1@{small}", f"scaling_trials@{small}", "family_trial@candidate1"]
    gone = [f"reports/scaling/trials/bs_{small}.csv", f"reports/scaling/trials/bs_{small}_curves.csv",
            f"reports/scaling/trials/bs_{small}.manifest.json", f"reports/scaling/wave1/bs_{small}.csv",
            "reports/family/trials/candidate1.csv", "reports/family/trials/candidate1.manifest.json"]
    assert all((root / f).is_file() for f in gone)
    try:
        write_params(root, {"scaling": {"batch_sizes": kept}, "family": {"candidates": [{"dim": 4}]}})
        proc = run([sys.executable, "-m", "stages"], root, check=False)
        assert proc.returncode == 2 and "scaling.batch_sizes" in proc.stderr and "`python -m stages.pipeline`" in proc.stderr
        proc = run([sys.executable, "-m", "stages.pipeline"], root)
        assert all(job in proc.stderr for job in left), proc.stderr
        lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
        assert {f"scaling_trials@{b}" for b in kept} | {"family_trial@candidate0"} <= set(lock)
        assert not set(left) & set(lock)
        assert not any((root / f).exists() for f in gone)
        plan = snakemake_plan(root)  # first: it brings the settings in force up to date, as `dvc repro` would
        stale = dvc_stale(root)
        assert {"scaling", "family"} <= stale and not any(job.endswith((f"@{small}", "@candidate1")) for job in stale)
        assert plan == downstream(root, stale)
        assert "no longer declared" not in run([sys.executable, "-m", "stages"], root).stderr
    finally:
        run(["git", "checkout", "-q", "-f", "HEAD"], root)
    assert dvc_stale(root) == set()


# A results set made with other settings than those in force, read by a stage run by hand: the momentum
# the rates were tuned at, the study's step cap, its batch sizes (what a copied reports/scaling differs in).
# The first file select reads that the edit makes stale: probe's (it tracks the momentum: optimizer state
# size), scaling's.
SOURCE = f"params.yaml + {PROFILE}"  # the fresh clone's settings: params.yaml with its team profile
OTHER_SETTINGS = [("optimizer.momentum", 0.5, "0.9", "reports/probe/metrics.json"),
                  ("scaling.max_steps", 150, "200", "reports/scaling/metrics.json"),
                  ("scaling.batch_sizes", [8, 16], "[4, 8, 16]", "reports/scaling/metrics.json")]


@pytest.mark.parametrize("key, value, made, file", OTHER_SETTINGS, ids=[k for k, *_ in OTHER_SETTINGS])
def test_results_made_with_other_settings_are_refused_by_a_stage_run_by_hand(clones, key, value, made, file):
    """`python -m stages.select` after a settings edit (the settings stage run: it is what tells the tools),
    without rerunning what the edit affects: one line naming the key, the value the results were made with,
    the value in force, and the command that remakes them; nothing written."""
    root = clones["fresh clone"]
    section, name = key.split(".")
    try:
        write_params(root, {section: {name: value}})
        if key == "scaling.batch_sizes":  # the waves list their sizes: dvc.yaml is re-rendered first
            run([sys.executable, "-m", "stages.pipeline"], root)
        run([sys.executable, "-m", "stages.settings"], root)
        before = {p: p.read_bytes() for p in (root / "reports").rglob("*") if p.is_file()}
        proc = run([sys.executable, "-m", "stages.select"], root, check=False)
        assert proc.returncode == 2, proc.stderr[-2000:]
        (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("kickoff: error:")]
        shown = json.dumps(value) if isinstance(value, list) else str(value)
        assert line.startswith(f"kickoff: error: {file}: was made with {key} {made}, and the settings in force now "
                               f"({SOURCE}) have {key} {shown}; rerun the stage that writes it (`python -m stages."), line
        assert {p: p.read_bytes() for p in (root / "reports").rglob("*") if p.is_file()} == before
        if key == "optimizer.momentum":  # the report notes it as a problem (once: each run costs seconds)
            run([sys.executable, "-m", "stages.report"], root)
            report = (root / "reports/REPORT.md").read_text()
            assert "**Incomplete report:**" in report and f"`{file}` was made with {key} {made}, and the settings " \
                   f"in force now ({SOURCE}) have {key} {shown} (written by stage `" in report
    finally:
        run(["git", "checkout", "-q", "-f", "HEAD"], root)


def test_a_settings_edit_while_a_job_runs_is_refused_at_its_end_and_dvc_lock_keeps_what_ran(clones):
    """scaling.max_steps 200 -> 190, then, while the first scaling job runs, 190 -> 210 (the user's workload
    writes it as the job builds it: tests' bench/bench_staleness.py USER_HELPER). The job is refused at
    its end, through `dvc repro` and through Snakemake: nothing written, and dvc.lock does not claim
    either value -- it keeps the entries of what last ran, with 200 (the settings stage's own entry and
    files say 190: it ran, with 190, before the job started)."""
    root = clones["fresh clone"]

    def lock_entries() -> dict:
        entries = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
        return {name: entry for name, entry in entries.items() if name != "settings"}

    def results() -> dict:
        return {p: p.read_bytes() for p in (root / "reports").rglob("*")
                if p.is_file() and not p.is_relative_to(root / "reports/settings")}

    lock, before = lock_entries(), results()
    try:
        for tool in (["dvc", "repro"], [sys.executable, "-m", "snakemake", "-c1"]):
            write_params(root, {"scaling": {"max_steps": 190}})
            proc = run(tool, root, check=False, env={"EDIT_WHILE_RUNNING": "210"})
            assert proc.returncode != 0, tool
            assert re.search(r"kickoff: error: scaling.max_steps: was 190 when `scaling \w+ --batch-size \d+` started "
                             r"and is 210 now in params.yaml \+ profiles/ci/params.yaml \(edited while it ran\); nothing was written",
                             proc.stderr), (tool, [ln for ln in proc.stderr.splitlines() if "kickoff: error" in ln])
            assert lock_entries() == lock, tool
            assert results() == before, tool
    finally:
        run(["git", "checkout", "-q", "-f", "HEAD"], root)
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
    (tmp_path / "dvc.yaml").write_text(dvc_yaml.replace("- scaling.prune_margin\n", "", 1))  # a hand edit
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
    outside_project(root)  # the user's project beside the clone, as a teammate has it
    assert snakemake_plan(root, "--forceall") == dvc_would_run(root, "--force") == set(manifest_times(root))
    forced = dvc_would_run(root, "--force", "family")  # family and everything it reads from: the settings, its trials
    assert forced == {"settings", *FAMILY_FANOUT, "family"}
    # the settings job measures nothing (it writes params.yaml + profiles in force) and the Snakefile brings it
    # up to date before it plans, so no rule waits on its stamp: -F forces what it would re-measure, the rest
    assert snakemake_plan(root, "-F", "family") == forced - {"settings"}

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
