"""Seaborn figures for the report and `snakemake --report`; one look for every stage's PNGs."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # headless: CI and clusters have no display
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from stages.core.io import save_figure  # noqa: E402


def figure(title: str, xlabel: str, ylabel: str, *, logx: bool = False, logy: bool = False,
           size: tuple[float, float] = (6.4, 4.2)):
    """A styled (fig, ax); log axes use base 2 for batch sizes on x."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=size)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    return fig, ax


def save(fig, path: str | os.PathLike) -> None:
    fig.tight_layout()
    save_figure(path, fig)
