"""The run report's figures (matplotlib, Agg): confusion matrices, per-class recall, ROC curves, reliability
diagrams and class distributions, each embedded in the page as a base64 PNG data URI (`data_uri`).

Pure layout of the report's figures (`report_html` gathers the values and renders the page).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

from molescope.core.constants import CLASSES
from molescope.evaluation.charts import bar_chart, png_bytes

#: Figure resolution: readable in a browser while keeping the page a few hundred KB.
FIGURE_DPI = 80


def data_uri(fig: Figure) -> str:
    png = png_bytes(fig, dpi=FIGURE_DPI, tight=True)
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def confusion_figure(model: str, matrix: Sequence[Sequence[int]]) -> Figure:
    """Counts and row-normalised (recall per true class) side by side."""
    counts = np.asarray(matrix, dtype=float)
    row_sums = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, values, title, fmt in (
        (axes[0], counts, "counts", ".0f"),
        (axes[1], normalised, "row-normalised", ".2f"),
    ):
        display = ConfusionMatrixDisplay(values, display_labels=list(CLASSES))
        display.plot(ax=ax, cmap="Blues", values_format=fmt, colorbar=False)
        ax.set(title=f"{model}: {title}", xlabel="predicted", ylabel="true")
    return fig


def recall_figure(metrics: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Per-class recall, one bar group per class and one bar per model."""
    series = {m: [v["per_class"][dx]["recall"] or 0.0 for dx in CLASSES] for m, v in metrics.items()}
    return bar_chart(
        CLASSES,
        series,
        title="per-class recall (test split, argmax)",
        ylabel="recall",
        ylim=(0, 1),
        legend=True,
        size=(10, 4),
    )


def roc_figure(model: str, curves: Mapping[str, Mapping[str, list[float]]], auc: Mapping[str, Any]) -> Figure:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for dx, points in curves.items():
        ax.plot(
            points["fpr"], points["tpr"], label=f"{dx} (AUC {auc['per_class'].get(dx, float('nan')):.3f})"
        )
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{model}: one-vs-rest ROC")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def reliability_figure(model: str, calibration: Mapping[str, Any]) -> Figure:
    """Reliability diagram per split: accuracy against stated confidence per confidence bin, before and after
    the rule's temperature (point area: the bin's rows); a calibrated model lies on the diagonal."""
    splits = calibration["splits"]
    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 4.5), squeeze=False)
    for ax, (split, figures) in zip(axes[0], splits.items(), strict=True):
        for when, style in (("before", "--"), ("after", "-")):
            points = figures[when]["reliability"]
            confidence, accuracy = [p["mean_confidence"] for p in points], [p["accuracy"] for p in points]
            (line,) = ax.plot(confidence, accuracy, style, label=when)
            sizes = [10 + 200 * p["count"] / max(figures[when]["n"], 1) for p in points]
            ax.scatter(confidence, accuracy, s=sizes, color=line.get_color(), alpha=0.6)
        ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="confidence (top probability)",
            ylabel="accuracy",
            title=f"{model}: {split} (T = {calibration['temperature']:.3g})",
        )
        ax.legend(fontsize=8, loc="upper left")
    return fig


def distribution_figure(distributions: Mapping[str, Mapping[str, float]]) -> Figure:
    """Class counts per named distribution (test split, before/after upsampling), log scale: nv dwarfs df."""
    series = {name: [counts.get(dx, 0) for dx in CLASSES] for name, counts in distributions.items()}
    return bar_chart(
        CLASSES,
        series,
        title="class distributions",
        ylabel="images (log scale)",
        log=True,
        legend=True,
        size=(10, 4),
    )
