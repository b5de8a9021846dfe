"""One bar-chart helper (clean's EDA figures, upsample's class counts, the report's figures), PNG output.

matplotlib runs headless (Agg): Spark drivers and Airflow workers have no display.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

#: Charts with more category labels than this get them rotated (long names such as localizations overlap).
MAX_UPRIGHT_LABELS = 7
#: Share of each category's slot taken by its bars.
GROUP_WIDTH = 0.8


def bar_chart(
    categories: Sequence[Any],
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    ylabel: str,
    colors: Sequence[str] | None = None,
    log: bool = False,
    ylim: tuple[float, float] | None = None,
    value_labels: bool = False,
    legend: bool | None = None,
    size: tuple[float, float] = (8, 4.5),
) -> Figure:
    """Bars of each named series per category, side by side; a legend when asked (default: several series).

    `colors`: one colour per bar of a single series (e.g. malignant classes in red).
    """
    fig, ax = plt.subplots(figsize=size)
    positions = np.arange(len(categories))
    width = GROUP_WIDTH / max(len(series), 1)
    for k, (name, values) in enumerate(series.items()):
        offset = (k - (len(series) - 1) / 2) * width
        bars = ax.bar(positions + offset, list(values), width, label=name, color=colors)
        if value_labels:
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(positions, [str(c) for c in categories])
    if len(categories) > MAX_UPRIGHT_LABELS:
        plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    ax.set(title=title, ylabel=ylabel)
    if log:
        ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    if legend if legend is not None else len(series) > 1:
        ax.legend()
    fig.tight_layout()
    return fig


def png_bytes(fig: Figure, dpi: int = 100, tight: bool = False) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    finally:
        plt.close(fig)
    return buffer.getvalue()
