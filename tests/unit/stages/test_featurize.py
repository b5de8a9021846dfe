"""featurize through Spark with the real MobileNet-0.25 ImageNet weights on a few real HAM10000 images.

Reference: an independent direct Keras call (PIL decode + bilinear resize to 224 + keras' MobileNet
`preprocess_input` + `model.predict`) on the same images. Tolerance: atol 1e-4 + rtol 1e-4. Features range
0..5.5 (mean 0.65) on these images. In one process the two paths agree exactly (max abs diff 0.0); in Spark
the workers run TensorFlow with 1 intra-op thread and other batch sizes, which may only change float32
summation order. Both engines are held to it: keras (TensorFlow in the workers) and litert (the converted
flatbuffer under XNNPACK: max abs difference ~5e-5 measured). Real mistakes are far larger: nearest instead
of bilinear resize moves features by up to 1.0, ResNet's caffe preprocessing by up to 5.4.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import numpy as np
import pytest
from PIL import Image
from pyspark.sql import functions as F

from molescope.core.registry import ENGINE_KERAS, ENGINE_LITERT, ENGINES_DIR
from molescope.features import worker
from molescope.features.backbones import resolve_backbone
from molescope.features.engines import litert_cache_name, prepare_engine
from molescope.features.extract import compute_features, engines_cache_of, features_uri
from molescope.io import tables
from molescope.stages import featurize as fz
from tests.conftest import HAM10000, MOBILENET_025_WEIGHTS, require
from tests.unit.published_tables import publish_curated

# Spark starts Python workers with `python3` unless told otherwise, and that interpreter may lack molescope
# and TensorFlow. Collection runs before the session fixture builds the SparkContext, so this reaches it.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

N_IMAGES = 12
#: Not a divisor of N_IMAGES: every partition ends with a short (for LiteRT: padded) chunk.
BATCH_SIZE = 5
ATOL = RTOL = 1e-4


@pytest.fixture(scope="module")
def image_files():
    return sorted((require(HAM10000) / "images").glob("*.jpg"))[:N_IMAGES]


@pytest.fixture(scope="module")
def spec():
    return resolve_backbone("mobilenet", str(require(MOBILENET_025_WEIGHTS)), alpha=0.25)


def curated_rows(files, batch_id):
    return [
        (p.stem, f"HAM_{i:07d}", "nv", "train" if i % 4 else "test", p.read_bytes(), batch_id)
        for i, p in enumerate(files)
    ]


def curated_frame(spark, files, batch_id="b1"):
    columns = ["image_id", "lesion_id", "dx", "split", "image", "batch_id"]
    return spark.createDataFrame(curated_rows(files, batch_id), columns)


def features_by_id(frame):
    return {r.image_id: np.array(r.features, dtype=np.float32) for r in frame.collect()}


def direct_keras(files):
    import keras

    model = keras.applications.MobileNet(
        alpha=0.25,
        include_top=False,
        input_shape=(224, 224, 3),
        pooling="avg",
        weights=str(MOBILENET_025_WEIGHTS),
    )
    batch = np.stack(
        [
            np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR), np.float32)
            for p in files
        ]
    )
    out = model.predict(keras.applications.mobilenet.preprocess_input(batch), verbose=0)
    return {p.stem: out[i] for i, p in enumerate(files)}


@pytest.fixture(scope="module", params=[ENGINE_KERAS, ENGINE_LITERT])
def engine(request, spark, spec):
    """Each engine as a job prepares it (litert: converted for BATCH_SIZE in a child process, broadcast)."""
    return prepare_engine(spark, spec, request.param, BATCH_SIZE)


@pytest.fixture(scope="module")
def spark_features(spark, image_files, spec, engine):
    # Cached: the tests below query it several times and should not recompute the features each time.
    frame = compute_features(
        curated_frame(spark, image_files), spec, batch_size=BATCH_SIZE, partitions=2, engine=engine
    ).cache()
    yield frame, features_by_id(frame)
    frame.unpersist()


def test_schema_and_identity_columns(spark_features, spec):
    frame, _ = spark_features
    assert frame.schema.simpleString() == tables.FEATURES_SCHEMA.simpleString()
    rows = frame.select("backbone", "weights_id", "feature_dim").distinct().collect()
    assert [tuple(r) for r in rows] == [("mobilenet_0.25", spec.weights_id, 256)]
    assert frame.where(F.size("features") != 256).count() == 0


def test_spark_features_equal_direct_keras(spark_features, image_files):
    _, got = spark_features
    expected = direct_keras(image_files)
    assert got.keys() == expected.keys()
    for image_id, vector in expected.items():
        np.testing.assert_allclose(got[image_id], vector, atol=ATOL, rtol=RTOL, err_msg=image_id)


def test_features_are_not_degenerate(spark_features):
    _, got = spark_features
    matrix = np.stack(list(got.values()))
    assert np.isfinite(matrix).all()
    per_dim_std = matrix.std(axis=0)
    # Real ImageNet features vary across lesions in most dimensions; random or constant ones would not.
    assert (per_dim_std > 1e-3).mean() > 0.5
    assert np.linalg.matrix_rank(matrix) == len(matrix)


def test_features_are_deterministic_across_runs(spark, spark_features, image_files, spec, engine):
    _, first = spark_features
    again = features_by_id(
        compute_features(
            curated_frame(spark, image_files), spec, batch_size=BATCH_SIZE, partitions=2, engine=engine
        )
    )
    for image_id, vector in first.items():
        np.testing.assert_array_equal(again[image_id], vector)


def test_missing_passthrough_and_extra_columns(spark, image_files, spec):
    images = curated_frame(spark, image_files[:2]).select("image_id", "image", F.lit(True).alias("synthetic"))
    rows = compute_features(images, spec, batch_size=8, extra_columns=["synthetic"]).collect()
    assert [(r.dx, r.batch_id, r.synthetic, len(r.features)) for r in rows] == [(None, None, True, 256)] * 2


def test_corrupt_image_fails_with_its_id(spark, spec):
    images = spark.createDataFrame([("ISIC_bad", b"\xff\xd8\xff\xe0 truncated")], ["image_id", "image"])
    with pytest.raises(Exception, match="ISIC_bad"):
        compute_features(images, spec).collect()


def run_stage(spark, curated, features, **overrides):
    ns = argparse.Namespace(
        curated=str(curated),
        features=str(features),
        batch_id=None,
        backbone="mobilenet_0.25",
        weights=str(MOBILENET_025_WEIGHTS),
        alpha=None,
        seed=0,
        batch_size=8,
        recompute=False,
        mixed_precision=False,
        partitions=0,
        engine="auto",
        ref_out=None,
    )
    for key, value in overrides.items():
        setattr(ns, key, value)
    return fz.run(spark, fz.Settings.from_args(ns))


def test_incremental_run_computes_only_the_new_batch(spark, tmp_path, image_files, spec, caplog):
    curated, features = tmp_path / "curated", tmp_path / "features"
    publish_curated(spark, curated, curated_frame(spark, image_files[:8], "b1"))

    ref = tmp_path / "run" / "features.json"
    first = run_stage(spark, curated, features, ref_out=str(ref))
    assert (first["images_computed"], first["images_skipped"]) == (8, 0)
    assert first["weights_id"] == spec.weights_id
    # auto on a CPU-only local job: LiteRT, converted once and cached next to the features.
    assert (first["engine"], first["device"]) == ("litert", "CPU:litert")
    (cached,) = (features / ENGINES_DIR / "litert").glob("*.tflite")
    assert cached.name == litert_cache_name(spec, 8)
    converted = cached.stat().st_mtime_ns

    publish_curated(spark, curated, curated_frame(spark, image_files[8:], "b2"))
    with caplog.at_level(logging.INFO, logger="molescope.features.engines"):
        second = run_stage(spark, curated, features)
    assert (second["images_computed"], second["images_skipped"]) == (4, 8)
    assert f"LiteRT model of mobilenet_0.25 from {cached}" in caplog.text
    assert cached.stat().st_mtime_ns == converted

    table_uri = features_uri(str(features), spec)
    assert table_uri.endswith(f"mobilenet_0.25/{spec.weights_id.replace(':', '-')}")
    assert json.loads(ref.read_text())["uri"] == table_uri
    table = tables.read_features(spark, table_uri)
    counts = {r.batch_id: r["count"] for r in table.groupBy("batch_id").count().collect()}
    assert counts == {"b1": 8, "b2": 4}

    assert run_stage(spark, curated, features)["images_computed"] == 0
    recomputed = run_stage(spark, curated, features, batch_id="b1", recompute=True, engine="keras")
    assert (recomputed["images_computed"], recomputed["engine"], recomputed["device"]) == (8, "keras", "CPU")
    table = tables.read_features(spark, table_uri)
    assert table.count() == 12
    assert table.select("image_id").distinct().count() == 12
    # One version folder per batch is left: the superseded b1 version was collected.
    for batch in ("b1", "b2"):
        folder = tables.features_table(table_uri).folder(batch)
        assert len([p for p in os.listdir(folder.removeprefix("file:")) if p.startswith("v")]) == 1


def test_failed_run_keeps_the_published_features_and_leaves_no_ref(spark, tmp_path, image_files):
    curated, features = tmp_path / "curated", tmp_path / "features"
    publish_curated(spark, curated, curated_frame(spark, image_files[:4], "b1"))
    ref = tmp_path / "run" / "features.json"
    first = run_stage(spark, curated, features, ref_out=str(ref))
    table_uri = first["features_uri"]
    before = features_by_id(tables.read_features(spark, table_uri))
    # The batch is re-cleaned with an image that decodes in clean's check but not here: a failing job.
    broken = curated_frame(spark, image_files[:4], "b1").union(
        spark.createDataFrame([("ISIC_broken", "HAM_0000009", "nv", "train", b"\xff\xd8\xff\xe0 cut", "b1")])
    )
    publish_curated(spark, curated, broken)
    with pytest.raises(Exception, match="ISIC_broken"):
        run_stage(spark, curated, features, ref_out=str(ref), batch_id="b1", recompute=True)
    assert not ref.exists()
    after = features_by_id(tables.read_features(spark, table_uri))
    assert after.keys() == before.keys()
    assert all(np.array_equal(after[k], before[k]) for k in before)


def test_resnet50_random_weights_are_2048_d_and_seeded(spark, image_files):
    spec = resolve_backbone("resnet50", "random", seed=3)
    frame = compute_features(curated_frame(spark, image_files[:3]), spec, batch_size=4)
    got = features_by_id(frame)
    assert frame.select("weights_id").distinct().collect()[0][0] == "random-seed3"
    matrix = np.stack(list(got.values()))
    assert matrix.shape == (3, 2048)
    assert np.isfinite(matrix).all()
    assert matrix.std(axis=0).max() > 0
    np.testing.assert_array_equal(np.stack(list(features_by_id(frame).values())), matrix)


def test_spark_gpu_assignment_selects_the_tasks_gpus(caplog):
    from pyspark.resource import ResourceInformation

    assert worker.assigned_gpus(None) == []
    assert worker.assigned_gpus({}) == []
    assert worker.assigned_gpus({"gpu": ResourceInformation("gpu", ["1", "0"])}) == [0, 1]
    assert worker.assigned_gpus({"fpga": ResourceInformation("fpga", ["0"])}) == []
    visible = ["GPU:0", "GPU:1", "GPU:2"]
    assert worker.select_gpus(visible, [2]) == ["GPU:2"]
    assert worker.select_gpus(visible, [0, 1]) == ["GPU:0", "GPU:1"]
    # A discovery script that numbers GPUs beyond what TensorFlow sees: warn, keep them all.
    assert worker.select_gpus(["GPU:0"], [3]) == ["GPU:0"]
    assert "Spark assigned GPUs [3]" in caplog.text


def test_engine_cache_sits_in_the_features_root_only(spec):
    table = features_uri("s3a://bucket/features", spec)
    assert engines_cache_of(table, spec) == "s3a://bucket/features/_engines"
    assert engines_cache_of(table + "/", spec) == "s3a://bucket/features/_engines"
    # A table outside <root>/<backbone>/<weights dir> gets no cache beside it.
    assert engines_cache_of("/data/tables/features", spec) is None
    other = resolve_backbone("resnet50", "random")
    assert engines_cache_of(features_uri("s3a://b/f", other), spec) is None
    assert engines_cache_of(f"{spec.name}/{spec.weights_dir}", spec) is None
