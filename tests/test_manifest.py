"""Output sets written whole and verified when read (issue 22 parts 1-2): a stage's files are renamed into
place together at its end, its job's manifest last (stages/core/provenance.py), and every reader checks
the file against it. Through the real writers and readers on hand-made tables, then through the stage
commands a user runs on the committed reference results."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from stages.core import io, outputs as out, provenance
from stages.core.errors import InputError, KickoffError
from tests.conftest import ROOT, make_project, run

# Every table a stage reads from another stage (kind "out", CSV): the truncation walk covers each.
READ_TABLES = [o for o in out.all_outputs() if o.path.endswith(".csv") and o.kind == "out" and o.columns]


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def wildcards_of(o: out.Output) -> dict:
    return {k: v for k, v in (("batch_size", 64), ("candidate", "candidate0")) if "{" + k + "}" in o.path}


def table_for(o: out.Output, rows: int) -> pd.DataFrame:
    """A table with the output's declared columns and `rows` rows that pass its checks."""
    data = {}
    for column in o.columns:
        allowed = dict(o.allowed).get(column)
        data[column] = [allowed[0] if allowed else (64 if column == "batch_size" else i + 1) for i in range(rows)]
    return pd.DataFrame(data)


def write_set(files: dict[Path, pd.DataFrame | str], job: str = "a job") -> None:
    with provenance.output_set(job, out.manifest_for_path):
        for path, content in files.items():
            if isinstance(content, str):
                io.write_text(path, content)
            else:
                io.write_csv(path, content)


def read(o: out.Output):
    kw = wildcards_of(o)
    return out.read_csv(o, allow_repeats=True, **kw) if o.path.endswith(".csv") else out.read_text(o, **kw)


@pytest.mark.parametrize("table", READ_TABLES, ids=[o.path for o in READ_TABLES])
def test_a_table_cut_at_any_line_boundary_is_refused(here, table):
    rows = 4
    path = table.at(**wildcards_of(table))
    write_set({path: table_for(table, rows)})
    assert len(read(table)) == rows
    manifest = json.loads(out.manifest_of(table, **wildcards_of(table)).read_text())
    assert manifest["files"][path.as_posix()]["rows"] == rows
    whole = path.read_text().splitlines(keepends=True)
    for keep in range(1, len(whole)):  # header only, then 1 .. rows-1 data rows: every line boundary
        path.write_text("".join(whole[:keep]))
        with pytest.raises(InputError, match=rf"has {keep - 1} rows where its job wrote {rows} .*cut, edited by hand"):
            read(table)


def test_nothing_is_renamed_until_the_stage_ends_and_nothing_at_all_when_it_fails(here):
    first, second = Path("reports/select/decision.csv"), Path("reports/select/reasoning.md")
    write_set({first: pd.DataFrame({"batch_size": [64]}), second: "old\n"})
    before = {p: p.read_bytes() for p in (first, second)}
    with pytest.raises(RuntimeError):
        with provenance.output_set("select", out.manifest_for_path):
            io.write_csv(first, pd.DataFrame({"batch_size": [128]}))
            assert first.read_bytes() == before[first]  # staged, not in place yet
            raise RuntimeError("the stage failed half-way")
    assert {p: p.read_bytes() for p in (first, second)} == before
    assert not [p for p in Path("reports/select").iterdir() if p.name.endswith(".tmp")]  # no temp file left


def test_a_target_that_cannot_be_written_stops_before_any_rename(here):
    """The issue's case: reasoning.md replaced by a directory -- one line, and decision.csv unchanged."""
    decision, reasoning = Path("reports/select/decision.csv"), Path("reports/select/reasoning.md")
    write_set({decision: pd.DataFrame({"batch_size": [64]}), reasoning: "why\n"})
    before = decision.read_bytes()
    reasoning.unlink()
    reasoning.mkdir()
    with pytest.raises(KickoffError, match="reasoning.md: is a directory.*nothing was written"):
        write_set({decision: pd.DataFrame({"batch_size": [128]}), reasoning: "new\n"})
    assert decision.read_bytes() == before
    assert out.read_text(out.SELECT_DECISION)  # still consistent with its manifest


def test_a_set_mixed_by_a_crash_between_renames_is_refused(here, monkeypatch):
    first, second = out.SELECT_DECISION.at(), out.SELECT_REASONING.at()
    write_set({first: "batch_size\n64\n", second: "run 1\n"})
    real, calls = provenance.os.replace, []

    def crash_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed between the two renames
        real(src, dst)

    monkeypatch.setattr(provenance.os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        write_set({first: "batch_size\n128\n", second: "run 2\n"})
    monkeypatch.setattr(provenance.os, "replace", real)
    with pytest.raises(InputError, match="decision.csv: differs from what its job wrote .*written by another run"):
        out.read_text(out.SELECT_DECISION)
    assert out.read_text(out.SELECT_REASONING) == "run 1\n"  # the untouched file still matches


def test_a_file_left_from_another_run_is_refused_and_one_no_job_wrote_is_read(here):
    write_set({out.SELECT_DECISION.at(): "batch_size\n64\n"})
    out.SELECT_REASONING.at().write_text("from an older run\n")  # beside the set, but not in its manifest
    with pytest.raises(InputError, match="reasoning.md: is not among the files its job's last run wrote"):
        out.read_text(out.SELECT_REASONING)
    Path(out.PROBE_NOTES.path).parent.mkdir(parents=True)
    Path(out.PROBE_NOTES.path).write_text("written by hand\n")  # no probe manifest: read as it is
    assert out.read_text(out.PROBE_NOTES) == "written by hand\n"


def test_results_made_for_another_model_are_refused_naming_both(here):
    with provenance.output_set("probe", out.manifest_for_path):
        provenance.note("model", {"workload": "digits_mlp", "kwargs": {"hidden": [16]}})
        io.write_text(out.PROBE_NOTES.at(), "probed\n")
    with provenance.output_set("throughput", out.manifest_for_path):
        provenance.note("model", {"workload": "digits_mlp", "kwargs": {"hidden": [32]}})
        with pytest.raises(InputError, match=r'notes.md: was made for model digits_mlp \{"hidden": \[16\]\}, and this '
                                             r'run builds digits_mlp \{"hidden": \[32\]\}.*python -m stages.probe'):
            out.read_text(out.PROBE_NOTES)
    with provenance.output_set("throughput", out.manifest_for_path):
        provenance.note("model", {"workload": "digits_mlp", "kwargs": {"hidden": [16]}})
        assert out.read_text(out.PROBE_NOTES) == "probed\n"


def _settings(values: dict, now: dict | None = None, later: dict | None = None) -> None:
    """The running job read `values`; `now`: every key in force (default: `values`); `later`: the files
    when read again at the job's end (default: unchanged)."""
    now = {**values, **(now or {})}
    later = later or now
    provenance.settings_read(values, now=now.get, reread=lambda: later.get, source="params.yaml")


def test_a_job_records_the_settings_it_read_with_their_hash(here):
    with provenance.output_set("scaling summarize", out.manifest_for_path):
        _settings({"scaling.max_steps": 600, "scaling.batch_sizes": (64, 128)})
        io.write_text(out.SCALING_NOTES.at(), "fit\n")
    manifest = json.loads(out.manifest_of(out.SCALING_NOTES).read_text())
    assert manifest["settings"] == {"scaling.max_steps": 600, "scaling.batch_sizes": [64, 128]}
    assert manifest["settings_sha256"] == provenance.settings_hash(manifest["settings"])


def test_a_set_made_with_other_settings_is_refused_naming_the_key_both_values_and_the_command(here):
    """A copied reports/scaling made with other max_steps or batch sizes, or results tuned at another
    momentum: the reader's one line names the key, the value it was made with, the value in force now,
    and the command that remakes it."""
    made = {"scaling.max_steps": 600, "scaling.batch_sizes": [64, 128, 256], "optimizer.momentum": 0.9}
    with provenance.output_set("scaling summarize", out.manifest_for_path):
        _settings(made)
        io.write_text(out.SCALING_NOTES.at(), "fit\n")
    for key, now in (("scaling.max_steps", 800), ("scaling.batch_sizes", [64, 128]), ("optimizer.momentum", 0.5)):
        with provenance.output_set("select", out.manifest_for_path):
            _settings({"select.objective": "time"}, now={**made, key: now})
            with pytest.raises(InputError) as e:
                out.read_text(out.SCALING_NOTES)
        message = str(e.value)
        assert message.startswith(f"reports/scaling/notes.md: was made with {key} {provenance._show(made[key])}, and "
                                  f"the settings in force now (params.yaml) have {key} {provenance._show(now)}"), message
        assert "`python -m stages.scaling summarize`" in message and "\n" not in message
    with provenance.output_set("select", out.manifest_for_path):  # the same settings: read
        _settings({"select.objective": "time"}, now=dict(made))
        assert out.read_text(out.SCALING_NOTES) == "fit\n"
    _settings({"optimizer.momentum": 0.5})  # outside a job (a test, a notebook): nothing recorded or checked
    assert provenance._settings is None and out.read_text(out.SCALING_NOTES) == "fit\n"


def test_a_setting_edited_while_the_job_ran_is_refused_at_its_end_and_nothing_is_written(here):
    write_set({out.SCALING_NOTES.at(): "900 steps\n"}, job="scaling summarize")
    before = {p: p.read_bytes() for p in Path("reports/scaling").iterdir()}
    with pytest.raises(KickoffError, match=r"scaling.max_steps: was 900 when `scaling summarize` started and is 950 "
                                           r"now in params.yaml \(edited while it ran\); nothing was written"):
        with provenance.output_set("scaling summarize", out.manifest_for_path):
            _settings({"scaling.max_steps": 900}, later={"scaling.max_steps": 950})
            io.write_text(out.SCALING_NOTES.at(), "950 steps?\n")
    assert {p: p.read_bytes() for p in Path("reports/scaling").iterdir()} == before  # no temp file either
    with provenance.output_set("scaling summarize", out.manifest_for_path):  # an edit it does not read: written
        _settings({"scaling.max_steps": 900}, later={"scaling.max_steps": 900, "select.objective": "resource"})
        io.write_text(out.SCALING_NOTES.at(), "900 steps again\n")
    assert out.SCALING_NOTES.at().read_text() == "900 steps again\n"


def test_the_report_notes_a_file_its_manifest_refuses(here, tmp_path_factory):
    """The report reads forgivingly, but not blindly: a file edited by hand, or made with other settings
    than those in force, is a problem it names (with the stage that rewrites it), not a table it shows."""
    from stages.report.format import Inputs

    write_set({out.PROBE_NOTES.at(): "probed\n"}, job="probe")
    out.PROBE_NOTES.at().write_text("edited\n")
    inputs = Inputs(Path("."))
    assert inputs.text(out.PROBE_NOTES.path, "probe") is None
    assert inputs.problems == ["`reports/probe/notes.md` differs from what its job wrote (reports/probe/manifest.json): "
                               "cut, edited by hand, or written by another run (written by stage `probe`: run `dvc repro "
                               "probe`)"]
    with provenance.output_set("scaling summarize", out.manifest_for_path):
        _settings({"scaling.max_steps": 600})
        io.write_text(out.SCALING_NOTES.at(), "fit\n")
    with provenance.output_set("report", out.manifest_for_path):
        _settings({}, now={"scaling.max_steps": 800})
        inputs = Inputs(Path("."))
        assert inputs.text(out.SCALING_NOTES.path, "scaling") is None
    assert inputs.problems == ["`reports/scaling/notes.md` was made with scaling.max_steps 600, and the settings in "
                               "force now (params.yaml) have scaling.max_steps 800 (written by stage `scaling`: run "
                               "`dvc repro scaling`)"]
    elsewhere = tmp_path_factory.mktemp("elsewhere")  # a project read from outside it: its own manifests
    (elsewhere / "reports/scaling").mkdir(parents=True)
    shutil.copy(out.SCALING_NOTES.at(), elsewhere / out.SCALING_NOTES.path)
    shutil.copy(out.manifest_of(out.SCALING_NOTES), elsewhere / out.manifest_of(out.SCALING_NOTES))
    assert Inputs(elsewhere).text(out.SCALING_NOTES.path, "scaling") == "fit\n"


def test_every_job_declares_its_manifest_as_an_output():
    from stages.pipeline import declaration as pipeline

    for s in pipeline.STAGES:
        assert out.MANIFESTS[s.cmd] in s.outputs, s.name
        assert all(out.manifest_of(o) is not None or o is out.MANIFESTS[s.cmd] for o in s.outputs
                   if "{" not in o.path), s.name


# ---------------------------------------------------------------------------- through the stage commands

@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A copy of the project with the committed reference results (written with their manifests)."""
    root = make_project(tmp_path_factory.mktemp("manifest") / "kickoff")
    shutil.copytree(ROOT / "reports", root / "reports", dirs_exist_ok=True)
    assert (root / out.MANIFESTS[out.SCALING_CMD].path).is_file(), "the committed results carry their manifests"
    return root


def drop_last_line(path: Path) -> bytes:
    before = path.read_bytes()
    path.write_bytes(b"".join(before.splitlines(keepends=True)[:-1]))
    return before


@pytest.mark.parametrize("table, command", [
    ("reports/scaling/trials/bs_64.csv", ["stages.scaling", "summarize"]),
    ("reports/scaling/trials.csv", ["stages.select"]),
])
def test_a_table_missing_its_last_row_stops_the_stage_that_reads_it(reference, table, command):
    path = reference / table
    before = drop_last_line(path)
    outputs_before = {p: p.read_bytes() for p in (reference / "reports").rglob("*") if p.is_file()}
    try:
        proc = run([sys.executable, "-m", *command], reference, check=False)
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("kickoff: error:")]
        assert len(lines) == 1 and f"{table}: has " in lines[0] and "rows where its job wrote" in lines[0], proc.stderr
        assert {p: p.read_bytes() for p in outputs_before} == outputs_before  # nothing written
    finally:
        path.write_bytes(before)


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_the_baseline_refuses_a_hand_edited_configuration_unless_told(reference):
    path = reference / out.SELECT_CONFIG.path
    before = path.read_text()
    config = yaml.safe_load(before)
    config["workload"]["kwargs"] = {**config["workload"]["kwargs"], "hidden": [100000]}
    path.write_text(yaml.safe_dump(config))
    try:
        proc = run([sys.executable, "-m", "stages.baseline"], reference, check=False)
        assert proc.returncode == 2
        assert "initial_config.yaml: differs from what its job wrote" in proc.stderr
        assert "--train-edited-config" in proc.stderr
        unknown = run([sys.executable, "-m", "stages.baseline", "--batch-size", "16"], reference, check=False)
        assert unknown.returncode == 2 and "unrecognized arguments: --batch-size 16" in unknown.stderr
    finally:
        path.write_text(before)
