"""Model types: what each scores, its hyper-parameters, the CLI's and the pipeline's default choices, the
champion metrics and distributed training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from molescope.core.registry.defaults import DEFAULT_FINETUNE_WARM_EPOCHS
from molescope.core.registry.hyper import HyperParameter, hyper

# ------------------------------------------------------------------------------------------------ models

#: What a model scores: feature vectors (featurize's output) or the curated JPEG bytes themselves.
INPUT_FEATURES = "features"
INPUT_IMAGES = "images"
#: Fine-tuning trains the backbone's top `--finetune-layers` layers, or all of them.
UNFREEZE_TOP = "top"
UNFREEZE_ALL = "all"
UNFREEZE_CHOICES: tuple[str, ...] = (UNFREEZE_TOP, UNFREEZE_ALL)
#: Test-time augmentation of image models: the views whose softmax outputs are averaged.
TTA_NONE = "none"
TTA_VIEWS: dict[str, tuple[str, ...]] = {
    TTA_NONE: ("identity",),
    "hflip": ("identity", "hflip"),
    "flip4": ("identity", "hflip", "vflip", "hvflip"),
    "dihedral8": ("identity", "hflip", "vflip", "hvflip", "transpose", "transpose_hflip",
                  "transpose_vflip", "transpose_hvflip"),
}  # fmt: skip
TTA_CHOICES: tuple[str, ...] = tuple(TTA_VIEWS)
DEFAULT_TTA = "flip4"
#: `score --tta` value: the views the model was evaluated with (its sidecar's).
TTA_AUTO = "auto"
#: The fine-tuning recipe's length and input side (docs/benchmarks.md, "Model quality", says why).
DEFAULT_FINETUNE_EPOCHS = 12
#: Early stopping waits as long as the default schedule: the best epochs come once the cosine schedule has
#: annealed (a patience of 3 stopped a 12-epoch run at epoch 10, below the full run on validation).
DEFAULT_FINETUNE_PATIENCE = DEFAULT_FINETUNE_EPOCHS
DEFAULT_FINETUNE_INPUT_SIZE = 224
MIN_FINETUNE_INPUT_SIZE = 32
MAX_FINETUNE_INPUT_SIZE = 1024


@dataclass(frozen=True)
class ModelType:
    """A model type: what it scores, whether its features are standardised, its hyper-parameters, and
    `impl`, the `module:attribute` of its `molescope.models.model_specs.ModelSpec` (imported only when
    used)."""

    name: str
    impl: str
    input: str = INPUT_FEATURES
    #: Optimisation depends on feature scale (gradient steps, L1/L2 penalties); trees do not.
    standardize: bool = False
    hypers: tuple[HyperParameter, ...] = ()


# Each model type's hyper-parameters: setting name, estimator param, default, help, then the CV grid, whether
# the pipeline's trigger form offers it, and its bounds (JSON Schema keywords: the trigger form's and CLI's).
_LR = (
    hyper(
        "lr_reg", "regParam", 0.01, "LR regularisation.", grid=(0.001, 0.01, 0.1), pipeline=True, minimum=0
    ),
    hyper(
        "lr_elastic_net",
        "elasticNetParam",
        0.0,
        "LR elastic-net mix (0 L2, 1 L1).",
        grid=(0.0, 0.5),
        pipeline=True,
        minimum=0,
        maximum=1,
    ),
    hyper("lr_max_iter", "maxIter", 100, "LR iterations.", minimum=1),
)
_RF = (
    hyper("rf_trees", "numTrees", 100, "RF trees.", pipeline=True, minimum=1, maximum=1000),
    hyper("rf_depth", "maxDepth", 10, "RF tree depth.", grid=(5, 10), pipeline=True, minimum=1, maximum=30),
)
_GBT = (
    hyper(
        "gbt_iter",
        "maxIter",
        20,
        "GBT rounds (per one-vs-rest class).",
        pipeline=True,
        minimum=1,
        maximum=500,
    ),
    hyper("gbt_depth", "maxDepth", 5, "GBT tree depth.", grid=(3, 5), pipeline=True, minimum=1, maximum=30),
)
_MLP = (
    hyper("mlp_epochs", "epochs", 20, "Keras head epochs (early-stopped).", minimum=1),
    hyper("mlp_dropout", "dropout", 0.5, "Keras head dropout.", minimum=0, exclusiveMaximum=1),
    hyper("mlp_learning_rate", "learning_rate", 1e-3, "Keras head Adam step.", exclusiveMinimum=0),
)
_FINETUNE = (
    hyper(
        "finetune_epochs",
        "epochs",
        DEFAULT_FINETUNE_EPOCHS,
        "Fine-tuning epochs of as many sampled images as fit images (best epoch by validation).",
        pipeline=True,
        minimum=1,
        maximum=100,
    ),
    hyper(
        "finetune_input_size",
        "input_size",
        DEFAULT_FINETUNE_INPUT_SIZE,
        "Fine-tuning input side, px (images are resized to a square).",
        pipeline=True,
        minimum=MIN_FINETUNE_INPUT_SIZE,
        maximum=MAX_FINETUNE_INPUT_SIZE,
    ),
    hyper(
        "finetune_tta",
        "tta",
        DEFAULT_TTA,
        "Test-time augmentation of fine-tuned predictions: mean softmax over these views.",
        choices=TTA_CHOICES,
        pipeline=True,
    ),
    hyper(
        "finetune_unfreeze",
        "unfreeze",
        UNFREEZE_ALL,
        "Backbone layers trained: all, or the top --finetune-layers (the others frozen, BatchNorm too).",
        choices=UNFREEZE_CHOICES,
    ),
    hyper("finetune_layers", "layers", 20, "Top layers trained (unfreeze top).", minimum=0),
    hyper("finetune_batch_size", "batch_size", 32, "Images per fine-tuning step.", minimum=1),
    hyper(
        "finetune_learning_rate",
        "learning_rate",
        7e-4,
        "Peak AdamW step (warmup, cosine).",
        exclusiveMinimum=0,
    ),
    hyper("finetune_weight_decay", "weight_decay", 0.01, "AdamW decoupled weight decay.", minimum=0),
    hyper(
        "finetune_label_smoothing", "label_smoothing", 0.1, "Label smoothing.", minimum=0, exclusiveMaximum=1
    ),
    hyper(
        "finetune_sampling_power",
        "sampling_power",
        0.5,
        "Class-balanced sampler: class c drawn with probability ∝ count_c^power (0 balanced, 1 natural).",
        minimum=0,
        maximum=1,
    ),
    hyper(
        "finetune_patience",
        "patience",
        DEFAULT_FINETUNE_PATIENCE,
        "Epochs without a better validation balanced accuracy before fine-tuning stops.",
        minimum=1,
    ),
    hyper(
        "finetune_warm_epochs",
        "warm_epochs",
        DEFAULT_FINETUNE_WARM_EPOCHS,
        "Epochs of a fine-tune warm-started from the newest fine-tuned model (--warm-start).",
        pipeline=True,
        minimum=1,
        maximum=100,
    ),
    hyper(
        "finetune_max_images",
        "max_images",
        None,
        "Cap on training images (default: all).",
        kind=int,
        minimum=1,
    ),
)
MODEL_TYPES: dict[str, ModelType] = {
    "lr": ModelType("lr", "molescope.models.spark_models:LOGISTIC_REGRESSION", standardize=True, hypers=_LR),
    "rf": ModelType("rf", "molescope.models.spark_models:RANDOM_FOREST", hypers=_RF),
    "gbt": ModelType("gbt", "molescope.models.spark_models:GRADIENT_BOOSTED_TREES", hypers=_GBT),
    "mlp": ModelType("mlp", "molescope.models.keras_head:KERAS_HEAD", standardize=True, hypers=_MLP),
    "finetune": ModelType(
        "finetune", "molescope.models.finetune:FINETUNE", input=INPUT_IMAGES, hypers=_FINETUNE
    ),
}
#: Models `molescope train` fits unless told otherwise (the study's three).
DEFAULT_MODELS: tuple[str, ...] = ("lr", "rf", "gbt")
#: The pipeline DAG's default run: the best recipe measured on a 2-core CPU machine (docs/benchmarks.md,
#: "Model quality"): MobileNet-0.25 fine-tuned end to end, with logistic regression on the same backbone's
#: frozen features as a cheap baseline; the champion between them is chosen on validation. On a GPU
#: machine the same recipe runs with a larger backbone (e.g. `resnet50`) in minutes.
PIPELINE_MODELS: tuple[str, ...] = ("lr", "finetune")
PIPELINE_BACKBONE = "mobilenet_0.25"
#: Metadata fusion (age, sex, localization appended to the image features): off for the bare CLI, and in
#: the pipeline unless validation shows a gain (docs/benchmarks.md).
DEFAULT_METADATA = False
PIPELINE_METADATA = False


def model_names(input: str | None = None) -> tuple[str, ...]:
    """Registered model types, all of them or those scoring `input` (INPUT_FEATURES | INPUT_IMAGES)."""
    return tuple(name for name, m in MODEL_TYPES.items() if input is None or m.input == input)


def model_type(name: str) -> ModelType:
    """The registered model type `name`; ValueError naming the known ones otherwise."""
    if name not in MODEL_TYPES:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_TYPES)}")
    return MODEL_TYPES[name]


def hyper_parameters() -> tuple[HyperParameter, ...]:
    """Every model type's hyper-parameters, in registry order (each is one `molescope train` setting)."""
    return tuple(h for m in MODEL_TYPES.values() for h in m.hypers)


def hyper_defaults(model: str) -> dict[str, Any]:
    """{param: default} of one model type (e.g. the fine-tuning recipe's defaults)."""
    return {h.param: h.default for h in model_type(model).hypers}


#: `molescope score --model` value: the newest champion under the warehouse.
MODEL_CHAMPION = "champion"
#: Metrics train reports per model; any of them can pick the champion (all: larger is better).
CHAMPION_METRICS: tuple[str, ...] = ("balanced_accuracy", "accuracy", "mel_recall", "macro_f1")
DEFAULT_CHAMPION_METRIC = "balanced_accuracy"

# ------------------------------------------------------------------------------ distributed training

DISTRIBUTED_NONE = "none"
DISTRIBUTED_HOROVOD = "horovod"
#: `molescope train --distributed` and the pipeline's `distributed` param: `horovod` fits the Keras models
#: data-parallel on `--num-proc` Spark barrier tasks (molescope.distributed.launch,
#: molescope.distributed.trainers).
DISTRIBUTED_CHOICES: tuple[str, ...] = (DISTRIBUTED_NONE, DISTRIBUTED_HOROVOD)
#: Model types `--distributed horovod` fits with Horovod. The Spark ML models (lr, rf, gbt) are fitted by
#: Spark's own executors already: beside one of these they train as usual; alone they are an error.
HOROVOD_MODELS: tuple[str, ...] = ("mlp", "finetune")
#: Horovod ranks (each one Spark task slot) unless told otherwise.
DEFAULT_NUM_PROC = 2
