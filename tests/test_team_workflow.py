"""The team workflow, end to end with the real git, dvc and snakemake in a temporary repository:
two commits that differ in the model width (a tag pinned as the baseline, a branch compared with
it) through `dvc params/metrics/plots diff`, the pull-request review script, experiments with
`dvc exp run -S` and `dvc exp show`, the documented pin of a baseline, `snakemake --lint`, the cluster profiles, and
the CI workflow against the documentation (README.md, docs/). The review's tables alone: tests/test_review.py.

The repository is built once per module (two `dvc repro` on the small configuration) and shared;
the tests that change its state (experiments) come last and put it back.
"""
from __future__ import annotations

import csv
import io
import json
import re
import shlex
import shutil
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from stages.pipeline import declaration as pipeline
from stages.core.config import validate
from stages.pipeline.overrides import merge, set_param_args
from tests.conftest import ROOT, make_project, run, write_params

SMALL = yaml.safe_load((ROOT / "profiles/small/params.yaml").read_text())
EFFECTIVE = "reports/settings/effective.yaml"  # the settings in force, where every stage tracks its keys
# The team repository's own small profile: quicker than the project's (the mechanics under test, not B_crit).
QUICK = {**SMALL, "family": {"max_steps": 300},
         "scaling": {**SMALL["scaling"], "batch_sizes": [16, 64, 256], "max_steps": 300, "seeds": 0, "lr_refine_trials": 2},
         "probe": {**SMALL["probe"], "batch_sizes": [16, 64, 256]}}
EXTRA_FILES = ("profiles", "envs", ".ci", ".github")  # the team workflow's files, whatever conftest copies
TAG, BRANCH = "baseline-v1", "wider"
WORKFLOW = ROOT / ".github/workflows/pr-review.yml"


def team_page() -> str:
    return (ROOT / "docs/team.md").read_text()


def documented_commands() -> list[str]:
    """Every command line in the code blocks of README.md and docs/*.md, comments stripped."""
    text = "\n".join(path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def stages_run(output: str) -> tuple[set[str], set[str]]:
    """(stages DVC ran, stages it skipped as unchanged) from `dvc repro` / `dvc exp run` output."""
    return (set(re.findall(r"Running stage '([^']+)'", output)),
            set(re.findall(r"Stage '([^']+)' didn't change, skipping", output)))


def all_stage_names(batch_sizes: list[int]) -> set[str]:
    """Every job of the team's pipeline (the family stage's candidate jobs are off there)."""
    params = {"scaling": {"batch_sizes": batch_sizes, "adaptive": True}}
    return {f"{s.name}@{b}" if s.foreach else s.name for s in pipeline.STAGES if not s.indexed
            for b in (pipeline.items_of(s, params) if s.foreach else [None])}


# ---------------------------------------------------------------------------- fast checks (no pipeline run)

def test_small_config_is_valid_and_keeps_the_branchs_workload_and_optimizer():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    validate(merge(params, SMALL), "params.yaml + profiles/small/params.yaml")
    assert not {"workload", "optimizer"} & set(SMALL), "a PR changing the model must still show in the review"
    assert len(SMALL["scaling"]["batch_sizes"]) >= 3, "B_crit needs three batch sizes"
    assert SMALL["scaling"]["seeds"] >= 1, "two runs per size, or no interval has a width and the review cannot tell"


def test_overrides_are_one_shell_word_each_and_numbers_survive_yaml_1_1():
    args = set_param_args({"scaling": {"lr_min": 1e-05, "batch_sizes": [16, 64]}, "probe": {"batch_sizes": None,
                                                                                        "bisect": False}})
    assert args == ["--set-param=scaling.lr_min=1.0e-05", "--set-param=scaling.batch_sizes=[16,64]",
                    "--set-param=probe.batch_sizes=null", "--set-param=probe.bisect=false"]
    assert isinstance(yaml.safe_load("x: 1.0e-05")["x"], float)  # what Snakemake's YAML 1.1 reads back


def test_conda_env_mirrors_pyproject_runtime_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "envs/kickoff.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    strip = lambda reqs: {r.split("#")[0].strip() for r in reqs}  # noqa: E731
    tools = {r for r in strip(project) if r.startswith(("dvc", "snakemake"))}
    assert strip(pip) == strip(project) - tools
    assert any(str(d).startswith("python>=3.11") for d in env["dependencies"])


def test_cluster_profiles_place_the_rules_that_train_on_gpus():
    gpu_rules = {s.name for s in pipeline.STAGES if s.resources.get("gpu", 0) > 0}
    assert gpu_rules and all({"mem_mb", "runtime"} <= set(s.resources) for s in pipeline.STAGES)
    assert all("gpu" not in s.resources or s.resources["gpu"] > 0 for s in pipeline.STAGES)  # see Stage.resources
    for name, key, value in (("slurm", "slurm_partition", "gpu"), ("kubernetes", "gpu_manufacturer", "nvidia")):
        profile = yaml.safe_load((ROOT / f"profiles/{name}/config.yaml").read_text())
        assert profile["executor"] == name
        per_rule = profile["set-resources"]
        assert {r for r, res in per_rule.items() if res.get(key) == value} == gpu_rules, name


def test_ci_workflow_is_valid_and_runs_the_documented_commands():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert "pull_request" in (workflow.get("on") or workflow.get(True))  # YAML 1.1 reads `on` as True
    assert workflow["permissions"]["pull-requests"] == "write"
    steps = workflow["jobs"]["review"]["steps"]
    uses = [s["uses"].split("@")[0] for s in steps if "uses" in s]
    assert "actions/upload-artifact" in uses and not any("cml" in u.lower() for u in uses)
    runs = "\n".join(s["run"] for s in steps if "run" in s)
    assert "cml" not in runs.lower() and "gh pr comment" in runs and "kickoff-pr-review" in runs

    script = (ROOT / ".ci/pr-review").read_text()
    assert script.splitlines()[0] == "#!/usr/bin/env bash" and (ROOT / ".ci/pr-review").stat().st_mode & 0o111
    documented = documented_commands()
    section = team_page()
    # the install and review commands the workflow runs are documented
    for line in (ln.strip() for ln in runs.splitlines()):
        if line.startswith("make "):
            assert line in documented, line
        if line.startswith(".ci/pr-review"):
            assert any(d.startswith(".ci/pr-review ") for d in documented), line
    # every dvc / python -m subcommand the review script runs is documented on the team page
    commands = re.findall(r"^\s*(?:\{ )?((?:dvc (?:exp run|params diff|metrics diff|plots diff))|python -m stages\.\w+)",
                          script, flags=re.M)
    assert {"dvc exp run", "dvc params diff", "dvc metrics diff", "dvc plots diff"} <= set(commands)
    for command in set(commands):
        assert command in section, f"{command!r} (run by .ci/pr-review) is not in docs/team.md"
    assert "python -m stages.pipeline --profile small" in documented
    assert "python -m stages.pipeline --add-profile small" in script


# ---------------------------------------------------------------------------- the shared repository

@pytest.fixture(scope="module")
def team(tmp_path_factory):
    # The branch below changes the model's width in workload.kwargs; with the family stage on, the
    # width would be the family's choice (a team changes family.candidates instead): it is off here.
    # The team works on the small profile, applied on top of params.yaml as docs/team.md says, with a
    # profile of its own that turns the family stage off: params.yaml stays the project's, byte for byte.
    root = make_project(tmp_path_factory.mktemp("team") / "kickoff", commit=False)
    for name in EXTRA_FILES:  # conftest may copy some of them already
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                        dirs_exist_ok=True)
    (root / "profiles/small/params.yaml").write_text(yaml.safe_dump(QUICK, sort_keys=False))
    (root / "profiles/team").mkdir()
    (root / "profiles/team/params.yaml").write_text("family:\n  candidates: null\n")
    run([sys.executable, "-m", "stages.pipeline", "--profile", "small", "--profile", "team"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "kickoff on the small configuration"], root)

    first = run(["dvc", "repro"], root)
    run("git add -A && git commit -q -m 'results, width 64'", root)
    # committed after the profile flow: params.yaml as it was, its generated comments and dvc.yaml current
    assert (root / "params.yaml").read_bytes() == (ROOT / "params.yaml").read_bytes()
    shutil.copytree(ROOT / "docs", root / "docs")
    run([sys.executable, "-m", "stages.pipeline.docs", "--check", "--root", str(root)], root)
    run([sys.executable, "-m", "stages.pipeline", "--check"], root)
    shutil.rmtree(root / "docs")
    run(["git", "tag", "-a", TAG, "-m", "kickoff baseline"], root)  # as docs/team.md: the pinned baseline

    run(["git", "checkout", "-q", "-b", BRANCH], root)
    kwargs = yaml.safe_load((root / "params.yaml").read_text())["workload"]["kwargs"]
    old_width = kwargs["hidden"]
    write_params(root, {"workload": {"kwargs": {**kwargs, "hidden": [32]}}})
    second = run(["dvc", "repro"], root)
    run("git add -A && git commit -q -m 'width 32'", root)
    return SimpleNamespace(root=root, first=first.stdout, second=second.stdout, old_width=old_width, new_width=[32])


@pytest.mark.e2e
def test_first_run_runs_every_stage_and_the_width_change_reruns_them_all(team):
    names = all_stage_names(QUICK["scaling"]["batch_sizes"])
    assert stages_run(team.first)[0] == names
    assert stages_run(team.second)[0] == names  # every stage builds the model
    assert team.old_width != team.new_width


@pytest.mark.e2e
def test_params_diff_between_the_two_commits_is_exactly_the_width(team):
    """params.yaml as written, and the settings in force the stages track (reports/settings/effective.yaml)."""
    diff = json.loads(run(["dvc", "params", "diff", TAG, BRANCH, "--json"], team.root).stdout)
    assert sorted(diff) == sorted(["params.yaml", EFFECTIVE])
    for path in diff:
        assert list(diff[path]) == ["workload.kwargs.hidden"], path
        change = diff[path]["workload.kwargs.hidden"]
        assert yaml.safe_load(str(change["old"])) == team.old_width and yaml.safe_load(str(change["new"])) == [32], diff


@pytest.mark.e2e
def test_metrics_diff_shows_the_changed_results_of_both_revisions(team):
    diff = json.loads(run(["dvc", "metrics", "diff", TAG, BRANCH, "--json"], team.root).stdout)
    baseline = diff["reports/baseline/metrics.json"]
    metric = json.loads((team.root / "reports/baseline/metrics.json").read_text())["target_metric"]
    assert baseline[metric]["old"] != baseline[metric]["new"]  # another model, another result
    assert {"reports/probe/metrics.json", "reports/scaling/metrics.json"} <= set(diff)
    md = run(["dvc", "metrics", "diff", TAG, BRANCH, "--md"], team.root).stdout
    assert f"| {TAG}" in md and f"| {BRANCH}" in md and "reports/baseline/metrics.json" in md


@pytest.mark.e2e
def test_plots_diff_renders_every_plot_for_both_revisions_with_log_axes(team, tmp_path):
    spec = json.loads(run(["dvc", "plots", "diff", TAG, BRANCH, "--json", "-o", str(tmp_path / "json")],
                          team.root).stdout)["data"]
    declared = {p.title: p for s in pipeline.STAGES for p in s.plots}
    images = [o.path for s in pipeline.STAGES for o in s.outputs if o.kind == "image"]
    assert set(spec) == set(declared) | set(images)
    for title, plot in declared.items():
        if not spec[title]:  # a table without rows (the family stage is skipped here): nothing to draw
            assert len(pd.read_csv(team.root / plot.data)) == 0, title
            continue
        (rendered,) = spec[title]
        assert rendered["type"] == "vega" and rendered["revisions"] == [TAG, BRANCH], title
        revs = {row["rev"] for row in rendered["content"]["data"]["values"]}
        assert revs == {TAG, BRANCH}, f"{title}: data of {revs}"
        if plot.template == "loglog":
            encoding = rendered["content"]["encoding"]
            assert [encoding[axis]["scale"]["type"] for axis in ("x", "y")] == ["log", "log"], title
        else:
            assert '"log"' not in json.dumps(rendered["content"]), title
    for path in images:
        assert sorted(r for item in spec[path] for r in item["revisions"]) == sorted([TAG, BRANCH]), path

    run(["dvc", "plots", "diff", TAG, BRANCH, "-o", str(tmp_path / "html")], team.root)
    html = (tmp_path / "html/index.html").read_text()
    assert all(title in html for title in declared if spec[title])
    shown = json.loads(run(["dvc", "plots", "show", "--json"], team.root).stdout)
    assert set(shown["data"]) == set(spec) and not shown.get("errors")


@pytest.mark.e2e
def test_the_documented_baseline_commands_compare_the_branch_with_the_tag(team):
    commands = [c for c in documented_commands() if c.startswith("dvc ") and f" {TAG} my-branch" in c]
    assert {c.split()[1] for c in commands} == {"params", "metrics", "plots"}
    for command in commands:
        out = run(shlex.split(command.replace("my-branch", BRANCH)), team.root, check=True).stdout
        if " params " in command:
            assert "workload.kwargs.hidden" in out
        if " metrics " in command:
            assert "reports/baseline/metrics.json" in out
    assert (team.root / "dvc_plots/index.html").is_file()


@pytest.mark.e2e
def test_pr_review_script_writes_one_comment_and_the_plots_and_restores_the_branch(team):
    """Reviewed against a base branch that moved on since the branch started (another select.objective):
    the review compares with the merge base, the tag, so nothing reruns and the base's newer change is not
    shown reversed; the committed results, the same runs, are not repeated; each table once."""
    run(["rm", "-rf", "dvc_plots"], team.root)
    params = (team.root / "params.yaml").read_text()
    ahead_params = run(["git", "hash-object", "-w", "--stdin"], team.root,
                       input=params.replace("objective: time", "objective: resource", 1)).stdout.strip()
    index = {"GIT_INDEX_FILE": str(team.root / ".git" / "ahead-index")}
    run(["git", "read-tree", TAG], team.root, env=index)
    run(["git", "update-index", "--cacheinfo", f"100644,{ahead_params},params.yaml"], team.root, env=index)
    tree = run(["git", "write-tree"], team.root, env=index).stdout.strip()
    ahead = run(["git", "commit-tree", tree, "-p", f"{TAG}^{{commit}}", "-m", "main moved on"], team.root).stdout.strip()
    run(["git", "branch", "-f", "main-ahead", ahead], team.root)
    assert "objective: time" in params

    proc = run([".ci/pr-review", "main-ahead", BRANCH], team.root)
    comment = (team.root / "pr-review/comment.md").read_text()
    assert comment.startswith("<!-- kickoff-pr-review -->\n")
    tag = run(["git", "rev-parse", f"{TAG}^{{commit}}"], team.root).stdout.strip()
    assert f"`{tag[:7]}` (base: the merge base of main-ahead and {BRANCH})" in comment
    assert "select.objective" not in comment  # main's newer change, not the branch's
    assert comment.count("| recommendation |") == 1 and comment.count("<summary>Timings") == 1
    assert "are the runs above, value for value (nothing reran): not repeated" in comment
    assert "Measured on the clock by two different runs" in comment
    assert re.search(r"\| params.yaml \| workload.kwargs.hidden \| \[64\] \| \[32\] \|", comment), comment
    assert "| reports/baseline/metrics.json |" in comment and "failed" not in comment
    assert (team.root / "pr-review/plots/index.html").is_file()
    # the small profile the review applies is exactly what the committed runs used: nothing reran
    for log in (team.root / "pr-review").glob("review-*.log"):
        ran, skipped = stages_run(log.read_text())
        assert not ran and skipped == all_stage_names(QUICK["scaling"]["batch_sizes"]), log.name
    assert run(["git", "branch", "--show-current"], team.root).stdout.strip() == BRANCH
    assert run(["git", "status", "--porcelain", "--untracked-files=no"], team.root).stdout == "", proc.stderr


def documented_block(after: str) -> list[str]:
    """The command lines of the first bash block of docs/team.md after the text `after`, comments stripped."""
    block = re.search(r"```bash\n(.*?)```", team_page().split(after, 1)[1], flags=re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


@pytest.mark.e2e
def test_the_documented_pin_runs_as_written_on_an_up_to_date_branch(team, tmp_path):
    """docs/team.md's pin sequence, run on a branch whose results are committed: nothing to run, nothing to
    commit (no `git commit` failing on an empty index), the tag pushed; then the profile check passes."""
    root = team.root
    run(["git", "init", "-q", "--bare", str(tmp_path / "origin.git")], root)
    run(["git", "remote", "add", "origin", str(tmp_path / "origin.git")], root)
    head = run(["git", "rev-parse", "HEAD"], root).stdout
    try:
        lines = documented_block("**Pinning a baseline")
        pin = [line.replace(TAG, "pinned-v2") for line in lines[:3]]
        assert pin[0] == "dvc repro" and "git commit" in pin[1] and pin[2].startswith("git tag -a pinned-v2")
        for line in pin:
            proc = run(["bash", "-euo", "pipefail", "-c", line], root, check=False)
            assert proc.returncode == 0, (line, proc.stdout[-2000:], proc.stderr[-2000:])
        assert run(["git", "rev-parse", "HEAD"], root).stdout == head  # nothing new: no commit
        assert "pinned-v2" in run(["git", "ls-remote", "--tags", "origin"], root).stdout
        check = next(line for line in lines if "same-profile" in line).replace("my-branch", BRANCH)
        proc = run(shlex.split(check), root, check=False)
        assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr  # both ran the same profile
    finally:
        run(["git", "remote", "remove", "origin"], root)
        run(["git", "tag", "-d", "pinned-v2"], root, check=False)


@pytest.mark.e2e
def test_snakemake_lint_passes_and_it_writes_its_report(team, tmp_path):
    """The rules' declared outputs are stamps (Snakemake never deletes a committed result), so its HTML
    report holds the workflow and the run times; the figures are in REPORT.md and the DVC plots."""
    proc = run([str(Path(sys.executable).parent / "snakemake"), "--lint"], team.root)
    assert "good condition" in proc.stdout + proc.stderr
    run(["snakemake", "--report", str(tmp_path / "report.html")], team.root)
    assert "select" in (tmp_path / "report.html").read_text()


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["slurm", "kubernetes"])
def test_cluster_profile_is_accepted_by_snakemake(team, name):
    """Every key of the profile is an option Snakemake (with the executor plugin) knows."""
    plugins = [f"snakemake_executor_plugin_{name}"] + (["snakemake_storage_plugin_s3"] if name == "kubernetes" else [])
    for plugin in plugins:  # the profile's keys are these plugins' options
        pytest.importorskip(plugin, reason=f"pip install -e '.[cluster]' (see profiles/{name}) to check the profile")
    run(["snakemake", "--profile", f"profiles/{name}", "--list-rules"], team.root)
    if name == "slurm":  # a dry run needs no cluster: each job with the resources sbatch would get
        out = run(["snakemake", "--profile", "profiles/slurm", "-n", "--forceall"], team.root).stdout
        jobs = {}
        for chunk in out.split("\nrule ")[1:]:
            rule, resources = chunk.split(":", 1)[0], re.search(r"^    resources: (.*)$", chunk, flags=re.M)
            jobs[rule] = resources.group(1) if resources else ""
        present = [s for s in pipeline.STAGES if not s.indexed]  # the family's candidate jobs are off here
        assert set(jobs) >= {s.name for s in present}, out[-2000:]
        for s in present:
            assert f"mem_mb={s.resources['mem_mb']}," in jobs[s.name] and f"runtime={s.resources['runtime']}" in jobs[s.name]
            on_gpu = s.resources.get("gpu", 0) > 0
            assert ("gpu=1" in jobs[s.name], "slurm_partition=gpu" in jobs[s.name]) == (on_gpu, on_gpu), (s.name, jobs[s.name])


@pytest.mark.e2e
def test_experiments_rerun_exactly_the_affected_stages_and_exp_show_lists_them(team):
    root, sizes = team.root, QUICK["scaling"]["batch_sizes"]
    try:
        # What an experiment reruns is decided once its first stage, settings, has written the settings in force:
        # `dvc status` then lists exactly the stages whose keys changed (`dvc exp run --dry` runs nothing, so it
        # lists the settings stage alone)
        def stale_after(change: dict, render: bool = False) -> set[str]:
            write_params(root, change)
            if render:  # optimizer.name decides which optimizer keys the stages track (docs/team.md)
                run([sys.executable, "-m", "stages.pipeline"], root)
            run([sys.executable, "-m", "stages.settings"], root)
            stale = {name.rsplit(":", 1)[-1] for name in json.loads(run(["dvc", "status", "--json"], root).stdout)}
            run(["git", "checkout", "-q", "--force", BRANCH], root)
            return stale - {"settings"}

        # optimizer.name: every stage that reads it (probe measures the optimizer's state too)
        readers = {s.name for s in pipeline.STAGES if any(k == "optimizer" or k.startswith("optimizer.") for k in s.params)}
        assert stale_after({"optimizer": {"name": "adam"}}, render=True) == {
            n for n in all_stage_names(sizes) if n.split("@")[0] in readers}

        # a learning-rate range: the study's jobs are the stages that read it (the rest follow their outputs)
        readers = {s.name for s in pipeline.STAGES if "scaling.lr_min" in s.params}
        assert readers >= {"scaling_wave1", "scaling_wave2", "scaling_trials"}
        assert stale_after({"scaling": {"lr_min": 2.0e-2, "lr_max": 1.5}}) == {
            n for n in all_stage_names(sizes) if n.split("@")[0] in readers}

        # the objective: which sizes contend, and select onwards, rerun (for real); the measurements and the
        # study's first two waves are kept
        out = run(["dvc", "exp", "run", "-n", "by-cost", "-S", "select.objective=resource"], root).stdout
        ran, skipped = stages_run(out)
        kept = {"probe", "throughput", *(n for n in all_stage_names(sizes) if n.startswith("scaling_wave"))}
        assert kept <= skipped and not kept & ran
        assert {"scaling_contenders", "select"} <= ran

        table = list(csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv"], root).stdout)))
        (row,) = [r for r in table if r["Experiment"] == "by-cost"]
        assert row[f"{EFFECTIVE}:select.objective"] == row["params.yaml:select.objective"] == "resource"
        assert row["rev"] and row["accuracy"] != ""  # its results are there to compare

        # the documented side-by-side view fits a screen: the branch's commit and this experiment, which differ
        # in one setting (the objective; select and the baseline reran): about 100 columns when metrics.json
        # held the timings and diagnostics, dependency hashes included
        (show,) = [c for c in documented_commands() if c.startswith("dvc exp show")]
        header = next(csv.reader(io.StringIO(run(shlex.split(show) + ["-n", "1", "--csv"], root).stdout)))
        assert len(header) <= 30 and f"{EFFECTIVE}:select.objective" in header, header
        assert not [c for c in header if "/" in c and ":" not in c], header  # no dependency hashes
    finally:
        run(["git", "checkout", "-q", "--force", BRANCH], root)
