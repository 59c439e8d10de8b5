"""The pull-request review's tables (stages/report/review.py) on hand-written `dvc ... diff --json` bodies:
the recommendation first, each difference marked changed (beyond both runs' intervals), within noise, or
cannot tell (saying why: one seed, a zero width not explained); seeds that agree exactly, a step budget
far apart and a baseline that turns to missing its target marked; timings folded apart by what each
stage declares, not by their names, and marked as measured by different runs with the ratio of the
reference timing; and committed results compared only between revisions run with the same profile."""
from __future__ import annotations

import json
import subprocess

import pytest

from stages.core import outputs as out
from stages.pipeline import declaration as pipeline
from stages.report import review
from stages.report.review import markdown, metrics_review, recommendation


def _diff(**files) -> dict:
    """A `dvc metrics diff --all --json` body: {stage: {key: (old, new)}} -> dvc's {"old", "new"} entries;
    a stage named `x_diagnostics` goes to reports/x/diagnostics.json."""
    def path(name):
        stage, _, kind = name.partition("_")
        return f"reports/{stage}/{kind or 'metrics'}.json"
    return {path(name): {k: {"old": o, "new": n} for k, (o, n) in entries.items()} for name, entries in files.items()}


def _rows(text: str) -> dict[str, str]:
    """recommendation label -> its mark."""
    return {line.split(" | ")[0][2:]: line.rsplit(" | ", 1)[1][:-2] for line in text.splitlines()[2:]}


def test_review_table_shows_only_what_changed_in_the_reports_units():
    diff = {"reports/baseline/metrics.json": {"accuracy": {"old": 0.95, "new": 0.97, "diff": 0.02},
                                              "train_seconds": {"old": 10.0, "new": 10.0, "diff": 0},
                                              "exponent": {"old": 0.637, "new": 0.637 + 1e-16},
                                              "outcome": {"old": "reached", "new": "x" * 200}},
            "reports/probe/metrics.json": {"memory_fixed_bytes": {"old": 2 * 2**20, "new": 3 * 2**20}}}
    text = markdown(diff, "metrics")
    lines = text.splitlines()
    assert lines[0] == "| file | metric | base | this branch | change |"
    assert lines[2] == "| reports/probe/metrics.json | memory_fixed_bytes | 2.0 MiB | 3.0 MiB | +1.0 MiB (+50.0%) |"
    assert "| accuracy | 0.95 | 0.97 | +0.02 (+2.1%) |" in text
    assert "train_seconds" not in text and "exponent" not in text  # unchanged, or only in the 16th digit
    assert "| reached | " + "x" * 79 + "… |" in text
    assert markdown({}, "params") == "No params differ."


def test_review_leads_with_the_recommendation_and_folds_the_timings_apart():
    text = metrics_review(_diff(
        family={"candidates": (4, 4), "chosen_index": (0, 1)},
        family_diagnostics={"chosen_flops_per_example": (5056.0, 9000.0), "chosen_time_to_target_s": (0.05, 0.07)},
        probe={"parameter_count": (1210, 2410)},
        probe_diagnostics={"memory_per_example_bytes": (61, -0.3), "seconds": (1.9, 2.0)},
        select={"batch_size": (128, 256), "learning_rate": (0.471, 0.763), "train_steps": (40, 33),
                "tie": ("128~256: chose 128 (fewer devices, then smaller batch)", "none"),
                "steps_to_target": (32, 30), "steps_to_target_min": (31, 20), "steps_to_target_max": (37, 33)},
        select_diagnostics={"expected_training_time_s": (0.014, 0.012)},
        scaling={"critical_batch_size": (96.2, 58.7), "ci_low": (70.0, 54.7), "ci_high": (131.0, 62.0),
                 "search_cost_ratio": (3.27, 2.9)},
        scaling_diagnostics={"seconds": (30.0, 31.0)},
        baseline={"final_meets_target": (True, False), "target_metric": ("accuracy", "accuracy"),
                  "accuracy": (0.955, 0.883)},
        baseline_diagnostics={"train_seconds": (0.03, 0.04)}))
    lines = text.splitlines()
    assert lines[0] == "| recommendation | base | this branch | change |"
    assert [line.split(" | ")[0] for line in lines[2:8]] == [
        "| model", "| batch size", "| learning rate", "| step budget", "| B_crit (95% interval)",
        "| baseline at the end of its budget"]  # no num_workers row: not measured on either side
    assert lines[2] == "| model | candidate0, 1,210 parameters | candidate1, 2,410 parameters | **changed** (another model) |"
    assert lines[3] == "| batch size | 128 | 256 | within noise (tied in select) |"  # the base run found them tied
    assert lines[4] == "| learning rate | 0.471 | 0.763 | within noise (steps to target 31-37 vs 20-33) |"
    assert lines[6] == "| B_crit (95% interval) | 96.2 (70-131) | 58.7 (54.7-62) | **changed** (beyond both intervals) |"
    assert lines[7] == ("| baseline at the end of its budget | meets the target (accuracy 0.955) | "
                        "**misses** the target (accuracy 0.883) | **turned to missing its target** (base met it) |")
    # the timings (as declared per stage), then everything else -- FLOPs and the search cost are no timings
    timings, rest = text.split("<details>")[1], text.split("<details>")[2]
    assert "Timings" in timings
    for key in ("train_seconds", "seconds", "expected_training_time_s", "chosen_time_to_target_s"):
        assert f"| {key} |" in timings and f"| {key} |" not in rest, key
    for key in ("chosen_flops_per_example", "search_cost_ratio"):
        assert f"| {key} |" in rest and f"| {key} |" not in timings, key
    for key in ("critical_batch_size", "accuracy"):  # in the recommendation's rows: not again below it
        assert f"| {key} |" not in rest + timings, key
    assert "| memory_per_example_bytes | 61 B | 0 B | -61 B (-100.0%) |" in rest and "-0 B" not in text


def test_changed_only_beyond_both_intervals_noise_inside_and_one_run_cannot_tell():
    def b_crit(old, new, old_ci, new_ci):
        return _rows(recommendation(_diff(scaling={"critical_batch_size": (old, new), "ci_low": (old_ci[0], new_ci[0]),
                                                   "ci_high": (old_ci[1], new_ci[1])})))["B_crit (95% interval)"]

    assert b_crit(96.2, 58.7, (70, 131), (54.7, 62)) == "**changed** (beyond both intervals)"
    assert b_crit(96.2, 90.0, (70, 131), (60, 120)) == "within noise"
    # beyond the branch's narrow interval but inside the base's wide one: not beyond both
    assert b_crit(100.0, 60.0, (50, 150), (58, 62)) == "within noise"
    assert b_crit(96.2, 58.7, (96.2, 96.2), (58.7, 58.7)) == (  # zero width, and no seed count to say why
        "cannot tell (zero-width intervals, seed counts not recorded: one seed, or seeds that agree exactly)")
    assert b_crit(96.2, 58.7, (None, None), (54.7, 62)) == "cannot tell (no interval recorded)"
    assert b_crit(96.2, 96.2, (70, 131), (70, 131)) == "same"


def test_one_seed_marks_nothing_changed():
    """`scaling.seeds: 0` gives every rate one run: no interval, so a difference cannot be judged, and the
    mark says why."""
    one_seed = dict(select={"batch_size": (128, 64), "learning_rate": (0.47, 0.33), "train_steps": (40, 52),
                            "tie": ("none", "none"), "steps_to_target": (33, 43), "steps_to_target_seeds": (1, 1),
                            "steps_to_target_min": (33, 43), "steps_to_target_max": (33, 43)})
    rows = _rows(recommendation(_diff(**one_seed)))
    assert {rows[k] for k in ("batch size", "learning rate", "step budget")} == {"cannot tell (one seed each: no interval)"}
    # seeds give spreads: the same choices are now beyond both, or within noise where the spreads reach
    spread = _diff(select={**one_seed["select"], "steps_to_target_min": (30, 40), "steps_to_target_max": (36, 47),
                           "steps_to_target_seeds": (2, 2)})
    assert {v for k, v in _rows(recommendation(spread)).items() if k in ("batch size", "learning rate", "step budget")} == {
        "**changed** (not tied in either run's select)",
        "**changed** (beyond both intervals) (steps to target 30-36 vs 40-47)"}
    near = _diff(select={**one_seed["select"], "steps_to_target_min": (30, 32), "steps_to_target_max": (44, 47)})
    assert _rows(recommendation(near))["learning rate"] == "within noise (steps to target 30-44 vs 32-47)"


def test_a_branch_whose_seeds_agree_exactly_and_whose_baseline_turns_to_missing():
    """The issue's branch: two seeds both at 494 steps (an interval of zero width, not one run), the step
    budget 230 -> 600, and a baseline that met its target and now misses it: each is said as such."""
    branch = _diff(
        select={"batch_size": (64, 64), "learning_rate": (0.3, 0.1), "train_steps": (230, 600), "tie": ("none", "none"),
                "steps_to_target": (190, 494), "steps_to_target_min": (180, 494), "steps_to_target_max": (200, 494)},
        select_diagnostics={"steps_to_target_seeds": (2, 2)},
        baseline={"final_meets_target": (True, False), "target_metric": ("accuracy", "accuracy"),
                  "accuracy": (0.96, 0.93)})
    rows = _rows(recommendation(branch))
    assert rows["learning rate"] == ("**changed** (beyond both intervals; seeds agree exactly on this branch) "
                                     "(steps to target 180-200 vs 494-494)")
    assert rows["step budget"] == (rows["learning rate"] + "; **step budget x2.61** (more than x1.5 apart)")
    assert rows["baseline at the end of its budget"] == "**turned to missing its target** (base met it)"
    # the seeds agree exactly on both sides: still two intervals, each value outside the other's
    both = _diff(select={"learning_rate": (0.3, 0.1), "steps_to_target": (494, 230),
                         "steps_to_target_min": (494, 230), "steps_to_target_max": (494, 230),
                         "steps_to_target_seeds": (3, 2)})
    assert _rows(recommendation(both))["learning rate"].startswith(
        "**changed** (beyond both intervals; seeds agree exactly on both sides)")
    # one seed on one side: judged against the other side's interval alone, and said so
    one = _diff(select={"learning_rate": (0.3, 0.1), "steps_to_target": (190, 494), "steps_to_target_min": (190, 480),
                        "steps_to_target_max": (190, 510), "steps_to_target_seeds": (1, 2)})
    assert _rows(recommendation(one))["learning rate"].startswith(
        "**changed** (beyond this branch's interval; one seed on base)")
    inside = _diff(select={"learning_rate": (0.3, 0.1), "steps_to_target": (500, 494), "steps_to_target_min": (500, 480),
                           "steps_to_target_max": (500, 510), "steps_to_target_seeds": (1, 2)})
    assert _rows(recommendation(inside))["learning rate"].startswith("within noise (one seed on base)")
    # a budget within the factor is not marked; the reverse turn is
    small = _diff(select={"train_steps": (230, 300)}, baseline={"final_meets_target": (False, True)})
    rows = _rows(recommendation(small))
    assert "step budget x" not in rows["step budget"]
    assert rows["baseline at the end of its budget"] == "**now meets its target** (base missed it)"


def test_timings_are_marked_as_measured_on_different_runs_with_the_reference_ratio():
    diff = _diff(select_diagnostics={"expected_training_time_s": (0.014, 0.035)},
                 throughput_diagnostics={"peak_flops_per_s": (1.0e11, 0.4e11)})
    folded = metrics_review(diff).split("<details>")[1]
    assert "measured on the clock by different runs" in folded
    assert "Measured on the clock by two different runs (base, this branch)" in folded
    assert ("100 vs 40 GFLOP/s: this branch's run had x0.40 the speed of base's, so a time x2.50 as long is the "
            "machine and its load, not the code") in folded
    assert "No reference timing" in metrics_review(_diff(select_diagnostics={"time_per_step_s": (0.1, 0.2)}))


def test_each_value_appears_in_one_table():
    """What the recommendation shows is not repeated in the table of every other value."""
    diff = _diff(select={"batch_size": (128, 256), "learning_rate": (0.4, 0.7), "train_steps": (40, 33),
                         "steps_to_target": (32, 30)},
                 scaling={"critical_batch_size": (96.0, 58.0), "ci_low": (70.0, 50.0), "ci_high": (131.0, 62.0),
                          "search_cost_ratio": (3.0, 2.0)},
                 baseline={"final_meets_target": (True, False), "target_metric": ("accuracy", "accuracy"),
                           "accuracy": (0.95, 0.88), "steps_to_target": (30, 31)})
    text = metrics_review(diff)
    rest = text.split("<details>")[2]
    for key in ("batch_size", "learning_rate", "train_steps", "critical_batch_size", "ci_low", "accuracy",
                "final_meets_target"):
        assert f"| {key} |" not in rest, key
    assert "| search_cost_ratio |" in rest and "| steps_to_target |" in rest
    for row in ("| batch size |", "| B_crit (95% interval) |", "| baseline at the end of its budget |"):
        assert text.count(row) == 1, row
    # the same values in another order (dvc prints an experiment's keys in another order than a commit's):
    # the same text, so .ci/pr-review can tell the committed results are the runs it showed
    shuffled = {path: dict(reversed(list(entries.items()))) for path, entries in reversed(list(diff.items()))}
    assert metrics_review(shuffled) == text


def test_unchanged_values_are_same_and_missing_ones_say_so():
    text = recommendation(_diff(
        family={"candidates": (0, 0)}, probe={"parameter_count": (1210, 1210)},
        throughput={"recommended_num_workers": (2, 2)},
        select={"batch_size": (128, 128), "learning_rate": (0.47, 0.47), "train_steps": (40, 40),
                "tie": ("none", "none"), "steps_to_target_min": (31, 30), "steps_to_target_max": (37, 36)},
        scaling={"critical_batch_size": (96.2, 96.2), "ci_low": (70.0, 70.0), "ci_high": (131.0, 131.0)},
        baseline={"final_meets_target": (True, True), "target_metric": ("accuracy", "accuracy"),
                  "accuracy": (0.955, 0.955)}))
    assert "| model | as given, 1,210 parameters | as given, 1,210 parameters | same |" in text
    assert "| DataLoader num_workers | 2 | 2 | same |" in text  # measured: a row
    assert set(_rows(text).values()) == {"same"}  # a docs-only change
    # a base revision from before select recorded ties, B_crit missing on both sides, a worker count on one
    old = recommendation(_diff(select={"batch_size": (128, 64)}, throughput={"recommended_num_workers": (None, 2)}))
    assert "| batch size | 128 | 64 | cannot tell (no interval recorded) |" in old
    assert "| B_crit (95% interval) | – | – | not recorded |" in old
    assert "| DataLoader num_workers | – | 2 | cannot tell (recorded on one side only) |" in old


def test_timings_are_declared_per_stage_and_stay_out_of_the_metrics():
    for metrics, diagnostics in out.RESULTS:
        assert metrics.kind == "metrics" and diagnostics.kind == "out" and not diagnostics.cache
        assert metrics.fields and not set(metrics.fields) & set(diagnostics.timings), metrics.path
        assert out.is_timing(diagnostics.path, diagnostics.timings[0]) and not out.is_timing(metrics.path, metrics.fields[0])
        declared = next(s for s in pipeline.STAGES if metrics in s.outputs)
        assert diagnostics in declared.outputs, f"{diagnostics.path}: not an output of stage {declared.name}"
    assert not out.is_timing("reports/scaling/metrics.json", "search_cost_ratio")
    assert not out.is_timing("reports/family/diagnostics.json", "chosen_flops_per_example")
    assert out.is_timing("reports/throughput/diagnostics.json", "scaling_efficiency_measured.2")  # dvc's nested name


def test_write_results_splits_one_stages_numbers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out.write_results(out.BASELINE_METRICS, out.BASELINE_DIAGNOSTICS,
                      {"accuracy": 0.95, "loss": 0.16, "target_metric": "accuracy", "reached_target": True,
                       "train_seconds": 0.03}, also=("accuracy",))
    metrics = json.loads((tmp_path / out.BASELINE_METRICS.path).read_text())
    assert list(metrics) == [*out.BASELINE_METRICS.fields, "accuracy"] and metrics["outcome"] is None
    assert json.loads((tmp_path / out.BASELINE_DIAGNOSTICS.path).read_text()) == {"loss": 0.16, "train_seconds": 0.03}


def test_the_committed_results_hold_the_declared_split():
    for metrics, diagnostics in out.RESULTS:
        held = json.loads((pipeline.ROOT / metrics.path).read_text())
        extra = {held.get("target_metric")} if metrics is out.BASELINE_METRICS else set()
        assert set(held) == set(metrics.fields) | extra, metrics.path
        assert (pipeline.ROOT / diagnostics.path).is_file(), diagnostics.path


def test_a_second_json_body_on_stdin_is_merged():
    bodies = json.dumps(_diff(select={"batch_size": (128, 128)})) + "\n" + json.dumps(
        _diff(select_diagnostics={"time_per_step_s": (0.1, 0.2)}))
    assert set(review.read_diffs(bodies)) == {"reports/select/metrics.json", "reports/select/diagnostics.json"}
    assert review.read_diffs("") == {}


# ---------------------------------------------------------------------------- committed results, one profile

def _stub_active_profile(text: str) -> str | None:
    """Stands in for stages.pipeline.declaration.active_profile: the name in a '# profile: NAME' line."""
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("# profile:")), None)


@pytest.fixture
def revisions(tmp_path, monkeypatch):
    """A git repository tagged `none` (no dvc.yaml), `full` (no profile), `small` and `small2` (the small profile)."""
    monkeypatch.setattr(pipeline, "active_profile", _stub_active_profile, raising=False)
    monkeypatch.chdir(tmp_path)
    git = lambda *args: subprocess.run(["git", *args], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    for tag, text in (("none", None), ("full", "stages: {}\n"), ("small", "# profile: small\nstages: {}\n"),
                      ("small2", "# profile: small\nstages: {a: {cmd: x}}\n")):
        name = "README" if text is None else "dvc.yaml"
        (tmp_path / name).write_text(text or tag)
        git("add", name)
        git("commit", "-q", "-m", tag)
        git("tag", tag)
    return tmp_path


def test_committed_results_compare_only_within_one_profile(revisions):
    assert review.profile_note("small", "small2") is None
    assert review.profile_note("full", "full") is None
    note = review.profile_note("full", "small")
    assert note.count("\n") == 0 and "the full run" in note and "the `small` profile" in note
    assert "no dvc.yaml" in review.profile_note("none", "small")
    assert review.main(["same-profile", "small", "small2"]) == 0
    assert review.main(["same-profile", "full", "small"]) == 1
