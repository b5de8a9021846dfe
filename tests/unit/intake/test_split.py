"""molescope.intake.split: every lesion-grouped assignment keeps a lesion's images (and synthetic rows)
together."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from molescope.core.constants import SPLIT_VALIDATION
from molescope.intake import split


def lesion_id(n: int) -> str:
    return f"HAM_{n:07d}"


def test_lesion_unit_matches_between_python_and_spark(spark):
    lesions = [lesion_id(n) for n in range(50)]
    df = spark.createDataFrame([(x,) for x in lesions], "lesion_id string")
    spark_units = {
        r.lesion_id: r.u
        for r in df.select("lesion_id", split.lesion_unit_column(7, F.col("lesion_id")).alias("u")).collect()
    }
    assert all(spark_units[x] == split.lesion_unit(7, x) for x in lesions)
    assert all(0.0 <= u < 1.0 for u in spark_units.values())


def test_real_split_is_by_lesion_and_roughly_stratified(real_metadata):
    assigned = split.assign_split(real_metadata, 0.2, 42)
    assert assigned.groupBy("lesion_id").agg(F.countDistinct("split").alias("n")).where("n > 1").count() == 0
    lesions = assigned.select("lesion_id", "dx", "split").distinct()
    for row in (
        lesions.groupBy("dx").agg(F.avg((F.col("split") == "test").cast("double")).alias("f")).collect()
    ):
        assert 0.1 < row.f < 0.3, (row.dx, row.f)
    again = split.assign_split(real_metadata, 0.2, 42).select("image_id", "split")
    assert assigned.select("image_id", "split").exceptAll(again).count() == 0


def test_fold_assignment_never_splits_a_lesion(spark):
    rows = [(f"img{i}", f"L{i % 37}") for i in range(300)]
    df = spark.createDataFrame(rows, "image_id string, lesion_id string")
    folded = split.assign_folds(df, k=3, seed=42)
    per_lesion = folded.groupBy("lesion_id").agg(F.countDistinct("fold").alias("folds")).collect()
    assert all(r["folds"] == 1 for r in per_lesion)
    folds = {r["fold"] for r in folded.select("fold").distinct().collect()}
    assert folds == {0, 1, 2}
    # Train/validation parts of every fold are lesion-disjoint.
    for k in folds:
        validation = {r["lesion_id"] for r in folded.where(F.col("fold") == k).collect()}
        training = {r["lesion_id"] for r in folded.where(F.col("fold") != k).collect()}
        assert not validation & training


def test_fold_assignment_depends_on_seed_and_covers_missing_lesions(spark):
    rows = [(f"img{i}", None if i % 5 == 0 else f"L{i}") for i in range(200)]
    df = spark.createDataFrame(rows, "image_id string, lesion_id string")
    a = [r["fold"] for r in split.assign_folds(df, 4, seed=1).orderBy("image_id").collect()]
    b = [r["fold"] for r in split.assign_folds(df, 4, seed=2).orderBy("image_id").collect()]
    assert a != b
    assert None not in a
    assert set(a) <= {0, 1, 2, 3}


def training_frame(spark: SparkSession, rows: list[tuple]) -> DataFrame:
    """(image_id, lesion_id, synthetic, source_image_id) rows as a minimal train_set-like frame."""
    schema = "image_id string, lesion_id string, synthetic boolean, source_image_id string, split string"
    return spark.createDataFrame([(*row, "train") for row in rows], schema)


def test_validation_part_is_lesion_disjoint_and_drops_held_out_synthetics(spark):
    real = [(f"img{i}", f"L{i % 40}", False, f"img{i}") for i in range(200)]
    # Synthetic copies: some keep the source lesion, some lost it (SMOTE-like null lesion).
    synthetic = [(f"img{i}~aug", f"L{i % 40}" if i % 2 else None, True, f"img{i}") for i in range(0, 200, 3)]
    fit, validation = split.split_validation(training_frame(spark, real + synthetic), 0.25, seed=42)
    lesion_of = {image_id: lesion for image_id, lesion, _, _ in real}
    fit_rows, val_rows = fit.collect(), validation.collect()
    fit_lesions = {lesion_of[r["source_image_id"]] for r in fit_rows}
    val_lesions = {r["lesion_id"] for r in val_rows}
    assert val_lesions and fit_lesions
    assert not fit_lesions & val_lesions
    assert not any(r["synthetic"] for r in val_rows)
    assert {r["split"] for r in val_rows} == {SPLIT_VALIDATION}
    # Every real row is in exactly one part; synthetic rows of held-out lesions are gone.
    real_ids = {r["image_id"] for r in fit_rows if not r["synthetic"]} | {r["image_id"] for r in val_rows}
    assert len(real_ids) == len(real) == sum(not r["synthetic"] for r in fit_rows) + len(val_rows)
    dropped = [s for s in synthetic if lesion_of[s[3]] in val_lesions]
    assert dropped
    assert len(fit_rows) + len(val_rows) + len(dropped) == len(real) + len(synthetic)
    assert 0.1 < len(val_lesions) / 40 < 0.45
    # Deterministic: the same seed holds out the same lesions.
    again = split.split_validation(training_frame(spark, real), 0.25, seed=42)[1]
    assert {r["lesion_id"] for r in again.collect()} == val_lesions


def test_validation_fraction_zero_holds_nothing_out(spark):
    rows = [(f"img{i}", f"L{i}", False, f"img{i}") for i in range(30)]
    fit, validation = split.split_validation(training_frame(spark, rows), 0.0, seed=1)
    assert validation.count() == 0
    assert fit.count() == 30
