"""Every file a stage writes, declared once: its path, the stage that writes it, and what a reader
needs to check it (required columns, numeric columns, allowed values, required keys).

The stages write to these paths, the pipeline declaration (stages/pipeline/declaration.py) lists
them as outputs and inputs, and `read_csv` / `read_json` / `read_yaml` / `read_text` below are the
one way a stage reads another stage's file: a missing, cut-off or inconsistent file stops with an
`InputError` naming the file and the command that rewrites it -- before any output is touched.

Metrics files (kind "metrics") hold only the numbers a reviewer compares across revisions -- the
recommendation, B_crit with its interval, the search cost, the baseline's receipts: their declared
`fields`, so `dvc metrics diff` and `dvc exp show --only-changed` stay a screen wide. Everything else
a stage computes (timings, the study's limits, echoes of the settings, fitted details) goes to its
diagnostics file (kind "out", tracked by git too), whose `timings` name the values measured on the
clock (they differ from run to run on the same code: the review folds them apart). `write_results`
splits one stage's numbers between the two. Prose goes to its own markdown output.
"""
from __future__ import annotations

import csv
import io
import json
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from stages.core.errors import InputError
from stages.core.types import NOT_TRAINED, Outcome, ProbeStatus

OutputKind = Literal["out", "metrics", "image"]


@dataclass(frozen=True)
class Output:
    path: str                                 # relative to the project root; may hold {batch_size} or {candidate}
    producer: str                             # the command that writes it (the declaration checks it)
    kind: OutputKind = "out"
    cache: bool = False                       # small outputs are tracked by git so branches compare without a DVC remote
    columns: tuple[str, ...] = ()             # CSV: columns a reader relies on
    numeric: tuple[str, ...] = ()             # CSV: columns that must hold numbers (empty cells allowed)
    allowed: tuple[tuple[str, tuple], ...] = ()  # CSV: (column, allowed values); empty cells allowed
    keys: tuple[str, ...] = ()                # JSON / YAML: keys a reader relies on
    fields: tuple[str, ...] = ()              # metrics: every key it holds (what a reviewer compares)
    timings: tuple[str, ...] = ()             # diagnostics: keys measured on the clock or decided from it

    def at(self, **wildcards: Any) -> Path:
        """The path with its wildcards filled in, e.g. SCALING_TRIALS.at(batch_size=64)."""
        return Path(self.path.format(**wildcards))

    def rerun(self, **wildcards: Any) -> str:
        return self.producer.format(**wildcards)


SETTINGS_CMD = "python -m stages.settings"
FAMILY_TRIAL_CMD = "python -m stages.family trial --candidate {candidate}"
FAMILY_CMD = "python -m stages.family choose"
PROBE_CMD = "python -m stages.probe"
THROUGHPUT_CMD = "python -m stages.throughput"
SCALING_WAVE1_CMD = "python -m stages.scaling coarse --batch-size {batch_size}"
SCALING_WAVE2_PLAN_CMD = "python -m stages.scaling gaps"
SCALING_WAVE2_CMD = "python -m stages.scaling fill --batch-size {batch_size}"
SCALING_CONTENDERS_CMD = "python -m stages.scaling contenders"
SCALING_TRIALS_CMD = "python -m stages.scaling trials --batch-size {batch_size}"
SCALING_CMD = "python -m stages.scaling summarize"
SELECT_CMD = "python -m stages.select"
BASELINE_CMD = "python -m stages.baseline"
REPORT_CMD = "python -m stages.report"

_STATUS = tuple(typing.get_args(ProbeStatus))
_OUTCOME = (*typing.get_args(Outcome), *NOT_TRAINED)  # skipped: ruled out by earlier stages; predicted: not trained (adaptive)

# ---------------------------------------------------------------------------- settings
# The settings in force -- params.yaml with the active profiles applied, every default filled in -- which
# every other stage tracks its keys in (stages/core/effective.py); and which params.yaml keys the profiles
# override, with both values.
SETTINGS_EFFECTIVE = Output("reports/settings/effective.yaml", SETTINGS_CMD, keys=("workload", "optimizer", "runtime"))
SETTINGS_OVERRIDES = Output("reports/settings/overrides.yaml", SETTINGS_CMD, keys=("profiles", "overridden"))

# ---------------------------------------------------------------------------- family
_FAMILY_CHECKS = dict(columns=("candidate", "overrides", "parameters", "flops_per_example", "batch_size",
                               "time_per_step_s", "status", "learning_rate", "steps_to_target", "steps_low",
                               "steps_high", "time_to_target_s", "final_metric", "max_steps", "trials", "reason"),
                      numeric=("parameters", "flops_per_example", "batch_size", "time_per_step_s", "learning_rate",
                               "steps_to_target", "steps_low", "steps_high", "time_to_target_s", "final_metric",
                               "max_steps", "trials"),
                      allowed=(("status", ("reached", "not_reached", "out_of_memory", "failed")),))
FAMILY_TRIAL = Output("reports/family/trials/{candidate}.csv", FAMILY_TRIAL_CMD, **_FAMILY_CHECKS)
FAMILY_TABLE = Output("reports/family/candidates.csv", FAMILY_CMD, **_FAMILY_CHECKS)
# The choice alone -- what the later stages build -- so that a family rerun that chooses the same model
# leaves it byte for byte and DVC reruns nothing after it; the measurements and the reasoning sit apart.
FAMILY_MODEL = Output("reports/family/model.yaml", FAMILY_CMD,
                      keys=("workload", "kwargs", "overrides", "candidates", "rule", "chosen"))
FAMILY_REASONING = Output("reports/family/reasoning.md", FAMILY_CMD)
FAMILY_METRICS = Output("reports/family/metrics.json", FAMILY_CMD, "metrics",
                        fields=("candidates", "reached", "chosen_index", "chosen_parameters"))
FAMILY_DIAGNOSTICS = Output("reports/family/diagnostics.json", FAMILY_CMD, timings=("chosen_time_to_target_s",))
FAMILY_PLOT = Output("reports/family/candidates.png", FAMILY_CMD, "image")

# ---------------------------------------------------------------------------- probe
PROBE_CSV = Output("reports/probe/probe.csv", PROBE_CMD, columns=("batch_size", "status", "reason", "peak_memory_bytes"),
                   numeric=("batch_size", "peak_memory_bytes"), allowed=(("status", _STATUS),))
PROBE_METRICS = Output("reports/probe/metrics.json", PROBE_CMD, "metrics", keys=("max_batch_size",),
                       fields=("max_batch_size", "parameter_count"))
PROBE_DIAGNOSTICS = Output("reports/probe/diagnostics.json", PROBE_CMD, timings=("seconds",))  # the memory model, device, sizes tried
PROBE_PLOT = Output("reports/probe/memory.png", PROBE_CMD, "image")
PROBE_NOTES = Output("reports/probe/notes.md", PROBE_CMD)  # the first failure's message, how trials were isolated
# probe.plan_for: predicted peak per batch size and category (header only when there is no plan)
PLAN_CATEGORIES = ("parameters", "buffers", "gradients", "optimizer_state", "activations", "temporaries", "inputs",
                   "workspace")
PROBE_PLAN_CSV = Output("reports/probe/memory_plan.csv", PROBE_CMD,
                        columns=("batch_size", "status", "predicted_peak_bytes",
                                 *(f"{c}_bytes" for c in PLAN_CATEGORIES), "reason"),
                        numeric=("batch_size", "predicted_peak_bytes", *(f"{c}_bytes" for c in PLAN_CATEGORIES)),
                        allowed=(("status", ("estimated", "refused")),))

# ---------------------------------------------------------------------------- throughput
THROUGHPUT_CSV = Output("reports/throughput/throughput.csv", THROUGHPUT_CMD,
                        columns=("batch_size", "examples_per_s", "time_per_step_s", "regime"),
                        numeric=("batch_size", "examples_per_s", "time_per_step_s"))
THROUGHPUT_WINDOWS = Output("reports/throughput/windows.csv", THROUGHPUT_CMD)
THROUGHPUT_METRICS = Output("reports/throughput/metrics.json", THROUGHPUT_CMD, "metrics",
                            keys=("largest_useful_batch_size",),
                            fields=("largest_useful_batch_size", "recommended_num_workers"))  # null: not measured
THROUGHPUT_DIAGNOSTICS = Output("reports/throughput/diagnostics.json", THROUGHPUT_CMD,
                                timings=("examples_per_s_recommended_workers", "examples_per_s_0_workers",
                                         "num_workers_speedup", "largest_clearly_useful_batch_size",
                                         "input_bound_batch_sizes", "regimes", "peak_flops_per_s",
                                         "first_step_overhead_s", "scaling_efficiency_measured", "seconds",
                                         "reference_time_per_step_s", "time_per_step_drift"))
THROUGHPUT_WORKERS = Output("reports/throughput/workers.csv", THROUGHPUT_CMD,  # examples/s per DataLoader num_workers
                            columns=("num_workers", "examples_per_s", "recommended"), numeric=("num_workers", "examples_per_s"))
THROUGHPUT_NOTES = Output("reports/throughput/diagnosis.md", THROUGHPUT_CMD)  # the diagnosis and the methods, in words
THROUGHPUT_DEVICES = Output("reports/throughput/devices.csv", THROUGHPUT_CMD,  # data parallel; no rows with devices [1]
                            columns=("devices", "per_device_batch_size", "status", "reason", "examples_per_s",
                                     "scaling_efficiency", "scaling_efficiency_ci_low", "scaling_efficiency_ci_high"),
                            numeric=("devices", "per_device_batch_size", "examples_per_s", "scaling_efficiency",
                                     "scaling_efficiency_ci_low", "scaling_efficiency_ci_high"),
                            allowed=(("status", ("ok", "crashed", "timeout")),))
THROUGHPUT_DEVICE_WINDOWS = Output("reports/throughput/device_windows.csv", THROUGHPUT_CMD)
THROUGHPUT_DEVICES_PLOT = Output("reports/throughput/devices.png", THROUGHPUT_CMD, "image")
THROUGHPUT_PLOTS = tuple(Output(f"reports/throughput/{name}.png", THROUGHPUT_CMD, "image")
                         for name in ("examples_per_s", "time_per_step", "time_split"))

# ---------------------------------------------------------------------------- scaling
_TRIAL_CHECKS = dict(columns=("batch_size", "learning_rate", "seed", "phase", "outcome", "steps_to_target",
                              "steps_run", "examples_run", "max_steps", "seconds", "effective_learning_rate", "reason"),
                     numeric=("batch_size", "learning_rate", "seed", "steps_to_target", "steps_run", "examples_run",
                              "max_steps", "seconds", "effective_learning_rate"),
                     allowed=(("outcome", _OUTCOME),))
_CURVE_CHECKS = dict(columns=("batch_size", "learning_rate", "seed", "phase", "examples", "step"),
                     numeric=("batch_size", "learning_rate", "seed", "examples", "step"))
# The study runs in three waves of independent jobs (stages/scaling/waves.py): the coarse search at the
# sizes spread over the range (wave 1), then at the sizes between them -- or their prediction -- as
# wave2.json decides from wave 1 (wave 2), then refinement and seeds where a size can still win, as
# contenders.json decides from both (wave 3: trials/, every size's trials, the coarse ones included).
SCALING_WAVE1 = Output("reports/scaling/wave1/bs_{batch_size}.csv", SCALING_WAVE1_CMD, **_TRIAL_CHECKS)
SCALING_WAVE1_CURVES = Output("reports/scaling/wave1/bs_{batch_size}_curves.csv", SCALING_WAVE1_CMD, **_CURVE_CHECKS)
SCALING_WAVE2_PLAN = Output("reports/scaling/wave2.json", SCALING_WAVE2_PLAN_CMD, keys=("sizes",))
SCALING_WAVE2 = Output("reports/scaling/wave2/bs_{batch_size}.csv", SCALING_WAVE2_CMD, **_TRIAL_CHECKS)
SCALING_WAVE2_CURVES = Output("reports/scaling/wave2/bs_{batch_size}_curves.csv", SCALING_WAVE2_CMD, **_CURVE_CHECKS)
SCALING_CONTENDERS = Output("reports/scaling/contenders.json", SCALING_CONTENDERS_CMD, keys=("sizes", "objective"))
SCALING_TRIALS = Output("reports/scaling/trials/bs_{batch_size}.csv", SCALING_TRIALS_CMD, **_TRIAL_CHECKS)
SCALING_TRIAL_CURVES = Output("reports/scaling/trials/bs_{batch_size}_curves.csv", SCALING_TRIALS_CMD, **_CURVE_CHECKS)
SCALING_ALL_TRIALS = Output("reports/scaling/trials.csv", SCALING_CMD, **_TRIAL_CHECKS)
SCALING_STEPS = Output("reports/scaling/steps_to_target.csv", SCALING_CMD,
                       columns=("batch_size", "status", "best_learning_rate", "steps_to_target", "regime"),
                       numeric=("batch_size", "best_learning_rate", "steps_to_target"),
                       allowed=(("status", ("reached", "not_reached", "boundary", "skipped", "predicted", "missing")),))
SCALING_CURVES = Output("reports/scaling/curves.csv", SCALING_CMD,  # every seed of each rate that reached the target
                        columns=("batch_size", "learning_rate", "seed", "step"),
                        numeric=("batch_size", "learning_rate", "seed", "step"))
SCALING_NOISE = Output("reports/scaling/noise_scale.csv", SCALING_CMD)
SCALING_METRICS = Output("reports/scaling/metrics.json", SCALING_CMD, "metrics",
                         keys=("critical_batch_size", "critical_batch_size_kind", "ci_low", "ci_high", "s_min"),
                         fields=("critical_batch_size", "critical_batch_size_kind", "ci_low", "ci_high", "s_min",
                                 "search_cost_ratio", "trials", "examples_run"))  # the study's cost: examples
SCALING_DIAGNOSTICS = Output("reports/scaling/diagnostics.json", SCALING_CMD,  # the study's limits, E_min, noise scale
                             keys=("batch_sizes", "max_steps", "learning_rate_min_tried", "learning_rate_max_tried"),
                             timings=("seconds",))
SCALING_NOTES = Output("reports/scaling/notes.md", SCALING_CMD)  # what the fit and the noise-scale run concluded, in words
SCALING_PLOTS = tuple(Output(f"reports/scaling/{name}.png", SCALING_CMD, "image")
                      for name in ("steps_to_target", "examples_to_target", "learning_rate", "curves"))

# ---------------------------------------------------------------------------- select
SELECT_CONFIG = Output("reports/select/initial_config.yaml", SELECT_CMD,
                       keys=("batch_size", "learning_rate", "train_steps", "optimizer", "workload", "seed"))
SELECT_DECISION = Output("reports/select/decision.csv", SELECT_CMD)
SELECT_METRICS = Output("reports/select/metrics.json", SELECT_CMD, "metrics",
                        fields=("batch_size", "learning_rate", "train_steps", "devices", "objective", "steps_to_target",
                                "steps_to_target_min", "steps_to_target_max", "tie",
                                "study_training_runs"))  # the scaling study's examples in training runs of the choice
SELECT_DIAGNOSTICS = Output("reports/select/diagnostics.json", SELECT_CMD,
                            timings=("expected_training_time_s", "expected_time_to_target_s", "time_per_step_s",
                                     "resource_cost", "device_hours", "runner_up_objective_value", "scaling_efficiency",
                                     "study_time_training_runs"))
SELECT_REASONING = Output("reports/select/reasoning.md", SELECT_CMD)
SELECT_PLOTS = tuple(Output(f"reports/select/{name}.png", SELECT_CMD, "image")
                     for name in ("training_time", "resource_use"))

# ---------------------------------------------------------------------------- baseline, report
BASELINE_METRICS = Output("reports/baseline/metrics.json", BASELINE_CMD, "metrics",  # + the target metric's value
                          fields=("target_metric", "target_value", "reached_target", "final_meets_target",
                                  "steps_to_target", "outcome"))
BASELINE_DIAGNOSTICS = Output("reports/baseline/diagnostics.json", BASELINE_CMD,
                              timings=("train_seconds", "eval_seconds", "first_step_seconds", "predicted_time_per_step_s",
                                       "measured_time_per_step_s", "time_per_step_ratio", "predicted_time_to_target_s",
                                       "measured_time_to_target_s", "time_to_target_ratio"))
BASELINE_CURVE = Output("reports/baseline/curve.csv", BASELINE_CMD)
BASELINE_PLOT = Output("reports/baseline/curve.png", BASELINE_CMD, "image")
REPORT = Output("reports/REPORT.md", REPORT_CMD)

# ---------------------------------------------------------------------------- manifests
# One per job, written last (stages/core/provenance.py): each file's content hash and rows, and what the
# job was run for (its command, the workload and model it built). A reader checks the file against it.
MANIFESTS: dict[str, Output] = {cmd: Output(path, cmd) for cmd, path in (
    (SETTINGS_CMD, "reports/settings/manifest.json"),
    (FAMILY_TRIAL_CMD, "reports/family/trials/{candidate}.manifest.json"),
    (FAMILY_CMD, "reports/family/manifest.json"),
    (PROBE_CMD, "reports/probe/manifest.json"),
    (THROUGHPUT_CMD, "reports/throughput/manifest.json"),
    (SCALING_WAVE1_CMD, "reports/scaling/wave1/bs_{batch_size}.manifest.json"),
    (SCALING_WAVE2_PLAN_CMD, "reports/scaling/wave2.manifest.json"),
    (SCALING_WAVE2_CMD, "reports/scaling/wave2/bs_{batch_size}.manifest.json"),
    (SCALING_CONTENDERS_CMD, "reports/scaling/contenders.manifest.json"),
    (SCALING_TRIALS_CMD, "reports/scaling/trials/bs_{batch_size}.manifest.json"),
    (SCALING_CMD, "reports/scaling/manifest.json"),
    (SELECT_CMD, "reports/select/manifest.json"),
    (BASELINE_CMD, "reports/baseline/manifest.json"),
    (REPORT_CMD, "reports/report.manifest.json"),
)}


def all_outputs() -> list[Output]:
    """Every declared output (the manifests included)."""
    found: list[Output] = []
    for value in list(globals().values()):
        for item in (value if isinstance(value, tuple) else (value,)):
            if isinstance(item, Output) and item not in found:
                found.append(item)
    return found + [m for m in MANIFESTS.values() if m not in found]


def folders() -> set[str]:
    """Every folder a stage writes into ('reports/scaling/trials' for 'reports/scaling/trials/bs_{batch_size}.csv')."""
    return {Path(o.path.split("{", 1)[0] + "x").parent.as_posix() for o in all_outputs()}


def _pattern(path: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", path)
    regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[A-Za-z0-9]+)" for i, p in enumerate(parts))  # 64, candidate0
    return re.compile(regex + "$")


def find_output(path: str | Path) -> tuple[Output, dict] | None:
    """The declared output a written path is, with its wildcards ('reports/scaling/trials/bs_64.csv' ->
    SCALING_TRIALS, {'batch_size': '64'}); None for a path no stage declares."""
    text = Path(path).as_posix()
    for candidate in all_outputs():
        m = _pattern(candidate.path).match(text)
        if m:
            return candidate, m.groupdict()
    return None


def manifest_for_path(path: str) -> Path | None:
    """The manifest that lists a written file (by its path relative to the project root), or None."""
    found = find_output(path)
    return manifest_of(found[0], **found[1]) if found else None


def manifest_of(out: Output, **wildcards: Any) -> Path | None:
    """The manifest that lists `out` (its job's), or None for an output outside any manifest."""
    manifest = MANIFESTS.get(out.producer)
    if manifest is None or out is manifest:
        return None
    names = set(_pattern(manifest.path).groupindex)
    return manifest.at(**{k: v for k, v in wildcards.items() if k in names})


# each stage's metrics file with its diagnostics file
RESULTS = ((FAMILY_METRICS, FAMILY_DIAGNOSTICS), (PROBE_METRICS, PROBE_DIAGNOSTICS),
           (THROUGHPUT_METRICS, THROUGHPUT_DIAGNOSTICS), (SCALING_METRICS, SCALING_DIAGNOSTICS),
           (SELECT_METRICS, SELECT_DIAGNOSTICS), (BASELINE_METRICS, BASELINE_DIAGNOSTICS))


def write_results(metrics: Output, diagnostics: Output, values: dict, also: tuple[str, ...] = ()) -> None:
    """One stage's numbers, split: `metrics` gets its declared fields (null where a value is absent) and the
    keys in `also` (the baseline's target metric under its own name); `diagnostics` gets everything else.
    The diagnostics file is written first: the metrics file is what the next stage reads for its decision."""
    from stages.core.io import write_json

    kept = (*metrics.fields, *also)
    write_json(diagnostics.path, {k: v for k, v in values.items() if k not in kept})
    write_json(metrics.path, {k: values.get(k) for k in kept})


def is_timing(path: str, key: str) -> bool:
    """Whether `key` of the results file `path` (metrics or diagnostics; dvc's dotted name for a nested key)
    was measured on the clock, as the stage's diagnostics declares -- also for a revision from before the
    split, whose metrics.json still held its timings."""
    folder = str(Path(path).parent)
    return any(key.split(".")[0] in d.timings for _, d in RESULTS if str(Path(d.path).parent) == folder)


def notes_markdown(sections: dict[str, str | None]) -> str:
    """A notes output: one `##` section per non-empty text (the prose kept out of a metrics file)."""
    parts = [f"## {title}\n\n{text.strip()}\n" for title, text in sections.items() if text and text.strip()]
    return "\n".join(parts) if parts else "Nothing to note.\n"


# ---------------------------------------------------------------------------- validated readers

def verify_path(root: Path, rel: str) -> None:
    """The manifest check of `_raw` for the file `rel` of the project at `root`, read by path (the report
    reads its inputs forgivingly): InputError if that declared output differs from what its job wrote,
    was made for another model or with other settings than those in force (stages/core/provenance.verify);
    a path no stage declares is not checked."""
    from stages.core.provenance import verify

    found = find_output(rel)
    manifest = manifest_of(found[0], **found[1]) if found else None
    if manifest is not None:
        path = Path(root) / rel
        verify(path, path.read_bytes(), Path(root) / manifest, found[0].rerun(**found[1]), rel=Path(rel).as_posix())


def _raw(out: Output, wildcards: dict) -> tuple[Path, str]:
    """The file's text, checked against its job's manifest (stages/core/provenance.verify)."""
    from stages.core.provenance import verify

    path = out.at(**wildcards)
    if not path.is_file():
        raise InputError(path, "does not exist", out.rerun(**wildcards))
    try:
        data = path.read_bytes()
        text = data.decode()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot be read ({type(e).__name__}: {e})", out.rerun(**wildcards)) from None
    verify(path, data, manifest_of(out, **wildcards), out.rerun(**wildcards))
    return path, text


def read_csv(out: Output, *, expect_batch_sizes: list[int] | None = None, allow_repeats: bool = False,
             **wildcards: Any):
    """The CSV as a DataFrame after checking it is complete: it ends with a newline (not cut mid-row),
    every row has the header's number of fields, the declared columns exist, numeric columns hold
    numbers, labelled columns hold allowed values, and (with `expect_batch_sizes`) there is exactly
    the expected set of batch sizes, each once (or, with `allow_repeats`, each at least once)."""
    import pandas as pd

    path, text = _raw(out, wildcards)
    fail = lambda problem: InputError(path, problem, out.rerun(**wildcards))  # noqa: E731
    if not text.strip():
        raise fail("is empty")
    if not text.endswith("\n"):
        raise fail("ends in the middle of a row (the file was cut off)")
    rows = list(csv.reader(io.StringIO(text)))
    width = len(rows[0])
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != width:
            raise fail(f"line {i} has {len(row)} fields, the header has {width}")
    try:
        frame = pd.read_csv(io.StringIO(text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise fail(f"is not a readable CSV ({type(e).__name__}: {e})") from None
    missing = [c for c in out.columns if c not in frame.columns]
    if missing:
        raise fail(f"lacks column(s) {', '.join(missing)}; received columns {', '.join(map(str, frame.columns))}")
    for column in out.numeric:
        values = frame[column]
        numbers = pd.to_numeric(values, errors="coerce")
        bad = values[numbers.isna() & values.notna()]
        if len(bad):
            raise fail(f"column {column} holds {bad.iloc[0]!r} in row {bad.index[0] + 1}; allowed: numbers")
        frame[column] = numbers
    for column, allowed in out.allowed:
        values = frame[column]
        bad = values[values.notna() & ~values.isin(allowed)]
        if len(bad):
            raise fail(f"column {column} holds {bad.iloc[0]!r} in row {bad.index[0] + 1}; allowed: "
                       f"{', '.join(map(str, allowed))}")
    if expect_batch_sizes is not None:
        found = [int(b) for b in frame["batch_size"].dropna()]
        missing_sizes = [b for b in expect_batch_sizes if b not in found]
        extra = sorted({b for b in found if b not in expect_batch_sizes})
        twice = [] if allow_repeats else sorted({b for b in found if found.count(b) > 1})
        if missing_sizes or extra or twice or frame["batch_size"].isna().any():
            detail = "; ".join(part for part in (
                f"no row for batch size(s) {missing_sizes}" if missing_sizes else "",
                f"unexpected batch size(s) {extra}" if extra else "",
                f"more than one row for {twice}" if twice else "",
                "a row without a batch size" if frame["batch_size"].isna().any() else "") if part)
            raise fail(f"{detail}; expected {'rows' if allow_repeats else 'one row'} per batch size {expect_batch_sizes}")
    return frame


def _keys(out: Output, path: Path, data: Any, wildcards: dict, what: str) -> Any:
    if not isinstance(data, dict):
        raise InputError(path, f"holds a {type(data).__name__}, not a {what} of named values", out.rerun(**wildcards))
    missing = [k for k in out.keys if k not in data]
    if missing:
        raise InputError(path, f"lacks key(s) {', '.join(missing)}", out.rerun(**wildcards))
    return data


def read_json(out: Output, **wildcards: Any) -> dict:
    path, text = _raw(out, wildcards)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(path, f"is not valid JSON ({e}; cut off?)", out.rerun(**wildcards)) from None
    return _keys(out, path, data, wildcards, "JSON object")


def read_yaml(out: Output, **wildcards: Any) -> dict:
    import yaml

    path, text = _raw(out, wildcards)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InputError(path, f"is not valid YAML ({str(e).splitlines()[0]})", out.rerun(**wildcards)) from None
    return _keys(out, path, data, wildcards, "mapping")


def read_text(out: Output, **wildcards: Any) -> str:
    return _raw(out, wildcards)[1]
