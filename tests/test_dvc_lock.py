"""dvc.lock kept whole (issue 29 part 1), the check itself: no cut of a whole dvc.lock passes for whole, a whole one
always does, and `keep_whole` puts the last whole version back -- or stops a stage `dvc repro` started. The same
through the real `dvc` and `snakemake`, with real interrupts: tests/test_interrupts.py."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from stages.core.dvc_lock import CUT, KEPT, LockfileCutError, cut_problem, keep_whole
from stages.core.errors import KickoffError

DVC_YAML = {"stages": {
    "probe": {"cmd": "python -m stages.probe", "deps": ["stages/probe/stage.py", "stages/core/io.py"],
              "params": ["probe", "runtime.device", {"profiles/small/params.yaml": ["probe.steps"]}],
              "outs": [{"reports/probe/probe.csv": {"cache": False}}],
              "metrics": [{"reports/probe/metrics.json": {"cache": False}}]},
    "trials": {"foreach": [16, 64], "do": {"cmd": "python -m stages.scaling trials --batch-size ${item}",
                                           "deps": ["reports/probe/probe.csv", "reports/family/trials"],
                                           "params": ["scaling"],
                                           "outs": [{"reports/scaling/trials/bs_${item}.csv": {"cache": False}}]}}}}


def entry(cmd: str, deps: list[str], params: dict, outs: list[str], salt: str = "0") -> dict:
    def item(path: str) -> dict:
        digest = f"{abs(hash((path, salt))) % 16 ** 32:032x}"
        folder = not path.endswith((".py", ".csv", ".json"))
        return {"path": path, "hash": "md5", "md5": digest + (".dir" if folder else ""), "size": 1234,
                **({"nfiles": 3} if folder else {})}

    return {"cmd": cmd, "deps": [item(d) for d in deps], "params": params, "outs": [item(o) for o in outs]}


def lock_text(salt: str = "0") -> str:
    """A dvc.lock as DVC writes it (its own YAML writer, ruamel), for DVC_YAML."""
    from dvc.utils.serialize import dumps_yaml

    stages = {"probe": entry("python -m stages.probe", ["stages/probe/stage.py", "stages/core/io.py"],
                             {"params.yaml": {"probe": {"steps": 1}, "runtime.device": "cpu"},
                              "profiles/small/params.yaml": {"probe.steps": 1}},
                             ["reports/probe/probe.csv", "reports/probe/metrics.json"])}
    for b in (16, 64):
        stages[f"trials@{b}"] = entry(f"python -m stages.scaling trials --batch-size {b}",
                                      ["reports/probe/probe.csv", "reports/family/trials"],
                                      {"params.yaml": {"scaling": {"max_steps": 100}}},
                                      [f"reports/scaling/trials/bs_{b}.csv"], salt if b == 64 else "0")
    return dumps_yaml({"schema": "2.0", "stages": stages})


@pytest.fixture
def root(tmp_path):
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    return tmp_path


def test_a_whole_lock_is_whole_and_so_is_one_with_an_entry_rewritten(root):
    old, new = lock_text().encode(), lock_text(salt="1").encode()
    assert new != old
    assert cut_problem(old, None, root) is None and cut_problem(old, old, root) is None
    assert cut_problem(new, old, root) is None  # DVC recorded trials@64 again: a new whole version


def test_no_cut_of_a_lock_passes_for_whole(root):
    """DVC writes the new text from the start of the emptied file: an interrupt leaves any prefix of it. Every
    one, byte by byte, is found cut, given the whole version before the write."""
    old, new = lock_text().encode(), lock_text(salt="1").encode()
    missed = [n for n in range(len(new)) if cut_problem(new[:n], old, root) is None]
    assert missed == [], [new[:n][-60:] for n in missed[:3]]


def test_the_reasons_say_what_is_missing(root):
    old = lock_text().encode()
    lines = old.decode().splitlines(keepends=True)
    second = next(i for i, line in enumerate(lines) if line.startswith("  trials@16:"))
    assert cut_problem("".join(lines[:second]).encode(), old, root) == \
        "lost the entries of 2 jobs it had (trials@16, trials@64)"
    md5 = next(i for i, line in enumerate(lines) if line.strip().startswith("md5:"))
    assert cut_problem("".join(lines[:md5]).encode(), None, root) == \
        "its entry for probe stops after 1 of its 2 deps"
    outs = next(i for i, line in enumerate(lines) if line.strip() == "outs:")
    assert cut_problem("".join(lines[:outs]).encode(), None, root) == "its entry for probe stops after 0 of its 2 outs"
    assert cut_problem(old[:-10], old, root).startswith("ends in the middle of a line")
    assert cut_problem(b"", old, root) == "is empty"
    assert cut_problem(b"schema: '2.0'\n", old, root) == "has no `stages:` entries"
    assert cut_problem(b"stages:\n  probe:\n    cmd: [\n", old, root).startswith("is not valid YAML (line ")


def test_keep_whole_keeps_puts_back_and_stops_a_stage_dvc_repro_started(root, monkeypatch):
    old, cut = lock_text().encode(), lock_text().encode()[:700]
    lock = root / "dvc.lock"
    lock.write_bytes(old)
    keep_whole(root)
    assert (root / KEPT).read_bytes() == old  # whole: kept
    said = []
    lock.write_bytes(cut)
    keep_whole(root, say=said.append)
    assert lock.read_bytes() == old and (root / CUT).read_bytes() == cut
    assert said[0].startswith("kickoff: dvc.lock ") and "put back the last whole version (.kickoff/dvc.lock.whole, " \
                                                         "3 jobs; the cut one is kept as .kickoff/dvc.lock.cut)" in said[0]
    monkeypatch.setenv("DVC_STAGE", "trials@64")  # as `dvc repro` runs a stage's command
    lock.write_bytes(cut)
    with pytest.raises(LockfileCutError, match="planned this run from the cut file, so it stops here: rerun `dvc repro`"):
        keep_whole(root)
    assert lock.read_bytes() == old


def test_a_lock_git_holds_is_never_taken_for_a_cut_one(root):
    """`git checkout` of an older dvc.lock with fewer entries: a version of the project, kept as it is."""
    full, older = lock_text().encode(), lock_text().encode()
    older = older[:older.index(b"  trials@16:")]
    lock = root / "dvc.lock"
    lock.write_bytes(older)
    for cmd in (["git", "init", "-q"], ["git", "add", "dvc.lock"]):
        subprocess.run(cmd, cwd=root, check=True)
    lock.write_bytes(full)
    keep_whole(root)
    lock.write_bytes(older)
    keep_whole(root, say=pytest.fail)
    assert lock.read_bytes() == older and (root / KEPT).read_bytes() == older


def test_a_cut_lock_with_nothing_to_put_back_and_one_with_conflict_markers_are_one_line(root):
    lock = root / "dvc.lock"
    lock.write_bytes(lock_text().encode()[:500])
    with pytest.raises(LockfileCutError, match="no whole version to put back .* remove it .`rm dvc.lock`."):
        keep_whole(root)
    lock.write_bytes(lock_text().encode())
    keep_whole(root)
    lock.write_text("schema: '2.0'\nstages:\n<<<<<<< HEAD\n  probe:\n=======\n  other:\n>>>>>>> branch\n")
    with pytest.raises(KickoffError, match="merge-conflict markers"):
        keep_whole(root)


def test_dvcs_own_error_is_quoted_not_its_closing_help_line():
    from stages.core.dvc_lock import dvc_error

    stderr = ("ERROR: unexpected error - [Errno 28] No space left on device: '.dvc/tmp/btime'\n\n"
              "Having any troubles? Hit us up at https://dvc.org/support, we are always happy to help!\n")
    assert dvc_error(stderr) == "unexpected error - [Errno 28] No space left on device: '.dvc/tmp/btime'"
    assert dvc_error("Having any troubles? Hit us up at https://dvc.org/support\n") == \
        "Having any troubles? Hit us up at https://dvc.org/support"  # nothing better to say
    assert dvc_error("some warning\nthe last line\n") == "the last line"


def test_an_entry_recorded_before_dvc_yaml_changed_is_not_taken_for_a_cut_one(root):
    """The declaration grew (a workload source added, dvc.yaml re-rendered); `dvc repro` then records its first job
    again, while the job last in the file still has its old, shorter entry: whole, not cut."""
    old = lock_text().encode()
    new = old.replace(b"python -m stages.probe\n", b"python -m stages.probe \n", 1)  # probe recorded again
    grown = {**DVC_YAML["stages"], "trials": {**DVC_YAML["stages"]["trials"], "do": {
        **DVC_YAML["stages"]["trials"]["do"], "deps": [*DVC_YAML["stages"]["trials"]["do"]["deps"], "userwl/model.py"]}}}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": grown}, sort_keys=False))
    assert cut_problem(new, old, root) is None
    assert cut_problem(new[:-40], old, root) is not None  # the same file cut: still found


def test_in_a_fresh_clone_an_entry_older_than_dvc_yaml_is_compared_with_the_committed_one(root):
    """Nothing kept yet (a fresh clone), the committed dvc.lock older than dvc.yaml (kickoff's code gained a module
    since), and one entry rewritten -- by `dvc repro`, or by the render removing a dropped size's entry: the entry
    last in the file is as committed, so it is whole, and nothing is put back over the new record. A cut of the
    same file is still found."""
    committed = lock_text().encode()
    (root / "dvc.lock").write_bytes(committed)
    for cmd in (["git", "init", "-q"], ["git", "add", "dvc.lock"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "results"]):
        subprocess.run(cmd, cwd=root, check=True)
    grown = {**DVC_YAML["stages"], "trials": {**DVC_YAML["stages"]["trials"], "do": {
        **DVC_YAML["stages"]["trials"]["do"], "deps": [*DVC_YAML["stages"]["trials"]["do"]["deps"], "stages/search/x.py"]}}}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": grown}, sort_keys=False))
    rerun = committed.replace(b"python -m stages.probe\n", b"python -m stages.probe \n", 1)  # probe recorded again
    (root / "dvc.lock").write_bytes(rerun)
    keep_whole(root, say=pytest.fail)
    assert (root / "dvc.lock").read_bytes() == rerun and (root / KEPT).read_bytes() == rerun
    (root / KEPT).unlink()
    said = []
    (root / "dvc.lock").write_bytes(rerun[:-40])
    keep_whole(root, say=said.append)
    assert (root / "dvc.lock").read_bytes() == committed and "the committed version, git HEAD" in said[0]


def test_a_job_without_an_entry_is_told_from_the_lock_text_as_dvc_writes_it(root):
    """The Snakemake job's skip check reads dvc.lock without DVC only to find a job with no entry (a first run);
    an entry DVC wrote is always found, and a name that is only the start of another is not."""
    from stages.core.provenance import recorded

    assert not recorded(root, "probe")  # no dvc.lock at all
    (root / "dvc.lock").write_text(lock_text())
    assert recorded(root, "probe") and recorded(root, "trials@16") and recorded(root, "trials@64")
    assert not recorded(root, "trials@6") and not recorded(root, "trials") and not recorded(root, "prob")


def test_dvc_writes_a_lock_read_as_plain_data_as_it_wrote_it(root):
    """kickoff's record step reads dvc.lock as plain data (C) where DVC would use its round-trip parser: DVC's
    writer must give back the very text DVC wrote, so a job recorded by Snakemake reads as one `dvc repro` wrote."""
    from dvc.utils.serialize._yaml import dumps_yaml, parse_yaml

    for salt in ("0", "1"):
        text = lock_text(salt)
        assert dumps_yaml(parse_yaml(text, "dvc.lock", typ="safe")) == text
    real = (Path(__file__).resolve().parent.parent / "dvc.lock").read_text()  # the committed reference's, by DVC
    assert dumps_yaml(parse_yaml(real, "dvc.lock", typ="safe")) == real
