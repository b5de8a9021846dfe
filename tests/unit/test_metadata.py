"""molescope.metadata: the row rules on tiny frames, and the study's counts on the real HAM10000 metadata."""

from __future__ import annotations

from pyspark.sql import functions as F

from molescope.metadata import Rules, apply_rules, drop_duplicates, parse_metadata

STUDY_KEPT = 9948
STUDY_PER_CLASS = {"nv": 6650, "mel": 1111, "bkl": 1089, "bcc": 514, "akiec": 327, "vasc": 142, "df": 115}
COLUMNS = (
    "lesion_id string, image_id string, dx string, dx_type string, age string, sex string, "
    "localization string"
)


def image_id(n: int) -> str:
    return f"ISIC_{n:07d}"


def lesion_id(n: int) -> str:
    return f"HAM_{n:07d}"


def test_rule_switches_keep_missing_age_and_unknown_sex(spark):
    raw = spark.createDataFrame(
        [
            (lesion_id(1), image_id(1), "nv", "histo", "", "male", "back"),
            (lesion_id(2), image_id(2), "nv", "histo", "40.0", "unknown", "unknown"),
        ],
        COLUMNS,
    )
    meta = parse_metadata(raw, "memory")
    kept, quarantined = apply_rules(meta, Rules())
    assert kept.count() == 0
    assert quarantined.count() == 2
    kept, quarantined = apply_rules(meta, Rules(drop_missing_age=False, drop_unknown_sex=False))
    assert sorted(r.image_id for r in kept.collect()) == [image_id(1), image_id(2)]
    assert kept.where(F.col("localization") == "unknown").count() == 1


def test_first_broken_rule_is_the_reason(spark):
    raw = spark.createDataFrame(
        [
            (None, "bad", "xx", "histo", "abc", "male", "back"),  # missing lesion_id wins
            (lesion_id(2), image_id(2), "xx", "histo", "abc", "male", "back"),  # dx checked before age
            (lesion_id(3), image_id(3), "nv", "histo", "130", "male", "back"),
        ],
        COLUMNS,
    )
    _, quarantined = apply_rules(parse_metadata(raw, "memory"), Rules())
    reasons = {r.row: (r.reason, r.detail) for r in quarantined.collect()}
    assert reasons[1][0] == "missing_lesion_id"
    assert reasons[2][0] == "unknown_dx"
    detail = f"row 3: lesion_id={lesion_id(3)} image_id={image_id(3)} dx=nv age=130 sex=male"
    assert reasons[3] == ("age_out_of_range", detail)


def test_duplicates_name_the_row_they_repeat(spark):
    rows = [(lesion_id(1), image_id(1), "nv", "histo", "40", "male", "back")] * 2
    meta = parse_metadata(spark.createDataFrame(rows, COLUMNS), "memory")
    unique, duplicates = drop_duplicates(meta, None, "b7")
    assert unique.count() == 1
    assert [r.detail for r in duplicates.collect()] == ["row 2 repeats row 1 of batch_id=b7"]
    _, unnamed = drop_duplicates(meta, None, None)
    assert [r.detail for r in unnamed.collect()] == ["row 2 repeats row 1"]


def test_real_metadata_gives_the_study_counts(real_metadata):
    kept, quarantined = apply_rules(real_metadata, Rules())
    counts = {r.dx: r["count"] for r in kept.groupBy("dx").count().collect()}
    assert counts == STUDY_PER_CLASS
    assert sum(counts.values()) == STUDY_KEPT
    assert quarantined.count() == 10015 - STUDY_KEPT
