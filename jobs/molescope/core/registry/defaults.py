"""Defaults of the split (clean), the validation part and the evaluation (train, report)."""

from __future__ import annotations

DEFAULT_SEED = 42
DEFAULT_TEST_FRACTION = 0.2
#: Share of the training lesions held out as the validation part (every choice is made there).
DEFAULT_VALIDATION_FRACTION = 0.1
#: Melanoma recall the melanoma-sensitive operating point must reach unless told otherwise.
DEFAULT_TARGET_MEL_RECALL = 0.8
#: Smallest usable image side, px.
DEFAULT_MIN_SIZE = 32
