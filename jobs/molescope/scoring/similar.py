"""Similar confirmed cases: for each image of a scored batch, the k training images nearest to it by cosine
similarity on the backbone features the model was trained with, with their diagnosis and how it was
confirmed (dx_type: histo, follow_up, consensus, confocal).

Only rows of the features table with split == "train" are candidates: a reviewer compares the image with cases
the model learnt from, never with other images of the batch (a query's own image_id is excluded too).

Exact search, not approximate: one matrix product (queries x candidates x dim) in blocks. Measured for 200
queries, k = 5, 256-d, on 2 busy cores (docs/benchmarks.md, "Similar cases: exact cosine search"): against
HAM10000's 7,853 training vectors `nearest` takes 0.2 CPU s and `similar_cases` ~4 CPU s, mostly Spark's
fixed cost; against 1,000,000 synthetic vectors 11 CPU s and 30 CPU s (38 s wall), half of it reading and
converting the vectors. LSH would trade recall for a speed-up that these sizes do not need.

How it scales past the driver's memory: the training vectors never leave the executors. The normalised
queries (a few hundred vectors) are broadcast; each partition keeps a running top-k per query over blocks of
its Arrow batches (`TopK`: memory of queries x k rows plus one block), a window keeps the global k per query,
and the driver collects queries x k rows.

Ties are ordered the same way at every step (similarity descending, then the lower key: image_id in Spark,
the row index in `nearest`), so the answer does not depend on how the table is split into files or
partitions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from pyspark import Broadcast
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from molescope.core.constants import SPLIT_TRAIN
from molescope.core.errors import MolescopeError
from molescope.io import tables

log = logging.getLogger(__name__)

#: Candidates per matrix product (`nearest`, and per partition in Spark): 8,192 x 256 float64 is 16 MiB,
#: and with 200 queries the similarity block is 13 MiB, whatever the number of candidates.
CHUNK_ROWS = 8192
#: What a neighbour carries from the features table; the first column orders ties.
NEIGHBOUR_COLUMNS = ("image_id", "lesion_id", "dx")
#: The curated columns read for dx_type: never the image bytes.
DX_TYPE_SCHEMA = T.StructType(
    [
        T.StructField("image_id", T.StringType()),
        T.StructField("dx_type", T.StringType()),
        T.StructField("batch_id", T.StringType()),
    ]
)
#: One partition's best candidates: `query` is the query's position in the broadcast matrix.
PARTIAL_SCHEMA = T.StructType(
    [
        T.StructField("query", T.IntegerType()),
        *(T.StructField(name, T.StringType()) for name in NEIGHBOUR_COLUMNS),
        T.StructField("similarity", T.DoubleType()),
    ]
)


# ------------------------------------------------------------------------------------------- exact top-k


def normalise(vectors: Any) -> np.ndarray:
    """Rows scaled to unit length (float64); a zero row stays zero, so its similarity to anything is 0."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def _best(similarity: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """Per row of `similarity`, the column indices of its k best, best first; ties go to the lower key.

    `keys` is one key per column (n) or per cell (rows x n).
    """
    keys = np.broadcast_to(keys, similarity.shape)
    if similarity.shape[1] > k:
        # A partial sort is O(n); it keeps an arbitrary k of the candidates tied at the k-th value, so the
        # (rare) rows with such ties are sorted in full to keep the lower keys.
        picked = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(similarity, picked, 1).min(axis=1, keepdims=True)
        for row in np.flatnonzero((similarity >= kth).sum(axis=1) > k):
            picked[row] = np.lexsort((keys[row], -similarity[row]))[:k]
    else:
        picked = np.broadcast_to(np.arange(similarity.shape[1]), similarity.shape)
    order = np.lexsort(
        (np.take_along_axis(keys, picked, 1), -np.take_along_axis(similarity, picked, 1)), axis=1
    )
    return np.take_along_axis(picked, order, 1)


@dataclass(frozen=True)
class TopK:
    """The best candidates seen so far per query, best first: `similarity` and, per column, the candidates'
    values (each queries x at most k). The first column is the key that orders ties."""

    k: int
    similarity: np.ndarray
    columns: dict[str, np.ndarray]

    @classmethod
    def start(cls, queries: int, k: int, dtypes: Mapping[str, Any]) -> TopK:
        empty = {name: np.empty((queries, 0), dtype=dtype) for name, dtype in dtypes.items()}
        return cls(k, np.empty((queries, 0)), empty)

    def merge(self, similarity: np.ndarray, columns: Mapping[str, np.ndarray]) -> TopK:
        """With a block of n candidates: `similarity` (queries x n) and their `columns` (n each)."""
        key = next(iter(self.columns))
        # The block's own best first: only queries x k of its cells are ever copied.
        picked = _best(similarity, columns[key], self.k)
        sims = np.hstack([self.similarity, np.take_along_axis(similarity, picked, 1)])
        values = {name: np.hstack([self.columns[name], columns[name][picked]]) for name in self.columns}
        best = _best(sims, values[key], self.k)
        return TopK(
            self.k,
            np.take_along_axis(sims, best, 1),
            {name: np.take_along_axis(v, best, 1) for name, v in values.items()},
        )


def nearest(
    candidates: np.ndarray, queries: np.ndarray, k: int, chunk_rows: int = CHUNK_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k: (indices into `candidates`, similarities), each queries x min(k, candidates),
    best first, ties to the lower index. Candidates are compared `chunk_rows` at a time."""
    candidates, queries = np.asarray(candidates), np.asarray(queries)
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    if candidates.ndim != 2 or queries.ndim != 2 or candidates.shape[1] != queries.shape[1]:
        raise ValueError(f"candidates {candidates.shape} and queries {queries.shape}: not the same dimension")
    unit = normalise(queries)
    top = TopK.start(len(unit), k, {"index": np.int64})
    for start in range(0, len(candidates), chunk_rows):
        block = normalise(candidates[start : start + chunk_rows])
        top = top.merge(unit @ block.T, {"index": np.arange(start, start + len(block))})
    return top.columns["index"], top.similarity


# ----------------------------------------------------------------------------------------------- on Spark


def _blocks(batches: Iterator[pd.DataFrame], rows: int) -> Iterator[pd.DataFrame]:
    """The Arrow batches regrouped into blocks of at least `rows` (the last: what is left). The session's
    batches are small (256 rows, sized for images), and each merge has a fixed cost: measured on 50,000
    rows and 200 queries, 3.2 CPU s in 256-row blocks, 0.6 s in 8,192-row ones."""
    pending: list[pd.DataFrame] = []
    for batch in batches:
        pending.append(batch)
        if sum(map(len, pending)) >= rows:
            yield pd.concat(pending, ignore_index=True)
            pending = []
    if pending:
        yield pd.concat(pending, ignore_index=True)


def _partition_best(
    batches: Iterator[pd.DataFrame], queries: Broadcast, k: int, block_rows: int
) -> Iterator[pd.DataFrame]:
    """mapInPandas: one partition's k best training rows per broadcast query."""
    unit = queries.value
    top = TopK.start(len(unit), k, {"image_id": str, "lesion_id": object, "dx": object})
    for block in _blocks(batches, block_rows):
        vectors = normalise(np.stack(block["features"].to_numpy()))
        columns = {name: block[name].to_numpy() for name in NEIGHBOUR_COLUMNS}
        columns["image_id"] = columns["image_id"].astype(str)  # numpy sorts str keys, not objects
        top = top.merge(unit @ vectors.T, columns)
    count, kept = top.similarity.shape
    yield pd.DataFrame(
        {
            "query": np.repeat(np.arange(count, dtype=np.int32), kept),
            **{name: values.ravel() for name, values in top.columns.items()},
            "similarity": top.similarity.ravel(),
        }
    )


def _query_matrix(queries: Mapping[str, Sequence[float]]) -> np.ndarray:
    dims = sorted({len(vector) for vector in queries.values()})
    if len(dims) > 1:
        raise ValueError(f"query vectors differ in length: {dims}")
    return np.asarray(list(queries.values()), dtype=np.float64)


def _training_rows(spark: SparkSession, features_uri: str, exclude: Sequence[str]) -> DataFrame:
    train = tables.read_features(spark, features_uri).where(F.col("split") == SPLIT_TRAIN)
    return train.where(~F.col("image_id").isin(list(exclude))).select(*NEIGHBOUR_COLUMNS, "features")


def _dx_types(spark: SparkSession, curated: str | None) -> DataFrame | None:
    """image_id -> dx_type of the curated table; None without one (neighbours then have no dx_type)."""
    if curated is None:
        return None
    try:
        return tables.read_curated(spark, curated, schema=DX_TYPE_SCHEMA).select("image_id", "dx_type")
    except (MolescopeError, AnalysisException) as error:  # a review page without dx_type beats none at all
        log.warning("similar cases without dx_type: curated table %s unreadable: %s", curated, error)
        return None


def similar_cases(
    spark: SparkSession,
    features_uri: str,
    curated: str | None,
    queries: Mapping[str, Sequence[float]],
    k: int,
) -> dict[str, list[dict[str, Any]]]:
    """{query image_id: its k nearest training images, best first}, each neighbour
    {"image_id", "lesion_id", "dx", "dx_type", "similarity"}; [] per query when there is no training row.

    `features_uri`: a features table or its reference JSON; `curated`: the curated root giving dx_type (None:
    dx_type is None). ValueError when k < 1 or the queries' dimension differs from the table's.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    ids = list(queries)
    if not ids:
        return {}
    matrix = _query_matrix(queries)
    train = _training_rows(spark, features_uri, ids)
    first = train.select(F.size("features").alias("dim")).first()
    if first is None:
        return {image_id: [] for image_id in ids}
    if first.dim != matrix.shape[1]:
        raise ValueError(
            f"query vectors have {matrix.shape[1]} features but the features table {features_uri} "
            f"has {first.dim}"
        )
    # Broadcast: shipped once per executor rather than inside every task's closure.
    shared = spark.sparkContext.broadcast(normalise(matrix))
    try:
        rows = _global_best(train, shared, k, _dx_types(spark, curated)).collect()
    finally:
        shared.destroy()
    found: dict[str, list[dict[str, Any]]] = {image_id: [] for image_id in ids}
    for row in sorted(rows, key=lambda r: (r.query, r.rank)):
        found[ids[row.query]].append(
            {name: row[name] for name in (*NEIGHBOUR_COLUMNS, "dx_type", "similarity")}
        )
    return found


def _global_best(train: DataFrame, queries: Broadcast, k: int, dx_types: DataFrame | None) -> DataFrame:
    """The k best per query over every partition's k best, with dx_type (left join: none when unknown)."""
    best_of = partial(_partition_best, queries=queries, k=k, block_rows=CHUNK_ROWS)
    candidates = train.mapInPandas(best_of, PARTIAL_SCHEMA)
    order = Window.partitionBy("query").orderBy(F.desc("similarity"), F.asc("image_id"))
    best = candidates.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= k)
    if dx_types is None:
        return best.withColumn("dx_type", F.lit(None).cast(T.StringType()))
    return best.join(dx_types, on="image_id", how="left")


def neighbour_images(spark: SparkSession, curated: str, image_ids: Iterable[str]) -> dict[str, bytes]:
    """{image_id: curated JPEG bytes} of `image_ids` (those the curated table lacks are left out)."""
    wanted = sorted(set(image_ids))
    if not wanted:
        return {}
    images = tables.read_curated(spark, curated, schema=tables.CURATED_IMAGE_SCHEMA)
    rows = images.where(F.col("image_id").isin(wanted)).select("image_id", "image").collect()
    return {row.image_id: bytes(row.image) for row in rows}
