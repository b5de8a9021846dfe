"""Render the case-review page of a scored batch: one self-contained HTML page (Jinja2 template
`templates/review.html.j2`, the report's environment) with the images embedded as base64 JPEG thumbnails.

Self-contained and autoescaped for the report's reasons (`report_html`). The only script is the class
filter: it hides cards client-side and needs nothing from outside the page.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from molescope.core.constants import CLASSES
from molescope.evaluation.report_html import STYLE, environment

TEMPLATE = "review.html.j2"
REVIEW_STYLE = """
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #ccc;border-radius:6px;padding:8px;width:340px}
.card.flagged{border:2px solid #c0392b}
.card h3{margin:0 0 4px 0;font-size:1em}
.views{display:flex;gap:8px;align-items:flex-start}
.card img.lesion,.card img.saliency{width:160px}
.overlay{margin:0;font-size:0.75em;text-align:center}
.bar{background:#4a90d9;height:8px;display:inline-block}
.probs td{padding:0 4px;border:none;font-size:0.85em}
.neighbours{clear:both;display:flex;gap:4px;margin-top:6px}
.neighbour{font-size:0.75em;text-align:center;width:66px}
.neighbour img{width:64px}
.badge{color:#fff;background:#c0392b;padding:1px 6px;border-radius:4px;font-size:0.8em}
tr.moderate td{background:#fdebd0}
tr.shift td{background:#f5b7b1}
.missed{color:#fff;background:#8e44ad;padding:1px 6px;border-radius:4px;font-size:0.8em}
"""


def jpeg_uri(jpeg: bytes | None) -> str | None:
    return None if jpeg is None else "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


@dataclass(frozen=True)
class Neighbour:
    """A similar confirmed training case."""

    image_id: str
    dx: str | None
    dx_type: str | None
    similarity: float
    thumbnail: str | None = None  # data URI


@dataclass(frozen=True)
class Card:
    """One shown image of the worklist."""

    rank: int
    image_id: str
    thumbnail: str | None
    probabilities: Mapping[str, float]
    decided: str
    flagged: bool | None
    dx: str | None = None
    missed_melanoma: bool = False
    neighbours: Sequence[Neighbour] = ()
    #: The Grad-CAM overlay (data URI) and the class it explains; None: the model has no maps.
    overlay: str | None = None
    explained: str | None = None


@dataclass
class ReviewContent:
    batch_id: str
    model: str
    model_uri: str
    generated_at: str
    #: The decision rule's text (None: the model has none, nothing is flagged).
    rule: str | None
    temperature: float
    cards: list[Card]
    scored: int
    flagged: int
    #: (class, decided, share of the batch, share of the model's validation rows).
    class_mix: list[tuple[str, int, float, float | None]]
    quarantined_by_reason: Mapping[str, int]
    #: Why a card has no similar cases, when none has (e.g. an image model; no training features).
    neighbours_note: str | None = None
    #: Headline figures at the decision rule, for a labelled batch.
    metrics: Mapping[str, Any] | None = None
    #: The batch's drift report (`molescope.evaluation.drift.compare`).
    drift: Mapping[str, Any] | None = None
    #: Why the cards have no saliency overlays, when they have none (e.g. a tree model).
    saliency_note: str | None = None
    notes: list[str] = field(default_factory=list)


def render(content: ReviewContent) -> str:
    """The whole page as one HTML string."""
    template = environment().get_template(TEMPLATE)
    return template.render(c=content, classes=CLASSES, style=STYLE + REVIEW_STYLE)
