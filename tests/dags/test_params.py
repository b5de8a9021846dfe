"""The trigger form's Params: defaults validate, bad values are refused with a message."""

from __future__ import annotations

import copy

import pytest

from tests.dags.conftest import PIPELINE


@pytest.fixture(scope="module")
def params(dagbag):
    return dagbag.dags[PIPELINE].params


def validated(params, conf):
    merged = copy.deepcopy(params)
    merged.update(conf)
    return merged.validate()


def test_defaults_validate(params):
    values = validated(params, {})
    assert values["backbone"] == "resnet50"
    assert values["models"] == ["lr", "rf", "gbt"]


@pytest.mark.parametrize(
    "conf",
    [
        {"batch_id": "../etc"},
        {"batch_id": "a/b"},
        {"batch_id": "batch_id=x"},
        {"backbone": "vgg16"},
        {"upsample": "magic"},
        {"models": []},
        {"models": ["lr", "lr"]},
        {"models": ["svm"]},
        {"test_fraction": 0.0},
        {"test_fraction": 0.7},
        {"seed": -1},
        {"weights": ""},
    ],
)
def test_bad_values_are_refused(params, conf):
    with pytest.raises(Exception, match=r"(?i)invalid|valid|param"):
        validated(params, conf)


def test_good_override_is_kept(params):
    values = validated(params, {"batch_id": "2026-11-25", "models": ["gbt"], "weights": "s3a://m/w.h5"})
    assert values["batch_id"] == "2026-11-25"
    assert values["models"] == ["gbt"]
