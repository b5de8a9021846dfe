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
)
from tests.conftest import HAM10000, require

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


def rules_applied(spark, data: bytes) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """(image ids kept, {image_id: (reason, detail)} of the rest) of a CSV's bytes under the study's rules."""
    kept, quarantined = apply_rules(parse_metadata(metadata_frame(spark, data, "m.csv"), "m.csv"), Rules())
    return [r.image_id for r in kept.collect()], {
        r.image_id: (r.reason, r.detail) for r in quarantined.collect()
    }


def test_metadata_frame_flags_broken_rows_first(spark):
    data = (
        b"lesion_id,image_id,dx,dx_type,age,sex,localization\n"
        b"HAM_0000001,ISIC_0000001,nv,histo,40,male,back,unquoted, comma\n"
        b"HAM_0000002,ISIC_0000002,nv,histo,40,M,back\n"
        b"HAM_0000003,ISIC_0000003,NV,Histo,40,Male,Lower Extremity\n"
    )
    kept, reasons = rules_applied(spark, data)
    assert kept == ["ISIC_0000003"]
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


def test_a_malformed_line_is_quarantined_alone_before_any_other_rule(spark):
    data = (
        b"lesion_id,image_id,dx,dx_type,age,sex,localization\n"
        b'HAM_0002431,ISIC_0032657,nv,histo,25.0,male,"lower extremity\n'
        b"HAM_0000002,ISIC_0000002,nv,histo,40,male,back\n"
        b"HAM_0000003,ISIC_0000003,nv,histo,,unknown,back\r\n"
    )
    kept, reasons = rules_applied(spark, data)
    assert kept == ["ISIC_0000002"] and len(reasons) == 2
    assert reasons["ISIC_0032657"] == (
        "malformed_row",
        "row 1 (line 2): a quoted field never closes on its line: "
        'HAM_0002431,ISIC_0032657,nv,histo,25.0,male,"lower extremity',
    )
    assert reasons["ISIC_0000003"][0] == "missing_age"


def test_real_metadata_with_one_unclosed_quote_quarantines_one_row_more(spark, real_metadata):
    path = require(HAM10000 / "HAM10000_metadata.csv")
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b",", b',"', 1)  # near the top: the second field opens a quote
    broken = parse_metadata(metadata_frame(spark, b"\n".join(lines), "m.csv"), "m.csv")
    kept, quarantined = apply_rules(broken, Rules())
    before_kept, _ = apply_rules(real_metadata, Rules())
    assert broken.count() == real_metadata.count() == 10015
    assert kept.count() == before_kept.count() - 1 == STUDY_KEPT - 1
    malformed = quarantined.where(F.col("reason") == "malformed_row").collect()
    assert [r.row for r in malformed] == [3] and malformed[0].detail.startswith("row 3 (line 4): a quoted")
    assert quarantined.count() == 10015 - STUDY_KEPT + 1
