"""Sentences computed from the numbers beside them (issue 30 parts 5 and 7): the throughput summary from the
throughput table (rising, flat, falling), the baseline's time to target and whole-budget time both named,
the constant learning-rate schedule stated, a choice at the edge of the study flagged with the sizes to add,
the model's units (tokens/s, tokens and epochs to the target, bits per byte, the chance level explained),
and one scale per axis kind within the baseline's figure."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from stages.core.config import SelectSettings
from stages.core.units import Units
from stages.report.stage import baseline_line, edge_line
from stages.select.decide import Measurements, Study, Target, select
from stages.select.reasoning import edge_of_study, reasoning_markdown, steps_per_doubling, throughput_sentence


def throughput_table(rates: list[float], regimes: list[str], lows: list[float] | None = None,
                     highs: list[float] | None = None, sizes=(16, 32, 64, 128)) -> pd.DataFrame:
    """throughput.csv's columns for these examples/s: each doubling's ratio, its interval and regime as given."""
    ratios = [math.nan] + [b / a for a, b in zip(rates, rates[1:])]
    return pd.DataFrame({"batch_size": list(sizes), "examples_per_s": rates,
                         "time_per_step_s": [b / r for b, r in zip(sizes, rates)],
                         "doubling_from": [math.nan] + list(sizes[:-1]), "doubling_ratio": ratios,
                         "doubling_ratio_low": lows or [r * 0.9 for r in ratios],
                         "doubling_ratio_high": highs or [r * 1.1 for r in ratios],
                         "regime": ["reference"] + regimes})


def test_the_throughput_sentence_says_what_its_table_shows():
    rising = throughput_sentence(throughput_table([1000, 1900, 3500, 6000], ["scaling", "scaling", "partial"]), 128)
    assert "Examples per second by batch size: 16: 1,000 examples/s, 32: 1,900 examples/s" in rising
    assert "Every doubling clearly raised throughput (16->32 x1.90, 32->64 x1.84, 64->128 x1.71)" in rising
    # the case: 219-324 examples/s, every doubling inconclusive -- flat, never "keeps rising"
    flat = throughput_sentence(throughput_table([219, 280, 300, 324], ["inconclusive"] * 3,
                                                [math.nan, 0.8, 0.7, 0.75], [math.nan, 1.6, 1.5, 1.4]), 128)
    assert "Throughput is flat within noise: 219 examples/s to 324 examples/s over 16-128" in flat
    assert "no doubling clearly raised it or clearly did not" in flat and "raised throughput" not in flat
    assert "Without evidence that a larger batch is slower, the playbook keeps it: sizes up to 128" in flat
    falling = throughput_sentence(throughput_table([1000, 1900, 2000, 1500], ["scaling", "saturated", "saturated"],
                                                   [math.nan, 1.7, 0.95, 0.7], [math.nan, 2.1, 1.1, 0.8]), 32)
    assert "Doubling clearly raised throughput at 16->32 x1.90." in falling
    assert "Throughput falls at 64->128 x0.75: there a larger batch trains fewer examples per second." in falling
    assert "It stops rising at 32->64 x1.05" in falling and "Sizes up to 32 stay candidates" in falling
    assert "Every doubling" not in falling and "flat" not in falling


def test_the_throughput_sentence_speaks_the_workloads_units():
    units = Units("sequence", 64, "byte")
    line = throughput_sentence(throughput_table([219, 280, 300, 324], ["inconclusive"] * 3), 128, units)
    assert line.startswith("Sequences per second by batch size: 16: 219 sequences/s (14,016 bytes/s)")


BASELINE = {"reached_target": True, "final_meets_target": True, "steps_to_target": 110, "first_reached_step": 104,
            "measured_time_to_target_s": 20.7, "predicted_time_to_target_s": 19.3, "time_to_target_ratio": 1.07,
            "train_seconds": 26.9, "eval_seconds": 38.6, "evaluations": 40, "train_steps": 150, "seed": 1,
            "examples_to_target": 3520, "tokens_to_target": 225280, "epochs_to_target": 2.45,
            "units": Units("sequence", 64, "byte").record()}


def test_the_baseline_line_names_its_time_to_target_and_its_whole_budget_apart():
    line = baseline_line(BASELINE, {"train_steps": 150})
    assert ("trained once with this configuration (seed 1), it reached the target at step 110 (3,520 sequences; "
            "225,280 bytes; 2.45 epochs of the training set) and held it to the end of the budget (it first crossed at "
            "step 104 and fell back). Time to target: 20.7 s of training (predicted 19.3 s; measured / predicted 1.07). "
            "The whole budget, 150 steps, took 26.9 s of training, and its 40 evaluations 38.6 s more (timed apart)") in line
    fell = baseline_line({**BASELINE, "steps_to_target": None, "final_meets_target": False}, {})
    assert "reached the target at step 104 but fell back, and does **not** hold it at the end of the budget" in fell
    assert "Time to target" not in fell and "The whole budget, 150 steps, took 26.9 s of training" in fell


def edge_case(studied: list[int], time_per_step, steps) -> tuple:
    """select over sizes 8..1024 that all fit, the scaling study trained only `studied`."""
    sizes = [8, 16, 32, 64, 128, 256, 512, 1024]
    probe = pd.DataFrame({"batch_size": sizes, "status": ["fits"] * len(sizes), "reason": [""] * len(sizes)})
    throughput = pd.DataFrame({"batch_size": sizes, "time_per_step_s": [time_per_step(b) for b in sizes],
                               "regime": ["reference"] + ["scaling"] * (len(sizes) - 1)})
    frame = pd.DataFrame({"batch_size": studied, "best_learning_rate": [0.1] * len(studied),
                          "steps_to_target": [steps(b) for b in studied]})
    m = Measurements(probe, 1024, throughput, 1024, frame, device="cpu")
    target = Target("accuracy", 0.9, "above", 0.1, True)
    return select(m, SelectSettings(), target, Study(2000, 1e-3, 1.0)), m, target


def test_a_choice_at_the_edge_of_the_study_is_flagged_naming_the_sizes_to_add():
    # steps fall only x0.82 per doubling and time per step grows with the batch: the smallest studied size wins
    sel, m, target = edge_case([32, 64, 128], lambda b: 1e-3 * b, lambda b: 1000 * 0.82 ** math.log2(b))
    assert int(sel.chosen["batch_size"]) == 32
    side, sizes, why = edge_of_study(sel.table, steps_per_doubling(sel.table))
    assert (side, sizes) == ("smallest", [16, 8]) and "steps fell only x0.82 per doubling" in why
    text = reasoning_markdown(sel, m, target, SelectSettings(), Study(2000, 1e-3, 1.0), {"name": "sgd"})
    assert ("**At the edge of the study.** The choice, 32, is the smallest batch size the scaling study trained; 16 "
            "and 8 fit but were not studied") in text and "Add 16 and 8 to scaling.batch_sizes to check." in text
    assert edge_line({"edge_of_study": "smallest", "sizes_to_add": [16, 8]}, 32).startswith(
        "**At the edge of the study:** batch size 32 is the smallest size the scaling study trained, and 16 and 8 fit")
    # constant time per step, steps still falling: the largest studied size wins, larger ones fit
    sel, _, _ = edge_case([32, 64, 128], lambda b: 1e-2, lambda b: 1000 * 0.8 ** math.log2(b))
    assert int(sel.chosen["batch_size"]) == 128
    assert edge_of_study(sel.table, steps_per_doubling(sel.table))[:2] == ("largest", [256, 512])
    # studied on both sides of the choice: nothing to flag
    sel, _, _ = edge_case([16, 32, 64, 128, 256], lambda b: 1e-2 + 1e-4 * b, lambda b: 3000 / b + 50)
    assert 16 < int(sel.chosen["batch_size"]) < 256 and edge_of_study(sel.table, steps_per_doubling(sel.table)) is None
    assert edge_line({"edge_of_study": None, "sizes_to_add": []}, 64) == ""


def test_the_recommendation_states_its_constant_schedule_and_the_model_units():
    sel, m, _ = edge_case([32, 64, 128], lambda b: 1e-3 * b, lambda b: 1000 * 0.82 ** math.log2(b))
    target = Target("loss", 2.7, "below", 3.21, True)
    units = Units("sequence", 64, "byte", {"loss": "nats"}, 1437,
                  "the entropy of the byte frequencies in the validation targets, in nats")
    text = reasoning_markdown(sel, m, target, SelectSettings(), Study(2000, 1e-3, 1.0), {"name": "adamw"}, units)
    assert "learning rate 0.1 held constant (no warmup, no decay)" in text
    assert "Batch size 32 sequences (2,048 bytes)" in text
    steps = float(sel.chosen["steps_to_target"])
    assert (f"To the target: {steps:.0f} steps x 32 = {steps * 32:,.0f} sequences ({steps * 32 * 64:,.0f} bytes; "
            f"{steps * 32 / 1437:.3g} epochs of the 1,437-sequence training set)") in text
    assert ("The target, loss <= 2.7 nats per byte (3.9 bits per byte), is clearly better than chance (3.21 nats per "
            "byte (4.63 bits per byte): the entropy of the byte frequencies in the validation targets, in nats)") in text


def test_units_read_in_the_models_terms():
    u = Units("image", None, "token", {}, 1000)
    assert u.amount(2500) == "2,500 images (2.5 epochs of the 1,000-image training set)"
    assert u.rate(219.4) == "219 images/s" and u.metric("accuracy", 0.91) == "0.91"
    lm = Units("sequence", 64, "byte", {"loss": "nats"})
    assert lm.metric("loss", 2.7) == "2.7 nats per byte (3.9 bits per byte)"
    assert lm.amount(10) == "10 sequences (640 bytes)" and Units().declared is False and lm.declared
    assert Units.from_record(lm.record()) == lm and Units.from_record({"tokens_per_example": "x"}) == Units()


@pytest.mark.parametrize("direction, metric, expected", [("below", "loss", {"log"}), ("above", "accuracy", {"linear"})])
def test_the_baseline_figure_keeps_one_scale_within_it(direction, metric, expected):
    from types import SimpleNamespace

    from stages.baseline.stage import curve_figure

    curve = pd.DataFrame({"step": [1, 2, 4, 8], "train_loss": [2.3, 1.9, 1.2, 0.8], metric: [2.2, 1.8, 1.3, 0.9]})
    fig = curve_figure(curve, SimpleNamespace(target_metric=metric, target_direction=direction, target_value=1.0))
    assert {ax.get_yscale() for ax in fig.axes} == expected
    assert len(fig.axes) == (1 if direction == "below" else 2)  # a loss target shares the training loss's axis


def test_the_reports_throughput_decision_says_why_its_size_was_kept():
    from stages.report.stage import useful_why

    flat = throughput_table([219, 280, 300, 324], ["inconclusive"] * 3)
    assert useful_why(flat, 128).startswith("its doubling was too noisy to tell (inconclusive)")
    rising = throughput_table([1000, 1900, 3500, 6000], ["scaling", "scaling", "partial"])
    assert useful_why(rising, 128) == "the largest size whose doubling still raised examples per second enough."
    assert useful_why(rising, 16).startswith("the smallest size timed")
