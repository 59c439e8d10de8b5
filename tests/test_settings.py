"""The settings stage (issue 28 parts 1 and 8, issue 30 part 4): params.yaml and the active profiles validated
once for both tools, the values in force written where every stage tracks its keys, the profiles' overrides
said in one line, a stage run by hand on other values refused, and a module of the user's project that the
settings name but `workload.sources` does not list refused with the `sources:` line to add. Through the real
dvc and snakemake: tests/test_pipeline_declaration.py (the staleness matrix)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.core import effective
from stages.core.errors import ConfigError
from stages.core.yamlfile import dump, parse
from stages.pipeline import declaration as pipeline

ROOT = Path(__file__).resolve().parent.parent
SMALL = "profiles/small/params.yaml"


def project(tmp_path: Path, profiles: list[str] = ()) -> Path:
    """params.yaml, the profiles folder and a dvc.yaml recording `profiles` as active."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"vars": [{"kickoff_profiles": list(profiles)}], "stages": {}}))
    return tmp_path


def stage(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_the_effective_file_holds_every_setting_in_force_and_reads_back_alike_in_yaml_1_1_and_1_2(tmp_path):
    root = project(tmp_path, [SMALL])
    settings = effective.resolve(root)
    text = effective.effective_text(settings.params)
    assert parse(text) == yaml.safe_load(text) == settings.params.as_dict()
    assert parse(text)["scaling"]["batch_sizes"] == yaml.safe_load((ROOT / SMALL).read_text())["scaling"]["batch_sizes"]
    assert parse(text)["optimizer"]["momentum"] == 0.9  # from params.yaml: the profile leaves it alone
    # a string either YAML version would take for something else is quoted
    assert parse(dump({"a": "1e-3", "b": "yes", "c": "010"})) == {"a": "1e-3", "b": "yes", "c": "010"}


def test_every_stage_but_settings_tracks_its_keys_in_the_effective_file_and_settings_reads_the_files():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    rendered = pipeline.render_dvc(params, {SMALL: yaml.safe_load((ROOT / SMALL).read_text())})
    for name, body in rendered["stages"].items():
        body = body.get("do", body)
        if name == "settings":
            assert "params" not in body
            assert {"params.yaml", SMALL, "profiles/char_lm/params.yaml"} <= set(body["deps"])  # the inactive too
        else:
            assert all(list(entry) == ["reports/settings/effective.yaml"] for entry in body.get("params", [])), name
    assert rendered["stages"]["select"]["params"] == [{"reports/settings/effective.yaml": pipeline.tracked_keys(
        pipeline.stage("select"), params)}]


def test_a_profile_says_which_params_yaml_keys_it_overrides_and_an_edit_of_one_says_where_the_value_in_force_is(tmp_path):
    root = project(tmp_path, [SMALL])
    settings = effective.resolve(root)
    line = effective.summary(settings)
    assert line.startswith(f"kickoff: {SMALL} overrides 15 params.yaml keys: family.max_steps 1000 -> 600; "
                           "probe.batch_sizes null -> [32, 256, 1024]; probe.steps 3 -> 2; ")
    assert line.endswith("(`python -m stages.pipeline --no-profile` runs params.yaml alone)") and "\n" not in line
    record = parse(effective.overrides_text(settings))
    assert record["overridden"]["probe.steps"] == {"params.yaml": 3, "in force": 2, "from": SMALL}

    text = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(text.replace("  steps: 3\n", "  steps: 5\n", 1))  # probe.steps
    edited = effective.resolve(root)
    assert effective.effective_text(edited.params) == effective.effective_text(settings.params)  # nothing in force
    assert effective.edits(record, edited) == [
        f"kickoff: probe.steps: params.yaml now says 5 (was 3), but {SMALL} sets 2, the value in force: nothing "
        f"reruns for this edit (change it in {SMALL}, or run params.yaml alone: `python -m stages.pipeline --no-profile`)"]
    assert effective.edits(record, settings) == []
    assert effective.summary(effective.resolve(project(tmp_path / "none"))) is None


def test_an_edit_of_a_profile_that_is_not_active_is_named(tmp_path):
    root = project(tmp_path)
    record = parse(effective.overrides_text(effective.resolve(root)))
    with open(root / SMALL, "a") as f:
        f.write("select:\n  objective: resource\n")  # what `dvc exp run -S profiles/small/params.yaml:+...` does
    settings = effective.resolve(root)
    assert effective.effective_text(settings.params) == effective.effective_text(effective.resolve(project(tmp_path / "b")).params)
    assert effective.inactive_edits(record, settings) == [
        f"kickoff: {SMALL} changed, but that profile is not active: nothing it sets is in force and nothing reruns for it "
        f"(`python -m stages.pipeline --add-profile small` runs it on top of the active settings)"]


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_the_settings_stage_writes_its_files_and_a_stage_run_by_hand_on_other_values_refuses(tmp_path):
    root = project(tmp_path, [SMALL])
    (root / "stages").symlink_to(ROOT / "stages")  # dvc.yaml is rendered from this code
    proc = stage(root, "stages.pipeline", "--profile", "small")
    assert proc.returncode == 0, proc.stderr
    proc = stage(root, "stages.settings")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith(f"kickoff: {SMALL} overrides 15 params.yaml keys: ")
    assert effective.is_current(root, effective.resolve(root))
    pipeline.load_stage_params("select", root / "params.yaml")  # current: accepted

    text = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(text.replace("  objective: time", "  objective: resource", 1))
    with pytest.raises(ConfigError, match=r"^reports/settings/effective.yaml is out of date \(select.objective is time "
                                          r"there and resource in params.yaml with the active profiles\): the stages' "
                                          r"settings are tracked there, so run `python -m stages.settings` \(or `dvc "
                                          r"repro`, `snakemake`: they run it first\) first$"):
        pipeline.load_stage_params("select", root / "params.yaml")
    proc = stage(root, "stages")  # the check command validates and says the file lags, without writing it
    assert proc.returncode == 0 and "does not hold these settings yet" in proc.stderr, proc.stderr
    proc = stage(root, "stages.settings")
    assert proc.returncode == 0, proc.stderr
    pipeline.load_stage_params("select", root / "params.yaml")


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_a_module_of_the_project_the_settings_name_must_be_in_workload_sources(tmp_path):
    """kickoff's journal hashes the modules the workload is built from; DVC and Snakemake rerun only for the
    files workload.sources lists: one that is not listed is refused, with the line to write."""
    root = project(tmp_path)
    (root / "stages").symlink_to(ROOT / "stages")
    (root / "my_project").mkdir()
    (root / "my_project/__init__.py").write_text("")
    (root / "my_project/model.py").write_text("from stages.workloads.nqm import NoisyQuadratic\n\n\n"
                                              "def make(dim: int = 8, target: float = 0.3):\n"
                                              "    return NoisyQuadratic(dim=dim, target=target)\n")
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["workload"] = {"name": "my_project.model:make", "kwargs": {"dim": 8}, "sources": []}
    raw["family"]["candidates"] = None
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert stage(root, "stages.pipeline").returncode == 0
    expected = ("kickoff: error: params.yaml: workload.name: its module's file my_project/model.py is not in "
                "workload.sources, so DVC and Snakemake would not rerun anything when it changes; allowed: every "
                "file of your project the workload is built from, listed -- write `sources: [my_project/model.py]` "
                "under `workload:` in params.yaml, then run `python -m stages.pipeline`\n")
    for command in (["stages.settings"], ["stages"]):  # under DVC (the first stage), and the check command
        proc = stage(root, *command)
        assert proc.returncode == 2 and proc.stderr == expected, (command, proc.stderr)
    raw["workload"]["sources"] = ["my_project"]  # a folder covers its modules
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert stage(root, "stages.pipeline").returncode == 0
    proc = stage(root, "stages.settings")
    assert proc.returncode == 0, proc.stderr


def test_the_dataset_workloads_import_paths_and_a_candidates_are_checked_too(tmp_path, monkeypatch, fresh_my_project):
    from stages.core.sources import unlisted

    (tmp_path / "my_project").mkdir()
    for name in ("__init__", "data", "models"):
        (tmp_path / f"my_project/{name}.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    kwargs = {"model": "my_project.data:make_model", "train": "my_project.data:train_set", "loss": "cross_entropy",
              "metrics": ["accuracy", "my_project.data:f1"]}
    candidates = [{"model": "my_project.models:wide"}]
    assert unlisted("dataset", kwargs, candidates, [], tmp_path) == [
        ("workload.kwargs.model", "my_project/data.py"), ("family.candidates[0].model", "my_project/models.py")]
    assert unlisted("dataset", kwargs, candidates, ["my_project/data.py"], tmp_path) == [
        ("family.candidates[0].model", "my_project/models.py")]
    assert unlisted("dataset", kwargs, candidates, ["my_project"], tmp_path) == []
    # a module a listed source imports is tracked through that source (stages/core/imports.user_code)
    (tmp_path / "my_project/data.py").write_text("from my_project import models\n")
    assert unlisted("dataset", kwargs, candidates, ["my_project/data.py"], tmp_path) == []
    assert unlisted("dataset", {"model": "stages.workloads.nqm:NoisyQuadratic"}, [], [], ROOT) == []  # kickoff's own


def test_a_static_check_that_passed_is_remembered_until_what_it_reads_changes(tmp_path, monkeypatch):
    """The factory check imports the workload (torch: 1.6 s of every `snakemake -n`); a pass is remembered in
    .kickoff/cache/static and an edit of what it reads -- params.yaml here -- checks afresh, and refuses."""
    from stages.workloads import base

    root = project(tmp_path)
    settings = effective.resolve(root)
    effective.check_static(settings, root, key=pipeline.static_key(root, settings.params))
    assert (root / effective.STATIC_CHECKED).is_file()
    calls = []
    monkeypatch.setattr(base, "workload_factory", lambda *a: calls.append(a))
    effective.check_static(settings, root, key=pipeline.static_key(root, settings.params))
    assert calls == []  # remembered: nothing imported or checked
    text = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(text.replace("objective: time", "objective: resource", 1))  # a key it does not read
    settings = effective.resolve(root)
    effective.check_static(settings, root, key=pipeline.static_key(root, settings.params))
    assert calls == []
    monkeypatch.undo()
    text = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(text.replace("name: digits_mlp", "name: digits_mpl", 1))
    with pytest.raises(ConfigError, match="digits_mpl"):
        settings = effective.resolve(root)
        effective.check_static(settings, root, key=pipeline.static_key(root, settings.params))
