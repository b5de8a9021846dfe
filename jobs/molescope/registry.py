"""Every closed list, default and shared name of molescope, in one place.

Light on purpose (standard library only: no pyspark, TensorFlow, pandas or numpy): the DAG files, which
Airflow's DAG processor parses every few seconds, the Airflow plugins and the `molescope` CLI all read their
choices and defaults from here. A value added to one of these tables shows up in the trigger form (Param
enums and defaults), in the CLI (choices and defaults) and in the stages' validation with no other edit;
tests/dags/test_contract.py renders every DAG task and parses it with the real CLI to prove they agree.

Implementations register here by name: a backbone family (`ARCHITECTURES`), a model type (`MODEL_TYPES`,
whose `impl` names its `molescope.model_specs.ModelSpec`) and a quarantine reason (`QUARANTINE_REASONS`).
See docs/architecture.md, "How to extend".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

# ---------------------------------------------------------------------------------- stages and Airflow

#: Spark stages (`molescope <stage>`), in pipeline order; each is `molescope.stages.<stage>`.
SPARK_STAGES: tuple[str, ...] = ("clean", "featurize", "upsample", "train", "report", "score")
#: Execution timeouts per stage, sized for a full HAM10000 batch (10,015 images) on a 2-core machine from
#: the benchmarks (`make bench-*`), with a ~4-5x margin for a slower machine, JVM/TF start-up and S3:
#: - clean ≈ 85 img/s → 10k images ≈ 2 min                                   → 20 min
#: - featurize ResNet50 on CPU ≈ 24 img/s in Spark → 10k ≈ 7 min + start-up  → 45 min
#: - upsample (oversample/SMOTE on 2048-d features; augment re-featurizes)   → 30 min
#: - train lr/rf/gbt on 10k × 2048 ≈ several minutes each (+ CV folds)       → 90 min
#: - report (pandas on the test predictions)                                  → 15 min
#: - score (featurize + predict one batch, as featurize)                      → 60 min
#: A larger batch or a cluster needs other figures: pass `execution_timeout=` to `spark_stage`.
STAGE_TIMEOUTS: dict[str, timedelta] = {
    "clean": timedelta(minutes=20),
    "featurize": timedelta(minutes=45),
    "upsample": timedelta(minutes=30),
    "train": timedelta(minutes=90),
    "report": timedelta(minutes=15),
    "score": timedelta(minutes=60),
}
#: For a stage not listed above.
DEFAULT_STAGE_TIMEOUT = timedelta(minutes=60)

#: Airflow connection with the S3 endpoint and credentials (conn_type aws).
S3_CONN_ID = "molescope_s3"
#: Airflow connection naming the Spark master (conn_type spark).
SPARK_CONN_ID = "spark_default"
#: Airflow Variable holding the warehouse root, and its default.
WAREHOUSE_VARIABLE = "molescope_warehouse"
DEFAULT_WAREHOUSE = "s3a://molescope"

# ------------------------------------------------------------------------------------ warehouse layout

LANDING_DIR = "landing"
CURATED_DIR = "curated"
FEATURES_DIR = "features"
RUNS_DIR = "runs"
#: Where users put batches to score, and where the scores go.
SCORING_DIR = "scoring"
SCORES_DIR = "scores"
#: Inside the curated root.
IMAGES_DIR = "images"
QUARANTINE_DIR = "quarantine"
SUMMARIES_DIR = "summaries"
#: Inside a run prefix.
TRAIN_SET_DIR = "train_set"
MODELS_DIR = "models"
PREDICTIONS_DIR = "predictions"
METRICS_DIR = "metrics"
PARAMS_FILE = "params.json"
#: Reference JSON naming the features table a run uses (`featurize --ref-out`).
FEATURES_REF_FILE = "features.json"
#: A `--features` value ending so is such a reference, not the table itself.
FEATURES_REF_SUFFIX = ".json"
UPSAMPLE_SUMMARY_FILE = "upsample_summary.json"
UPSAMPLE_CHART_FILE = "upsample_classes.png"
#: `<run>/models/champion.json`: which of the run's models scoring uses by default.
CHAMPION_FILE = "champion.json"
#: Beside each saved model: what it is and how it was trained.
SIDECAR_FILE = "molescope_model.json"
REPORT_FILE = "report.html"
METRICS_FILE = "metrics.json"
PREDICTIONS_CSV = "predictions.csv"
#: Written last for each scored batch (`<scores>/<batch_id>/<run id>/<model>/summary.json`): marks it scored.
SCORE_SUMMARY_FILE = "summary.json"
#: Run history of the report, under the runs root: one `<run_id>.json` per reported run.
HISTORY_DIR = "_history"
#: Manifests of a table partitioned by batch (`<table>/_manifests/<batch_id>.json`), and of a run's table
#: (`<table>/_manifest.json`): the files they name are the published data (molescope.tables).
MANIFESTS_DIR = "_manifests"
MANIFEST_FILE = "_manifest.json"
#: Converted inference engines, under the features root (hidden from Spark: it starts with `_`).
ENGINES_DIR = "_engines"

# ------------------------------------------------------------------------------------------ batch ids

#: Letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64 characters, and never '..':
#: a batch id becomes a path segment, so it can never climb out of its prefix or fake a partition.
BATCH_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_BATCH_ID = re.compile(BATCH_ID_PATTERN)


def is_batch_id(name: str) -> bool:
    return bool(_BATCH_ID.match(name)) and ".." not in name


def validate_batch_id(batch_id: str) -> str:
    """`batch_id` if it is a safe path segment, else ValueError."""
    if not is_batch_id(batch_id):
        raise ValueError(f"invalid batch id {batch_id!r}: must match {BATCH_ID_PATTERN} and not contain '..'")
    return batch_id


# --------------------------------------------------------------------------- split and evaluation defaults

DEFAULT_SEED = 42
DEFAULT_TEST_FRACTION = 0.2
#: Share of the training lesions held out as the validation part (every choice is made there).
DEFAULT_VALIDATION_FRACTION = 0.1
#: Melanoma recall the melanoma-sensitive operating point must reach unless told otherwise.
DEFAULT_TARGET_MEL_RECALL = 0.8
#: Smallest usable image side, px.
DEFAULT_MIN_SIZE = 32

# ----------------------------------------------------------------------------------- quarantine reasons

REASON_WRONG_FIELD_COUNT = "wrong_field_count"
REASON_UNDECODABLE_ROW = "undecodable_row"
REASON_MISSING_LESION_ID = "missing_lesion_id"
REASON_MALFORMED_IMAGE_ID = "malformed_image_id"
REASON_MALFORMED_LESION_ID = "malformed_lesion_id"
REASON_UNKNOWN_DX = "unknown_dx"
REASON_INVALID_DX_TYPE = "invalid_dx_type"
REASON_INVALID_SEX = "invalid_sex"
REASON_INVALID_LOCALIZATION = "invalid_localization"
REASON_INVALID_AGE = "invalid_age"
REASON_AGE_OUT_OF_RANGE = "age_out_of_range"
REASON_MISSING_AGE = "missing_age"
REASON_UNKNOWN_SEX = "unknown_sex"
REASON_DUPLICATE_IMAGE_ID = "duplicate_image_id"
REASON_IMAGE_MISSING = "image_missing"
REASON_IMAGE_EMPTY = "image_empty"
REASON_IMAGE_NOT_JPEG = "image_not_jpeg"
REASON_IMAGE_CORRUPT = "image_corrupt"
REASON_IMAGE_TOO_SMALL = "image_too_small"
REASON_DUPLICATE_IMAGE_CONTENT = "duplicate_image_content"
REASON_ORPHAN_IMAGE = "orphan_image"
REASON_DUPLICATE_IMAGE_FILE = "duplicate_image_file"
REASON_HIDDEN_IMAGE_FILE = "hidden_image_file"
#: Every reason code a quarantine row can carry, with what it means. Metadata rules are checked in this
#: order (`molescope.metadata.rule_reason` reports the first one a row breaks).
QUARANTINE_REASONS: dict[str, str] = {
    REASON_WRONG_FIELD_COUNT: "metadata row with more or fewer fields than its header (an unquoted comma)",
    REASON_UNDECODABLE_ROW: "metadata row with bytes that are not UTF-8",
    REASON_MISSING_LESION_ID: "metadata row without a lesion_id",
    REASON_MALFORMED_IMAGE_ID: "image_id missing or not ISIC_<7 digits>",
    REASON_MALFORMED_LESION_ID: "lesion_id not HAM_<7 digits>",
    REASON_UNKNOWN_DX: "dx outside the 7 classes",
    REASON_INVALID_DX_TYPE: "dx_type outside the configured vocabulary (default: HAM10000's DX_TYPES)",
    REASON_INVALID_SEX: "sex outside the configured vocabulary (default: HAM10000's SEXES)",
    REASON_INVALID_LOCALIZATION: "localization outside the configured vocabulary (default: HAM10000's)",
    REASON_INVALID_AGE: "age is not a number",
    REASON_AGE_OUT_OF_RANGE: "age outside [0, 120]",
    REASON_MISSING_AGE: "empty age (the study's rule; --keep-missing-age keeps the row)",
    REASON_UNKNOWN_SEX: "sex 'unknown' or empty (the study's rule; --keep-unknown-sex keeps the row)",
    REASON_DUPLICATE_IMAGE_ID: "image_id repeats an earlier row or an image curated in another batch",
    REASON_IMAGE_MISSING: "no JPEG file of the row's image_id below the batch",
    REASON_IMAGE_EMPTY: "zero-byte image file",
    REASON_IMAGE_NOT_JPEG: "the file does not start like a JPEG",
    REASON_IMAGE_CORRUPT: "truncated or undecodable JPEG",
    REASON_IMAGE_TOO_SMALL: "image side below --min-size",
    REASON_DUPLICATE_IMAGE_CONTENT: "same bytes (sha256) as another image_id kept in this or another batch",
    REASON_ORPHAN_IMAGE: "JPEG file no metadata row names",
    REASON_DUPLICATE_IMAGE_FILE: "second JPEG file with an image_id an earlier file has",
    REASON_HIDDEN_IMAGE_FILE: "JPEG file below a name starting with '.' or '_' (hidden from Spark's readers)",
}
#: `source` of a quarantine row: which input it stands for.
SOURCE_METADATA = "metadata"
SOURCE_IMAGE = "image"

# ------------------------------------------------------------------------------------- metadata values

#: The value HAM10000 writes for an unknown sex or localization (clean also maps a blank sex to it).
UNKNOWN_VALUE = "unknown"
#: Closed vocabularies of the metadata columns (HAM10000's values; lower case, compared after trimming and
#: lower-casing). clean and score validate against them (others with --dx-types / --sexes / --localizations);
#: metadata fusion one-hot encodes every known value; `unknown`, a blank and a value outside the list all
#: encode as "not known" (all zeros).
DX_TYPE_VALUES: tuple[str, ...] = ("histo", "follow_up", "consensus", "confocal")
SEX_VALUES: tuple[str, ...] = ("female", "male", UNKNOWN_VALUE)
LOCALIZATION_VALUES: tuple[str, ...] = (
    "abdomen",
    "acral",
    "back",
    "chest",
    "ear",
    "face",
    "foot",
    "genital",
    "hand",
    "lower extremity",
    "neck",
    "scalp",
    "trunk",
    "upper extremity",
    UNKNOWN_VALUE,
)

# ------------------------------------------------------------------------------------ backbones, weights


@dataclass(frozen=True)
class Architecture:
    """One keras.applications family: constructor, preprocessing module, input size and width rule."""

    constructor: str
    preprocess_module: str
    input_size: int
    base_dim: int
    #: Width multipliers with ImageNet weights; empty: the family has no width multiplier.
    alphas: tuple[float, ...] = ()

    def feature_dim(self, alpha: float | None) -> int:
        if alpha is None:
            return self.base_dim
        if self.constructor == "MobileNetV2":
            # MobileNetV2 keeps its last 1x1 conv at 1280 channels for alpha <= 1.
            return self.base_dim if alpha <= 1.0 else int(self.base_dim * alpha)
        return int(self.base_dim * alpha)


#: Backbone families by name (`--backbone <family>[_<alpha>]`).
ARCHITECTURES: dict[str, Architecture] = {
    "resnet50": Architecture("ResNet50", "resnet50", 224, 2048),
    "mobilenet": Architecture("MobileNet", "mobilenet", 224, 1024, (0.25, 0.5, 0.75, 1.0)),
    "mobilenetv2": Architecture("MobileNetV2", "mobilenet_v2", 224, 1280, (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)),
    "efficientnetb0": Architecture("EfficientNetB0", "efficientnet", 224, 1280),
    "densenet121": Architecture("DenseNet121", "densenet", 224, 1024),
}
DEFAULT_BACKBONE = "resnet50"
#: Width of a width-scalable family named without a suffix (`mobilenet` = `mobilenet_1`).
DEFAULT_ALPHA = 1.0


def backbone_choices() -> tuple[str, ...]:
    """Every `--backbone` value with ImageNet weights: each family, and `<family>_<alpha>` for its widths."""
    names: list[str] = []
    for family, arch in ARCHITECTURES.items():
        names.append(family)
        names.extend(f"{family}_{alpha:g}" for alpha in arch.alphas if alpha != DEFAULT_ALPHA)
    return tuple(names)


WEIGHTS_IMAGENET = "imagenet"
#: Seeded random initialisation: for plumbing tests and speed benchmarks only.
WEIGHTS_RANDOM = "random"
#: `score --weights` value: derive the weights source from the model's weights_id.
WEIGHTS_AUTO = "auto"
#: `weights_id` of random weights: `random-seed<N>`; of a weights file: `sha256:<16 hex>` of its content.
RANDOM_WEIGHTS_PREFIX = "random-seed"
SHA256_WEIGHTS_PREFIX = "sha256:"

ENGINE_AUTO = "auto"
ENGINE_KERAS = "keras"
ENGINE_LITERT = "litert"
#: featurize's inference engines (molescope.engines).
ENGINES: tuple[str, ...] = (ENGINE_AUTO, ENGINE_KERAS, ENGINE_LITERT)
#: Images per inference call.
DEFAULT_BATCH_SIZE = 32

# -------------------------------------------------------------------------------------------- upsampling

STRATEGY_NONE = "none"
STRATEGY_OVERSAMPLE = "oversample"
STRATEGY_AUGMENT = "augment"
STRATEGY_SMOTE = "smote"
STRATEGY_CLASS_WEIGHT = "class_weight"
STRATEGIES: tuple[str, ...] = (
    STRATEGY_NONE,
    STRATEGY_OVERSAMPLE,
    STRATEGY_AUGMENT,
    STRATEGY_SMOTE,
    STRATEGY_CLASS_WEIGHT,
)
#: Strategies that add rows (and so need a target per class).
RESAMPLING: frozenset[str] = frozenset({STRATEGY_OVERSAMPLE, STRATEGY_AUGMENT, STRATEGY_SMOTE})
#: `molescope upsample` changes nothing unless told; the pipeline DAG oversamples (the study's best recipe).
DEFAULT_STRATEGY = STRATEGY_NONE
PIPELINE_STRATEGY = STRATEGY_OVERSAMPLE
TARGET_MAJORITY = "majority"
TARGET_RATIO_PREFIX = "ratio:"
#: `--target`: majority, a positive count, or ratio:<float> (of the majority count).
TARGET_PATTERN = r"^(majority|[1-9][0-9]*|ratio:(0|[1-9][0-9]*)?\.?[0-9]+)$"
DEFAULT_K_NEIGHBORS = 5

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
class HyperParameter:
    """One model hyper-parameter: its setting (`--<name>` on `molescope train`), default and search grid.

    `param` is the estimator's own name for it (Spark: regParam; Keras head: dropout). `kind` is its JSON
    schema type (number | integer | string); `schema` holds the trigger form's bounds (minimum, maximum,
    ...). `grid`: values `--cv-folds` searches (the setting's value is always added). `in_pipeline`: offered
    in the pipeline DAG's trigger form.
    """

    name: str
    param: str
    default: Any
    kind: str
    help: str
    schema: dict[str, Any] = field(default_factory=dict)
    choices: tuple[str, ...] = ()
    grid: tuple[Any, ...] = ()
    in_pipeline: bool = False

    @property
    def flag(self) -> str:
        """Its `molescope train` option."""
        return "--" + self.name.replace("_", "-")

    def problem(self, value: Any) -> str | None:
        """Why `value` is outside the bounds of `schema` (the trigger form's), None when it is inside."""
        if value is None:
            return None
        bounds = (
            ("minimum", lambda b: value >= b, ">="),
            ("maximum", lambda b: value <= b, "<="),
            ("exclusiveMinimum", lambda b: value > b, ">"),
            ("exclusiveMaximum", lambda b: value < b, "<"),
        )
        for key, holds, sign in bounds:
            if key in self.schema and not holds(self.schema[key]):
                return f"{self.flag} {value}: must be {sign} {self.schema[key]}"
        return None


@dataclass(frozen=True)
class ModelType:
    """A model type: what it scores, whether its features are standardised, its hyper-parameters, and
    `impl`, the `module:attribute` of its `molescope.model_specs.ModelSpec` (imported only when used)."""

    name: str
    impl: str
    input: str = INPUT_FEATURES
    #: Optimisation depends on feature scale (gradient steps, L1/L2 penalties); trees do not.
    standardize: bool = False
    hypers: tuple[HyperParameter, ...] = ()


_KINDS = {float: "number", int: "integer", str: "string"}


def hyper(
    name: str,
    param: str,
    default: Any,
    help: str,
    *,
    kind: type | None = None,
    grid: tuple = (),
    pipeline: bool = False,
    choices: tuple[str, ...] = (),
    **schema: Any,
) -> HyperParameter:
    """A HyperParameter whose JSON kind follows `default` (or `kind`, for a default of None)."""
    json_kind = _KINDS[kind or type(default)]
    return HyperParameter(name, param, default, json_kind, help, schema, choices, grid, pipeline)


# Each model type's hyper-parameters: setting name, estimator param, default, help, then the CV grid, whether
# the pipeline's trigger form offers it, and its bounds there.
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
        "finetune_max_images",
        "max_images",
        None,
        "Cap on training images (default: all).",
        kind=int,
        minimum=1,
    ),
)
MODEL_TYPES: dict[str, ModelType] = {
    "lr": ModelType("lr", "molescope.spark_models:LOGISTIC_REGRESSION", standardize=True, hypers=_LR),
    "rf": ModelType("rf", "molescope.spark_models:RANDOM_FOREST", hypers=_RF),
    "gbt": ModelType("gbt", "molescope.spark_models:GRADIENT_BOOSTED_TREES", hypers=_GBT),
    "mlp": ModelType("mlp", "molescope.keras_head:KERAS_HEAD", standardize=True, hypers=_MLP),
    "finetune": ModelType("finetune", "molescope.finetune:FINETUNE", input=INPUT_IMAGES, hypers=_FINETUNE),
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
#: data-parallel on `--num-proc` Spark barrier tasks (molescope.distributed, molescope.distributed_fit).
DISTRIBUTED_CHOICES: tuple[str, ...] = (DISTRIBUTED_NONE, DISTRIBUTED_HOROVOD)
#: Model types `--distributed horovod` fits with Horovod. The Spark ML models (lr, rf, gbt) are fitted by
#: Spark's own executors already: beside one of these they train as usual; alone they are an error.
HOROVOD_MODELS: tuple[str, ...] = ("mlp", "finetune")
#: Horovod ranks (each one Spark task slot) unless told otherwise.
DEFAULT_NUM_PROC = 2
