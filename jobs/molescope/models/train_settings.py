"""`molescope train`'s settings, a typed frozen dataclass: what the train stage parses, every trainer reads.

`TrainSettings` lives here, below the stages, so that `molescope.models.model_specs.FitJob` (and so every
trainer, in `molescope.models` and `molescope.distributed`) can be typed with it; the train stage's
`Settings` derives from it and adds the one check that needs a layer above this one (`check_distributed`,
from `molescope.distributed.trainers`).

Model hyper-parameters are declared once, in the registry (`molescope.core.registry.MODEL_TYPES`): each field
below only names one and gives its type (`option(hyper=...)` takes its default, flag, parser, choices and
help from the registry, whose JSON Schema also bounds its value in `validate`). The lines are
`molescope.core.settings.hyper_declarations()`; tests/unit/stages/test_train.py fails, printing them, when
they and the registry disagree.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from molescope.core.registry import (
    CHAMPION_METRICS,
    DEFAULT_CHAMPION_METRIC,
    DEFAULT_FULL_RETRAIN_EVERY,
    DEFAULT_FULL_RETRAIN_GROWTH,
    DEFAULT_METADATA,
    DEFAULT_MODELS,
    DEFAULT_NUM_PROC,
    DEFAULT_SEED,
    DEFAULT_TARGET_MEL_RECALL,
    DEFAULT_VALIDATION_FRACTION,
    DISTRIBUTED_CHOICES,
    DISTRIBUTED_NONE,
    HOROVOD_MODELS,
    INPUT_IMAGES,
    MODEL_TYPES,
    WARM_START_NONE,
    hyper_parameters,
)
from molescope.core.settings import CliSettings, comma_list, fraction, option, optional_int


@dataclass(frozen=True)
class TrainSettings(CliSettings):
    """The train stage's settings: its own options, then one per model hyper-parameter of the registry."""

    train_set: str = option(help="train_set table URI (<run>/train_set)")
    features: str = option(help="features table URI or a *.json ref to it; split=='test' is scored")
    out: str = option(help="run prefix: writes models/ and predictions/")
    batches: tuple[str, ...] | None = option(
        None, type=comma_list, help="comma list of batch ids for the test set"
    )
    models: tuple[str, ...] = option(
        DEFAULT_MODELS, type=comma_list, help=f"comma list of {', '.join(MODEL_TYPES)}"
    )
    pca_k: int | None = option(
        None, flag="--pca", type=optional_int, help="PCA components before the classifier, or none"
    )
    use_weights: bool | None = option(
        None,
        action=argparse.BooleanOptionalAction,
        help="weight column as weightCol (default: on when the weights are not all 1)",
    )
    cv_folds: int = option(0, type=int, help="0: no search; K: lesion-grouped K-fold")
    seed: int = option(DEFAULT_SEED, type=int, help="seed of the validation part, folds and models")
    champion_metric: str = option(
        DEFAULT_CHAMPION_METRIC,
        choices=CHAMPION_METRICS,
        help="validation metric (at each model's decision rule) that picks the champion",
    )
    validation_fraction: float = option(
        DEFAULT_VALIDATION_FRACTION,
        type=float,
        help="share of training lesions held out and scored as split 'validation' (0: none, one model only)",
    )
    target_mel_recall: float = option(
        DEFAULT_TARGET_MEL_RECALL,
        type=fraction(),
        help="validation melanoma recall the decision rule's melanoma threshold must reach",
    )
    prior_shift: bool = option(
        True,
        action=argparse.BooleanOptionalAction,
        help="fit a class-prior shift of the probabilities on validation (part of the decision rule)",
    )
    metadata: bool = option(
        DEFAULT_METADATA,
        action=argparse.BooleanOptionalAction,
        help="append encoded age, sex and localization (from --curated) to every model's features",
    )
    curated: str | None = option(
        None, help="curated root (reads <curated>/images): image models and --metadata"
    )
    backbone: str | None = option(None, help="image models' backbone (default: the features' one)")
    weights: str | None = option(
        None,
        help="backbone weights source: imagenet | random | path | s3a:// (default: from the features ref)",
    )
    alpha: float | None = option(None, type=float, help="MobileNet width, with --backbone")
    distributed: str = option(
        DISTRIBUTED_NONE,
        choices=DISTRIBUTED_CHOICES,
        help=f"horovod: fit {', '.join(HOROVOD_MODELS)} data-parallel with Horovod on --num-proc Spark tasks "
        "(the other models train as usual; horovod without one of these is an error)",
    )
    num_proc: int = option(
        DEFAULT_NUM_PROC, type=int, help="Horovod ranks (free Spark task slots needed), with --distributed"
    )
    warm_start: str = option(
        WARM_START_NONE,
        help="fine-tune from the newest fine-tuned model: its folder, or a runs root to search (newest "
        "*/models/finetune); none: from the backbone's weights. A rule may still ask for a full retrain",
    )
    full_retrain_every: int = option(
        DEFAULT_FULL_RETRAIN_EVERY,
        type=int,
        help="with --warm-start: a full retrain every N fits (1: always)",
    )
    full_retrain_growth: float = option(
        DEFAULT_FULL_RETRAIN_GROWTH,
        type=float,
        help="with --warm-start: a full retrain when the fit rows grew by more than this share since the "
        "last full retrain",
    )
    time_budget: int | None = option(
        None,
        type=optional_int,
        help="seconds this train may run (the DAG passes its task's execution timeout): a fine-tune whose "
        "estimate from its first measured steps exceeds what is left fails at once, naming the knobs",
    )

    # Model hyper-parameters (molescope.core.settings.hyper_declarations(), in registry order).
    lr_reg: float = option(hyper="lr_reg")
    lr_elastic_net: float = option(hyper="lr_elastic_net")
    lr_max_iter: int = option(hyper="lr_max_iter")
    rf_trees: int = option(hyper="rf_trees")
    rf_depth: int = option(hyper="rf_depth")
    gbt_iter: int = option(hyper="gbt_iter")
    gbt_depth: int = option(hyper="gbt_depth")
    mlp_epochs: int = option(hyper="mlp_epochs")
    mlp_dropout: float = option(hyper="mlp_dropout")
    mlp_learning_rate: float = option(hyper="mlp_learning_rate")
    finetune_epochs: int = option(hyper="finetune_epochs")
    finetune_input_size: int = option(hyper="finetune_input_size")
    finetune_tta: str = option(hyper="finetune_tta")
    finetune_unfreeze: str = option(hyper="finetune_unfreeze")
    finetune_layers: int = option(hyper="finetune_layers")
    finetune_batch_size: int = option(hyper="finetune_batch_size")
    finetune_learning_rate: float = option(hyper="finetune_learning_rate")
    finetune_weight_decay: float = option(hyper="finetune_weight_decay")
    finetune_label_smoothing: float = option(hyper="finetune_label_smoothing")
    finetune_sampling_power: float = option(hyper="finetune_sampling_power")
    finetune_patience: int = option(hyper="finetune_patience")
    finetune_warm_epochs: int = option(hyper="finetune_warm_epochs")
    finetune_max_images: int | None = option(hyper="finetune_max_images")

    def validate(self) -> None:
        unknown = sorted(set(self.models or ()) - set(MODEL_TYPES))
        if unknown or not self.models:
            raise ValueError(f"unknown models {unknown}; expected some of {tuple(MODEL_TYPES)}")
        self.check_distributed()
        if self.cv_folds == 1 or self.cv_folds < 0:
            raise ValueError("--cv-folds must be 0 (no search) or at least 2")
        if self.warm_start != WARM_START_NONE and self.distributed != DISTRIBUTED_NONE:
            raise ValueError(
                f"--warm-start with --distributed {self.distributed}: a Horovod fine-tune starts from the "
                f"backbone's weights; use --warm-start {WARM_START_NONE}"
            )
        if self.full_retrain_every < 1 or self.full_retrain_growth < 0:
            raise ValueError("--full-retrain-every must be >= 1 and --full-retrain-growth >= 0")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ValueError(f"--time-budget {self.time_budget}: must be > 0 seconds")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError("--validation-fraction must be in [0, 1)")
        if self.validation_fraction == 0 and len(self.models) > 1:
            raise ValueError(
                "--validation-fraction 0 leaves no rows to choose the champion among "
                f"{len(self.models)} models on (the test split is never used for choices)"
            )
        for h in hyper_parameters():
            # The registry's JSON Schema of the value (the trigger form's rules), validated by jsonschema.
            problem = h.problem(getattr(self, h.name, None))
            if problem:
                raise ValueError(problem)
        for name in self.models:
            if MODEL_TYPES[name].input == INPUT_IMAGES and not self.curated:
                raise ValueError(f"model {name} needs --curated (the curated images root)")
        if self.metadata and not self.curated:
            raise ValueError(
                "--metadata needs --curated: age, sex and localization come from the curated table"
            )

    def check_distributed(self) -> None:
        """The `--distributed` checks (ValueError naming the flag): the train stage's `Settings` runs
        `molescope.distributed.trainers.check_settings`, which this layer cannot import."""
