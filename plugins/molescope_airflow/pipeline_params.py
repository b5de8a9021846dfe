"""The pipeline DAG's trigger form: its Params, section by section, from `molescope.core.registry`.

The DAG file stays the pipeline's shape (tasks and arguments); what a user can set, with its default, bounds
and help text, lives here. Every default and closed list comes from the registry, so the form offers exactly
what the CLI accepts (tests/dags/test_contract.py renders every task and parses it with the real CLI).
"""

from __future__ import annotations

from airflow.sdk import Param

from molescope.core import registry as r
from molescope_airflow.batches import TRAINING_BATCHES
from molescope_airflow.params import enum_param, hyper_params

DATE_OR_NULL = {"type": ["null", "string"], "format": "date"}


def pipeline_params(batch_wait_hours: float) -> dict[str, Param]:
    """Every Param of skin_lesion_pipeline, in form order; `batch_wait_hours` is the scheduled runs' wait."""
    return {**_batch(batch_wait_hours), **_features(), **_upsampling(), **_models(), **_evaluation()}


def _batch(wait_hours: float) -> dict[str, Param]:
    """Which batch the run ingests, what it trains on, and how long it waits for its batch."""
    return {
        "batch_id": Param(
            None,
            type=["null", "string"],
            pattern=r.BATCH_ID_PATTERN,
            title="Batch to ingest",
            description="Folder landing/<batch_id>/ under the warehouse. Empty: the run's logical date "
            "(YYYY-MM-DD), as scheduled and backfill runs do.",
            section="Batch",
        ),
        "training_batches": Param(
            "up_to_batch",
            enum=TRAINING_BATCHES,
            title="Batches to train and test on",
            description="up_to_batch: every curated batch up to and including this one; this_batch: only "
            "this one; range: dated batches from range_start to range_end (plus this one); all: every one.",
            section="Batch",
        ),
        "range_start": Param(
            None,
            **DATE_OR_NULL,
            description="First day of the range (training_batches=range).",
            section="Batch",
        ),
        "range_end": Param(
            None,
            **DATE_OR_NULL,
            description="Last day of the range (training_batches=range).",
            section="Batch",
        ),
        "batch_wait_hours": Param(
            wait_hours,
            type="number",
            minimum=0,
            maximum=48,
            description="How long after the end of the batch's day to wait for it (deferred, no worker slot) "
            "before skipping the run. 0: check once.",
            section="Batch",
        ),
    }


def _features() -> dict[str, Param]:
    """The backbone, its weights and the inference engine."""
    return {
        "backbone": enum_param(
            r.PIPELINE_BACKBONE,
            r.backbone_choices(),
            description="Keras ImageNet CNN: the frozen feature extractor of lr/rf/gbt/mlp and the network "
            "finetune trains. mobilenet_0.25 fits a 2-core CPU machine; on a GPU, resnet50 or larger.",
            section="Features",
        ),
        "weights": Param(
            r.WEIGHTS_IMAGENET,
            type="string",
            minLength=1,
            description="imagenet (Keras download/cache), random (tests), a file path or an s3a:// URI.",
            section="Features",
        ),
        "engine": enum_param(
            r.ENGINE_AUTO,
            r.ENGINES,
            description="Inference engine: keras (TensorFlow, uses GPUs), litert (CPU, XNNPACK, converted "
            "once and cached) or auto (keras for GPU jobs, else litert).",
            section="Features",
        ),
    }


def _upsampling() -> dict[str, Param]:
    """How the training split is rebalanced."""
    return {
        "upsample": enum_param(
            r.PIPELINE_STRATEGY,
            r.STRATEGIES,
            description="How the training split is rebalanced (the test split is never touched).",
            section="Upsampling",
        ),
        "upsample_target": Param(
            r.TARGET_MAJORITY,
            type="string",
            pattern=r.TARGET_PATTERN,
            description="Per-class target count: majority, an integer, or ratio:<float> of the majority.",
            section="Upsampling",
        ),
    }


def _models() -> dict[str, Param]:
    """The models, their hyper-parameters, the warm start and the champion's metric."""
    return {
        "models": Param(
            list(r.PIPELINE_MODELS),
            type="array",
            items={"type": "string", "enum": list(r.model_names())},
            minItems=1,
            uniqueItems=True,
            description="Models to train: lr/rf/gbt (Spark) and mlp (Keras head) on the frozen features, "
            "finetune (the backbone itself, trained on the images). The champion is chosen on validation "
            "by champion_metric.",
            section="Models",
        ),
        "metadata": Param(
            r.PIPELINE_METADATA,
            type="boolean",
            description="Metadata fusion: append encoded age, sex and localization to every model's image "
            "features. Scoring batches without metadata still work (encoded as unknown).",
            section="Models",
        ),
        "pca": Param(
            None,
            type=["null", "integer"],
            minimum=2,
            maximum=2048,
            description="PCA components before the classifier; empty: no PCA.",
            section="Models",
        ),
        **hyper_params(section="Models"),
        "warm_start": Param(
            r.PIPELINE_WARM_START,
            type="boolean",
            description="Fine-tune from the newest fine-tuned model of earlier runs (same network) for "
            "finetune_warm_epochs epochs, unless the rule below asks for a full retrain. Off, or with "
            "distributed=horovod: always a full fit.",
            section="Models",
        ),
        "full_retrain_every": Param(
            r.DEFAULT_FULL_RETRAIN_EVERY,
            type="integer",
            minimum=1,
            description="With warm_start: a full retrain every N fits (the full one counted; 1 = always).",
            section="Models",
        ),
        "full_retrain_growth": Param(
            r.DEFAULT_FULL_RETRAIN_GROWTH,
            type="number",
            minimum=0,
            description="With warm_start: a full retrain when the training rows grew by more than this share "
            "since the last full retrain (0.2 = 20 %).",
            section="Models",
        ),
        "distributed": enum_param(
            r.DISTRIBUTED_NONE,
            r.DISTRIBUTED_CHOICES,
            description=f"horovod: fit {', '.join(r.HOROVOD_MODELS)} data-parallel with Horovod on num_proc "
            "Spark tasks (lr/rf/gbt train on Spark as always; horovod with only those fails the train task).",
            section="Models",
        ),
        "num_proc": Param(
            r.DEFAULT_NUM_PROC,
            type="integer",
            minimum=1,
            description="Horovod ranks with distributed=horovod (the Spark cluster needs as many free task "
            "slots).",
            section="Models",
        ),
        "champion_metric": enum_param(
            r.DEFAULT_CHAMPION_METRIC,
            r.CHAMPION_METRICS,
            description="Validation metric (at each model's decision rule) that picks the champion; the "
            "test split is only evaluated by the report.",
            section="Models",
        ),
    }


def _evaluation() -> dict[str, Param]:
    """The split, the seed and the melanoma operating point."""
    return {
        "test_fraction": Param(
            r.DEFAULT_TEST_FRACTION,
            type="number",
            exclusiveMinimum=0,
            exclusiveMaximum=0.5,
            section="Evaluation",
        ),
        "seed": Param(r.DEFAULT_SEED, type="integer", minimum=0, section="Evaluation"),
        "target_mel_recall": Param(
            r.DEFAULT_TARGET_MEL_RECALL,
            type="number",
            exclusiveMinimum=0,
            maximum=1,
            description="Validation melanoma recall each model's decision rule (melanoma threshold) aims "
            "for; scoring applies the same rule.",
            section="Evaluation",
        ),
    }
