"""Test inputs published as the stages publish them (a version folder named by a manifest), and the
published predictions read back: the unit tests' writers share these."""

from __future__ import annotations

from molescope.io import tables


def publish(spark, table, frame):
    """Publish `frame` as the stages do (a version named by a manifest), per batch for a partitioned table."""
    rows = tables.conform(frame, table.schema)
    if not table.partitioned:
        return tables.replace(spark, table, rows)
    for (batch_id,) in rows.select("batch_id").distinct().collect():
        tables.replace(spark, table, rows.where(rows["batch_id"] == batch_id), batch_id)
    return None


def publish_curated(spark, curated, frame):
    publish(spark, tables.curated_images(str(curated)), frame)


def publish_features(spark, uri, frame):
    publish(spark, tables.features_table(str(uri)), frame)


def publish_train_set(spark, uri, frame):
    publish(spark, tables.train_set(str(uri)), frame)


def read_predictions(spark, run, model):
    return tables.read_table(spark, tables.model_predictions(str(run), model))
