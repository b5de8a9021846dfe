"""Unit tests of the upsample stage on tiny feature tables built here."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from molescope.core.constants import SPLIT_TEST, SPLIT_TRAIN
from molescope.core.registry import RESAMPLING, UPSAMPLE_CHART_FILE, UPSAMPLE_SUMMARY_FILE
from molescope.io import tables
from molescope.io.imaging import decode_rgb
from molescope.rebalance import augmentation, strategies
from molescope.stages import upsample as up
from tests.unit.published_tables import publish_curated, publish_features

DIM = 4
#: Train rows per class in the tiny table: a majority, two minorities and a singleton.
TRAIN_COUNTS = {"nv": 12, "mel": 5, "bkl": 3, "df": 1}
TEST_COUNTS = {"nv": 3, "mel": 2, "df": 1}


def _feature_rows(counts: dict[str, int], split: str, offset: int = 0) -> list[tuple]:
    rng = np.random.default_rng(offset + len(split))
    rows = []
    for dx, n in counts.items():
        for i in range(n):
            image_id = f"ISIC_{dx}_{split}_{i:03d}"
            vector = [float(v) for v in rng.normal(size=DIM).astype(np.float32)]
            rows.append((image_id, f"HAM_{dx}_{i // 2}", dx, split, "tiny", "w0", DIM, vector, f"b{i % 2}"))
    return rows


@pytest.fixture(scope="module")
def features(spark):
    rows = _feature_rows(TRAIN_COUNTS, SPLIT_TRAIN) + _feature_rows(TEST_COUNTS, SPLIT_TEST)
    return spark.createDataFrame(rows, schema=tables.FEATURES_SCHEMA).repartition(3)


@pytest.fixture(scope="module")
def train(features):
    return features.filter(features.split == SPLIT_TRAIN)


def _counts(df) -> dict[str, int]:
    return {r["dx"]: r["count"] for r in df.groupBy("dx").count().collect()}


def _sorted_rows(df) -> list[tuple]:
    return sorted(
        (r["image_id"], r["source_image_id"], tuple(r["features"]), r["weight"], r["synthetic"])
        for r in df.collect()
    )


# ------------------------------------------------------------------------------------------ targets


def test_targets_majority_count_ratio_never_below_current():
    counts = {"nv": 100, "mel": 10, "df": 0}
    assert strategies.targets(counts, "majority") == {"nv": 100, "mel": 100, "df": 0}
    assert strategies.targets(counts, "40") == {"nv": 100, "mel": 40, "df": 0}
    assert strategies.targets(counts, "ratio:0.25") == {"nv": 100, "mel": 25, "df": 0}
    assert strategies.targets(counts, "ratio:0.05") == {"nv": 100, "mel": 10, "df": 0}


@pytest.mark.parametrize("spec", ["", "min", "-3", "0", "ratio:", "ratio:-1", "1.5"])
def test_parse_target_rejects_bad_specs(spec):
    with pytest.raises(ValueError, match="target"):
        strategies.parse_target(spec)


# --------------------------------------------------------------------------------------- oversample


@pytest.mark.parametrize("spec", ["majority", "7", "ratio:0.5"])
def test_oversample_hits_target_and_keeps_every_original(train, spec):
    class_targets = strategies.targets(strategies.class_counts(train), spec)
    result = strategies.oversample(train, class_targets, seed=42)
    assert tuple(result.columns) == tables.TRAIN_SET_COLUMNS
    assert _counts(result) == class_targets
    rows = result.collect()
    originals = sorted(r["image_id"] for r in rows if not r["synthetic"])
    assert originals == sorted(r["image_id"] for r in train.collect())
    by_id = {r["image_id"]: r for r in rows if not r["synthetic"]}
    for row in (r for r in rows if r["synthetic"]):
        source = by_id[row["source_image_id"]]
        assert row["features"] == source["features"]
        assert (row["dx"], row["lesion_id"], row["split"]) == (source["dx"], source["lesion_id"], SPLIT_TRAIN)
    assert len({r["image_id"] for r in rows}) == len(rows)


def test_oversample_is_deterministic_by_seed(spark):
    # 40 rows to 60: which 20 rows get a copy is a 1-in-C(40, 20) draw, so two seeds cannot agree by luck.
    train = spark.createDataFrame(_feature_rows({"mel": 40}, SPLIT_TRAIN), schema=tables.FEATURES_SCHEMA)
    class_targets = {"mel": 60}
    first = _sorted_rows(strategies.oversample(train.repartition(3), class_targets, seed=7))
    # Another partitioning of the same rows must not change the draw.
    again = _sorted_rows(strategies.oversample(train.repartition(1), class_targets, seed=7))
    other = _sorted_rows(strategies.oversample(train, class_targets, seed=8))
    assert len(first) == 60
    assert first == again
    assert first != other


# -------------------------------------------------------------------------------------------- SMOTE


def _on_segment(point: np.ndarray, base: np.ndarray, end: np.ndarray, tol: float = 1e-4) -> bool:
    direction = end - base
    t = float(np.dot(point - base, direction) / max(np.dot(direction, direction), 1e-12))
    return -tol <= t <= 1 + tol and np.allclose(base + t * direction, point, atol=tol)


def test_smote_hits_target_and_points_lie_between_same_class_neighbours(train):
    k = 2
    class_targets = strategies.targets(strategies.class_counts(train), "majority")
    result = strategies.smote(train, class_targets, k_neighbors=k, seed=42)
    assert tuple(result.columns) == tables.TRAIN_SET_COLUMNS
    assert _counts(result) == class_targets
    rows = result.collect()
    originals = {r["image_id"]: r for r in rows if not r["synthetic"]}
    synthetic = [r for r in rows if r["synthetic"]]
    assert len(synthetic) == sum(class_targets.values()) - sum(TRAIN_COUNTS.values())
    for row in synthetic:
        base_row = originals[row["source_image_id"]]
        assert row["dx"] == base_row["dx"]
        assert row["split"] == SPLIT_TRAIN
        base = np.asarray(base_row["features"], dtype=np.float64)
        point = np.asarray(row["features"], dtype=np.float64)
        same_class = [r for r in originals.values() if r["dx"] == row["dx"] and r is not base_row]
        if not same_class:
            # A singleton class has no neighbour: its synthetic points are the point itself.
            assert np.allclose(point, base)
            continue
        by_distance = sorted(
            same_class, key=lambda r: float(np.linalg.norm(np.asarray(r["features"]) - base))
        )
        nearest = [np.asarray(r["features"], dtype=np.float64) for r in by_distance[:k]]
        assert any(_on_segment(point, base, end) for end in nearest), row["image_id"]
        assert not np.allclose(point, base)


def test_smote_is_deterministic_by_seed(train):
    class_targets = strategies.targets(strategies.class_counts(train), "majority")
    first = _sorted_rows(strategies.smote(train, class_targets, k_neighbors=2, seed=3))
    again = _sorted_rows(strategies.smote(train.repartition(1), class_targets, k_neighbors=2, seed=3))
    other = _sorted_rows(strategies.smote(train, class_targets, k_neighbors=2, seed=4))
    assert first == again
    assert first != other


# ------------------------------------------------------------------------------- weights and none


def test_class_weights_balance_the_effective_class_sizes(train):
    result = strategies.class_weights(train).collect()
    n_total = sum(TRAIN_COUNTS.values())
    for row in result:
        assert row["weight"] == pytest.approx(n_total / (len(TRAIN_COUNTS) * TRAIN_COUNTS[row["dx"]]))
        assert not row["synthetic"]
        assert row["source_image_id"] == row["image_id"]
    sums: dict[str, float] = {}
    for row in result:
        sums[row["dx"]] = sums.get(row["dx"], 0.0) + row["weight"]
    assert all(s == pytest.approx(n_total / len(TRAIN_COUNTS)) for s in sums.values())


def test_none_keeps_rows_with_unit_weight(train):
    result = strategies.no_rebalance(train).collect()
    assert len(result) == sum(TRAIN_COUNTS.values())
    assert {r["weight"] for r in result} == {1.0}
    assert not any(r["synthetic"] for r in result)


# --------------------------------------------------------------------- run: test split and outputs


def read_train_set(spark, run):
    return tables.read_table(spark, tables.train_set(str(run / "train_set")))


@pytest.mark.parametrize("strategy", ["none", "oversample", "smote", "class_weight"])
def test_run_writes_train_rows_only_and_leaves_test_split_unchanged(spark, features, tmp_path, strategy):
    table = str(tmp_path / "features" / "tiny" / "w0")
    publish_features(spark, table, features)
    before = sorted(tuple(r) for r in tables.read_features(spark, table, None).collect())
    settings = up.Settings(features=table, out=str(tmp_path / "run"), strategy=strategy, target="majority")

    summary = up.run(spark, settings)

    written = read_train_set(spark, tmp_path / "run")
    assert tuple(written.columns) == tables.TRAIN_SET_COLUMNS
    assert {r["split"] for r in written.select("split").distinct().collect()} == {SPLIT_TRAIN}
    test_ids = {r[0] for r in _feature_rows(TEST_COUNTS, SPLIT_TEST)}
    assert not test_ids & {r["source_image_id"] for r in written.collect()}
    # The input table, test split included, is exactly as it was.
    assert sorted(tuple(r) for r in tables.read_features(spark, table, None).collect()) == before
    assert summary["before"] == TRAIN_COUNTS
    expected = (
        {dx: max(TRAIN_COUNTS.values()) for dx in TRAIN_COUNTS} if strategy in RESAMPLING else TRAIN_COUNTS
    )
    assert summary["after"] == expected
    assert summary["target_met"]
    on_disk = json.loads((tmp_path / "run" / UPSAMPLE_SUMMARY_FILE).read_text())
    assert on_disk["after"] == expected
    assert (tmp_path / "run" / UPSAMPLE_CHART_FILE).read_bytes().startswith(b"\x89PNG")


def test_run_filters_batches(spark, features, tmp_path):
    table = str(tmp_path / "features")
    publish_features(spark, table, features)
    summary = up.run(spark, up.Settings(features=table, out=str(tmp_path / "run"), batches=("b0",)))
    assert summary["before"] == {dx: (n + 1) // 2 for dx, n in TRAIN_COUNTS.items()}


# ------------------------------------------------------------------------------------------ augment


def _jpeg(seed: int, size: tuple[int, int] = (48, 36)) -> bytes:
    """A smooth blob on a skin-like background: enough structure for transforms to show."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    blob = np.exp(-(((xx - width * 0.4) / (width * 0.2)) ** 2 + ((yy - height * 0.6) / (height * 0.25)) ** 2))
    rgb = np.stack([200 - 120 * blob, 160 - 110 * blob, 140 - 100 * blob + seed % 7], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_augment_image_decodes_differs_and_is_deterministic():
    source = _jpeg(1)
    augmented = augmentation.augment_jpeg(source, seed=42, image_id="ISIC_x~aug1")
    pixels = decode_rgb(augmented)
    original = decode_rgb(source)
    assert pixels.ndim == 3
    assert pixels.shape[2] == 3
    assert sorted(pixels.shape[:2]) == sorted(original.shape[:2])
    assert pixels.shape != original.shape or not np.array_equal(pixels, original)
    assert augmentation.augment_jpeg(source, seed=42, image_id="ISIC_x~aug1") == augmented
    assert augmentation.augment_jpeg(source, seed=43, image_id="ISIC_x~aug1") != augmented
    assert augmentation.augment_jpeg(source, seed=42, image_id="ISIC_x~aug2") != augmented


def test_augment_images_makes_new_images_up_to_target(spark, train):
    images = spark.createDataFrame(
        [
            (r["image_id"], r["lesion_id"], r["dx"], r["batch_id"], _jpeg(i))
            for i, r in enumerate(train.collect())
        ],
        "image_id string, lesion_id string, dx string, batch_id string, image binary",
    )
    class_targets = strategies.targets(strategies.class_counts(train), "8")
    result = strategies.augment_images(images, class_targets, seed=42)
    assert tuple(result.columns) == tuple(strategies.AUGMENTED_IMAGE_SCHEMA.fieldNames())
    rows = result.collect()
    expected = {dx: t - TRAIN_COUNTS[dx] for dx, t in class_targets.items() if t > TRAIN_COUNTS[dx]}
    found: dict[str, int] = {}
    for row in rows:
        found[row["dx"]] = found.get(row["dx"], 0) + 1
    assert found == expected
    sources = {r["image_id"]: r for r in images.collect()}
    for row in rows:
        source = sources[row["source_image_id"]]
        assert (row["lesion_id"], row["dx"], row["batch_id"]) == (
            source["lesion_id"],
            source["dx"],
            source["batch_id"],
        )
        assert row["split"] == SPLIT_TRAIN
        assert row["image_id"].startswith(row["source_image_id"] + strategies.SYNTHETIC_ID_SEPARATOR)
        pixels, original = decode_rgb(row["image"]), decode_rgb(source["image"])
        assert pixels.shape != original.shape or not np.array_equal(pixels, original)
    again = sorted(
        (r["image_id"], r["image"])
        for r in strategies.augment_images(images, class_targets, seed=42).collect()
    )
    assert again == sorted((r["image_id"], r["image"]) for r in rows)


@pytest.mark.slow
def test_run_augment_featurizes_new_images_end_to_end(spark, tmp_path):
    """Curated JPEGs → augmented JPEGs → MobileNet 0.25 (seeded random weights) vectors in train_set."""
    pytest.importorskip("tensorflow", reason="augment featurizes with TensorFlow")
    from molescope.features.backbones import resolve_backbone

    spec = resolve_backbone("mobilenet_0.25", "random", seed=0)
    counts = {"nv": 3, "df": 1}
    rows = [
        (*row[:4], spec.name, spec.weights_id, spec.feature_dim, [0.0] * spec.feature_dim, row[8])
        for row in _feature_rows(counts, SPLIT_TRAIN) + _feature_rows({"df": 1}, SPLIT_TEST)
    ]
    features = spark.createDataFrame(rows, schema=tables.FEATURES_SCHEMA)
    table = str(tmp_path / "features")
    publish_features(spark, table, features)
    curated = spark.createDataFrame(
        [(r[0], _jpeg(i), r[8]) for i, r in enumerate(rows)], schema=tables.CURATED_IMAGE_SCHEMA
    )
    publish_curated(spark, tmp_path / "curated", curated)
    settings = up.Settings(
        features=table, out=str(tmp_path / "run"), strategy="augment", curated=str(tmp_path / "curated")
    )

    summary = up.run(spark, settings)

    assert summary["after"] == {"nv": 3, "df": 3}
    written = read_train_set(spark, tmp_path / "run").collect()
    new = [r for r in written if r["synthetic"]]
    assert {r["source_image_id"] for r in new} == {"ISIC_df_train_000"}
    for row in new:
        assert (row["dx"], row["split"], row["lesion_id"]) == ("df", SPLIT_TRAIN, "HAM_df_0")
        assert (row["backbone"], row["weights_id"]) == (spec.name, spec.weights_id)
        assert len(row["features"]) == spec.feature_dim
    assert new[0]["features"] != new[1]["features"]


def test_run_reads_the_table_named_by_a_reference_file(spark, features, tmp_path):
    table = str(tmp_path / "features")
    publish_features(spark, table, features)
    ref = tmp_path / "features.json"
    ref.write_text(json.dumps({"uri": table}))
    summary = up.run(spark, up.Settings(features=str(ref), out=str(tmp_path / "run")))
    assert summary["features"] == table
    assert summary["before"] == TRAIN_COUNTS


def test_settings_reject_bad_combinations():
    with pytest.raises(ValueError, match="curated"):
        up.Settings(features="f", out="o", strategy="augment")
    with pytest.raises(ValueError, match="strategy"):
        up.Settings(features="f", out="o", strategy="undersample")
    with pytest.raises(ValueError, match="target"):
        up.Settings(features="f", out="o", strategy="oversample", target="most")
