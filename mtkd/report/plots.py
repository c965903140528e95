"""Figures for reports: per-class bars, training curves, confusion matrix (sample overlays are drawn by
``mtkd.eval.overlays.draw_sample`` when ``mtkd eval --save-predictions`` runs).

Every function returns PNG bytes (so the HTML report can embed them and the Markdown report can save them);
matplotlib is imported and switched to the non-interactive Agg backend inside the functions, never at import.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def per_class_bars(
    values: Mapping[str, Mapping[str, float | None]], *, title: str, ylabel: str, percent: bool = True
) -> bytes:
    """Grouped bar chart: one group per class, one bar per model.

    Args:
        values: ``{model_name: {class_name: fraction or None}}``; ``None`` (undefined) is drawn as no bar.
        percent: show the fractions as percentages (y axis 0-100).
    """
    plt = _plt()
    models = list(values)
    classes: list[str] = []
    for per in values.values():
        classes += [c for c in per if c not in classes]
    n, m = len(classes), max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * n * m + 2), 3.6))
    width = 0.8 / m
    x = np.arange(n)
    for j, model in enumerate(models):
        ys = [values[model].get(c) for c in classes]
        ys = [np.nan if y is None else (100 * y if percent else y) for y in ys]
        ax.bar(x + (j - (m - 1) / 2) * width, ys, width, label=model)
    ax.set_xticks(x, classes, rotation=45 if n > 6 else 0, ha="right" if n > 6 else "center")
    ax.set_ylim(0, 100 if percent else 1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if m > 1:
        ax.legend(fontsize=8)
    return _png(fig)


def training_curves(runs: Mapping[str, Mapping[str, Sequence[float]]], columns: Sequence[str]) -> bytes:
    """One subplot per column of ``results.csv`` (loss terms and metrics), one line per run, x = epoch.

    Args:
        runs: ``{run_name: {"epoch": [...], column: [...]}}``; a column a run lacks is skipped for that run.
        columns: the columns to plot, in order.
    """
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    cols = list(columns) or ["(none)"]
    ncol = min(4, len(cols))
    nrow = math.ceil(len(cols) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.5 * nrow), squeeze=False)
    for ax, col in zip(axes.flat, cols):
        for name, data in runs.items():
            if col in data:
                x = data.get("epoch") or list(range(len(data[col])))
                ax.plot(x[: len(data[col])], data[col], marker=".", label=name)
        ax.set_title(col, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(cols) :]:
        ax.axis("off")
    if len(runs) > 1:
        axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def confusion_matrix(cm: Sequence[Sequence[int]], names: Sequence[str], *, title: str) -> bytes:
    """Heatmap of a confusion matrix (rows = ground truth, columns = prediction), normalized by row
    (each row sums to 1; a row without ground-truth pixels stays 0)."""
    plt = _plt()
    a = np.asarray(cm, dtype=np.float64)
    rows = a.sum(1, keepdims=True)
    norm = np.divide(a, rows, out=np.zeros_like(a), where=rows > 0)
    n = len(names)
    size = max(3.5, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(title, fontsize=10)
    if n <= 12:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    f"{norm[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _png(fig)
