"""Jobs that left the declaration (stages/pipeline/orphans.py): found from dvc.lock and from the files in
reports/, and removed -- files, stamp, dvc.lock entry -- leaving every other line of dvc.lock as DVC wrote
it. The end-to-end claim (a size leaves, `python -m stages.pipeline` renders, DVC and Snakemake agree
afterwards) is tests/test_pipeline_declaration.py's."""
from __future__ import annotations

import re

import yaml

from stages.core import provenance
from stages.pipeline import orphans

LOCK = """\
schema: '2.0'
stages:
  family_trial@candidate0:
    cmd: python -m stages.family trial --candidate candidate0
    outs:
    - path: reports/family/trials/candidate0.csv
      hash: md5
      md5: 1
  family_trial@candidate1:
    cmd: python -m stages.family trial --candidate candidate1
    outs:
    - path: reports/family/trials/candidate1.csv
      hash: md5
      md5: 2
  scaling_trials@16:
    cmd: python -m stages.scaling trials --batch-size 16
    outs:
    - path: reports/scaling/trials/bs_16.csv
      hash: md5
      md5: 3
  scaling_trials@512:
    cmd: python -m stages.scaling trials --batch-size 512
    params:
      params.yaml:
        scaling.max_steps: 200
    outs:
    - path: reports/scaling/trials/bs_512.csv
      hash: md5
      md5: 4
    - path: reports/scaling/trials/bs_512_old_name.csv
      hash: md5
      md5: 5
  scaling:
    cmd: python -m stages.scaling summarize
"""
PARAMS = {"family": {"candidates": [{"hidden": 8}]}, "scaling": {"batch_sizes": [16, 32]}}


def _files(root, *paths):
    for p in paths:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_text("x\n")


def test_jobs_no_longer_declared_are_found_in_dvc_lock_and_in_reports(tmp_path):
    (tmp_path / "dvc.lock").write_text(LOCK)
    _files(tmp_path, "reports/scaling/trials/bs_16.csv", "reports/scaling/trials/bs_512.csv",
           "reports/scaling/trials/bs_512.manifest.json", "reports/scaling/trials/bs_512_old_name.csv",
           "reports/scaling/trials/bs_64_curves.csv",  # run by hand, never recorded
           "reports/family/trials/candidate1.csv", "reports/scaling/trials/notes.txt")
    found = orphans.find(tmp_path, PARAMS)
    assert found == {
        "family_trial@candidate1": ["reports/family/trials/candidate1.csv"],
        "scaling_trials@64": ["reports/scaling/trials/bs_64_curves.csv"],
        "scaling_trials@512": ["reports/scaling/trials/bs_512.csv", "reports/scaling/trials/bs_512.manifest.json",
                               "reports/scaling/trials/bs_512_old_name.csv"]}
    # a null candidates list declares no family_trial job at all
    assert "family_trial@candidate0" in orphans.find(tmp_path, {**PARAMS, "family": {"candidates": None}})


def test_removing_them_takes_their_files_stamps_and_lock_entries_and_nothing_else(tmp_path):
    (tmp_path / "dvc.lock").write_text(LOCK)
    _files(tmp_path, "reports/scaling/trials/bs_16.csv", "reports/scaling/trials/bs_512.csv",
           "reports/family/trials/candidate0.csv", "reports/family/trials/candidate1.csv",
           provenance.stamp_path("scaling_trials@512"), provenance.stamp_path("scaling_trials@16"))
    removed = orphans.remove(tmp_path, PARAMS)
    assert set(removed) == {"family_trial@candidate1", "scaling_trials@512"}
    assert not (tmp_path / "reports/scaling/trials/bs_512.csv").exists()
    assert not (tmp_path / "reports/family/trials/candidate1.csv").exists()
    assert not (tmp_path / provenance.stamp_path("scaling_trials@512")).exists()
    for kept in ("reports/scaling/trials/bs_16.csv", "reports/family/trials/candidate0.csv",
                 provenance.stamp_path("scaling_trials@16")):
        assert (tmp_path / kept).exists(), kept
    text = (tmp_path / "dvc.lock").read_text()
    assert list(yaml.safe_load(text)["stages"]) == ["family_trial@candidate0", "scaling_trials@16", "scaling"]
    # every remaining line as it was: only the two entries' lines are gone
    blocks = re.split(r"\n(?=  \S)", LOCK)
    assert text == "\n".join(b for b in blocks if not b.startswith(("  family_trial@candidate1:", "  scaling_trials@512:")))
    assert orphans.remove(tmp_path, PARAMS) == {} and (tmp_path / "dvc.lock").read_text() == text
