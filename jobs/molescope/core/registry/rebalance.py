"""Rebalancing strategies of `molescope upsample` and its per-class targets."""

from __future__ import annotations

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
