"""The case-review page of one scored batch (`review.html` beside its predictions): the worklist
(`molescope.scoring.worklist`), each shown image with its thumbnail, calibrated class probabilities and the
most similar confirmed training cases (`molescope.scoring.similar`), and a summary of the batch.

Only the shown images are read back (their JPEG bytes and, for a feature model, their features): the cost
over plain scoring grows with the cards, not with the batch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from molescope.core.constants import CLASS_INDEX, CLASSES, MELANOMA
from molescope.core.errors import MolescopeError
from molescope.core.registry import REVIEW_FILE, SALIENCY_DIR
from molescope.evaluation import drift
from molescope.evaluation.review_html import Card, Neighbour, ReviewContent, jpeg_uri, render
from molescope.evaluation.rules import DecisionRule
from molescope.features.image_stats import image_statistics
from molescope.io import storage
from molescope.io.imaging import decode_resized, overlay, thumbnail
from molescope.scoring import similar, worklist
from molescope.scoring.model import ScoringModel

log = logging.getLogger(__name__)

#: Longest side of a card's image and of a similar case's, px (the page embeds every one).
CARD_PX, NEIGHBOUR_PX = 160, 64
IMAGE_MODEL_NOTE = (
    "not shown for an image model: similar cases are searched on the frozen backbone features a feature "
    "model was trained with"
)


@dataclass(frozen=True)
class ReviewInputs:
    """What the score stage hands over: the written predictions, the batch's images (with bytes) and, for a
    feature model, their features; how many cards and neighbours to show."""

    predictions: pd.DataFrame
    images: DataFrame
    features: DataFrame | None
    quarantined_by_reason: dict[str, int]
    top: int
    similar_k: int


def jpegs(frame: DataFrame, ids: list[str], column: str = "image") -> dict[str, bytes]:
    rows = frame.where(F.col("image_id").isin(ids)).select("image_id", column).collect()
    return {row["image_id"]: bytes(row[column]) for row in rows}


def neighbours(
    spark: SparkSession, scoring: ScoringModel, inputs: ReviewInputs, ids: list[str]
) -> tuple[dict[str, list[Neighbour]], str | None]:
    """The similar training cases of each shown image, or why there are none."""
    training = scoring.model.sidecar.get("training_set") or {}
    if inputs.features is None:
        return {}, IMAGE_MODEL_NOTE
    if not training.get("features_uri"):
        return {}, "not shown: the model's sidecar names no training features table"
    if inputs.similar_k < 1 or not ids:
        return {}, None
    try:
        return similar_neighbours(spark, training, inputs.features, ids, inputs.similar_k), None
    except (MolescopeError, AnalysisException) as error:
        # The cards are worth showing without neighbours; the page and the summary say why there are none.
        cause = str(error).splitlines()[0] if str(error) else type(error).__name__
        log.warning("case review without similar cases: %s", cause)
        return {}, f"not shown: the training features {training['features_uri']} cannot be read ({cause})"


def similar_neighbours(
    spark: SparkSession, training: dict[str, Any], features: DataFrame, ids: list[str], k: int
) -> dict[str, list[Neighbour]]:
    """The k most similar training images of each shown image (`features`: the batch's), with thumbnails."""
    shown = features.where(F.col("image_id").isin(ids)).select("image_id", "features")
    queries = {row["image_id"]: row["features"] for row in shown.collect()}
    found = similar.similar_cases(spark, training["features_uri"], training.get("curated"), queries, k)
    names = sorted({n["image_id"] for cases in found.values() for n in cases})
    images = similar.neighbour_images(spark, training["curated"], names) if training.get("curated") else {}
    thumbs = {name: jpeg_uri(thumbnail(data, NEIGHBOUR_PX)) for name, data in images.items()}
    return {
        image_id: [
            Neighbour(n["image_id"], n["dx"], n["dx_type"], float(n["similarity"]), thumbs.get(n["image_id"]))
            for n in cases
        ]
        for image_id, cases in found.items()
    }


def batch_drift(scoring: ScoringModel, images: DataFrame, frame: pd.DataFrame) -> dict[str, Any]:
    """The batch's drift report (`molescope.evaluation.drift`) against what the model's sidecar keeps of its
    training images and of its rule's decisions on validation; the images are summarised only when there
    is a reference to compare them with."""
    sidecar = scoring.model.sidecar
    image_reference = (sidecar.get("training_set") or {}).get("image_statistics")
    reference_mix = (sidecar.get("validation") or {}).get("decided_mix")
    values = image_statistics(images) if image_reference else None
    decided = [CLASS_INDEX.get(name, -1) for name in frame["decided"]]
    batch_mix = drift.decided_mix(decided) if reference_mix else None
    return drift.compare(len(frame), image_reference, values, reference_mix, batch_mix)


def labelled_figures(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """The labelled batch's headline figures at the decision rule (and argmax), for the summary table."""
    if not metrics:
        return None
    op = metrics.get("operating_point") or {}
    return {
        "labelled images": metrics.get("n"),
        "balanced accuracy (argmax)": metrics.get("balanced_accuracy"),
        "balanced accuracy (rule)": op.get("balanced_accuracy"),
        "mel recall (rule)": op.get("mel_recall"),
        "mel specificity (rule)": op.get("mel_specificity"),
    }


def explained_class(decided: str) -> int:
    """The class a card's map explains: the decided one (an undecided tie: melanoma, the worklist's)."""
    return CLASS_INDEX.get(decided, CLASS_INDEX[MELANOMA])


def saliency_overlays(
    scoring: ScoringModel, shown: pd.DataFrame, images: dict[str, bytes]
) -> tuple[dict[str, bytes], str | None]:
    """{image_id: JPEG of its Grad-CAM map for the decided class over its thumbnail} of the shown images,
    in one batched forward pass; ({}, why) for a model without maps."""
    ids = [image_id for image_id in shown["image_id"] if image_id in images]
    if not ids:
        return {}, None
    model = scoring.saliency
    if isinstance(model, str):
        return {}, model
    decided = shown.set_index("image_id").loc[ids, "decided"]
    pixels = np.stack([decode_resized(images[image_id], model.spec.input_size) for image_id in ids])
    maps = model.class_maps(pixels, np.array([explained_class(d) for d in decided]))
    overlays = {
        image_id: overlay(images[image_id], m, CARD_PX) for image_id, m in zip(ids, maps, strict=True)
    }
    return overlays, None


def write_overlays(spark: SparkSession, out: str, frame: pd.DataFrame, overlays: dict[str, bytes]) -> None:
    """`<out>/saliency/`: image_id, the class its map explains and the overlay JPEG, one Parquet file
    (rewritten with the page)."""
    uri = storage.join(out, SALIENCY_DIR)
    decided = frame.set_index("image_id")["decided"]
    rows = [(i, CLASSES[explained_class(decided[i])], jpeg) for i, jpeg in overlays.items()]
    table = spark.createDataFrame(rows, "image_id string, explained string, overlay binary")
    table.coalesce(1).write.mode("overwrite").parquet(uri)


def cards(
    frame: pd.DataFrame,
    images: dict[str, bytes],
    similar_cases: dict[str, list[Neighbour]],
    overlays: dict[str, bytes],
) -> list[Card]:
    return [
        Card(
            rank=int(row.rank),
            image_id=row.image_id,
            thumbnail=jpeg_uri(thumbnail(images[row.image_id], CARD_PX)) if row.image_id in images else None,
            overlay=jpeg_uri(overlays.get(row.image_id)),
            explained=CLASSES[explained_class(row.decided)],
            probabilities=dict(zip(CLASSES, map(float, row.probabilities), strict=True)),
            decided=row.decided,
            flagged=None if row.flagged is None else bool(row.flagged),
            dx=row.dx if isinstance(row.dx, str) else None,
            missed_melanoma=bool(row.missed_melanoma),
            neighbours=similar_cases.get(row.image_id, ()),
        )
        for row in frame.itertuples(index=False)
    ]


def content(
    spark: SparkSession,
    out: str,
    batch_id: str,
    scoring: ScoringModel,
    inputs: ReviewInputs,
    metrics: dict | None,
) -> tuple[ReviewContent, float]:
    """The page's content, having written its overlays; and the seconds the saliency maps took."""
    rule: DecisionRule | None = scoring.model.rule
    frame = worklist.rank(inputs.predictions, rule, inputs.top)
    shown = frame[frame["shown"]]
    ids = shown["image_id"].tolist()
    found, note = neighbours(spark, scoring, inputs, ids)
    images = jpegs(inputs.images, ids)
    started = time.monotonic()
    overlays, saliency_note = saliency_overlays(scoring, shown, images)
    if overlays:
        write_overlays(spark, out, frame, overlays)
    saliency_s = time.monotonic() - started
    page = ReviewContent(
        batch_id=batch_id,
        model=scoring.name,
        model_uri=scoring.uri,
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        rule=None if rule is None else rule.text(),
        temperature=1.0 if rule is None else rule.temperature,
        cards=cards(shown, images, found, overlays),
        scored=len(frame),
        flagged=int(frame["flagged"].eq(True).sum()),
        class_mix=worklist.class_mix(frame, rule),
        quarantined_by_reason=inputs.quarantined_by_reason,
        neighbours_note=note,
        metrics=labelled_figures(metrics),
        drift=batch_drift(scoring, inputs.images, frame),
        saliency_note=saliency_note,
    )
    return page, saliency_s


def write_review(
    spark: SparkSession,
    out: str,
    batch_id: str,
    scoring: ScoringModel,
    inputs: ReviewInputs,
    metrics: dict | None = None,
) -> dict[str, Any]:
    """Write `<out>/review.html`; returns what the batch summary records of it (with its cost, `review_s`:
    what the page adds to scoring the batch)."""
    started = time.monotonic()
    page, saliency_s = content(spark, out, batch_id, scoring, inputs, metrics)
    uri = storage.join(out, REVIEW_FILE)
    storage.write_text(spark, uri, render(page))
    elapsed = time.monotonic() - started
    log.info("case review %s: %d cards, %d flagged, %.1fs", uri, len(page.cards), page.flagged, elapsed)
    if page.drift["verdict"] not in (drift.STABLE, drift.NOT_TESTED):
        log.warning("batch %s drifts from the training data: %s", batch_id, page.drift["verdict"])
    return {
        "review": uri,
        "flagged": page.flagged,
        "review_cards": len(page.cards),
        "similar_cases": page.neighbours_note or f"up to {inputs.similar_k} per card",
        "drift": page.drift,
        "saliency": page.saliency_note
        or f"Grad-CAM of the decided class: {sum(c.overlay is not None for c in page.cards)} overlays in "
        f"{storage.join(out, SALIENCY_DIR)}",
        "saliency_s": round(saliency_s, 3),
        "review_s": round(elapsed, 3),
    }
