"""molescope.distributed.launch: real Horovod ranks (horovod.spark.run, Gloo) on the local[2] test session.

Data parallelism is checked against Keras itself: two ranks, each on its own shard with batch B and the
learning rate scaled ×2, must end with bit-identical weights that equal one `model.fit` over the union with
batch 2B (each union batch = rank 0's batch i followed by rank 1's batch i) to 1e-5, after the same number of
steps; the allreduced validation loss and balanced accuracy must equal the ones computed on the union.
A negative control shows that check can fail: the Keras-3 path through `horovod.tensorflow.keras`'s
DistributedOptimizer leaves the gradients un-averaged (horovod#4290) and the ranks drift apart.

Horovod is built by `make setup`; without it these tests skip, except under CI=true where that is an error.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import cloudpickle
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from molescope.core.constants import CLASSES
from molescope.distributed import common, datasets, launch
from molescope.distributed import rank as distributed_rank
from molescope.evaluation.scores import balanced_accuracy
from molescope.models.keras_head import build_keras_head

DIM = 8
BATCH = 16
STEPS = 4
EPOCHS = 3
RANKS = 2
LEARNING_RATE = 0.05
SEED = 7
#: float32 sums in another order (allreduce vs one batch): differences stay ~1e-7 over these steps.
TOLERANCE = 1e-5

# The rank functions below run in Horovod's processes, which cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module", autouse=True)
def horovod_installed():
    try:
        import horovod.spark
        import horovod.tensorflow  # noqa: F401
    except ImportError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but Horovod is not installed ({error}); `make setup` builds it")
        pytest.skip(f"Horovod is not installed ({error}); `make setup` builds it")


def build_head() -> object:
    """The mlp head without dropout, so two runs of the same steps are comparable."""
    return build_keras_head(DIM, 0.0, LEARNING_RATE, SEED)


def sorted_batches(table, training: bool):
    """FeatureBatches in image_id order (no shuffle), so the test knows which rows make each batch."""
    return datasets.FeatureBatches(BATCH, shuffle=False)(table.sort_by("image_id"), training)


def feature_rows(spark: SparkSession, n: int, seed: int) -> DataFrame:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(0.0, 2.0, size=(len(CLASSES), DIM))
    labels = rng.integers(0, len(CLASSES), n)
    x = centres[labels] + rng.normal(0.0, 1.0, (n, DIM))
    weights = rng.uniform(0.5, 2.0, n)
    rows = [(f"img_{seed}_{i:05d}", x[i].tolist(), int(labels[i]), float(weights[i])) for i in range(n)]
    return spark.createDataFrame(rows, "image_id string, x array<float>, label int, weight double")


def exactly_per_rank(df: DataFrame, per_rank: int) -> DataFrame:
    """`per_rank` rows of every shard (the first by image_id), so every batch of every rank is full."""
    shard = launch.shard_column("image_id", RANKS, SEED)
    position = F.row_number().over(Window.partitionBy(shard).orderBy("image_id"))
    return df.withColumn("_n", position).where(F.col("_n") <= per_rank).drop("_n")


def union_arrays(df: DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows in the order one process must see them: batch i = rank 0's batch i, then rank 1's batch i."""
    pdf = df.withColumn("_r", launch.shard_column("image_id", RANKS, SEED)).toPandas()
    shards = [pdf[pdf["_r"] == r].sort_values("image_id") for r in range(RANKS)]
    order = [
        shard.iloc[step * BATCH : (step + 1) * BATCH]
        for step in range(len(shards[0]) // BATCH)
        for shard in shards
    ]
    ordered = pd.concat(order)
    x = np.stack(ordered["x"].to_numpy()).astype(np.float32)
    return x, ordered["label"].to_numpy().astype(np.int64), ordered["weight"].to_numpy().astype(np.float32)


def config(tmp_path, **overrides) -> common.DistributedConfig:
    values = {"staging_uri": str(tmp_path / "staging"), "num_proc": RANKS, "epochs": EPOCHS, "seed": SEED}
    return common.DistributedConfig(**{**values, "patience": EPOCHS, **overrides})


def reference_fit(train: DataFrame, validation: DataFrame) -> tuple[list[list[np.ndarray]], list[tuple]]:
    """One process, Keras's own fit: batch 2B, learning rate ×2; weights and (val loss, bacc) per epoch."""
    import keras

    x, y, w = union_arrays(train)
    val = validation.toPandas()
    x_val, y_val = np.stack(val["x"].to_numpy()).astype(np.float32), val["label"].to_numpy()
    model = build_keras_head(DIM, 0.0, LEARNING_RATE * RANKS, SEED)
    weights, scores = [], []
    for _ in range(EPOCHS):
        model.fit(x, y, sample_weight=w, batch_size=BATCH * RANKS, epochs=1, shuffle=False, verbose=0)
        proba = model.predict(x_val, verbose=0)
        loss = float(keras.losses.SparseCategoricalCrossentropy()(y_val, proba))
        weights.append(model.get_weights())
        scores.append((loss, balanced_accuracy(y_val, proba.argmax(axis=1))))
    return weights, scores


def assert_data_parallel(digests: list[str], rank0: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """Every rank holds the same weights, and they are the single-process weights on the union."""
    assert len(set(digests)) == 1, f"ranks ended with different weights: {digests}"
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(rank0, reference, strict=True))
    assert worst < TOLERANCE, f"rank weights differ from the single-process run by {worst:.2e}"
    return worst


@pytest.fixture(scope="module")
def data(spark):
    train = exactly_per_rank(feature_rows(spark, 400, seed=1), BATCH * STEPS).cache()
    validation = feature_rows(spark, 90, seed=2).withColumn("weight", F.lit(1.0)).cache()
    return train, validation


def test_two_ranks_equal_one_process_on_the_union(spark, data, tmp_path):
    import keras

    train, validation = data
    result = launch.fit_distributed(
        spark, train, build_head, sorted_batches, config(tmp_path), validation_df=validation
    )
    assert result.shard_rows == [BATCH * STEPS] * RANKS
    history = result.history
    assert history["epochs_run"] == EPOCHS and len(history["loss"]) == EPOCHS
    weights, scores = reference_fit(train, validation)
    for epoch, (loss, bacc) in enumerate(scores):
        assert history["val_loss"][epoch] == pytest.approx(loss, rel=1e-5)
        assert history["val_balanced_accuracy"][epoch] == pytest.approx(bacc, abs=1e-9)
    best = history["best_epoch"]
    assert history["val_loss"][best] == min(history["val_loss"])
    # The saved model (rank 0, best epoch restored) vs the single-process weights after that epoch.
    saved = keras.models.load_model(result.model_uri)
    worst = assert_data_parallel(result.rank_digests, saved.get_weights(), weights[best])
    print(f"2 ranks vs one process on the union: max |weight difference| {worst:.1e} (epoch {best + 1})")


def build_batchnorm_head() -> object:
    """A head with BatchNormalization: its moving statistics follow each rank's own batches."""
    import keras

    keras.utils.set_random_seed(SEED)
    inputs = keras.Input(shape=(DIM,))
    hidden = keras.layers.BatchNormalization()(keras.layers.Dense(16, activation="relu")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(len(CLASSES), activation="softmax")(hidden))
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="sparse_categorical_crossentropy")
    return model


def test_batchnorm_statistics_are_averaged_so_ranks_agree(spark, data, tmp_path):
    """Without averaging the non-trainable state the ranks' moving statistics differ (the fine-tuned
    backbone's BatchNorm layers did) and fit_distributed refuses the run."""
    train, validation = data
    cfg = config(tmp_path, epochs=1)
    result = launch.fit_distributed(spark, train, build_batchnorm_head, sorted_batches, cfg, validation)
    assert len(set(result.rank_digests)) == 1 and len(result.rank_digests) == RANKS


def keras_optimizer_rank(staging_uri: str) -> dict:
    """The tempting Keras-3 path: hvd.keras.DistributedOptimizer + model.fit (no averaging happens)."""
    import horovod.tensorflow.keras as hvd
    import keras

    hvd.init()
    table = common.read_shard(common.join(staging_uri, "train"), hvd.rank())
    data = sorted_batches(table, True)
    model = build_head()
    optimizer = hvd.DistributedOptimizer(keras.optimizers.Adam(LEARNING_RATE * hvd.size()))
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    hvd_tf = sys.modules["horovod.tensorflow"]
    hvd_tf.broadcast_variables([v.value for v in model.variables], root_rank=0)
    model.fit(data.x, data.y, sample_weight=data.w, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
    return {"digest": distributed_rank.weights_digest(model), "weights": model.get_weights()}


def test_the_check_fails_when_gradients_are_not_averaged(spark, data, tmp_path):
    import horovod.spark

    train, _ = data
    cfg = config(tmp_path)
    launch.stage_shards(train, common.join(cfg.staging_uri, "train"), cfg)
    results = horovod.spark.run(keras_optimizer_rank, args=(cfg.staging_uri,), num_proc=RANKS, use_gloo=True)
    reference = reference_fit(train, train.limit(BATCH))[0][-1]
    with pytest.raises(AssertionError, match="different weights"):
        assert_data_parallel([r["digest"] for r in results], results[0]["weights"], reference)


def failing_head() -> object:
    import horovod.tensorflow as hvd

    if hvd.rank() == 1:
        raise RuntimeError("injected failure on rank 1")
    return build_head()


def killed_head() -> object:
    import horovod.tensorflow as hvd

    if hvd.rank() == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return build_head()


def test_a_failing_rank_fails_the_run_with_its_error(spark, data, tmp_path):
    started = time.monotonic()
    with pytest.raises(common.DistributedTrainingError, match=r"^rank 1 failed: RuntimeError: injected"):
        launch.fit_distributed(spark, data[0], failing_head, sorted_batches, config(tmp_path))
    assert time.monotonic() - started < 300


def test_a_killed_rank_fails_the_run_instead_of_hanging(spark, data, tmp_path):
    # The exit code is known when Horovod reaps the killed rank first; under load it may reap rank 0 first.
    died = r"^rank 1 died (with exit code (-9|137) )?before reporting an error"
    with pytest.raises(common.DistributedTrainingError, match=died):
        launch.fit_distributed(spark, data[0], killed_head, sorted_batches, config(tmp_path))


@pytest.mark.parametrize(
    ("exited_first", "printed", "expected"),
    [
        # Under load the rank whose broadcast failed may be reaped before the rank that raised.
        (
            "0",
            [("1", "RuntimeError: injected"), ("0", "UnknownError: HorovodBroadcast")],
            "rank 1 failed: Runtime",
        ),
        (
            "1",
            [("1", "RuntimeError: injected"), ("0", "UnknownError: HorovodBroadcast")],
            "rank 1 failed: Runtime",
        ),
        # ... and its output may be forwarded before the cause's.
        (
            "1",
            [("0", "UnknownError: at node HorovodBroadcast_adam_bias"), ("1", "RuntimeError: injected")],
            "rank 1 failed: Runtime",
        ),
        ("1", [("0", "HorovodInternalError: shut down")], "rank 1 died with exit code -9"),
        # The killed rank may be reaped after the rank whose broadcast then failed: the silent rank died.
        ("0", [("0", "UnknownError: at node HorovodBroadcast_adam_bias")], "rank 1 died before reporting"),
        ("1", [("0", "HorovodInternalError: shut down"), ("1", "HorovodAllreduce x")], "rank 0 failed: Hor"),
        (None, [], "Horovod run failed: boom"),
    ],
)
def test_the_failure_names_the_cause_not_the_first_exit(exited_first, printed, expected):
    report = "boom" if exited_first is None else f"Process name: {exited_first} Exit code: -9"
    assert launch.failure_message(RuntimeError(report), printed, num_proc=2).startswith(expected)


def test_more_ranks_than_task_slots_fail_at_once(spark, data, tmp_path):
    started = time.monotonic()
    with pytest.raises(common.DistributedTrainingError, match="3 Horovod ranks need 3 concurrent"):
        launch.fit_distributed(spark, data[0], build_head, sorted_batches, config(tmp_path, num_proc=3))
    assert time.monotonic() - started < 5
    assert not (tmp_path / "staging").exists()


def test_missing_horovod_is_one_clear_error(monkeypatch):
    for name in ("horovod", "horovod.spark", "horovod.tensorflow"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(common.DistributedTrainingError, match=r"needs Horovod.*make setup"):
        launch.require_horovod()


def test_shards_are_stable_and_cover_every_row(spark, tmp_path):
    df = feature_rows(spark, 200, seed=3)
    cfg = config(tmp_path)
    uri = common.join(cfg.staging_uri, "train")
    counts = launch.stage_shards(df, uri, cfg)
    assert sum(counts) == 200 and min(counts) > 0
    tables = [common.read_shard(uri, rank) for rank in range(RANKS)]
    ids = [set(t.column("image_id").to_pylist()) for t in tables]
    assert not ids[0] & ids[1] and len(ids[0] | ids[1]) == 200
    assert [t.num_rows for t in tables] == counts
    assert launch.stage_shards(df, uri, cfg) == counts  # a re-run gives every rank the same rows
    assert common.read_shard(uri, 5) is None


def test_the_saved_model_replaces_the_old_one_whole_and_leaves_no_temporary_file(tmp_path):
    """save_model on a local disk: a hidden temporary file renamed over the target, so a killed save never
    leaves a half model under the model's name."""
    target = tmp_path / "staging" / common.MODEL_FILE
    target.parent.mkdir()
    target.write_bytes(b"an earlier run's model")
    import keras

    model = build_keras_head(DIM, 0.0, LEARNING_RATE, SEED)
    common.save_model(model, str(target))
    assert [p.name for p in target.parent.iterdir()] == [common.MODEL_FILE]
    loaded = keras.models.load_model(target)
    for saved, original in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(saved, original)
