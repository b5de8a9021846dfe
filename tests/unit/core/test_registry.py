"""molescope.core.registry: light enough for DAG parsing, and every entry usable by the code that reads it."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys

import jsonschema
import pytest

from molescope.core import registry
from molescope.features.backbones import parse_backbone_name, resolve_backbone

HEAVY_MODULES = ("pyspark", "tensorflow", "keras", "pandas", "numpy", "sklearn", "boto3", "matplotlib")


@pytest.mark.parametrize(
    "module", ["molescope.core.registry", "molescope.core.settings", "molescope.core.champion"]
)
def test_light_modules_import_nothing_heavy(module):
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"{module} imported {done.stdout.strip()}"


def test_the_registry_does_not_import_jsonschema_until_a_value_is_validated():
    code = (
        "import sys, molescope.core.registry as r; before = 'jsonschema' in sys.modules; "
        "r.hyper_parameters()[0].problem(-1); print(before, 'jsonschema' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True"]


def defined_names(module) -> set[str]:
    """Public names a module defines at its top level (assignments, functions, classes), not its imports."""
    names = set()
    for node in ast.parse(inspect.getsource(module)).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {name for name in names if not name.startswith("_")}


def test_the_package_exports_every_topic_module_name_once():
    """One public face: every public name of a topic module is in `registry.__all__`, and nothing else is."""
    topics = [info.name for info in pkgutil.iter_modules(registry.__path__)]
    assert {"stages", "layout", "quarantine", "backbones", "rebalance", "hyper", "model_types"} <= set(topics)
    defined: dict[str, str] = {}
    for topic in topics:
        module = importlib.import_module(f"{registry.__name__}.{topic}")
        for name in defined_names(module):
            assert name not in defined, f"{name} defined in both {defined[name]} and {topic}"
            defined[name] = topic
            assert getattr(registry, name) is getattr(module, name), name
    assert sorted(registry.__all__) == sorted(defined)
    assert len(set(registry.__all__)) == len(registry.__all__)


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


def test_hyper_parameter_schema_is_built_once_and_validated_with_jsonschema():
    hypers = {h.name: h for h in registry.hyper_parameters()}
    size, tta = hypers["finetune_input_size"], hypers["finetune_tta"]
    assert size.json_schema == {"type": "integer", "minimum": 32, "maximum": 1024}
    assert tta.json_schema == {"type": "string", "enum": list(registry.TTA_CHOICES)}
    assert size.json_schema is size.json_schema  # built once: the trigger form and the CLI read this dict
    for h in hypers.values():
        jsonschema.Draft202012Validator.check_schema(h.json_schema)
        if h.default is not None:
            jsonschema.validate(h.default, h.json_schema)
    # Beyond the bounds: the schema's type and choices, with jsonschema's own message after the flag.
    assert tta.problem("flip3") == f"--finetune-tta: 'flip3' is not one of {list(registry.TTA_CHOICES)}"
    assert hypers["lr_max_iter"].problem(1.5) == "--lr-max-iter: 1.5 is not of type 'integer'"
    assert hypers["lr_reg"].problem("0.1") == "--lr-reg: '0.1' is not of type 'number'"
    assert hypers["finetune_max_images"].problem(None) is None  # an unset optional setting


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
