"""Lesion-grouped assignments: every image of a lesion (and every synthetic row made from one) goes one way.

- Train/test (clean): a lesion is on the test side iff `lesion_unit(seed, lesion_id) < test_fraction`, where
  `lesion_unit` maps SHA-256 of `"<seed>:<lesion_id>"` to [0, 1). It depends on nothing but the lesion id and
  the seed, so a lesion keeps its side whichever batch its images arrive in, and the split can be recomputed
  outside Spark. Stratification by dx is in expectation (every class gets a Bernoulli draw per lesion).
- Validation part of the training split (train): lesions whose hash of (seed, salt, source lesion) falls below
  `--validation-fraction` are held out of fitting; synthetic rows belong to their source image's lesion.
- Cross-validation folds (train `--cv-folds`): a hash of (seed, lesion) modulo the number of folds.

Salts keep the three independent although they share the seed.
"""

from __future__ import annotations

import hashlib

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from molescope.core.constants import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VALIDATION

#: Hex digits of the SHA-256 used by `lesion_unit`: 60 bits fit a signed long and a double's exponent range.
SPLIT_HASH_HEX_DIGITS = 15
SPLIT_HASH_SCALE = float(16**SPLIT_HASH_HEX_DIGITS)
FOLD_COL = "fold"
#: Salt so the validation part is independent of the CV folds and the Keras head's early-stopping buckets.
VALIDATION_SALT = 104729
#: Resolution of the lesion hash mapped to [0, 1) for the validation part.
VALIDATION_UNIT_BUCKETS = 1 << 20
VALIDATION_ASSIGNMENT = "pmod(xxhash64(seed, salt, source lesion), 2^20) < fraction * 2^20"
FOLD_ASSIGNMENT = "pmod(xxhash64(seed, lesion_id), folds)"
_VAL_COL = "_validation"
_GROUP_COL = "_source_lesion"


# ---------------------------------------------------------------------------------------------- train/test


def lesion_unit(seed: int, lesion_id: str) -> float:
    """Map (seed, lesion_id) to [0, 1): the pure-Python twin of `lesion_unit_column`."""
    digest = hashlib.sha256(f"{seed}:{lesion_id}".encode()).hexdigest()
    return int(digest[:SPLIT_HASH_HEX_DIGITS], 16) / SPLIT_HASH_SCALE


def lesion_unit_column(seed: int, lesion_id: Column) -> Column:
    digest = F.sha2(F.concat(F.lit(f"{seed}:"), lesion_id), 256)
    prefix = F.conv(F.substring(digest, 1, SPLIT_HASH_HEX_DIGITS), 16, 10).cast(T.LongType())
    return prefix.cast(T.DoubleType()) / F.lit(SPLIT_HASH_SCALE)


def assign_split(df: DataFrame, test_fraction: float, seed: int) -> DataFrame:
    """Add `split`: 'test' iff lesion_unit(seed, lesion_id) < test_fraction."""
    is_test = lesion_unit_column(seed, F.col("lesion_id")) < F.lit(test_fraction)
    return df.withColumn("split", F.when(is_test, F.lit(SPLIT_TEST)).otherwise(F.lit(SPLIT_TRAIN)))


# ------------------------------------------------------------------------------ validation part and folds


def lesion_bucket(seed: int, buckets: int) -> Column:
    """Bucket in [0, buckets) from a hash of lesion_id (image_id when a row has no lesion)."""
    group = F.coalesce(F.col("lesion_id"), F.col("image_id"))
    return F.pmod(F.xxhash64(F.lit(seed), group), F.lit(buckets)).cast("int")


def assign_folds(df: DataFrame, k: int, seed: int) -> DataFrame:
    """Add `fold` so that every row of a lesion lands in the same fold (CrossValidator's foldCol)."""
    return df.withColumn(FOLD_COL, lesion_bucket(seed, k))


def with_source_lesion(train: DataFrame) -> DataFrame:
    """Add the lesion of a row's source image (its own lesion for real rows).

    A synthetic row's source is found through source_image_id among the real rows; when it is not there,
    the row's own lesion_id (which upsample copies from the source) stands in.
    """
    real = train.where(~F.col("synthetic")).select(
        F.col("image_id").alias("_source_id"), F.col("lesion_id").alias("_source_lesion_id")
    )
    joined = train.join(real, on=train["source_image_id"] == real["_source_id"], how="left")
    group = F.coalesce(F.col("_source_lesion_id"), F.col("lesion_id"), F.col("image_id"))
    return joined.withColumn(_GROUP_COL, group).drop("_source_id", "_source_lesion_id")


def validation_flag(seed: int, fraction: float) -> Column:
    """True for rows whose source lesion's hash of (seed, lesion) falls in the held-out `fraction`."""
    bucket = F.pmod(
        F.xxhash64(F.lit(seed), F.lit(VALIDATION_SALT), F.col(_GROUP_COL)), F.lit(VALIDATION_UNIT_BUCKETS)
    )
    return bucket < F.lit(round(fraction * VALIDATION_UNIT_BUCKETS))


def split_validation(train: DataFrame, fraction: float, seed: int) -> tuple[DataFrame, DataFrame]:
    """(fit part, validation part) of the training rows, lesion-disjoint.

    The fit part has no row of a held-out lesion, synthetic copies included; the validation part holds the
    held-out lesions' real rows only, with `split` set to 'validation'. fraction 0: (train, empty).
    """
    flagged = with_source_lesion(train).withColumn(_VAL_COL, validation_flag(seed, fraction))
    fit = flagged.where(~F.col(_VAL_COL)).drop(_VAL_COL, _GROUP_COL)
    validation = (
        flagged.where(F.col(_VAL_COL) & ~F.col("synthetic"))
        .drop(_VAL_COL, _GROUP_COL)
        .withColumn("split", F.lit(SPLIT_VALIDATION))
    )
    return fit, validation
