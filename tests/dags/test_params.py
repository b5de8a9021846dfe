"""The trigger form's Params: defaults validate, bad values are refused with a message; params → CLI args."""

from __future__ import annotations

import pytest

from molescope.core.registry import hyper_parameters
from tests.dags.conftest import PIPELINE
from tests.dags.rendering import DS, flag, render_args, validated


@pytest.fixture(scope="module")
def params(dagbag):
    return dagbag.dags[PIPELINE].params


def test_defaults_validate(params):
    values = validated(params, {})
    assert values["batch_id"] is None  # scheduled runs: the logical date names the batch
    # The default run is the recipe for a 2-core CPU machine: MobileNet-0.25 fine-tuned, LR beside it.
    assert values["backbone"] == "mobilenet_0.25"
    assert values["models"] == ["lr", "finetune"]
    assert values["metadata"] is False
    assert (values["finetune_tta"], values["finetune_input_size"]) == ("flip4", 224)
    assert values["training_batches"] == "up_to_batch"
    assert values["pca"] is None
    assert values["upsample_target"] == "majority"


def test_params_have_sections_and_descriptions(params):
    for name in params:
        param = params.get_param(name)
        schema = param.schema
        assert schema.get("section"), name
    for name in ("batch_id", "training_batches", "backbone", "weights", "upsample", "models", "pca"):
        assert params.get_param(name).description, name


def test_hyper_parameter_params_carry_the_registrys_json_schema(params):
    """One schema per hyper-parameter: the Param's rules are the dict the CLI validates settings against."""
    offered = [h for h in hyper_parameters() if h.in_pipeline]
    assert offered
    for h in offered:
        schema = dict(params.get_param(h.name).schema)
        assert schema.pop("section")
        assert schema == h.json_schema, h.name
        assert params[h.name] == h.default


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
        {"training_batches": "some"},
        {"range_start": "yesterday"},
        {"upsample_target": "lots"},
        {"upsample_target": "ratio:x"},
        {"pca": 1},
        {"pca": "64"},
        {"lr_reg": -0.1},
        {"lr_elastic_net": 1.5},
        {"rf_trees": 0},
        {"gbt_depth": 0},
        {"champion_metric": "auc"},
        {"finetune_tta": "flip3"},
        {"finetune_input_size": 16},
        {"finetune_epochs": 0},
        {"metadata": "yes"},
        {"target_mel_recall": 0},
        {"target_mel_recall": 1.2},
        {"batch_wait_hours": -1},
        {"engine": "onnx"},
    ],
)
def test_bad_values_are_refused(params, conf):
    with pytest.raises(Exception, match=r"(?i)invalid|valid|param"):
        validated(params, conf)


def test_good_override_is_kept(params):
    conf = {
        "batch_id": "2026-11-25",
        "models": ["gbt"],
        "weights": "s3a://m/w.h5",
        "pca": 64,
        "upsample_target": "ratio:0.5",
        "training_batches": "range",
        "range_start": "2026-11-01",
        "range_end": "2026-11-25",
    }
    values = validated(params, conf)
    assert values["batch_id"] == "2026-11-25"
    assert values["models"] == ["gbt"]
    assert values["pca"] == 64


def rendered_args(dagbag, task_id: str, params: dict, ds: str | None = DS) -> list[str]:
    return render_args(dagbag.dags[PIPELINE], task_id, params, ds=ds, xcom="2026-11-24,2026-11-25")


def test_params_map_to_stage_cli_args(dagbag):
    overrides = {"pca": 64, "rf_trees": 7, "gbt_iter": 3, "lr_reg": 0.5, "champion_metric": "mel_recall"}
    train = rendered_args(dagbag, "train", overrides)
    assert flag(train, "--pca") == "64"
    assert flag(train, "--rf-trees") == "7"
    assert flag(train, "--gbt-iter") == "3"
    assert flag(train, "--lr-reg") == "0.5"
    assert flag(train, "--champion-metric") == "mel_recall"
    assert flag(train, "--batches") == "2026-11-24,2026-11-25"
    assert flag(rendered_args(dagbag, "train", {}), "--pca") == "none"
    upsample = rendered_args(dagbag, "upsample", {"upsample_target": "ratio:0.5", "upsample": "smote"})
    assert flag(upsample, "--target") == "ratio:0.5" and flag(upsample, "--strategy") == "smote"
    report = rendered_args(dagbag, "report", {"target_mel_recall": 0.9})
    assert flag(report, "--target-mel-recall") == "0.9"
    assert flag(rendered_args(dagbag, "featurize", {}), "--engine") == "auto"
    assert flag(rendered_args(dagbag, "featurize", {"engine": "keras"}), "--engine") == "keras"
    assert flag(rendered_args(dagbag, "upsample", {"engine": "litert"}), "--engine") == "litert"


def test_batch_is_the_logical_date_unless_named(dagbag):
    clean = rendered_args(dagbag, "clean", {})
    assert flag(clean, "--batch-id") == "2026-11-25"
    assert flag(clean, "--batch-dir") == "s3a://molescope/landing/2026-11-25"
    named = rendered_args(dagbag, "clean", {"batch_id": "ham10000"}, ds=None)
    assert flag(named, "--batch-id") == "ham10000"
    with pytest.raises(ValueError, match="no batch to ingest"):
        rendered_args(dagbag, "clean", {}, ds=None)
