"""The scaling study's figures, drawn from its tables (steps_to_target.csv, curves.csv) and fit."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from stages.core import plotting
from stages.scaling.fit import ScalingFit

REGIME_COLOURS = {"perfect_scaling": "tab:green", "diminishing_returns": "tab:orange",
                  "no_further_gain": "tab:red", "unknown": "tab:gray"}


def _legend(ax, fontsize: float = 8, **kw) -> None:
    """A legend, or a note in the middle when there is nothing to show (every size skipped)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize, **kw)
    else:
        ax.text(0.5, 0.5, "no batch size reached the target\n(see trials.csv for why)", ha="center",
                va="center", transform=ax.transAxes, color="gray")


def _mark_critical(ax, fit: ScalingFit | None, noise_scale: float | None) -> None:
    if fit is not None:
        label = {"estimate": "B_crit", "lower_bound": "B_crit >=", "upper_bound": "B_crit <="}[fit.kind]
        ax.axvline(fit.critical_batch_size, color="black", ls="--", lw=1,
                   label=f"{label} {fit.critical_batch_size:.3g}")
        if fit.kind == "estimate":
            ax.axvspan(fit.ci_low, fit.ci_high, color="black", alpha=0.08, label="95% CI")
    if noise_scale is not None and noise_scale > 0:
        ax.axvline(noise_scale, color="tab:purple", ls=":", lw=1.2, label=f"noise scale {noise_scale:.3g}")


def _predicted(ax, table: pd.DataFrame, per_example: bool) -> None:
    """Wave 2's predicted sizes (scaling.adaptive): hollow, apart from the measured points."""
    p = table[table["status"] == "predicted"] if "predicted_steps_to_target" in table else table.iloc[:0]
    if not p.empty:
        y = p["predicted_steps_to_target"] * (p["batch_size"] if per_example else 1)
        ax.scatter(p["batch_size"], y, facecolors="none", edgecolors="tab:green", zorder=3,
                   label="predicted, not trained (perfect scaling)")


def steps_figure(table: pd.DataFrame, fit: ScalingFit | None, noise_scale: float | None, path: Path) -> None:
    r = table[table["status"] == "reached"]
    fig, ax = plotting.figure("Steps to target by batch size (learning rate retuned per size)",
                              "batch size", "steps to target", logx=True, logy=True)
    if not r.empty:
        err = np.vstack([r["steps_to_target"] - r["steps_to_target_min"], r["steps_to_target_max"] - r["steps_to_target"]])
        ax.errorbar(r["batch_size"], r["steps_to_target"], yerr=err, fmt="none", ecolor="gray", capsize=3)
        for name, part in r.groupby("regime"):
            ax.scatter(part["batch_size"], part["steps_to_target"], color=REGIME_COLOURS.get(name, "gray"),
                       zorder=3, label=str(name).replace("_", " "))
        ax.plot(r["batch_size"], r["perfect_scaling_steps"], color="tab:blue", lw=1, alpha=0.7, label="perfect scaling")
        if fit is not None:
            grid = np.geomspace(r["batch_size"].min(), r["batch_size"].max(), 100)
            ax.plot(grid, fit.steps(grid), color="black", lw=1.2, label="fit S_min (1 + B_crit / B)")
    _predicted(ax, table, per_example=False)
    _mark_critical(ax, fit, noise_scale)
    _legend(ax)
    plotting.save(fig, path)


def examples_figure(table: pd.DataFrame, fit: ScalingFit | None, noise_scale: float | None, path: Path) -> None:
    r = table[table["status"] == "reached"]
    fig, ax = plotting.figure("Examples to target by batch size", "batch size", "examples to target",
                              logx=True, logy=True)
    if not r.empty:
        ax.plot(r["batch_size"], r["examples_to_target"], "o-", label="measured (median over seeds)")
        if fit is not None:
            grid = np.geomspace(r["batch_size"].min(), r["batch_size"].max(), 100)
            ax.plot(grid, grid * fit.steps(grid), color="black", lw=1.2, label="fit B S_min + E_min")
    _predicted(ax, table, per_example=True)
    _mark_critical(ax, fit, noise_scale)
    _legend(ax)
    plotting.save(fig, path)


def learning_rate_figure(table: pd.DataFrame, momentum_note: str, path: Path) -> None:
    r = table[table["status"] == "reached"]
    fig, ax = plotting.figure("Best learning rate by batch size", "batch size", "learning rate", logx=True, logy=True)
    if not r.empty:
        ax.plot(r["batch_size"], r["best_learning_rate"], "o-", label="best learning rate")
        if not np.allclose(r["effective_learning_rate"], r["best_learning_rate"]):
            ax.plot(r["batch_size"], r["effective_learning_rate"], "s--", alpha=0.7, label=f"effective ({momentum_note})")
        ax.plot(r["batch_size"], r["linear_scaling_learning_rate"], color="gray", ls="-.", label="linear scaling")
        ax.plot(r["batch_size"], r["sqrt_scaling_learning_rate"], color="gray", ls=":", label="square-root scaling")
    _legend(ax)
    plotting.save(fig, path)


def curves_figure(curves: pd.DataFrame, metric: str, target: float, path: Path) -> None:
    fig, ax = plotting.figure(f"Learning curves of the best trials ({metric})", "step", metric, logx=True)
    ax.set_xscale("log")
    sizes = sorted(curves["batch_size"].unique())
    colours = dict(zip(sizes, plotting.palette("viridis", len(sizes))))
    for b, part in curves.groupby("batch_size"):
        ax.plot(part["step"], part[metric], lw=1.2, color=colours[b], label=f"B={b}, lr={part['learning_rate'].iloc[0]:.3g}")
    ax.axhline(target, color="black", ls="--", lw=1, label=f"target {target:g}")
    if len(curves) and metric in curves and (curves[metric] > 0).all() and curves[metric].max() / max(curves[metric].min(), 1e-300) > 100:
        ax.set_yscale("log")
    _legend(ax, 7, ncol=2)
    plotting.save(fig, path)


def fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3g}"
