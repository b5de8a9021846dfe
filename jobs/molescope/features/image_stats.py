"""The per-image statistics of the drift check (`molescope.evaluation.drift.image_summaries`) over a Spark
frame of JPEG bytes: train computes them for a sample of its training images, score for a scored batch.

Only the small summaries reach the driver (`mapInPandas` decodes in the executors), never the images.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from molescope.evaluation.drift import SUMMARIES, SUMMARY_PX, image_summaries
from molescope.io.imaging import ImageError, decode_resized

log = logging.getLogger(__name__)

SCHEMA = T.StructType(
    [T.StructField("image_id", T.StringType(), False)]
    + [T.StructField(name, T.DoubleType(), True) for name in SUMMARIES]
)
#: Training images train summarises: decile edges are stable well before this, and it bounds the cost.
REFERENCE_SAMPLE = 2000


def summarise(data: bytes | None) -> tuple[float, ...]:
    """The image's summaries; NaN for bytes that do not decode (counted and left out by the caller)."""
    try:
        return image_summaries(decode_resized(data, SUMMARY_PX))
    except ImageError:
        return (math.nan,) * len(SUMMARIES)


def _summarise(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    for batch in batches:
        values = np.asarray([summarise(data) for data in batch["image"]], dtype=float)
        columns = values.reshape(-1, len(SUMMARIES)).T
        yield pd.DataFrame({"image_id": batch["image_id"], **dict(zip(SUMMARIES, columns, strict=True))})


def image_statistics(images: DataFrame) -> np.ndarray:
    """(n × len(SUMMARIES)) summaries of the rows of `images` (image_id, image bytes), image_id order.

    Clean and score's intake decoded these images already; a row whose bytes still do not decode (a
    curated table written by hand) is left out of the statistics and logged, never fails the caller.
    """
    frame = images.select("image_id", "image").mapInPandas(_summarise, schema=SCHEMA)
    values = frame.orderBy("image_id").toPandas()[list(SUMMARIES)].to_numpy(dtype=float)
    usable = ~np.isnan(values).any(axis=1)
    if not usable.all():
        log.warning("image statistics: %d of %d images do not decode, left out", (~usable).sum(), len(values))
    return values[usable]


def reference_sample(image_ids: DataFrame, size: int | None = None) -> DataFrame:
    """At most `size` (default REFERENCE_SAMPLE) distinct image_ids of `image_ids`, the same ones on every
    run (a hash order)."""
    distinct = image_ids.select("image_id").distinct()
    return distinct.orderBy(F.xxhash64("image_id"), "image_id").limit(size or REFERENCE_SAMPLE)
