"""Inference engines: the engine choice, the LiteRT conversion of every backbone family, its cache name.

Conversion reference: the same Keras model's `predict_on_batch` on the same preprocessed pixels. Tolerance:
max abs difference <= 1e-4 x the largest feature + 1e-5 (float32 rounding of another kernel library; measured
~1e-5 relative). A wrong preprocessing (e.g. ResNet's caffe mode missing) or unfrozen weights are orders
of magnitude beyond it.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from molescope.features import engines
from molescope.features.backbones import BackboneError, load_model, preprocess, resolve_backbone
from molescope.io.imaging import decode_resized
from tests.conftest import HAM10000, require

RELATIVE_TOLERANCE = 1e-4
ABSOLUTE_TOLERANCE = 1e-5
CONVERT_BATCH = 4


@pytest.fixture(scope="module")
def pixels():
    files = sorted((require(HAM10000) / "images").glob("*.jpg"))[:CONVERT_BATCH]
    return np.stack([decode_resized(p.read_bytes(), 224) for p in files])


@pytest.mark.parametrize(
    ("choice", "mixed", "gpu", "litert", "expected"),
    [
        ("keras", False, False, True, "keras"),
        ("keras", True, True, False, "keras"),
        ("litert", False, True, True, "litert"),
        ("auto", False, False, True, "litert"),
        ("auto", False, True, True, "keras"),
        ("auto", True, False, True, "keras"),
        ("auto", False, False, False, "keras"),
    ],
)
def test_choose_engine(choice, mixed, gpu, litert, expected):
    name, reason = engines.choose_engine(
        choice, mixed_precision=mixed, gpu_requested=gpu, litert_available=litert
    )
    assert name == expected
    assert reason == "requested" if choice != "auto" else reason.startswith("auto: ")


@pytest.mark.parametrize(
    ("choice", "mixed", "litert", "message"),
    [
        ("litert", True, True, "mixed-precision needs --engine keras"),
        ("litert", False, False, "needs the ai-edge-litert package"),
        ("onnx", False, True, "unknown engine 'onnx'"),
    ],
)
def test_impossible_engine_choices_fail_clearly(choice, mixed, litert, message):
    with pytest.raises(engines.EngineError, match=message):
        engines.choose_engine(choice, mixed_precision=mixed, gpu_requested=False, litert_available=litert)


def test_gpu_detection(tmp_path):
    assert engines.spark_gpu_requested({"spark.task.resource.gpu.amount": "0.25"})
    assert engines.spark_gpu_requested({"spark.executor.resource.gpu.amount": "1"})
    assert not engines.spark_gpu_requested({"spark.executor.resource.gpu.amount": "0"})
    assert not engines.spark_gpu_requested({"spark.task.cpus": "4"})
    (tmp_path / "nvidiactl").touch()
    assert not engines.local_gpu_present(tmp_path)
    (tmp_path / "nvidia0").touch()
    assert engines.local_gpu_present(tmp_path)


def test_cache_name_holds_every_input_of_the_conversion():
    spec = resolve_backbone("resnet50", "random", seed=7)
    name = engines.litert_cache_name(spec, 32)
    for part in ("resnet50", "random-seed7", "224px", "b32", f"r{engines.LITERT_RECIPE}", "tf2.", "keras3."):
        assert part in name
    assert name.endswith(".tflite")
    assert engines.litert_cache_name(spec, 64) != name


def test_check_flatbuffer_rejects_other_bytes():
    with pytest.raises(engines.EngineError, match=r"cache\.tflite: not a LiteRT flatbuffer"):
        engines.check_flatbuffer(b"<html>not found</html>", "cache.tflite")


@pytest.mark.parametrize("backbone", ["mobilenet_0.25", "mobilenetv2_0.35", "efficientnetb0", "densenet121"])
def test_litert_features_equal_keras(backbone, pixels):
    spec = resolve_backbone(backbone, "random", seed=1)
    expected = np.asarray(load_model(spec).predict_on_batch(preprocess(spec, list(pixels))))
    run = engines.litert_runner(f"test-{backbone}", lambda: engines.convert_litert(spec, CONVERT_BATCH), 1)
    got = run(pixels)
    assert got.shape == (CONVERT_BATCH, spec.feature_dim) and got.dtype == np.float32
    limit = RELATIVE_TOLERANCE * np.abs(expected).max() + ABSOLUTE_TOLERANCE
    assert np.abs(got - expected).max() <= limit
    # A short chunk is padded: its rows are those of the full batch (images never influence each other).
    np.testing.assert_allclose(run(pixels[:1]), got[:1], rtol=0, atol=limit)
    with pytest.raises(ValueError, match="5 images in a chunk of at most 4"):
        run(np.concatenate([pixels, pixels[:1]]))


def test_resnet50_conversion_in_a_child_process_keeps_caffe_preprocessing(pixels):
    spec = resolve_backbone("resnet50", "random", seed=2)
    flatbuffer = engines.convert_in_subprocess(spec, CONVERT_BATCH)
    assert engines.check_flatbuffer(flatbuffer, "child") is flatbuffer
    got = engines.litert_runner("test-resnet50", lambda: flatbuffer, 1)(pixels)
    expected = np.asarray(load_model(spec).predict_on_batch(preprocess(spec, list(pixels))))
    assert np.abs(got - expected).max() <= RELATIVE_TOLERANCE * np.abs(expected).max() + ABSOLUTE_TOLERANCE


def test_child_conversion_error_names_backbone_and_weights(tmp_path):
    spec = resolve_backbone("mobilenet_0.25", "random")
    missing = tmp_path / "gone.h5"
    broken = type(spec)(**{**spec.__dict__, "weights": str(missing), "weights_id": "sha256:0"})
    expected = f"backbone mobilenet_0.25: weights file '{missing}' does not exist"
    with pytest.raises(BackboneError, match=re.escape(expected)):
        engines.convert_in_subprocess(broken, CONVERT_BATCH)
