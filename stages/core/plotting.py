"""Seaborn figures for the report and `snakemake --report`; one look for every stage's PNGs.

matplotlib and seaborn are imported when the first figure is drawn, not when a stage imports this
module: they cost about a second per stage process, which every job of the pipeline would pay.
"""
from __future__ import annotations

import os

from stages.core.io import save_figure


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: CI and clusters have no display
    import matplotlib.pyplot as plt
    import seaborn as sns

    return plt, sns


def palette(name: str, n: int):
    """n colours of a seaborn palette (e.g. 'viridis')."""
    return _pyplot()[1].color_palette(name, n)


def figure(title: str, xlabel: str, ylabel: str, *, logx: bool = False, logy: bool = False,
           size: tuple[float, float] = (6.4, 4.2)):
    """A styled (fig, ax); log axes use base 2 for batch sizes on x."""
    plt, sns = _pyplot()
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


def panels(titles: list[str], xlabel: str, ylabels: list[str], *, logx: bool = False, logy: bool = False,
           size: tuple[float, float] = (11.0, 4.2)):
    """(fig, axes): side-by-side styled panels sharing x (same scales as figure())."""
    plt, sns = _pyplot()
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, len(titles), figsize=size, sharex=True)
    for ax, title, ylabel in zip(axes, titles, ylabels):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
    return fig, axes


def save(fig, path: str | os.PathLike) -> None:
    fig.tight_layout()
    save_figure(path, fig)
