"""molescope.models.saliency: the Grad-CAM evidence of a real MobileNet-0.25 fine-tune network averages to
its class logits (the identity that makes Grad-CAM exact and backward-free for these heads: a wrong kernel
slice, class column, layer or preprocessing breaks it), the lr weights are the gradient of a fitted Spark
pipeline's margins through standardisation and PCA, and the other models say why they have no maps.
"""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.ml import Pipeline
from pyspark.ml.classification import LogisticRegression, RandomForestClassifier
from pyspark.ml.feature import PCA, StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array

from molescope.core.constants import CLASSES
from molescope.features.backbones import preprocess_function, resolve_backbone
from molescope.io.imaging import decode_resized
from molescope.models import finetune, saliency
from molescope.models.trained import TrainedModel
from tests.conftest import HAM10000, MOBILENET_025_WEIGHTS, require

METADATA_DIM = 3
DIM = 12


@pytest.fixture(scope="module")
def network():
    spec = resolve_backbone("mobilenet", str(require(MOBILENET_025_WEIGHTS)), alpha=0.25)
    logits, probabilities, _ = finetune.build_models(spec, finetune.FinetuneConfig(), METADATA_DIM)
    sidecar = {"params": {"backbone_spec": finetune.spec_to_dict(spec)}}
    return spec, logits, TrainedModel("finetune", sidecar, None, probabilities)


def lesions(size: int, count: int = 4) -> np.ndarray:
    paths = sorted(require(HAM10000 / "images").glob("*.jpg"))[:count]
    return np.stack([decode_resized(path.read_bytes(), size) for path in paths])


def test_finetune_evidence_averages_to_the_class_logits(network):
    spec, logits_model, trained = network
    model = saliency.saliency_model(trained, None)
    assert isinstance(model, saliency.SaliencyModel)
    pixels = lesions(spec.input_size)
    meta = np.random.default_rng(0).normal(size=(len(pixels), METADATA_DIM)).astype(np.float32)
    classes = np.array([0, 2, 4, 6])
    evidence = model.evidence(pixels, classes)
    assert evidence.ndim == 3 and evidence.shape[0] == len(pixels) and evidence.shape[1] > 1
    preprocessed = preprocess_function(spec)(pixels.astype(np.float32))
    logits = np.asarray(logits_model([preprocessed, meta], training=False), dtype=np.float64)
    kernel, bias = (np.asarray(w, dtype=np.float64) for w in logits_model.get_layer("dx").get_weights())
    image_part = logits - bias - meta @ kernel[spec.feature_dim :]
    expected = image_part[np.arange(len(pixels)), classes]
    np.testing.assert_allclose(evidence.mean(axis=(1, 2)), expected, rtol=1e-3, atol=1e-3)
    maps = model.class_maps(pixels, classes)
    assert maps.shape == evidence.shape and maps.min() >= 0 and np.allclose(maps.max(axis=(1, 2)), 1.0)
    # Where the evidence is negative, the map is zero (Grad-CAM's ReLU), and it is the same ordering.
    assert np.all(maps[evidence <= 0] == 0)


@pytest.fixture(scope="module")
def features_frame(spark):
    rng = np.random.default_rng(1)
    labels = np.arange(70) % len(CLASSES)
    values = rng.normal(size=(70, DIM)) * rng.uniform(0.5, 3, size=DIM) + labels[:, None] * 0.3
    rows = [(float(y), *map(float, x)) for y, x in zip(labels, values, strict=True)]
    columns = ["label", *(f"f{i}" for i in range(DIM))]
    frame = spark.createDataFrame(rows, columns)
    return VectorAssembler(inputCols=columns[1:], outputCol="vector").transform(frame), values


def test_lr_weights_are_the_gradient_of_the_pipeline_margins(features_frame):
    frame, values = features_frame
    stages = [
        StandardScaler(inputCol="vector", outputCol="scaled", withMean=True, withStd=True),
        PCA(k=5, inputCol="scaled", outputCol="pca"),
        LogisticRegression(featuresCol="pca", family="multinomial", maxIter=30, regParam=0.01),
    ]
    pipeline = Pipeline(stages=stages).fit(frame)
    weights = saliency.linear_weights(TrainedModel("lr", {}, pipeline), DIM)
    assert weights.shape == (DIM, len(CLASSES))
    margins = np.array(
        pipeline.transform(frame).select(vector_to_array("rawPrediction").alias("m")).toPandas()["m"].tolist()
    )
    # Margins are affine in the features: differences between rows are exactly W^T (x_i - x_0).
    np.testing.assert_allclose(margins - margins[0], (values - values[0]) @ weights, rtol=1e-6, atol=1e-6)
    # Metadata columns follow the backbone features: only the first feature_dim rows are kept.
    np.testing.assert_array_equal(saliency.linear_weights(TrainedModel("lr", {}, pipeline), 8), weights[:8])


def test_tree_models_have_no_maps_and_say_why(features_frame):
    frame, _ = features_frame
    forest = Pipeline(stages=[RandomForestClassifier(featuresCol="vector", numTrees=3)]).fit(frame)
    spec = resolve_backbone("mobilenet", str(require(MOBILENET_025_WEIGHTS)), alpha=0.25)
    assert saliency.linear_weights(TrainedModel("rf", {}, forest), DIM) is None
    note = saliency.saliency_model(TrainedModel("rf", {}, forest), spec)
    assert isinstance(note, str) and "rf" in note and "not linear" in note
    assert "no backbone" in saliency.saliency_model(TrainedModel("lr", {}, forest), None)


def test_a_network_molescope_did_not_build_is_scored_without_maps(network):
    import keras

    spec, _, _ = network
    inputs = keras.Input(shape=(spec.input_size, spec.input_size, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    plain = keras.Model(inputs, keras.layers.Dense(len(CLASSES), activation="softmax")(pooled))
    sidecar = {"params": {"backbone_spec": finetune.spec_to_dict(spec)}}
    note = saliency.saliency_model(TrainedModel("finetune", sidecar, None, plain), None)
    assert isinstance(note, str) and note.startswith("no saliency maps for finetune: not a network")
