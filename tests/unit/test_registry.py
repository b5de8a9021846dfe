"""molescope.registry: light enough for DAG parsing, and every entry usable by the code that reads it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from molescope import registry
from molescope.backbones import parse_backbone_name, resolve_backbone

HEAVY_MODULES = ("pyspark", "tensorflow", "keras", "pandas", "numpy", "sklearn", "boto3", "matplotlib")


@pytest.mark.parametrize("module", ["molescope.registry", "molescope.settings", "molescope.champion"])
def test_light_modules_import_nothing_heavy(module):
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"{module} imported {done.stdout.strip()}"


def test_every_backbone_choice_resolves_to_its_own_model():
    resolved = [resolve_backbone(name, "random") for name in registry.backbone_choices()]
    assert len({spec.name for spec in resolved}) == len(resolved)
    assert {parse_backbone_name(name)[0] for name in registry.backbone_choices()} == set(
        registry.ARCHITECTURES
    )
    assert registry.DEFAULT_BACKBONE in registry.backbone_choices()


def test_every_reason_code_is_registered_and_described():
    codes = {value for name, value in vars(registry).items() if name.startswith("REASON_")}
    assert codes == set(registry.QUARANTINE_REASONS)
    assert all(registry.QUARANTINE_REASONS.values())


def test_hyper_parameters_are_unique_settings_with_typed_defaults():
    hypers = registry.hyper_parameters()
    assert len({h.name for h in hypers}) == len(hypers)
    kinds = {"number": (int, float), "integer": int, "string": str}
    for h in hypers:
        assert h.default is None or isinstance(h.default, kinds[h.kind]), h.name
        assert h.default is None or not h.choices or h.default in h.choices, h.name
        assert all(isinstance(value, kinds[h.kind]) for value in h.grid), h.name
        assert h.problem(h.default) is None and all(h.problem(v) is None for v in h.grid), h.name


def test_hyper_parameter_bounds_name_the_flag():
    size = next(h for h in registry.hyper_parameters() if h.name == "finetune_input_size")
    assert size.problem(registry.MIN_FINETUNE_INPUT_SIZE) is None
    assert size.problem(registry.MAX_FINETUNE_INPUT_SIZE + 1) == "--finetune-input-size 1025: must be <= 1024"
    assert size.problem(registry.MIN_FINETUNE_INPUT_SIZE - 1) == "--finetune-input-size 31: must be >= 32"
    smoothing = next(h for h in registry.hyper_parameters() if h.name == "finetune_label_smoothing")
    assert smoothing.problem(1.0) == "--finetune-label-smoothing 1.0: must be < 1"


def test_unknown_model_fails_loudly():
    with pytest.raises(ValueError, match="unknown model 'svm'; known: lr, rf, gbt"):
        registry.model_type("svm")
    assert registry.model_names(registry.INPUT_IMAGES) == ("finetune",)
    assert set(registry.DEFAULT_MODELS) <= set(registry.model_names(registry.INPUT_FEATURES))


@pytest.mark.parametrize("batch_id", ["../x", "a/b", "", ".hidden", "a..b", "x" * 65, "batch_id=1"])
def test_bad_batch_ids_are_refused(batch_id):
    assert not registry.is_batch_id(batch_id)
    with pytest.raises(ValueError, match="invalid batch id"):
        registry.validate_batch_id(batch_id)


def test_good_batch_ids_pass():
    for batch_id in ("2026-11-25", "ham10000", "clinic_7.b", "A" * 64):
        assert registry.validate_batch_id(batch_id) == batch_id
