"""Backbone registry, weights identity and weights errors, with the real MobileNet-0.25 ImageNet weights."""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest

from molescope.core.registry import ARCHITECTURES
from molescope.features.backbones import (
    BackboneError,
    build_model,
    parse_backbone_name,
    preprocess_function,
    resolve_backbone,
)
from tests.conftest import MOBILENET_025_WEIGHTS, require


def test_default_is_resnet50_imagenet_2048():
    spec = resolve_backbone()
    assert (spec.name, spec.weights_id, spec.feature_dim, spec.input_size) == (
        "resnet50",
        "imagenet",
        2048,
        224,
    )


@pytest.mark.parametrize(
    ("name", "alpha", "canonical", "dim"),
    [
        ("mobilenet", 0.25, "mobilenet_0.25", 256),
        ("mobilenet_0.25", None, "mobilenet_0.25", 256),
        ("MobileNet_0.5", None, "mobilenet_0.5", 512),
        ("mobilenet", None, "mobilenet_1", 1024),
        ("mobilenetv2", None, "mobilenetv2_1", 1280),
        ("mobilenetv2", 1.4, "mobilenetv2_1.4", 1792),
        ("efficientnetb0", None, "efficientnetb0", 1280),
        ("densenet121", None, "densenet121", 1024),
    ],
)
def test_names_and_feature_dims(name, alpha, canonical, dim):
    spec = resolve_backbone(name, "random", alpha=alpha)
    assert (spec.name, spec.feature_dim, spec.weights_id) == (canonical, dim, "random-seed0")


@pytest.mark.parametrize("family", list(ARCHITECTURES))
def test_every_backbone_gets_the_preprocessing_of_its_keras_family(family):
    """`preprocess_module` names the keras.applications module of the constructor's own family: the module
    exports the constructor, and its `preprocess_input` is the one Keras defines beside that constructor.
    Backbones of one family share it (ResNet50 and ResNet101: `resnet`); a module of another family
    (MobileNetV2 with `mobilenet`, EfficientNetB0 with `resnet50`) fails here."""
    import keras

    arch = ARCHITECTURES[family]
    module = getattr(keras.applications, arch.preprocess_module, None)
    assert module is not None, f"{family}: no keras.applications.{arch.preprocess_module}"
    assert hasattr(module, arch.constructor), f"{family}: {arch.preprocess_module} has no {arch.constructor}"
    home = sys.modules[getattr(keras.applications, arch.constructor).__module__]
    assert module.preprocess_input is home.preprocess_input, f"{family}: not {home.__name__}'s preprocessing"
    spec = resolve_backbone(family, "random")
    assert preprocess_function(spec) is home.preprocess_input


@pytest.mark.parametrize(
    ("name", "alpha", "message"),
    [
        ("vgg16", None, "unknown backbone 'vgg16'"),
        ("mobilenet_x", None, "width suffix 'x'"),
        ("mobilenet", 0.3, "alpha 0.3"),
        ("resnet50", 0.5, "no width multiplier"),
        ("mobilenet_0.25", 0.5, "contradicts"),
    ],
)
def test_bad_backbone_names(name, alpha, message):
    with pytest.raises(BackboneError, match=message):
        parse_backbone_name(name, alpha)


def test_file_weights_id_is_content_hash():
    path = require(MOBILENET_025_WEIGHTS)
    spec = resolve_backbone("mobilenet", str(path), alpha=0.25)
    assert spec.weights_id == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert spec.weights_dir == spec.weights_id.replace(":", "-")
    assert spec.weights == str(path.resolve())


def test_random_weights_id_records_seed():
    assert resolve_backbone("mobilenet_0.25", "random", seed=7).weights_id == "random-seed7"


def test_missing_weights_file_names_backbone_and_source(tmp_path):
    missing = tmp_path / "nope.h5"
    with pytest.raises(BackboneError, match=rf"resnet50.*{missing}.*does not exist"):
        resolve_backbone("resnet50", str(missing))


def test_corrupt_weights_file_names_backbone_and_source(tmp_path):
    bad = tmp_path / "garbage.h5"
    bad.write_bytes(b"not an hdf5 file" * 64)
    spec = resolve_backbone("mobilenet_0.25", str(bad))
    with pytest.raises(BackboneError, match=rf"mobilenet_0.25: cannot load weights '{bad}'"):
        build_model(spec)


def test_weights_of_another_architecture_are_an_error():
    path = require(MOBILENET_025_WEIGHTS)
    spec = resolve_backbone("mobilenet_0.5", str(path))
    with pytest.raises(BackboneError, match=r"mobilenet_0.5: cannot load weights .*mobilenet_2_5_224"):
        build_model(spec)


def test_weights_changed_after_resolve_is_an_error(tmp_path):
    path = tmp_path / "w.h5"
    path.write_bytes(require(MOBILENET_025_WEIGHTS).read_bytes())
    spec = resolve_backbone("mobilenet_0.25", str(path))
    path.write_bytes(b"replaced")
    with pytest.raises(BackboneError, match="changed since the run started"):
        build_model(spec)


def test_unreachable_s3_weights_name_backbone_and_uri(monkeypatch, tmp_path):
    # Port 9 (discard) refuses connections: the fetch fails fast instead of hanging.
    monkeypatch.setenv("MOLESCOPE_S3_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("MOLESCOPE_WEIGHTS_CACHE", str(tmp_path))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    uri = "s3a://molescope/models/resnet50.h5"
    with pytest.raises(BackboneError, match=rf"resnet50: cannot fetch weights '{uri}'"):
        resolve_backbone("resnet50", uri)
    assert not any(tmp_path.rglob("*.h5")), "no partial download left in the cache"


def test_real_weights_load_and_random_weights_are_seeded():
    real = build_model(resolve_backbone("mobilenet_0.25", str(require(MOBILENET_025_WEIGHTS))))
    seeded = [build_model(resolve_backbone("mobilenet_0.25", "random", seed=s)) for s in (1, 1, 2)]
    assert real.output_shape == (None, 256)
    first, again, other = [np.concatenate([w.ravel() for w in m.get_weights()]) for m in seeded]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    real_weights = np.concatenate([w.ravel() for w in real.get_weights()])
    assert not np.array_equal(real_weights, first)
