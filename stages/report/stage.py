"""Stage `report`: the one document a person reads, built only from the stages' output files.

    python -m stages.report      # writes reports/REPORT.md (image links are relative to reports/)

It opens with the recommended initial configuration (reports/select/initial_config.yaml) and the
baseline's result, then walks family -> probe -> throughput -> scaling -> select -> baseline: each section
states its decision, shows its plots and the numbers behind the decision (its metrics.json in
full, a link to its diagnostics.json -- timings and the rest -- and its CSV table). It reads no params and computes nothing new: every number is copied
from the file named next to it. A missing, unreadable or partial input becomes a visible note
that names the file and the stage that writes it -- the report is still written.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from stages.core import outputs as out
from stages.core.errors import InputError
from stages.core.io import write_text
from stages.core.units import Units, count
from stages.core.log import info
from stages.pipeline.declaration import load_stage_params
from stages.report.format import Inputs, fmt, key_value_table, metrics_table, table

REPORT = out.REPORT.path
IMAGES = {"family": (out.FAMILY_PLOT,), "probe": (out.PROBE_PLOT,), "throughput": out.THROUGHPUT_PLOTS, "scaling": out.SCALING_PLOTS,
          "select": out.SELECT_PLOTS, "baseline": (out.BASELINE_PLOT,)}

# CSV columns shown per table (contract columns first); a column missing from the file is named in a note.
PROBE_COLUMNS = ["batch_size", "status", "peak_memory_bytes", "steps_run", "seconds", "reason"]
THROUGHPUT_COLUMNS = ["batch_size", "examples_per_s", "examples_per_s_ci_low", "examples_per_s_ci_high",
                      "time_per_step_s", "data_wait_s", "compute_s", "input_bound", "doubling_ratio", "regime",
                      "utilisation"]
DEVICES_COLUMNS = ["devices", "global_batch_size", "status", "examples_per_s", "examples_per_s_ci_low",
                   "examples_per_s_ci_high", "ideal_examples_per_s", "scaling_efficiency", "scaling_efficiency_ci_low",
                   "scaling_efficiency_ci_high", "compute_s", "communication_s", "reason"]
SCALING_COLUMNS = ["batch_size", "best_learning_rate", "steps_to_target", "steps_to_target_spread",
                   "examples_to_target", "regime"]
FAMILY_COLUMNS = ["candidate", "overrides", "parameters", "flops_per_example", "status", "learning_rate",
                  "steps_to_target", "steps_low", "steps_high", "time_per_step_s", "time_to_target_s", "final_metric",
                  "reason"]
CONFIG_KEYS = ["batch_size", "learning_rate", "learning_rate_schedule", "train_steps", "expected_training_time_s",
               "objective"]


def _images(stage_name: str, inputs: Inputs) -> list[str]:
    """The stage's PNGs as declared in stages/core/outputs.py, linked relative to reports/."""
    lines = []
    for image in IMAGES[stage_name]:
        if inputs.exists(image.path):
            rel = Path(image.path).relative_to("reports").as_posix()
            lines += [f"![{Path(image.path).stem.replace('_', ' ')}]({rel})", ""]
        else:
            lines += [inputs.missing_note(image.path, stage_name), ""]
    return lines


def _metric(metrics: dict | None, key: str):
    return None if metrics is None else metrics.get(key)


def _results(inputs: Inputs, metrics: out.Output, diagnostics: out.Output, stage: str) -> tuple[dict | None, dict | None]:
    """A stage's metrics.json, and its numbers with its diagnostics.json's (what the decision sentences quote)."""
    m, d = inputs.json(metrics.path, stage), inputs.json(diagnostics.path, stage)
    return m, None if m is None and d is None else {**(d or {}), **(m or {})}


def recommended(inputs: Inputs) -> list[str]:
    path = out.SELECT_CONFIG.path
    config = inputs.yaml(path, "select")
    lines = ["## Recommended initial configuration", ""]
    if config is None:
        return lines + [inputs.notes_for(path), ""]
    if not isinstance(config, dict):
        return lines + [f"> **Unreadable input:** `{path}` is not a mapping; rerun `dvc repro select`.", ""]
    rows = [(k, config.get(k)) for k in CONFIG_KEYS if k != "learning_rate_schedule" or k in config]
    optimizer = config.get("optimizer")
    if isinstance(optimizer, dict):
        fixed = ", ".join(f"{k} {fmt(v)}" for k, v in optimizer.items() if k != "name")
        rows.insert(3, ("optimizer", f"{optimizer.get('name', '?')} ({fixed})" if fixed else optimizer.get("name")))
    workload = config.get("workload")
    if isinstance(workload, dict):
        args = ", ".join(f"{k} {fmt(v)}" for k, v in (workload.get("kwargs") or {}).items())
        rows.insert(0, ("workload", f"{workload.get('name', '?')} ({args})" if args else workload.get("name")))
    lines += [f"From `{path}` (use it as the starting point of tuning):", ""]
    lines += key_value_table(rows, path, inputs)
    extra = {k: v for k, v in config.items() if k not in CONFIG_KEYS and k not in ("optimizer", "workload")}
    if extra:
        lines += ["", "Also in the file: " + ", ".join(f"{k} = {fmt(v, k)}" for k, v in extra.items()) + "."]
    _, choice = _results(inputs, out.SELECT_METRICS, out.SELECT_DIAGNOSTICS, "select")
    edge = edge_line(choice, config.get("batch_size"))
    if edge:
        lines += ["", edge]
    _, baseline = _results(inputs, out.BASELINE_METRICS, out.BASELINE_DIAGNOSTICS, "baseline")
    if baseline is not None:
        lines += ["", baseline_line(baseline, config)]
    return lines + [""]


def edge_line(choice: dict | None, batch_size) -> str:
    """The warning select's diagnostics carry when the choice sits at the smallest or largest size studied."""
    if not choice or choice.get("edge_of_study") not in ("smallest", "largest"):
        return ""
    sizes = [str(x) for x in choice.get("sizes_to_add") or []]
    return (f"**At the edge of the study:** batch size {fmt(batch_size)} is the {choice['edge_of_study']} size the "
            f"scaling study trained, and {' and '.join(sizes)} fit{'s' if len(sizes) == 1 else ''} but "
            f"{'was' if len(sizes) == 1 else 'were'} not studied: add {' and '.join(sizes)} to scaling.batch_sizes to "
            f"check that {'it is' if len(sizes) == 1 else 'they are'} not faster (section 5).")


def _in_units(baseline: dict) -> str:
    """' (3,520 sequences; 225,280 bytes; 2.45 epochs of the training set)': the amount to the target as the baseline
    recorded it."""
    units = Units.from_record(baseline.get("units"))
    examples, tokens, epochs = (baseline.get(k) for k in ("examples_to_target", "tokens_to_target", "epochs_to_target"))
    if examples is None:
        return ""
    parts = [count(examples, units.example)] + ([count(tokens, units.token)] if tokens is not None else [])
    parts += [f"{fmt(epochs)} epochs of the training set"] if epochs is not None else []
    return f" ({'; '.join(parts)})"


def baseline_line(baseline: dict, config: dict) -> str:
    """The baseline's result in one paragraph: where it reached the target and held it (the study's count), its time
    to target against select's prediction, and apart from it the whole budget's training time and the evaluations'."""
    steps, first = baseline.get("steps_to_target"), baseline.get("first_reached_step", baseline.get("steps_to_target"))
    reached, final = baseline.get("reached_target"), baseline.get("final_meets_target")
    seed = f" (seed {fmt(baseline.get('seed'))})" if baseline.get("seed") is not None else ""
    text = f"**Baseline check:** trained once with this configuration{seed}, it "
    if steps is not None and final is False:  # a file from before steps to target counted the crossing that holds
        text += (f"reached the target at step {fmt(steps)} but at the end of the budget **no longer meets** it (select's "
                 f"rule should have kept it).")
    elif steps is not None:
        fell = f" (it first crossed at step {fmt(first)} and fell back)" if first is not None and first != steps else ""
        ratio = baseline.get("time_to_target_ratio")
        text += (f"reached the target at step {fmt(steps)}{_in_units(baseline)} and held it to the end of the budget"
                 f"{fell}. Time to target: {fmt(baseline.get('measured_time_to_target_s'), 'measured_time_to_target_s')} "
                 f"of training (predicted {fmt(baseline.get('predicted_time_to_target_s'), 'predicted_time_to_target_s')}"
                 + (f"; measured / predicted {ratio:.2f}" if isinstance(ratio, (int, float)) else "") + ").")
    elif reached:
        text += (f"reached the target at step {fmt(first)} but fell back, and does **not** hold it at the end of the "
                 f"budget (select's rule should have kept it).")
    elif reached is None:
        text += "ran."
    else:
        text += "did **not** reach the target."
    whole = baseline.get("train_steps") or config.get("train_steps")
    text += (f" The whole budget, {fmt(whole)} steps, took {fmt(baseline.get('train_seconds'), 'train_seconds')} of "
             f"training")
    if baseline.get("eval_seconds") is not None:
        n = baseline.get("evaluations")
        text += (f", and {'its ' + fmt(n) + ' evaluations' if n else 'the evaluations'} "
                 f"{fmt(baseline.get('eval_seconds'), 'eval_seconds')} more (timed apart)")
    return text + " (details in section 6)."


def _evidence(stage: str, inputs: Inputs, m: dict | None, metrics_path: str, caption: str, csv_path: str,
              columns) -> list[str]:
    """What every stage section ends with: its PNGs, its metrics and a link to its diagnostics, then its table
    with a caption."""
    return (_images(stage, inputs) + metrics_table(m, metrics_path, inputs) + _diagnostics_link(metrics_path)
            + ["", caption, ""] + table(inputs.csv(csv_path, stage), columns, csv_path, inputs) + [""])


def _diagnostics_link(metrics_path: str) -> list[str]:
    diagnostics = next(d.path for m, d in out.RESULTS if m.path == metrics_path)
    rel = Path(diagnostics).relative_to("reports").as_posix()
    return ["", f"Timings and the other numbers: [`{diagnostics}`]({rel})."]


def family_section(inputs: Inputs) -> list[str]:
    model_path, csv_path, metrics_path = out.FAMILY_MODEL.path, out.FAMILY_TABLE.path, out.FAMILY_METRICS.path
    lines = ["## 1. Family: the model configuration to start from", ""]
    model = inputs.yaml(model_path, "family")
    reasoning_text = inputs.text(out.FAMILY_REASONING.path, "family")
    reasoning = (reasoning_text.split("\n", 1)[-1].strip() if reasoning_text is not None
                 else inputs.notes_for(out.FAMILY_REASONING.path))
    if isinstance(model, dict):
        if model.get("chosen") is None:
            return lines + [f"{reasoning} (`{model_path}`)", ""]
        lines += [f"**Decision:** start from **{model.get('overrides')}** (rule `{model.get('rule')}`; the later "
                  f"stages build the workload with {model.get('kwargs')}).", "", reasoning, ""]
    elif model is None:
        lines += [inputs.notes_for(model_path), ""]
    m, every = _results(inputs, out.FAMILY_METRICS, out.FAMILY_DIAGNOSTICS, "family")
    return lines + _evidence("family", inputs, m, metrics_path,
                             f"Every candidate at batch size {fmt(_metric(every, 'batch_size'))}, its learning rate tuned "
                             f"(`{csv_path}`):", csv_path, FAMILY_COLUMNS)


def probe_section(inputs: Inputs) -> list[str]:
    metrics_path, csv_path = out.PROBE_METRICS.path, out.PROBE_CSV.path
    m, every = _results(inputs, out.PROBE_METRICS, out.PROBE_DIAGNOSTICS, "probe")
    lines = ["## 2. Probe: which batch sizes fit in memory", ""]
    if m is not None:
        lines += [f"**Decision:** the largest batch size that ran and fit is **{fmt(_metric(m, 'max_batch_size'))}** "
                  f"(memory budget {fmt(_metric(every, 'memory_budget_bytes'), 'memory_budget_bytes')} on "
                  f"{fmt(_metric(every, 'device'))}). Memory model: peak = "
                  f"{fmt(_metric(every, 'memory_fixed_bytes'), 'memory_fixed_bytes')} fixed + "
                  f"{fmt(_metric(every, 'memory_per_example_bytes'), 'memory_per_example_bytes')} per example.", ""]
    lines += _notes(out.PROBE_NOTES, "probe", inputs)
    return lines + _evidence("probe", inputs, m, metrics_path, f"Every trial (`{csv_path}`):", csv_path, PROBE_COLUMNS)


def throughput_section(inputs: Inputs) -> list[str]:
    metrics_path, csv_path = out.THROUGHPUT_METRICS.path, out.THROUGHPUT_CSV.path
    m, _ = _results(inputs, out.THROUGHPUT_METRICS, out.THROUGHPUT_DIAGNOSTICS, "throughput")
    lines = ["## 3. Throughput: which batch sizes are worth using", ""]
    if m is not None:
        useful = _metric(m, "largest_useful_batch_size")
        lines += [f"**Decision:** the largest useful batch size is **{fmt(useful)}**: "
                  f"{useful_why(inputs.csv(csv_path, 'throughput', allow_empty=True), useful)} Larger sizes are "
                  "not studied further.", ""]
        lines += _notes(out.THROUGHPUT_NOTES, "throughput", inputs)
    return lines + _evidence("throughput", inputs, m, metrics_path, f"Per batch size (`{csv_path}`):", csv_path,
                             THROUGHPUT_COLUMNS) + data_parallel(inputs)


def useful_why(frame, useful) -> str:
    """Why throughput kept sizes up to `useful`, from the regime of the doubling that reached it (throughput.csv):
    a doubling too noisy to tell is kept without evidence, not because it raised throughput."""
    regime = None
    if frame is not None and {"batch_size", "regime"} <= set(frame.columns) and useful is not None:
        rows = frame[frame["batch_size"] == useful]
        regime = str(rows["regime"].iloc[0]) if len(rows) else None
    if regime in ("scaling", "partial"):
        return "the largest size whose doubling still raised examples per second enough."
    if regime == "inconclusive":
        return ("its doubling was too noisy to tell (inconclusive): without evidence that a larger batch is slower, "
                "the playbook keeps it.")
    if regime == "reference":
        return "the smallest size timed: no doubling above it raised examples per second enough."
    return "the largest size throughput kept (throughput.csv has no regime for it)."


def data_parallel(inputs: Inputs) -> list[str]:
    """Throughput by device count against the ideal line -- only when throughput timed more than one device
    count (throughput.devices beyond [1]; a count that crashed is shown with its reason); the method and the
    verdict in words are in diagnosis.md, shown above."""
    path, image = out.THROUGHPUT_DEVICES.path, out.THROUGHPUT_DEVICES_PLOT.path
    frame = inputs.csv(path, "throughput", allow_empty=True)
    if frame is None or len(frame) < 2:
        return []
    lines = ["### Data parallelism: throughput by device count", "",
             "Measured with DistributedDataParallel at the largest useful per-device batch; the dotted line is "
             "the ideal (N x one device's examples/s). select uses each measured efficiency for its device count "
             "and the assumed `select.scaling_efficiency` only for counts not measured.", ""]
    if inputs.exists(image):
        lines += [f"![devices]({Path(image).relative_to('reports').as_posix()})", ""]
    else:
        lines += [inputs.missing_note(image, "throughput"), ""]
    return lines + [f"Per device count (`{path}`):", ""] + table(frame, DEVICES_COLUMNS, path, inputs) + [""]


def scaling_section(inputs: Inputs) -> list[str]:
    metrics_path, csv_path = out.SCALING_METRICS.path, out.SCALING_STEPS.path
    m, every = _results(inputs, out.SCALING_METRICS, out.SCALING_DIAGNOSTICS, "scaling")
    lines = ["## 4. Scaling: steps to the target with the learning rate retuned per batch size", ""]
    if m is not None:
        kind = _metric(m, "critical_batch_size_kind")
        what = {"lower_bound": "at least", "upper_bound": "at most"}.get(str(kind), "about")
        gns = _metric(every, "gradient_noise_scale")
        noise = (f"The gradient noise scale (the cheap predictor) says {fmt(gns)}." if gns is not None else
                 "The gradient noise scale was not measured (see the notes below).")
        if _metric(m, "critical_batch_size") is None:
            lines += ["**Decision:** the critical batch size is **undetermined** (the notes below say why and what "
                      f"to change), so this study says nothing yet about where doubling the batch stops paying. {noise}", ""]
        else:
            lines += [f"**Decision:** critical batch size {what} **{fmt(_metric(m, 'critical_batch_size'))}** "
                      f"({fmt(kind)}; interval {fmt(_metric(m, 'ci_low'))} to {fmt(_metric(m, 'ci_high'))}); "
                      f"S_min = {fmt(_metric(m, 's_min'))} steps, E_min = {fmt(_metric(every, 'e_min'))} examples. "
                      "Up to it, doubling the batch size nearly halves the steps; beyond it the gain shrinks. " + noise, ""]
    lines += _notes(out.SCALING_NOTES, "scaling", inputs)
    caption = f"Best trial per batch size (`{csv_path}`; every trial is in `{out.SCALING_ALL_TRIALS.path}`):"
    return lines + _evidence("scaling", inputs, m, metrics_path, caption, csv_path, SCALING_COLUMNS)


def _demote(markdown: str, levels: int = 2) -> str:
    """Nest a stage's own markdown under this report's section headings."""
    return re.sub(r"^(#{1,4}) ", lambda mt: "#" * min(6, len(mt.group(1)) + levels) + " ", markdown, flags=re.M)


def _notes(notes: out.Output, stage: str, inputs: Inputs) -> list[str]:
    """A stage's prose (kept out of its metrics.json), nested under the section's heading."""
    text = inputs.text(notes.path, stage)
    return [_demote(text.strip()), ""] if text is not None else [inputs.notes_for(notes.path), ""]


def select_section(inputs: Inputs) -> list[str]:
    metrics_path, csv_path = out.SELECT_METRICS.path, out.SELECT_DECISION.path
    reasoning_path = out.SELECT_REASONING.path
    lines = ["## 5. Select: the batch size that trains fastest (or cheapest)", ""]
    reasoning = inputs.text(reasoning_path, "select")
    lines += [_demote(reasoning.strip()) if reasoning is not None else inputs.notes_for(reasoning_path), ""]
    m, _ = _results(inputs, out.SELECT_METRICS, out.SELECT_DIAGNOSTICS, "select")
    return lines + _evidence("select", inputs, m, metrics_path,
                             f"Decision table (`{csv_path}`):", csv_path, None)


PREDICTIONS = [("steps to target", "steps_to_target", "steps_to_target_ratio"),
               ("time per training step", "time_per_step_s", "time_per_step_ratio"),
               ("time to target (training clock)", "time_to_target_s", "time_to_target_ratio")]


def predictions_table(m: dict | None) -> list[str]:
    """select's predictions next to the baseline's measurements (both from the baseline's diagnostics.json)."""
    if m is None or not any(f"predicted_{key}" in m for _, key, _ in PREDICTIONS):
        return []
    lines = ["Predicted by select (`initial_config.yaml`) and measured by this run; times exclude the "
             f"evaluations ({fmt(m.get('eval_seconds'), 'eval_seconds')} spent in them, timed apart). The time per "
             "step is the steady rate after the first step (here "
             f"{fmt(m.get('first_step_seconds'), 'first_step_seconds')}, start-up included); the predicted time to "
             "target adds the one-off start-up cost throughput measured:", "",
             "| | predicted | measured | measured / predicted |", "|---|---:|---:|---:|"]
    for label, key, ratio in PREDICTIONS:
        r = m.get(ratio)
        lines.append(f"| {label} | {fmt(m.get(f'predicted_{key}'), key)} | {fmt(m.get(f'measured_{key}'), key)} | "
                     f"{'n/a' if r is None else f'{r:.2f}'} |")
    return lines + [""]


def baseline_section(inputs: Inputs) -> list[str]:
    metrics_path = out.BASELINE_METRICS.path
    lines = ["## 6. Baseline: the configuration trained once", "",
             "These are the numbers `dvc metrics diff` compares across branches and against a pinned baseline tag.", ""]
    m, every = _results(inputs, out.BASELINE_METRICS, out.BASELINE_DIAGNOSTICS, "baseline")
    lines += predictions_table(every)
    lines += _images("baseline", inputs)
    lines += metrics_table(m, metrics_path, inputs) + _diagnostics_link(metrics_path)
    return lines + [""]


def build_report(root: Path = Path(".")) -> tuple[str, list[str]]:
    """The report's markdown and the problems found in its inputs (also shown inside the report)."""
    inputs = Inputs(root)
    body: list[str] = []
    for section in (recommended, family_section, probe_section, throughput_section, scaling_section, select_section, baseline_section):
        body += section(inputs)
    head = ["# kickoff report", "",
            "The new-project phase of the Deep Learning Tuning Playbook, measured: which batch sizes fit, how "
            "throughput grows, how the steps to the target fall with the batch size, and the initial "
            "configuration that follows. Generated by `python -m stages.report` from the files under `reports/` "
            "(do not edit; rerun `dvc repro`).", ""]
    if inputs.problems:
        head += ["> **Incomplete report:** " + "; ".join(inputs.problems) + ".", ""]
    return "\n".join(head + body).rstrip() + "\n", inputs.problems


def main() -> None:
    # the settings in force: an input made with other settings is noted as a problem (provenance.verify)
    load_stage_params("report")
    text, problems = build_report(Path("."))
    for problem in problems:
        info("report", problem)
    write_text(REPORT, text)
    info("report", f"wrote {REPORT}" + (f" with {len(problems)} problem(s) noted in it" if problems else ""))
    info("report", closing_summary(Path(".")))


def closing_summary(root: Path) -> str:
    """The pipeline's last line: the recommendation in one sentence (model, batch size, learning rate, step
    budget, DataLoader workers, expected time; the input pipeline named when it is the limit) and where to read it."""
    path = Path(root) / out.SELECT_CONFIG.path
    try:  # checked as REPORT.md checks it: a hand-edited configuration is not announced as the recommendation
        out.verify_path(Path(root), out.SELECT_CONFIG.path)
        config = yaml.safe_load(path.read_text()) or {}
    except InputError as e:
        return f"no recommendation: {e.path} {e.problem}; read {Path(root) / REPORT}"
    except Exception:
        return f"no recommendation ({out.SELECT_CONFIG.path} is missing or unreadable); read {Path(root) / REPORT}"
    kwargs = (config.get("workload") or {}).get("kwargs") or {}
    model = f"{(config.get('workload') or {}).get('name', '?')}" + (
        f" ({', '.join(f'{k} {fmt(v)}' for k, v in kwargs.items() if k in ('hidden', 'model_kwargs', 'model'))})"
        if any(k in kwargs for k in ("hidden", "model_kwargs", "model")) else "")
    data = config.get("data")
    workers = f", num_workers {data.get('num_workers')}" if isinstance(data, dict) else ""
    limit = ""
    diagnostics = Path(root) / out.THROUGHPUT_DIAGNOSTICS.path
    try:
        bound = json.loads(diagnostics.read_text()).get("input_bound_batch_sizes") or []
        limit = "; the input pipeline is the limit at that size" if config.get("batch_size") in bound else ""
    except Exception:
        pass
    return (f"recommended: {model}, batch size {config.get('batch_size')}, learning rate "
            f"{fmt(config.get('learning_rate'))}, {config.get('train_steps')} steps{workers}; expected "
            f"{fmt(config.get('expected_time_to_target_s'), 'expected_time_to_target_s')} to the target "
            f"({fmt(config.get('expected_training_time_s'), 'expected_training_time_s')} for the whole budget){limit}. "
            f"Read {Path(root).resolve() / REPORT}")

