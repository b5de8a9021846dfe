"""Quarantine reasons (codes, meanings, and the order the metadata rules are checked in) and the closed
vocabularies of the metadata columns."""

from __future__ import annotations

# ----------------------------------------------------------------------------------- quarantine reasons

REASON_MALFORMED_ROW = "malformed_row"
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
#: Every reason code a quarantine row can carry, with what it means. The metadata rules are listed in the
#: order `molescope.intake.metadata.rule_checks` checks them: that list decides (a row gets the first rule
#: it breaks), and tests/unit/test_extension_contracts.py keeps the two orders equal.
QUARANTINE_REASONS: dict[str, str] = {
    REASON_MALFORMED_ROW: "metadata line holding no whole record (a quote left open): quarantined alone",
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
