"""The data's own vocabulary: the label set, metadata columns and split names (choices and defaults that
the DAGs and the CLI share live in molescope.core.registry)."""

from __future__ import annotations

#: The 7 HAM10000 diagnoses, majority first (the order used in tables and confusion matrices).
CLASSES: tuple[str, ...] = ("nv", "mel", "bkl", "bcc", "akiec", "vasc", "df")
CLASS_INDEX: dict[str, int] = {dx: i for i, dx in enumerate(CLASSES)}
MELANOMA = "mel"
#: Malignant diagnoses for the malignant-vs-benign sensitivity/specificity figures.
MALIGNANT: frozenset[str] = frozenset({"mel", "bcc", "akiec"})
#: Column order of an ISIC 2018 Task 3 submission file (after the leading `image` column).
ISIC_COLUMNS: tuple[str, ...] = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")

#: Metadata columns of the Kaggle form; the Dataverse form adds `dataset`.
METADATA_COLUMNS: tuple[str, ...] = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")

SPLIT_TRAIN = "train"
SPLIT_TEST = "test"
#: `split` of the lesion-grouped part of the training split held out of fitting (predictions, reports).
SPLIT_VALIDATION = "validation"
