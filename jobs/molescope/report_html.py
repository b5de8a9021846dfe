"""Render the run report: one self-contained HTML page with matplotlib figures embedded as base64 PNG.

Self-contained because the page is opened straight from S3 (or an Airflow extra link) where relative
links to sibling files would break. Every piece of text from the inputs goes through `html.escape`: model
names, parameters and summaries come from files anyone with bucket access can write.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on Spark drivers or Airflow workers

import matplotlib.pyplot as plt
import numpy as np

from molescope.constants import CLASSES

#: Figure resolution: readable in a browser while keeping the page a few hundred KB.
FIGURE_DPI = 80
#: Digits shown for metric values in tables.
DIGITS = 3
#: Section ids, in page order; the tests look for each.
SECTIONS: tuple[str, ...] = (
    "metrics",
    "operating-point",
    "confusion",
    "recall",
    "roc",
    "distributions",
    "models",
    "data",
    "history",
)
#: The first cell of each row names it: left-aligned, unlike the numbers.
KEY_CELL = ' class="key"'
STYLE = """
body{font-family:sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;margin:0.5em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2}
td.key,th.key{text-align:left}
.warning{background:#fde2e1;border:2px solid #c0392b;color:#7b1c14;padding:1em;font-weight:bold}
.note{background:#fff6d6;border:1px solid #d4a200;padding:0.6em}
img{max-width:100%}
"""


@dataclass(frozen=True)
class ReportContent:
    """Everything the page shows; `report.py` gathers it, this module only lays it out."""

    run_id: str
    run_uri: str
    generated_at: str
    metrics: Mapping[str, Mapping[str, Any]]
    curves: Mapping[str, Mapping[str, Mapping[str, list[float]]]]
    champion: str | None = None
    random_weights: Sequence[str] = ()
    sidecars: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] | None = None
    distributions: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    cleaning: Mapping[str, Any] = field(default_factory=dict)
    history: Sequence[Mapping[str, Any]] = ()


def _e(value: Any) -> str:
    return html.escape(str(value))


def fmt(value: Any) -> str:
    """A table cell: floats rounded, None as an em dash, everything escaped."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{DIGITS}f}"
    return _e(value)


def png_data_uri(fig: plt.Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(fig: plt.Figure, alt: str) -> str:
    return f'<img src="{png_data_uri(fig)}" alt="{_e(alt)}">'


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f"<td{KEY_CELL if i == 0 else ''}>{fmt(v)}</td>" for i, v in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def flatten(payload: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts/lists as (dotted.key, scalar) pairs, for key/value tables of sidecars and summaries."""
    if isinstance(payload, Mapping):
        items = [(f"{prefix}.{k}" if prefix else str(k), v) for k, v in sorted(payload.items(), key=str)]
        return [pair for key, value in items for pair in flatten(value, key)]
    if isinstance(payload, list) and any(isinstance(v, Mapping | list) for v in payload):
        return [pair for i, value in enumerate(payload) for pair in flatten(value, f"{prefix}[{i}]")]
    return [(prefix, payload)]


def key_value_table(payload: Any) -> str:
    return table(("key", "value"), flatten(payload))


def confusion_figure(model: str, matrix: Sequence[Sequence[int]]) -> plt.Figure:
    """Counts and row-normalised (recall per true class) side by side."""
    counts = np.asarray(matrix, dtype=float)
    row_sums = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, values, title, text in (
        (axes[0], counts, "counts", "{:.0f}"),
        (axes[1], normalised, "row-normalised", "{:.2f}"),
    ):
        ax.imshow(values, cmap="Blues")
        ax.set(title=f"{model}: {title}", xlabel="predicted", ylabel="true")
        ax.set_xticks(range(len(CLASSES)), CLASSES)
        ax.set_yticks(range(len(CLASSES)), CLASSES)
        limit = values.max() / 2 if values.size else 0
        for (i, j), value in np.ndenumerate(values):
            colour = "white" if value > limit else "black"
            ax.text(j, i, text.format(value), ha="center", va="center", fontsize=8, color=colour)
    return fig


def recall_figure(metrics: Mapping[str, Mapping[str, Any]]) -> plt.Figure:
    """Per-class recall, one bar group per class and one bar per model."""
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(len(metrics), 1)
    positions = np.arange(len(CLASSES))
    for k, (model, values) in enumerate(metrics.items()):
        recalls = [values["per_class"][dx]["recall"] or 0.0 for dx in CLASSES]
        ax.bar(positions + k * width, recalls, width, label=model)
    ax.set_xticks(positions + width * (len(metrics) - 1) / 2, CLASSES)
    ax.set(ylim=(0, 1), ylabel="recall", title="per-class recall (test)")
    ax.legend()
    return fig


def roc_figure(
    model: str, curves: Mapping[str, Mapping[str, list[float]]], auc: Mapping[str, Any]
) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for dx, points in curves.items():
        ax.plot(
            points["fpr"], points["tpr"], label=f"{dx} (AUC {auc['per_class'].get(dx, float('nan')):.3f})"
        )
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{model}: one-vs-rest ROC")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def distribution_figure(distributions: Mapping[str, Mapping[str, float]]) -> plt.Figure:
    """Class counts per named distribution (test split, before/after upsampling), log scale: nv dwarfs df."""
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(len(distributions), 1)
    positions = np.arange(len(CLASSES))
    for k, (name, counts) in enumerate(distributions.items()):
        ax.bar(positions + k * width, [counts.get(dx, 0) for dx in CLASSES], width, label=name)
    ax.set_xticks(positions + width * (len(distributions) - 1) / 2, CLASSES)
    ax.set(yscale="log", ylabel="images (log scale)", title="class distributions")
    ax.legend()
    return fig


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}"><h2>{_e(title)}</h2>{body}</section>'


def _metrics_section(content: ReportContent) -> str:
    header = ("model", "n", "accuracy", "balanced accuracy", "mel recall", "mel precision", "mean AUC")
    header += ("malignant sensitivity", "malignant specificity", "undecided (ties)")
    rows = [
        (
            model + (" (champion)" if model == content.champion else ""),
            m["n"],
            m["accuracy"],
            m["balanced_accuracy"],
            m["melanoma_recall"],
            m["melanoma_precision"],
            m["auc"]["mean"],
            m["malignant"]["sensitivity"],
            m["malignant"]["specificity"],
            m["n_undecided"],
        )
        for model, m in content.metrics.items()
    ]
    parts = [table(header, rows)]
    for model, m in content.metrics.items():
        per_class = [
            (dx, *(m["per_class"][dx][k] for k in ("precision", "recall", "f1", "support"))) for dx in CLASSES
        ]
        parts.append(f"<h3>{_e(model)}: per class</h3>")
        parts.append(table(("dx", "precision", "recall", "F1", "support"), per_class))
        if m["auc"]["skipped"]:
            skipped = ", ".join(m["auc"]["skipped"])
            parts.append(f'<p class="note">AUC skipped for classes absent from the labels: {_e(skipped)}</p>')
    return _section("metrics", "Metrics (test split)", "".join(parts))


def _operating_point_section(content: ReportContent) -> str:
    header = ("model", "threshold source", "target mel recall", "rule", "test mel recall")
    header += (
        "balanced accuracy",
        "baseline",
        "benign referrals",
        "baseline referrals",
        "benign referral rate",
    )
    rows, from_test = [], []
    for model, m in content.metrics.items():
        op = m["operating_point"]
        if op["threshold_source"] != "validation":
            from_test.append(model)
        rows.append(
            (
                model,
                op["threshold_source"],
                op["target_mel_recall"],
                op["rule"] or "no threshold (no melanoma in the labels)",
                op.get("test_mel_recall"),
                op.get("balanced_accuracy"),
                op.get("baseline_balanced_accuracy"),
                op.get("benign_referrals"),
                op.get("baseline_benign_referrals"),
                op.get("benign_referral_rate"),
            )
        )
    note = ""
    if from_test:
        note = (
            '<p class="warning" id="threshold-from-test">The predictions hold no validation rows for '
            f"{_e(', '.join(from_test))}: the melanoma threshold was chosen on the test split itself, "
            "so its test figures are optimistic.</p>"
        )
    intro = (
        "<p>Decision rule: predict mel when P(mel) reaches the threshold, otherwise the most probable "
        "other class. Benign referrals: benign test lesions predicted as mel, bcc or akiec.</p>"
    )
    return _section(
        "operating-point", "Melanoma-sensitive operating point", intro + note + table(header, rows)
    )


def _figures_sections(content: ReportContent) -> list[str]:
    confusion = "".join(
        _img(confusion_figure(model, m["confusion_matrix"]["matrix"]), f"{model} confusion matrix")
        for model, m in content.metrics.items()
    )
    roc = "".join(
        _img(roc_figure(model, content.curves.get(model, {}), m["auc"]), f"{model} ROC curves")
        for model, m in content.metrics.items()
    )
    distributions = (
        _img(distribution_figure(content.distributions), "class distributions")
        if content.distributions
        else "<p>No class distributions available.</p>"
    )
    return [
        _section("confusion", "Confusion matrices", confusion),
        _section("recall", "Per-class recall", _img(recall_figure(content.metrics), "per-class recall")),
        _section("roc", "ROC curves", roc),
        _section("distributions", "Class distributions", distributions),
    ]


def _models_section(content: ReportContent) -> str:
    parts = []
    for model, sidecar in content.sidecars.items():
        parts.append(f"<h3>{_e(model)}</h3>{key_value_table(sidecar)}")
    if content.params:
        parts.append(f"<h3>run parameters (params.json)</h3>{key_value_table(content.params)}")
    body = "".join(parts) or "<p>No model sidecars or params.json found.</p>"
    return _section("models", "Backbone, weights and parameters", body)


def _data_section(content: ReportContent) -> str:
    parts = [f"<h3>{_e(name)}</h3>{key_value_table(summary)}" for name, summary in content.cleaning.items()]
    body = "".join(parts) or "<p>No cleaning summaries given (run the report with --curated).</p>"
    return _section("data", "Data summary (cleaning)", body)


def _history_section(content: ReportContent) -> str:
    if not content.history:
        return _section("history", "Earlier runs", "<p>No run history yet.</p>")
    columns = list(dict.fromkeys(key for row in content.history for key in row))
    rows = [[row.get(column) for column in columns] for row in content.history]
    return _section("history", "Comparison with earlier runs", table(columns, rows))


def _random_weights_warning(content: ReportContent) -> str:
    if not content.random_weights:
        return ""
    listed = ", ".join(content.random_weights)
    return (
        '<div class="warning" id="random-weights-warning">WARNING: the backbone weights were random '
        f"(not pretrained) for {_e(listed)}. The features carry no learned image information and these "
        "results say nothing about what a pretrained backbone would achieve.</div>"
    )


def render(content: ReportContent) -> str:
    """The whole page as one HTML string."""
    champion = f"<p>Champion: <b>{_e(content.champion)}</b></p>" if content.champion else ""
    sections = [
        _metrics_section(content),
        _operating_point_section(content),
        *_figures_sections(content),
        _models_section(content),
        _data_section(content),
        _history_section(content),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>molescope run {_e(content.run_id)}</title><style>{STYLE}</style></head><body>"
        f"<h1>molescope run {_e(content.run_id)}</h1>"
        f"<p>Run: {_e(content.run_uri)}<br>Generated: {_e(content.generated_at)}</p>"
        f"{_random_weights_warning(content)}{champion}{''.join(sections)}</body></html>\n"
    )
