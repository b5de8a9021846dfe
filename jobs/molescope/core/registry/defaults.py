"""Defaults of the split (clean), the validation part and the evaluation (train, report)."""

from __future__ import annotations

DEFAULT_SEED = 42
DEFAULT_TEST_FRACTION = 0.2
#: Share of the training lesions held out as the validation part (every choice is made there).
DEFAULT_VALIDATION_FRACTION = 0.1
#: Melanoma recall the melanoma-sensitive operating point must reach unless told otherwise.
DEFAULT_TARGET_MEL_RECALL = 0.8
#: Case review: the images shown besides every flagged one (highest calibrated melanoma probability first).
DEFAULT_REVIEW_TOP = 50
#: Case review: the most similar training images shown per card.
DEFAULT_SIMILAR_K = 5
#: Smallest usable image side, px.
DEFAULT_MIN_SIZE = 32
#: Warm start of the fine-tune (`molescope.models.warm_start`): `--warm-start none` = always a full retrain.
WARM_START_NONE = "none"
#: The pipeline DAG's `warm_start` Param: on, as a 1-epoch warm start matched a full retrain on validation
#: (docs/benchmarks.md, "The daily run"); the CLI's `--warm-start` default stays none.
PIPELINE_WARM_START = True
#: A full retrain every this many fits of a warm-start chain (the full one counted).
DEFAULT_FULL_RETRAIN_EVERY = 7
#: A full retrain when the fit rows grew by more than this share since the last full retrain.
DEFAULT_FULL_RETRAIN_GROWTH = 0.2
#: Epochs of a warm-started fine-tune (`--finetune-warm-epochs`): 1, chosen among 1-3 on validation.
DEFAULT_FINETUNE_WARM_EPOCHS = 1
