"""Render the run report: one self-contained HTML page (Jinja2 template `templates/report.html.j2`) with
matplotlib figures (`report_figures`) embedded as base64 PNG.

Self-contained because the page is opened straight from S3 (or an Airflow extra link) where relative
links to sibling files would break. The template is autoescaped: model names, parameters and summaries
come from files anyone with bucket access can write.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jinja2

from molescope.core.constants import CLASSES
from molescope.evaluation.report_figures import (
    confusion_figure,
    data_uri,
    distribution_figure,
    recall_figure,
    reliability_figure,
    roc_figure,
)

#: Digits shown for metric values in tables.
DIGITS = 3
#: Section ids, in page order; the tests look for each.
SECTIONS: tuple[str, ...] = (
    "metrics",
    "validation",
    "operating-point",
    "calibration",
    "confusion",
    "recall",
    "roc",
    "distributions",
    "models",
    "data",
    "history",
)
TEMPLATE = "report.html.j2"
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
#: The leading columns every per-model figure table shares.
FIGURES_LEAD = ("model", "split", "n", "accuracy", "balanced accuracy", "mel recall")
METRICS_HEADER = (
    *FIGURES_LEAD,
    "mel precision",
    "mean AUC",
    "malignant sensitivity",
    "malignant specificity",
    "undecided (ties)",
)
PER_CLASS_HEADER = ("dx", "precision", "recall", "F1", "support")
VALIDATION_HEADER = (
    *FIGURES_LEAD,
    "mean AUC",
    "rule: accuracy",
    "rule: balanced accuracy",
    "rule: mel recall",
    "rule: mel specificity",
)
OPERATING_HEADER = (
    "model",
    "fitted on",
    "rule from",
    "target mel recall",
    "prior shift tau",
    "rule",
    "split",
    "accuracy",
    "balanced accuracy",
    "mel recall",
    "mel specificity",
    "argmax balanced accuracy",
    "benign referrals",
    "argmax referrals",
    "benign referral rate",
)
CALIBRATION_HEADER = (
    "model",
    "split",
    "n",
    "temperature",
    "ECE before",
    "ECE after",
    "Brier before",
    "Brier after",
    "NLL before",
    "NLL after",
)


@dataclass(frozen=True)
class ReportContent:
    """Everything the page shows; `report.py` gathers it, this module only lays it out."""

    run_id: str
    run_uri: str
    generated_at: str
    metrics: Mapping[str, Mapping[str, Any]]
    curves: Mapping[str, Mapping[str, Mapping[str, list[float]]]]
    champion: str | None = None
    #: How the champion was chosen (champion.json: metric, split, value).
    champion_selection: Mapping[str, Any] | None = None
    random_weights: Sequence[str] = ()
    sidecars: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] | None = None
    distributions: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    cleaning: Mapping[str, Any] = field(default_factory=dict)
    history: Sequence[Mapping[str, Any]] = ()


def cell(value: Any) -> str:
    """A table cell: floats rounded, None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{DIGITS}f}"
    return str(value)


def flatten(payload: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts/lists as (dotted.key, scalar) pairs, for key/value tables of sidecars and summaries."""
    if isinstance(payload, Mapping):
        items = [(f"{prefix}.{k}" if prefix else str(k), v) for k, v in sorted(payload.items(), key=str)]
        return [pair for key, value in items for pair in flatten(value, key)]
    if isinstance(payload, list) and any(isinstance(v, Mapping | list) for v in payload):
        return [pair for i, value in enumerate(payload) for pair in flatten(value, f"{prefix}[{i}]")]
    return [(prefix, payload)]


# ---------------------------------------------------------------------------------------------- tables


def _name(content: ReportContent, model: str) -> str:
    return model + (" (champion)" if model == content.champion else "")


def metrics_rows(content: ReportContent) -> list[tuple]:
    return [
        (
            _name(content, model),
            m.get("split", "test"),
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


def per_class_tables(content: ReportContent) -> list[tuple[str, list[tuple], list[str]]]:
    """(model, per-class rows, classes whose AUC was skipped) of every model."""
    keys = ("precision", "recall", "f1", "support")
    return [
        (model, [(dx, *(m["per_class"][dx][k] for k in keys)) for dx in CLASSES], m["auc"]["skipped"])
        for model, m in content.metrics.items()
    ]


def validation_rows(content: ReportContent) -> list[tuple]:
    """Each model's validation figures: argmax, and at its decision rule (fitted there)."""
    rows = []
    for model, m in content.metrics.items():
        val = m.get("validation")
        if not val:
            continue
        ruled = m["operating_point"].get("validation") or {}
        rule_figures = (
            ruled.get(k) for k in ("accuracy", "balanced_accuracy", "mel_recall", "mel_specificity")
        )
        rows.append(
            (
                _name(content, model),
                val["split"],
                val["n"],
                val["accuracy"],
                val["balanced_accuracy"],
                val["melanoma_recall"],
                val["auc_mean"],
                *rule_figures,
            )
        )
    return rows


def operating_rows(content: ReportContent) -> list[tuple]:
    """Each model's decision rule and what it does on the evaluated split (and on validation, below it)."""
    rows = []
    for model, m in content.metrics.items():
        op = m["operating_point"]
        head = (
            _name(content, model),
            op["threshold_source"] or "—",
            op.get("rule_from"),
            op["target_mel_recall"],
            op.get("prior_tau"),
            op["rule"] or op.get("reason"),
        )
        for figures in (op, op.get("validation")):
            if figures and "accuracy" in figures:
                rows.append(
                    (
                        *head,
                        figures.get("split"),
                        *(figures.get(k) for k in ("accuracy", "balanced_accuracy", "mel_recall")),
                        figures.get("mel_specificity"),
                        figures.get("baseline_balanced_accuracy"),
                        figures.get("benign_referrals"),
                        figures.get("baseline_benign_referrals"),
                        figures.get("benign_referral_rate"),
                    )
                )
        if "accuracy" not in op:
            rows.append((*head, op.get("split"), *([None] * 8)))
    return rows


def calibration_rows(content: ReportContent) -> list[tuple]:
    """Each model's temperature and ECE / Brier / NLL before and after it, per split."""
    rows = []
    for model, m in content.metrics.items():
        block = m["calibration"]
        for split, figures in block["splits"].items():
            before, after = figures["before"], figures["after"]
            rows.append(
                (
                    _name(content, model),
                    split,
                    figures["after"]["n"],
                    block["temperature"],
                    *(value for key in ("ece", "brier", "nll") for value in (before[key], after[key])),
                )
            )
    return rows


def view(content: ReportContent) -> dict[str, Any]:
    """What the template lays out: table rows and figures as data URIs."""
    history_header = list(dict.fromkeys(key for row in content.history for key in row))
    metrics = content.metrics
    return {
        "metrics_header": METRICS_HEADER,
        "metrics_rows": metrics_rows(content),
        "per_class_header": PER_CLASS_HEADER,
        "per_class": per_class_tables(content),
        "validation_header": VALIDATION_HEADER,
        "validation_rows": validation_rows(content),
        "operating_header": OPERATING_HEADER,
        "operating_rows": operating_rows(content),
        "no_operating_point": [
            model for model, m in metrics.items() if m["operating_point"]["threshold_source"] is None
        ],
        "calibration_header": CALIBRATION_HEADER,
        "calibration_rows": calibration_rows(content),
        "reliability": [
            (data_uri(reliability_figure(model, m["calibration"])), f"{model} reliability diagram")
            for model, m in metrics.items()
        ],
        "confusion": [
            (data_uri(confusion_figure(model, m["confusion_matrix"]["matrix"])), f"{model} confusion matrix")
            for model, m in metrics.items()
        ],
        "recall": data_uri(recall_figure(metrics)),
        "roc": [
            (data_uri(roc_figure(model, content.curves.get(model, {}), m["auc"])), f"{model} ROC curves")
            for model, m in metrics.items()
        ],
        "distributions": data_uri(distribution_figure(content.distributions))
        if content.distributions
        else None,
        "sidecars": [(model, flatten(sidecar)) for model, sidecar in content.sidecars.items()],
        "params": flatten(content.params) if content.params else None,
        "cleaning": [(name, flatten(summary)) for name, summary in content.cleaning.items()],
        "history_header": history_header,
        "history_rows": [[row.get(column) for column in history_header] for row in content.history],
    }


@functools.cache
def environment() -> jinja2.Environment:
    """The one Jinja2 environment of the project's pages (this report, the case review): autoescaped,
    strict about undefined names, with the `cell` filter."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("molescope.evaluation", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["cell"] = cell
    return env


def render(content: ReportContent) -> str:
    """The whole page as one HTML string."""
    return environment().get_template(TEMPLATE).render(c=content, v=view(content), style=STYLE)
