"""molescope.intake.metadata: the row rules on tiny frames, and the study's counts on the real HAM10000
metadata."""

from __future__ import annotations

import pytest
from pyspark.sql import functions as F

from molescope.core.errors import InputError
from molescope.intake.metadata import (
    Rules,
    Vocabulary,
    apply_rules,
    drop_duplicates,
    metadata_frame,
    parse_metadata,
    read_csv,
)

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


def test_read_csv_keeps_row_line_field_count_and_undecodable_column():
    data = (
        b"\xef\xbb\xbfLesion_ID,image_id,dx,dx_type,age,sex,localization\r\n"
        b'HAM_0000001,ISIC_0000001,nv,histo,40,male,"lower\r\nextremity"\r\n'
        b"\r\n"
        b"HAM_0000002,ISIC_0000002,nv,histo,40,male,back,extra\r\n"
        b"HAM_0000003,ISIC_0000003,nv\r\n"
        b"HAM_0000004,ISIC_0000004,nv,histo,40,m\xe4nnlich,back\r\n"
    )
    header, rows = read_csv(data, "m.csv")
    assert header == ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
    # (values..., row, first line, field count, first undecodable column)
    assert rows[0][-4:] == (1, 2, 7, None) and rows[0][6] == "lower\r\nextremity"
    assert rows[1][-4:] == (2, 5, 8, None) and rows[1][6] == "back"
    assert rows[2][-4:] == (3, 6, 3, None) and rows[2][3:7] == (None, None, None, None)
    assert rows[3][-4:] == (4, 7, 7, "sex") and rows[3][5] == "m\ufffdnnlich"


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"", "is empty"), (b"\n\n", "is empty"), (b"lesion_id,image_id\n", "lacks columns")],
)
def test_read_csv_refuses_what_is_no_metadata(data, message):
    with pytest.raises(InputError, match=message):
        read_csv(data, "m.csv")


def test_metadata_frame_flags_broken_rows_first(spark):
    data = (
        b"lesion_id,image_id,dx,dx_type,age,sex,localization\n"
        b"HAM_0000001,ISIC_0000001,nv,histo,40,male,back,unquoted, comma\n"
        b"HAM_0000002,ISIC_0000002,nv,histo,40,M,back\n"
        b"HAM_0000003,ISIC_0000003,NV,Histo,40,Male,Lower Extremity\n"
    )
    meta = parse_metadata(metadata_frame(spark, data, "m.csv"), "m.csv")
    kept, quarantined = apply_rules(meta, Rules())
    assert [r.image_id for r in kept.collect()] == ["ISIC_0000003"]
    reasons = {r.image_id: (r.reason, r.detail) for r in quarantined.collect()}
    assert reasons["ISIC_0000001"] == ("wrong_field_count", "row 1 (line 2): 9 fields, the header has 7")
    assert reasons["ISIC_0000002"][0] == "invalid_sex"


def test_vocabularies_are_configurable(spark):
    raw = spark.createDataFrame([(lesion_id(1), image_id(1), "nv", "biopsy", "40", "f", "elbow")], COLUMNS)
    meta = parse_metadata(raw, "memory")
    custom = Vocabulary(dx_type=("biopsy",), sex=("f", "m", "unknown"), localization=("elbow",))
    kept, _ = apply_rules(meta, Rules(vocabulary=custom))
    assert kept.count() == 1
    _, quarantined = apply_rules(meta, Rules())
    assert [r.reason for r in quarantined.collect()] == ["invalid_dx_type"]
    with pytest.raises(InputError, match="sex vocabulary is empty"):
        Vocabulary(sex=())
