"""The walkthroughs of docs/architecture.md ("How to extend") as invariants: every registry list agrees with
the code that implements it, so a half-done extension fails here, naming the piece that is missing.

Each test fails for one kind of half-done change:

- a `MODEL_TYPES` entry whose `impl` names no ModelSpec, another model's spec, or a spec that scores the
  wrong input (an image model without `predict_images`, a feature model with one);
- a model module missing from the import contract that keeps model types out of trained-model code;
- a `HOROVOD_MODELS` name without a Horovod trainer in `molescope.distributed.trainers.TRAINERS`, or the
  reverse;
- a `SPARK_STAGES` name without its `molescope.stages.<name>` module (`Settings`, `run`), timeout, CLI
  command, stage-independence contract entry or unit test module, or a stage module nobody registered;
- a `QUARANTINE_REASONS` code that no code outside the registry uses, or a metadata rule checked at another
  position than the one it is registered at (the list order of `rule_checks` is the precedence);
- two `ARCHITECTURES` entries of different Keras families sharing a preprocessing, or two of one family not
  sharing it.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from molescope.cli import app
from molescope.core import registry
from molescope.core.paths import PACKAGE_DIR
from molescope.core.settings import CliSettings
from molescope.models.model_specs import ModelSpec, model_spec
from tests.conftest import REPO

#: The import contract that keeps trained-model code from naming a model type (pyproject.toml).
TRAINED_MODEL_CODE = ("molescope.models.trained", "molescope.models.model_specs")


def contracts() -> list[dict]:
    with open(REPO / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)["tool"]["importlinter"]["contracts"]


def contract(kind: str, source: str | None = None) -> dict:
    """The one import-linter contract of type `kind` (whose source modules include `source`, when given)."""
    found = [
        c
        for c in contracts()
        if c["type"] == kind and (source is None or source in c.get("source_modules", ()))
    ]
    assert len(found) == 1, f"expected one {kind} contract (source {source}), found {len(found)}"
    return found[0]


# ------------------------------------------------------------------------------------------ model types


@pytest.mark.parametrize("name", list(registry.MODEL_TYPES))
def test_every_model_type_resolves_to_its_own_spec(name):
    spec = model_spec(name)  # ValueError naming the entry when `impl` is not its ModelSpec
    assert isinstance(spec, ModelSpec) and spec.name == name
    assert spec.info is registry.MODEL_TYPES[name]


@pytest.mark.parametrize("name", list(registry.MODEL_TYPES))
def test_image_models_and_only_they_predict_images(name):
    kind = registry.MODEL_TYPES[name].input
    assert kind in (registry.INPUT_FEATURES, registry.INPUT_IMAGES), f"{name}: unknown input {kind!r}"
    spec = model_spec(name)
    if kind == registry.INPUT_IMAGES:
        assert callable(spec.predict_images), f"{name} scores images: its ModelSpec needs predict_images"
    else:
        assert spec.predict_images is None, f"{name} scores features: its ModelSpec must not predict images"


def test_trained_model_code_is_kept_from_every_model_module():
    """A new model module must join the contract's forbidden modules, or `models.trained` could import it."""
    forbidden = set(contract("forbidden", source="molescope.models.trained")["forbidden_modules"])
    modules = {m.impl.partition(":")[0] for m in registry.MODEL_TYPES.values()}
    assert modules - set(TRAINED_MODEL_CODE) <= forbidden, "add the model's module to pyproject.toml"


def test_horovod_models_are_exactly_those_with_a_horovod_trainer():
    from molescope.distributed import trainers

    assert set(registry.HOROVOD_MODELS) == set(trainers.TRAINERS)
    assert set(registry.HOROVOD_MODELS) <= set(registry.MODEL_TYPES)
    for name, trainer in trainers.TRAINERS.items():
        assert list(inspect.signature(trainer).parameters) == ["spec", "job"], name


# ----------------------------------------------------------------------------------------------- stages


def cli_commands() -> dict[str, str]:
    """{command: module} of the real `molescope` parser."""
    parser = app.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: sub.get_default("module_name") for name, sub in commands.choices.items()}


@pytest.mark.parametrize("stage", registry.SPARK_STAGES)
def test_every_stage_is_implemented_timed_and_a_command(stage):
    module_name = f"molescope.stages.{stage}"
    module = importlib.import_module(module_name)
    assert issubclass(module.Settings, CliSettings), f"{module_name}.Settings must derive from CliSettings"
    assert list(inspect.signature(module.run).parameters) == ["spark", "settings"], module_name
    assert stage in registry.STAGE_TIMEOUTS, f"registry.STAGE_TIMEOUTS has no entry for {stage}"
    assert cli_commands().get(stage) == module_name, f"`molescope {stage}` does not run {module_name}"
    independent = contract("independence")["modules"]
    assert module_name in independent, f"add {module_name} to the stage-independence contract"
    assert (REPO / "tests" / "unit" / "stages" / f"test_{stage}.py").is_file(), f"{stage} has no unit tests"


def test_every_stage_module_and_timeout_is_registered():
    modules = {p.stem for p in (PACKAGE_DIR / "stages").glob("*.py") if p.stem != "__init__"}
    assert modules == set(registry.SPARK_STAGES)
    assert set(registry.STAGE_TIMEOUTS) == set(registry.SPARK_STAGES)
    stage_modules = {f"molescope.stages.{s}" for s in registry.SPARK_STAGES}
    assert set(contract("independence")["modules"]) == stage_modules


# ----------------------------------------------------------------------------------- quarantine reasons


def reason_constants() -> dict[str, str]:
    """{constant name: reason code} of the registry's REASON_* constants."""
    return {
        name: value
        for name, value in vars(registry).items()
        if name.startswith("REASON_") and isinstance(value, str)
    }


def is_registry(path: Path) -> bool:
    """The registry's own source: a module core/registry.py or a package core/registry/."""
    parts = path.relative_to(PACKAGE_DIR).parts
    return parts[:2] in (("core", "registry.py"), ("core", "registry"))


def names_used(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, ast.Attribute):
            yield node.attr


def test_every_quarantine_reason_is_used_outside_the_registry():
    constants = reason_constants()
    assert set(constants.values()) == set(registry.QUARANTINE_REASONS), "one REASON_* constant per code"
    used = {name for path in PACKAGE_DIR.rglob("*.py") if not is_registry(path) for name in names_used(path)}
    unused = sorted(code for name, code in constants.items() if name not in used)
    assert not unused, f"registered but never produced by molescope's code: {unused}"


def test_metadata_rules_are_registered_in_the_order_they_are_checked(spark):
    """rule_reason reports the first rule of `rule_checks` a row breaks: that list's order is the precedence,
    and QUARANTINE_REASONS lists the same codes in the same order."""
    from molescope.intake.metadata import Rules, rule_checks

    checked = [code for _, code in rule_checks(Rules())]  # the default rules switch every rule on
    assert len(set(checked)) == len(checked), "a rule code is checked twice"
    registered = [code for code in registry.QUARANTINE_REASONS if code in checked]
    assert checked == registered, "QUARANTINE_REASONS must list the metadata rules in rule_checks order"


# ---------------------------------------------------------------------------------------------- backbones


def test_backbones_share_a_preprocessing_exactly_when_keras_builds_them_in_one_family():
    """Two entries may share `preprocess_module` (ResNet50 and ResNet101 both use resnet's) only when Keras
    defines their constructors in one module; different families never share a preprocessing."""
    import keras

    def preprocessing(arch: registry.Architecture):
        return getattr(keras.applications, arch.preprocess_module).preprocess_input

    def family(arch: registry.Architecture) -> str:
        return getattr(keras.applications, arch.constructor).__module__

    entries = list(registry.ARCHITECTURES.items())
    for i, (name, arch) in enumerate(entries):
        for other, other_arch in entries[i + 1 :]:
            same_family = family(arch) == family(other_arch)
            same_preprocessing = preprocessing(arch) is preprocessing(other_arch)
            assert same_family == same_preprocessing, (name, other)
