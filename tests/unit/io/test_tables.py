"""Publishing by manifest: readers see exactly what a manifest names, never unpublished or stale versions."""

from __future__ import annotations

import json
import shutil

import pytest
from pyspark.sql import types as T

from molescope.core.errors import InputError, InvariantError
from molescope.io import tables

SCHEMA = T.StructType([T.StructField("id", T.LongType()), T.StructField("batch_id", T.StringType())])


def table(tmp_path) -> tables.Table:
    root = str(tmp_path / "t")
    return tables.Table(root, "t", SCHEMA, f"{root}/_manifests")


def frame(spark, ids, batch_id):
    return spark.createDataFrame([(i, batch_id) for i in ids], SCHEMA)


def ids(df) -> list[int]:
    return sorted(r.id for r in df.collect())


def test_readers_see_only_published_versions(spark, tmp_path):
    t = table(tmp_path)
    tables.replace(spark, t, frame(spark, [1, 2, 3], "007"), "007", expected_rows=3)
    unpublished = tables.write_version(spark, t, frame(spark, [9], "007"), "007")  # a killed re-run's files
    tables.replace(spark, t, frame(spark, [5], "b2"), "b2")

    everything = tables.read_table(spark, t)
    assert ids(everything) == [1, 2, 3, 5]
    assert {r.batch_id for r in everything.collect()} == {"007", "b2"}  # a string, not the number 7
    assert ids(tables.read_table(spark, t, ["007"])) == [1, 2, 3]
    assert unpublished.rows == 1 and all(f.startswith("batch_id=007/v") for f in unpublished.files)


def test_a_publish_replaces_and_collects_older_versions(spark, tmp_path):
    t = table(tmp_path)
    first = tables.replace(spark, t, frame(spark, [1, 2], "b1"), "b1")
    killed = tables.write_version(spark, t, frame(spark, [7, 8], "b1"), "b1")
    second = tables.replace(spark, t, frame(spark, [3], "b1"), "b1")

    assert ids(tables.read_table(spark, t)) == [3]
    folders = {f"batch_id=b1/{p.name}" for p in (tmp_path / "t" / "batch_id=b1").iterdir()}
    assert folders == second.folders  # the first version and the killed attempt's files are gone
    assert not (first.folders | killed.folders) & folders
    manifest = json.loads((tmp_path / "t" / "_manifests" / "b1.json").read_text())
    assert manifest["tables"]["t"] == second.to_dict()


def test_appended_version_keeps_the_earlier_files(spark, tmp_path):
    t = table(tmp_path)
    first = tables.replace(spark, t, frame(spark, [1, 2], "b1"), "b1")
    more = tables.write_version(spark, t, frame(spark, [3], "b1"), "b1")
    tables.publish(spark, t.manifest_uri("b1"), tables.manifest({"t": first + more}))
    tables.collect_garbage(spark, t, "b1")
    assert ids(tables.read_table(spark, t)) == [1, 2, 3]


def test_rows_written_are_checked(spark, tmp_path):
    with pytest.raises(InvariantError, match="wrote 2 rows, expected 3"):
        tables.write_version(spark, table(tmp_path), frame(spark, [1, 2], "b1"), "b1", expected_rows=3)


def test_unpartitioned_run_table_and_a_missing_one(spark, tmp_path):
    t = tables.run_table(str(tmp_path / "run" / "train_set"), "train_set", SCHEMA)
    with pytest.raises(InputError, match="no published train_set"):
        tables.read_table(spark, t)
    tables.replace(spark, t, frame(spark, [4, 5], "b1"))
    assert ids(tables.read_table(spark, t)) == [4, 5]
    assert (tmp_path / "run" / "train_set" / "_manifest.json").exists()


def test_a_deleted_published_file_fails_loudly_instead_of_reading_less(spark, tmp_path):
    t = table(tmp_path)
    version = tables.replace(spark, t, frame(spark, [1, 2], "b1"), "b1")
    shutil.rmtree(tmp_path / "t" / next(iter(version.folders)))
    with pytest.raises(Exception, match=r"(?i)not exist|not found"):
        tables.read_table(spark, t).collect()


def test_collect_garbage_touches_only_version_folders(spark, tmp_path):
    t = table(tmp_path)
    (tmp_path / "t" / "batch_id=b1" / "notes").mkdir(parents=True)
    tables.replace(spark, t, frame(spark, [1], "b1"), "b1")
    assert (tmp_path / "t" / "batch_id=b1" / "notes").is_dir()
