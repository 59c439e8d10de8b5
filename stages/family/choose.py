"""The choice among candidate models, on the table of their measured results (pure: no I/O).

Only candidates whose every seed reached the target at their tuned learning rate count. Rule
`smallest`: fewest parameters (the playbook's "start with a simple, smaller model"), ties broken by
the time to target. Rule `fastest`: least time to the target; candidates whose time-to-target ranges
(the spread over seeds x the time per step) overlap the fastest's cannot be told apart, and among
those the one with the fewest parameters wins.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from stages.core import advice
from stages.core.errors import StudyError


@dataclass
class Choice:
    index: int                  # row of the chosen candidate in the table
    tied: list[str]             # candidates the rule could not tell from the chosen one
    reasoning: str


def describe(row) -> str:
    return f"{row['candidate']} {row['overrides']}"


def _time_range(row) -> tuple[float, float]:
    return row["steps_low"] * row["time_per_step_s"], row["steps_high"] * row["time_per_step_s"]


def candidate_kind(row) -> str:
    """The class of a candidate's failure (stages/core/advice.py): its status, or the label its reason opens with."""
    return {"failed": "crashed", "out_of_memory": "out_of_memory"}.get(row["status"]) or advice.kind_of(row["reason"])


def fitting_action(table: pd.DataFrame, limits: advice.Limits) -> str:
    """The one change that fits when no candidate reached the target: every candidate crashed with the
    same error -> fix it; all out of memory -> a smaller batch; else what the largest candidate that
    trained needs (the largest is the most able: if it levels off, only a larger model helps)."""
    kinds = [candidate_kind(r) for _, r in table.iterrows()]
    if set(kinds) == {"crashed"}:
        errors = sorted(set(table["reason"]))
        head = (f"every candidate crashed with the same error ({errors[0]})" if len(errors) == 1
                else "every candidate crashed")
        return f"{head}: {advice.action_for('crashed', limits)}"
    if set(kinds) == {"out_of_memory"}:
        return f"every candidate ran out of memory: {advice.action_for('out_of_memory', limits)}"
    trained = table[[k not in ("crashed", "out_of_memory") for k in kinds]]
    largest = trained.sort_values("parameters", kind="stable", na_position="first").iloc[-1]
    kind = candidate_kind(largest)
    return (f"{'every candidate' if set(kinds) == {kind} else f'the largest that trained, {describe(largest)},'} "
            f"{advice.SUMMARIES[kind]}: {advice.action_for(kind, limits)}")


def choose(table: pd.DataFrame, rule: str, limits: advice.Limits | None = None) -> Choice:
    """Raises StudyError when no candidate reached the target (saying why each did not, and the one
    change that fits: stages/core/advice.py)."""
    reached = table[table["status"] == "reached"]
    if reached.empty:
        why = "; ".join(f"{describe(r)}: {r['status']} ({r['reason']})" for _, r in table.iterrows())
        limits = limits or advice.Limits("family.max_steps", None, None, None)
        raise StudyError(f"family: no candidate reached the target, so none can be chosen -- {why}. In short, "
                         f"{fitting_action(table, limits)}")
    if rule == "smallest":
        order = reached.sort_values(["parameters", "time_to_target_s"], kind="stable")
        best = order.iloc[0]
        tied = [describe(r) for _, r in order.iloc[1:].iterrows() if r["parameters"] == best["parameters"]]
        others = [f"{describe(r)} ({int(r['parameters'])} parameters)" for _, r in order.iloc[1:].iterrows()]
        why = (f"{describe(best)} is the smallest candidate that reached the target: {int(best['parameters'])} "
               f"parameters, {_steps_text(best)} at learning rate {best['learning_rate']:.3g}, "
               f"{best['time_to_target_s']:.3g} s to target.")
        if others:
            why += " Larger candidates that also reached it: " + ", ".join(others) + "."
    else:
        order = reached.sort_values(["time_to_target_s", "parameters"], kind="stable")
        fastest = order.iloc[0]
        low, high = _time_range(fastest)
        overlapping = order[[(_time_range(r)[0] <= high and _time_range(r)[1] >= low) for _, r in order.iterrows()]]
        best = overlapping.sort_values(["parameters", "time_to_target_s"], kind="stable").iloc[0]
        tied = [describe(r) for _, r in overlapping.iterrows() if r["candidate"] != best["candidate"]]
        why = (f"{describe(best)} reaches the target fastest: {best['time_to_target_s']:.3g} s "
               f"({_steps_text(best)} x {best['time_per_step_s'] * 1e3:.3g} ms per step) with "
               f"{int(best['parameters'])} parameters.")
        if tied:
            why += (f" Its time-to-target range over seeds overlaps that of {', '.join(tied)}: these cannot be told "
                    f"apart, and the one with the fewest parameters is chosen.")
    failed = table[table["status"] != "reached"]
    if not failed.empty:
        why += " Not chosen because they did not reach the target: " + "; ".join(
            f"{describe(r)} ({r['status']}: {r['reason']})" for _, r in failed.iterrows()) + "."
    return Choice(int(best.name), tied, why)


def _steps_text(row) -> str:
    if row["steps_low"] == row["steps_high"]:
        return f"{int(row['steps_to_target'])} steps"
    return f"{int(row['steps_to_target'])} steps (seeds: {int(row['steps_low'])}-{int(row['steps_high'])})"
