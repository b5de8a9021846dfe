"""Fixtures of the unit tests that several modules share."""

from __future__ import annotations

import pytest

from tests.conftest import HAM10000, require


@pytest.fixture(scope="session")
def real_metadata(spark):
    """The real HAM10000 metadata CSV (10,015 rows), parsed as clean parses it, cached."""
    from molescope.intake import read_metadata_csv
    from molescope.metadata import parse_metadata

    path = require(HAM10000 / "HAM10000_metadata.csv")
    return parse_metadata(read_metadata_csv(spark, str(path)), str(path)).cache()


def publish(spark, table, frame):
    """Publish `frame` as the stages do (a version named by a manifest), per batch for a partitioned table."""
    from molescope import tables

    rows = tables.conform(frame, table.schema)
    if not table.partitioned:
        return tables.replace(spark, table, rows)
    for (batch_id,) in rows.select("batch_id").distinct().collect():
        tables.replace(spark, table, rows.where(rows["batch_id"] == batch_id), batch_id)
    return None


def publish_curated(spark, curated, frame):
    from molescope import tables

    publish(spark, tables.curated_images(str(curated)), frame)


def publish_features(spark, uri, frame):
    from molescope import tables

    publish(spark, tables.features_table(str(uri)), frame)


def publish_train_set(spark, uri, frame):
    from molescope import tables
    from molescope.registry import TRAIN_SET_DIR

    publish(spark, tables.run_table(str(uri), TRAIN_SET_DIR, tables.TRAIN_SET_SCHEMA), frame)


def read_predictions(spark, run, model):
    from molescope import tables

    return tables.read_table(spark, tables.model_predictions(str(run), model))
