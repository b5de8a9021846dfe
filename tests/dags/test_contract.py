"""The DAGs and the CLI agree: every Spark task, rendered for a run, parses with the real `molescope` parser
into the Settings its trigger form asked for, and the form offers exactly the registry's choices."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from typing import Any

import pytest

from molescope.cli import app
from molescope.core import registry
from tests.dags.conftest import PIPELINE, REPO
from tests.dags.rendering import DS, render_args, validated

SCORING = "skin_lesion_scoring"
WAREHOUSE = registry.DEFAULT_WAREHOUSE
#: The run prefix of rendering.RUN_ID (its slug).
RUN = f"{WAREHOUSE}/runs/scheduled__2026-11-25T00_00_00_00_00"
CURATED = f"{WAREHOUSE}/curated"
TRAINING = ("2026-11-24", "2026-11-25")
SPARK_TASKS = ("clean", "featurize", "upsample", "train", "report")

#: Trigger confs of the pipeline: the defaults, and every Param set to something else.
PIPELINE_CONFS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "tuned": {
        "batch_id": "ham10000",
        "backbone": "mobilenet_0.25",
        "weights": "s3a://m/models/w.h5",
        "engine": "litert",
        "upsample": "smote",
        "upsample_target": "ratio:0.5",
        "models": ["gbt", "mlp", "finetune"],
        "metadata": True,
        "finetune_epochs": 2,
        "finetune_input_size": 160,
        "finetune_tta": "dihedral8",
        "pca": 64,
        "lr_reg": 0.5,
        "lr_elastic_net": 0.25,
        "rf_trees": 7,
        "rf_depth": 3,
        "gbt_iter": 3,
        "gbt_depth": 2,
        "champion_metric": "mel_recall",
        "test_fraction": 0.25,
        "seed": 7,
        "target_mel_recall": 0.9,
        "warm_start": True,
        "full_retrain_every": 3,
        "full_retrain_growth": 0.5,
    },
    "weighted": {
        "backbone": "densenet121",
        "weights": "random",
        "engine": "keras",
        "upsample": "class_weight",
        "upsample_target": "40",
        "models": ["lr"],
        "metadata": False,
        "finetune_tta": "none",
    },
    # Horovod refuses --metadata (not built for the ranks yet), so it gets a conf of its own.
    # With Horovod the fine-tune always fits in full: warm_start renders as none.
    "distributed": {"models": ["mlp", "lr"], "distributed": "horovod", "num_proc": 3, "warm_start": True},
}


def parse(args: list[str]) -> tuple[str, Any]:
    """(command, Settings) the real CLI makes of a task's rendered arguments."""
    ns, _, settings = app.parse_settings(args)
    return ns.command, settings


def expected_pipeline(task_id: str, p: dict[str, Any]) -> dict[str, Any]:
    """The Settings fields a pipeline task must get for validated params `p`."""
    batch = p["batch_id"] or DS
    features_ref = f"{RUN}/features.json"
    expected: dict[str, dict[str, Any]] = {
        "clean": {
            "batch_dir": f"{WAREHOUSE}/landing/{batch}",
            "batch_id": batch,
            "curated": CURATED,
            "test_fraction": p["test_fraction"],
            "seed": p["seed"],
        },
        "featurize": {
            "curated": CURATED,
            "batch_id": batch,
            "features": f"{WAREHOUSE}/features",
            "ref_out": features_ref,
            "backbone": p["backbone"],
            "weights": p["weights"],
            "engine": p["engine"],
            "recompute": True,
        },
        "upsample": {
            "features": features_ref,
            "batches": TRAINING,
            "curated": CURATED,
            "out": RUN,
            "weights": p["weights"],
            "engine": p["engine"],
            "strategy": p["upsample"],
            "target": p["upsample_target"],
            "seed": p["seed"],
        },
        "train": {
            "train_set": f"{RUN}/train_set",
            "features": features_ref,
            "batches": TRAINING,
            "out": RUN,
            "models": tuple(p["models"]),
            "pca_k": p["pca"],
            "metadata": p["metadata"],
            "curated": CURATED,
            "champion_metric": p["champion_metric"],
            "target_mel_recall": p["target_mel_recall"],
            "seed": p["seed"],
            "distributed": p["distributed"],
            "num_proc": p["num_proc"],
            # The train task's own execution timeout, in seconds (the registry's STAGE_TIMEOUTS).
            "time_budget": int(registry.STAGE_TIMEOUTS["train"].total_seconds()),
            "warm_start": f"{WAREHOUSE}/runs"
            if p["warm_start"] and p["distributed"] == registry.DISTRIBUTED_NONE
            else registry.WARM_START_NONE,
            "full_retrain_every": p["full_retrain_every"],
            "full_retrain_growth": p["full_retrain_growth"],
            **{h.name: p[h.name] for h in registry.hyper_parameters() if h.in_pipeline},
        },
        "report": {"run": RUN, "curated": CURATED, "target_mel_recall": p["target_mel_recall"]},
    }
    return expected[task_id]


@pytest.mark.parametrize("case", list(PIPELINE_CONFS))
@pytest.mark.parametrize("task_id", SPARK_TASKS)
def test_pipeline_task_parses_into_the_intended_settings(dagbag, case, task_id):
    dag = dagbag.dags[PIPELINE]
    conf = PIPELINE_CONFS[case]
    args = render_args(dag, task_id, conf, xcom=",".join(TRAINING))
    command, settings = parse(args)
    assert command == task_id
    wanted = expected_pipeline(task_id, validated(dag.params, conf))
    assert {name: getattr(settings, name) for name in wanted} == wanted


def test_every_spark_stage_of_the_pipeline_is_covered(dagbag):
    submitted = {t.task_id for t in dagbag.dags[PIPELINE].tasks if hasattr(t, "application_args")}
    assert submitted == set(SPARK_TASKS)
    assert set(SPARK_TASKS) | {"score"} == set(app.SPARK_STAGES) == set(registry.STAGE_TIMEOUTS)


def test_every_param_reaches_a_setting(dagbag):
    """A pipeline Param that no Spark task reads would be a silent no-op in the trigger form."""
    dag = dagbag.dags[PIPELINE]
    orchestration = {"batch_id", "training_batches", "range_start", "range_end", "batch_wait_hours"}
    covered = {"upsample", "upsample_target", "pca", "models"} | {
        name for task in SPARK_TASKS for name in expected_pipeline(task, validated(dag.params, {}))
    }
    assert set(dag.params) - orchestration <= covered


@pytest.mark.parametrize(
    ("conf", "choice"),
    [
        ({}, {"model": "champion", "weights": "auto"}),
        (
            {"batch_id": "clinic-7", "engine": "keras"},
            {"model": f"{RUN}/models/lr", "weights": "s3a://m/w.h5"},
        ),
    ],
)
def test_scoring_task_parses_into_the_intended_settings(dagbag, conf, choice):
    dag = dagbag.dags[SCORING]
    command, settings = parse(render_args(dag, "score", conf, xcom={**choice, "reason": "test"}))
    p = validated(dag.params, conf)
    assert command == "score"
    assert settings.pending == (p["batch_id"] is None)
    wanted = {
        "scoring_root": f"{WAREHOUSE}/scoring",
        "batch_id": p["batch_id"] or "",
        "model": choice["model"],
        "champion_of": WAREHOUSE,
        "weights": choice["weights"],
        "out": f"{WAREHOUSE}/scores",
        "engine": p["engine"],
    }
    assert {name: getattr(settings, name) for name in wanted} == wanted


def cli_default(stage: str, field: str) -> Any:
    module = __import__(app.SPARK_STAGES[stage], fromlist=["Settings"])
    return next(f.default for f in fields(module.Settings) if f.name == field)


#: Pipeline Params that are a stage setting with the same meaning: their defaults must be the CLI's.
SAME_DEFAULT = {
    "weights": ("featurize", "weights"),
    "engine": ("featurize", "engine"),
    "upsample_target": ("upsample", "target"),
    "test_fraction": ("clean", "test_fraction"),
    "seed": ("train", "seed"),
    "champion_metric": ("train", "champion_metric"),
    "distributed": ("train", "distributed"),
    "num_proc": ("train", "num_proc"),
    "full_retrain_every": ("train", "full_retrain_every"),
    "full_retrain_growth": ("train", "full_retrain_growth"),
    "target_mel_recall": ("report", "target_mel_recall"),
    "target_mel_recall_train": ("train", "target_mel_recall"),
    **{h.name: ("train", h.name) for h in registry.hyper_parameters() if h.in_pipeline},
}


@pytest.mark.parametrize("param", sorted(SAME_DEFAULT))
def test_param_defaults_are_the_cli_defaults(dagbag, param):
    default = dagbag.dags[PIPELINE].params[param.removesuffix("_train")]
    assert default == cli_default(*SAME_DEFAULT[param])


def test_pipeline_recipe_defaults_are_the_registrys(dagbag):
    """The deliberate differences from the bare CLI: the pipeline's default run is the best recipe for a
    2-core machine (registry.PIPELINE_*), the CLI keeps the study's choices."""
    params = dagbag.dags[PIPELINE].params
    assert tuple(params["models"]) == registry.PIPELINE_MODELS
    assert cli_default("train", "models") == registry.DEFAULT_MODELS
    assert params["backbone"] == registry.PIPELINE_BACKBONE
    assert cli_default("featurize", "backbone") == registry.DEFAULT_BACKBONE
    assert params["metadata"] == registry.PIPELINE_METADATA
    assert cli_default("train", "metadata") == registry.DEFAULT_METADATA
    assert params["upsample"] == registry.PIPELINE_STRATEGY
    assert cli_default("upsample", "strategy") == registry.DEFAULT_STRATEGY


def enum_of(dag, name: str) -> list[str]:
    schema = dag.params.get_param(name).schema
    return schema["items"]["enum"] if schema.get("type") == "array" else schema["enum"]


def test_trigger_form_choices_are_the_registry_tuples(dagbag):
    pipeline, scoring = dagbag.dags[PIPELINE], dagbag.dags[SCORING]
    assert enum_of(pipeline, "backbone") == list(registry.backbone_choices())
    assert enum_of(pipeline, "upsample") == list(registry.STRATEGIES)
    assert enum_of(pipeline, "models") == list(registry.model_names())
    assert enum_of(pipeline, "finetune_tta") == list(registry.TTA_CHOICES)
    assert enum_of(pipeline, "champion_metric") == list(registry.CHAMPION_METRICS)
    assert enum_of(pipeline, "distributed") == list(registry.DISTRIBUTED_CHOICES)
    assert enum_of(pipeline, "engine") == enum_of(scoring, "engine") == list(registry.ENGINES)
    for dag in (pipeline, scoring):
        assert dag.params.get_param("batch_id").schema["pattern"] == registry.BATCH_ID_PATTERN
    assert pipeline.params.get_param("upsample_target").schema["pattern"] == registry.TARGET_PATTERN


#: Run in a fresh interpreter: add a value to each registry table, then parse the DAG files.
ADD_TO_REGISTRY = """
import json, runpy, sys
from molescope.core import registry as r
r.ARCHITECTURES["vgg16"] = r.Architecture("VGG16", "vgg16", 224, 512)
r.STRATEGIES = (*r.STRATEGIES, "undersample")
r.ENGINES = (*r.ENGINES, "onnx")
r.CHAMPION_METRICS = (*r.CHAMPION_METRICS, "auc_mean")
svm_c = r.HyperParameter("svm_c", "C", 1.0, "number", "SVM margin.", {"minimum": 0}, in_pipeline=True)
r.MODEL_TYPES["svm"] = r.ModelType("svm", "molescope.models.spark_models:SVM", hypers=(svm_c,))
sys.path.insert(0, sys.argv[1] + "/plugins")
found = {}
for name in ("skin_lesion_pipeline", "skin_lesion_scoring"):
    dag = runpy.run_path(f"{sys.argv[1]}/dags/{name}.py")["dag"]
    found[name] = {key: dag.params.get_param(key).schema for key in dag.params}
    if "train" in dag.task_dict:
        found["train_args"] = list(dag.get_task("train").application_args)
from molescope.cli import app as cli
_, _, train = cli.parse_settings(["train", "--train-set", "t", "--features", "f", "--out", "o", "--models",
                                  "svm,lr", "--svm-c", "2.5", "--champion-metric", "auc_mean"])
_, _, upsample = cli.parse_settings(["upsample", "--features", "f", "--out", "o", "--strategy", "undersample"]
                                     )
_, _, featurize = cli.parse_settings(["featurize", "--curated", "c", "--features", "f", "--engine", "onnx"])
found["cli"] = [train.models, train.svm_c, train.champion_metric, upsample.strategy, featurize.engine]
print(json.dumps(found))
"""


def test_a_value_added_to_the_registry_reaches_the_trigger_form_and_the_cli_unedited():
    done = subprocess.run(
        [sys.executable, "-c", ADD_TO_REGISTRY, str(REPO)], capture_output=True, text=True, check=True
    )
    found = json.loads(done.stdout.strip().splitlines()[-1])
    pipeline, scoring = found["skin_lesion_pipeline"], found["skin_lesion_scoring"]
    assert "vgg16" in pipeline["backbone"]["enum"]
    assert "undersample" in pipeline["upsample"]["enum"]
    assert "onnx" in pipeline["engine"]["enum"] and "onnx" in scoring["engine"]["enum"]
    assert "auc_mean" in pipeline["champion_metric"]["enum"]
    assert "svm" in pipeline["models"]["items"]["enum"]
    assert pipeline["svm_c"]["type"] == "number" and pipeline["svm_c"]["minimum"] == 0
    args = found["train_args"]
    assert args[args.index("--svm-c") + 1] == "{{ params.svm_c }}"
    # ... and the CLI accepts them: the new model type with its own setting, strategy, engine and metric.
    assert found["cli"] == [["svm", "lr"], 2.5, "auc_mean", "undersample", "onnx"]
