"""Clean stage: metadata rules, image checks with reason codes, split, idempotent partitioned outputs."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

from molescope.core.constants import CLASSES
from molescope.io import tables
from molescope.stages import clean
from tests.conftest import HAM10000, require

# Spark's Python workers must run this interpreter (the one with molescope, pandas and Pillow installed).
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

#: The study's 9,948 rows less two images whose bytes another image_id has (ISIC_0024366 = ISIC_0029861 and
#: ISIC_0024777 = ISIC_0029938 in the 200x150 copy; all four nv).
STUDY_KEPT = 9946
STUDY_PER_CLASS = {"nv": 6648, "mel": 1111, "bkl": 1089, "bcc": 514, "akiec": 327, "vasc": 142, "df": 115}
HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization,dataset,extra_note"
GOOD = (64, 48)
EXIF_ORIENTATION = 0x0112
ROTATE_90_CW = 6


_SHADES = itertools.count(1)


def jpeg(size=GOOD, mode="RGB", **save_args) -> bytes:
    """A JPEG whose bytes no other call returns (identical bytes are content duplicates)."""
    shade = next(_SHADES) % 256
    color = {"L": shade, "CMYK": (shade, 0, 0, 0)}.get(mode, (shade, 255 - shade, 0))
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="JPEG", **save_args)
    return buffer.getvalue()


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", GOOD).save(buffer, format="PNG")
    return buffer.getvalue()


def rotated() -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_90_CW
    return jpeg(exif=exif)


def image_id(n: int) -> str:
    return f"ISIC_{n:07d}"


def lesion_id(n: int) -> str:
    return f"HAM_{n:07d}"


#: (image number, lesion field, dx, age, sex, file content or None, expected reason or None)
BATCH_ONE = [
    (1, lesion_id(1), "nv", "45.0", "male", jpeg(), None),
    (2, lesion_id(1), "nv", "45", "male", jpeg(mode="L"), None),
    (3, lesion_id(2), "mel", "60.0", "female", jpeg(mode="CMYK"), None),
    (4, lesion_id(3), "bkl", "70.0", "female", rotated(), None),
    (5, lesion_id(4), "bcc", "50.0", "male", jpeg(), None),
    (6, lesion_id(5), "nv", "", "male", jpeg(), "missing_age"),
    (7, lesion_id(6), "nv", "30.0", "unknown", jpeg(), "unknown_sex"),
    (8, lesion_id(7), "xyz", "30.0", "male", jpeg(), "unknown_dx"),
    (9, "", "nv", "30.0", "male", jpeg(), "missing_lesion_id"),
    (10, "LES-10", "nv", "30.0", "male", jpeg(), "malformed_lesion_id"),
    (11, lesion_id(11), "nv", "130.0", "male", jpeg(), "age_out_of_range"),
    (12, lesion_id(12), "nv", "old", "male", jpeg(), "invalid_age"),
    (13, lesion_id(13), "nv", "40.0", "male", b"", "image_empty"),
    (14, lesion_id(14), "nv", "40.0", "male", jpeg()[:150], "image_corrupt"),
    (15, lesion_id(15), "nv", "40.0", "male", png(), "image_not_jpeg"),
    (16, lesion_id(16), "nv", "40.0", "male", jpeg(size=(16, 12)), "image_too_small"),
    (17, lesion_id(17), "nv", "40.0", "male", None, "image_missing"),
    (18, lesion_id(18), "vasc", "40.0", "female", jpeg(), None),
]
MALFORMED_IMAGE_ID = "ISIC-bad"
ORPHAN = image_id(99)


def write_batch(folder: Path, rows: list[tuple], extra_lines: list[str] = (), crlf_bom: bool = False) -> None:
    """A batch in HAM10000 layout: metadata CSV at the top, images split over two part folders."""
    parts = [folder / "HAM10000_images_part_1", folder / "HAM10000_images_part_2"]
    for part in parts:
        part.mkdir(parents=True, exist_ok=True)
    lines = [HEADER]
    for n, lesion, dx, age, sex, content, _ in rows:
        lines.append(f"{lesion},{image_id(n)},{dx},histo,{age},{sex},back,vidir_modern,note{n}")
        if content is not None:
            (parts[n % 2] / f"{image_id(n)}.jpg").write_bytes(content)
    lines.extend(extra_lines)
    newline = "\r\n" if crlf_bom else "\n"
    text = newline.join(lines) + newline
    (folder / "HAM10000_metadata.csv").write_bytes(("\ufeff" if crlf_bom else "").encode() + text.encode())


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    """Batch b1 with one row or file per bad-input kind; batch b2 that overlaps b1."""
    root = tmp_path_factory.mktemp("clean")
    b1 = root / "landing" / "b1"
    extra = [
        f"{lesion_id(20)},{MALFORMED_IMAGE_ID},nv,histo,40.0,male,back,vidir_modern,x",
        f"{lesion_id(21)},{image_id(1)},nv,histo,40.0,male,back,vidir_modern,duplicate row",
    ]
    write_batch(b1, BATCH_ONE, extra_lines=extra, crlf_bom=True)
    (b1 / "HAM10000_images_part_1" / f"{ORPHAN}.jpg").write_bytes(jpeg())
    (b1 / "nested" / "deeper").mkdir(parents=True)
    (b1 / "nested" / "deeper" / f"{image_id(5)}.jpg").write_bytes(jpeg())  # same stem as a part_* file
    (b1 / "README.txt").write_text("not an input")
    b2 = root / "landing" / "b2"
    b2_rows = [
        (1, lesion_id(1), "nv", "45.0", "male", jpeg(), None),  # curated in b1 already
        (30, lesion_id(1), "nv", "45.0", "male", jpeg(), None),  # new image of a b1 lesion
        (31, lesion_id(31), "df", "50.0", "female", jpeg(), None),
    ]
    write_batch(b2, b2_rows)
    return root, b1, b2


def settings(root: Path, batch: Path, batch_id: str, **overrides) -> clean.Settings:
    return clean.Settings(
        batch_dir=str(batch), batch_id=batch_id, curated=str(root / "curated"), figures=False, **overrides
    )


def read_partition(spark, root: Path, table: str, batch_id: str):
    curated = str(root / "curated")
    published = tables.curated_images(curated) if table == "images" else tables.curated_quarantine(curated)
    return tables.read_table(spark, published, [batch_id])


@pytest.fixture(scope="module")
def first_run(spark, batches):
    root, b1, _ = batches
    summary = clean.run(spark, dataclasses.replace(settings(root, b1, "b1"), figures=True))
    curated = {r.image_id: r for r in read_partition(spark, root, "images", "b1").collect()}
    quarantine = read_partition(spark, root, "quarantine", "b1").collect()
    return summary, curated, quarantine


def test_good_rows_are_curated_with_normalised_sizes(first_run):
    summary, curated, _ = first_run
    expected = {image_id(n) for n, *_, reason in BATCH_ONE if reason is None}
    assert set(curated) == expected
    assert summary["curated"] == len(expected)
    assert (curated[image_id(4)].width, curated[image_id(4)].height) == (GOOD[1], GOOD[0])  # EXIF rotated
    assert (curated[image_id(3)].width, curated[image_id(3)].height) == GOOD  # CMYK kept
    row = curated[image_id(2)]
    assert row.age == 45.0
    assert row.dataset == "vidir_modern"
    assert row.image.startswith(b"\xff\xd8\xff")
    assert len(row.sha256) == 64
    assert row.source_path.endswith(f"{image_id(2)}.jpg")


@pytest.mark.parametrize(
    ("image", "reason"),
    [(image_id(n), reason) for n, *_, reason in BATCH_ONE if reason is not None]
    + [
        (MALFORMED_IMAGE_ID, "malformed_image_id"),
        (image_id(1), "duplicate_image_id"),
        (ORPHAN, "orphan_image"),
        (image_id(5), "duplicate_image_file"),
    ],
)
def test_each_bad_input_is_quarantined_with_its_reason(first_run, image, reason):
    summary, curated, quarantine = first_run
    matches = [q for q in quarantine if q.image_id == image and q.reason == reason]
    assert len(matches) == 1, [(q.image_id, q.reason) for q in quarantine]
    assert summary["quarantined_by_reason"][reason] >= 1
    assert summary["rows_in"] == len(curated) + len(quarantine)  # nothing lost
    assert matches[0].detail
    assert matches[0].batch_id == "b1"


def test_nothing_is_lost(first_run):
    summary, curated, quarantine = first_run
    rows_in = len(BATCH_ONE) + 2 + 2  # CSV rows + extra CSV lines + orphan file + duplicate file
    assert summary["rows_in"] == rows_in == len(curated) + len(quarantine)
    assert summary["invariant"]["holds"] is True
    assert summary["quarantined"] == len(quarantine)
    assert sum(summary["quarantined_by_reason"].values()) == len(quarantine)
    assert summary["ignored_files"] == 1
    assert summary["per_class"]["nv"] == 2
    assert set(summary["per_class"]) == set(CLASSES)


def test_duplicate_points_to_the_first_copy(first_run):
    _, curated, quarantine = first_run
    duplicate = next(q for q in quarantine if q.reason == "duplicate_image_id")
    assert duplicate.lesion_id == lesion_id(21)
    assert "repeats row 1" in duplicate.detail
    assert curated[image_id(1)].lesion_id == lesion_id(1)


def test_summary_and_figures_are_written(first_run, batches):
    root, _, _ = batches
    summary, _, _ = first_run
    on_disk = json.loads((root / "curated" / "summaries" / "b1.json").read_text())
    assert on_disk["rows_in"] == summary["rows_in"]
    figures = sorted(p.name for p in (root / "curated" / "summaries" / "b1").glob("*.png"))
    assert "batch_class_distribution.png" in figures
    assert "cumulative_age.png" in figures
    assert all(Image.open(root / "curated" / "summaries" / "b1" / name).format == "PNG" for name in figures)


def test_second_batch_rerun_and_split_stability(spark, first_run, batches):
    root, b1, b2 = batches
    _, curated_b1, _ = first_run
    summary_b2 = clean.run(spark, settings(root, b2, "b2"))
    assert summary_b2["curated"] == 2
    quarantine_b2 = read_partition(spark, root, "quarantine", "b2").collect()
    assert [(q.image_id, q.reason) for q in quarantine_b2] == [(image_id(1), "duplicate_image_id")]
    assert "batch_id=b1" in quarantine_b2[0].detail
    curated_b2 = {r.image_id: r for r in read_partition(spark, root, "images", "b2").collect()}
    assert curated_b2[image_id(30)].split == curated_b1[image_id(1)].split  # same lesion, same side

    rerun = clean.run(spark, settings(root, b1, "b1"))
    again = read_partition(spark, root, "images", "b1").collect()
    assert rerun["curated"] == len(again) == len(curated_b1)
    assert {r.image_id: (r.split, r.sha256) for r in again} == {
        k: (r.split, r.sha256) for k, r in curated_b1.items()
    }
    assert read_partition(spark, root, "quarantine", "b1").count() == rerun["quarantined"]
    assert read_partition(spark, root, "images", "b2").count() == 2  # the other partition is untouched


def test_batch_needs_exactly_one_csv(spark, tmp_path):
    (tmp_path / "a.csv").write_text(HEADER + "\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.csv").write_text(HEADER + "\n")
    with pytest.raises(ValueError, match="exactly one metadata"):
        clean.run(spark, settings(tmp_path, tmp_path, "two-csvs"))


@pytest.mark.slow
def test_full_real_batch(spark, tmp_path):
    batch = require(HAM10000)
    summary = clean.run(spark, settings(tmp_path, batch, "ham10000"))
    assert summary["curated"] == STUDY_KEPT
    assert summary["per_class"] == STUDY_PER_CLASS
    assert summary["rows_in"] == 10015 == summary["curated"] + summary["quarantined"]
    assert set(summary["quarantined_by_reason"]) == {"missing_age", "unknown_sex", "duplicate_image_content"}
    assert summary["quarantined_by_reason"]["duplicate_image_content"] == 2


def test_full_real_batch_with_one_unclosed_quote_loses_one_row(spark, tmp_path):
    """A stray quote near the top of the real export costs its own row, not the rows after it: one row
    more quarantined (`malformed_row`) than `test_full_real_batch`, its image not an orphan, the rest
    curated as there."""
    source = require(HAM10000)
    batch = tmp_path / "landing" / "ham10000"
    shutil.copytree(source / "images", batch / "images")
    lines = (source / "HAM10000_metadata.csv").read_bytes().split(b"\n")
    assert lines[3].startswith(b"HAM_0002730,ISIC_0026769,bkl,") and lines[3].endswith(b",scalp")
    lines[3] = lines[3].removesuffix(b"scalp") + b'"scalp'  # line 4: a quote opened, never closed
    (batch / "HAM10000_metadata.csv").write_bytes(b"\n".join(lines))
    summary = clean.run(spark, settings(tmp_path, batch, "ham10000"))
    assert (
        summary["rows_in"] == summary["metadata_rows"] == 10015 == summary["curated"] + summary["quarantined"]
    )
    assert summary["curated"] == STUDY_KEPT - 1
    assert summary["per_class"] == STUDY_PER_CLASS | {"bkl": STUDY_PER_CLASS["bkl"] - 1}
    by_reason = summary["quarantined_by_reason"]
    assert set(by_reason) == {"malformed_row", "missing_age", "unknown_sex", "duplicate_image_content"}
    assert by_reason["malformed_row"] == 1 and by_reason["duplicate_image_content"] == 2
    malformed = read_partition(spark, tmp_path, "quarantine", "ham10000").where("reason = 'malformed_row'")
    found = [(r.image_id, r.detail[:16]) for r in malformed.collect()]
    assert found == [("ISIC_0026769", "row 3 (line 4): ")]


STRICT_HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization"


def strict_line(n: int, dx_type="histo", sex="male", localization="back", extra="") -> str:
    return f"{lesion_id(n)},{image_id(n)},nv,{dx_type},40.0,{sex},{localization}{extra}"


@pytest.fixture(scope="module")
def strict_run(spark, tmp_path_factory):
    """A batch in a folder named like a glob, breaking each strict rule once, cleaned once."""
    root = tmp_path_factory.mktemp("strict")
    batch = root / "landing" / "new batch[1]"
    (batch / "_staging").mkdir(parents=True)
    same = jpeg()
    files = {n: jpeg() for n in range(40, 48)} | {50: same, 51: same}
    for n, content in files.items():
        (batch / f"{image_id(n)}.jpg").write_bytes(content)
    (batch / "_staging" / f"{image_id(60)}.jpg").write_bytes(jpeg())  # hidden from Spark's readers
    (batch / f"{image_id(61)}.jpg").write_bytes(b"")  # zero bytes, named by no row
    lines = [
        STRICT_HEADER,
        strict_line(40),
        strict_line(41, extra=",an unquoted, comma"),  # 9 fields
        f"{lesion_id(42)},{image_id(42)},nv,histo,40.0,male",  # 6 fields
        strict_line(43, sex="M"),
        strict_line(44, dx_type="biopsy"),
        strict_line(45, localization="elbow"),
        strict_line(46, sex=" Female "),  # trimmed and lower-cased: kept
        strict_line(50),
        strict_line(51),
    ]
    data = (
        ("\n".join(lines) + "\n").encode()
        + strict_line(47, localization="r\xfccken").encode("latin-1")
        + b"\n"
    )
    (batch / "metadata.csv").write_bytes(data)
    summary = clean.run(spark, settings(root, batch, "strict"))
    quarantine = {q.image_id: q for q in read_partition(spark, root, "quarantine", "strict").collect()}
    curated = {r.image_id: r for r in read_partition(spark, root, "images", "strict").collect()}
    return summary, curated, quarantine


@pytest.mark.parametrize(
    ("number", "reason", "detail"),
    [
        (41, "wrong_field_count", "row 2 (line 3): 9 fields, the header has 7"),
        (42, "wrong_field_count", "row 3 (line 4): 6 fields, the header has 7"),
        (43, "invalid_sex", "row 4: sex='m' not in female, male, unknown"),
        (44, "invalid_dx_type", "row 5: dx_type='biopsy' not in histo, follow_up, consensus, confocal"),
        (45, "invalid_localization", "row 6: localization='elbow' not in "),
        (47, "undecodable_row", "row 10 (line 11): bytes that are not UTF-8 in localization"),
        (51, "duplicate_image_content", f"same bytes as {image_id(50)} in this batch"),
        (60, "hidden_image_file", "starts with '.' or '_'"),
        (61, "orphan_image", "no metadata row names this image"),
    ],
)
def test_strict_rules_quarantine_with_their_reason(strict_run, number, reason, detail):
    summary, curated, quarantine = strict_run
    assert image_id(number) not in curated
    assert (quarantine[image_id(number)].reason, detail in quarantine[image_id(number)].detail) == (
        reason,
        True,
    )
    assert summary["rows_in"] == len(curated) + len(quarantine)


def test_strict_batch_accounts_for_every_listed_file(strict_run):
    summary, curated, quarantine = strict_run
    assert sorted(curated) == [image_id(40), image_id(46), image_id(50)]
    assert curated[image_id(46)].sex == "female"
    # 10 metadata rows + 2 files no row claims (the hidden one and the zero-byte orphan).
    assert summary["rows_in"] == 10 + 2
    assert (summary["listed_files"], summary["image_files"], summary["empty_image_files"]) == (13, 12, 1)
    assert summary["quarantined"] == len(quarantine) == 9
    assert summary["invariant"]["holds"]


def test_empty_csv_is_reported_as_empty(spark, tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "metadata.csv").write_bytes(b"")
    with pytest.raises(ValueError, match=r"metadata CSV .*metadata\.csv is empty"):
        clean.run(spark, settings(tmp_path, tmp_path / "b", "empty"))


def test_a_failed_rerun_leaves_the_published_batch(spark, first_run, batches, monkeypatch):
    root, b1, _ = batches
    _, curated, quarantine = first_run
    before = json.loads((root / "curated" / "summaries" / "b1.json").read_text())

    def refuse(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(clean.tables, "publish", refuse)
    with pytest.raises(OSError, match="No space"):
        clean.run(spark, settings(root, b1, "b1"))
    assert json.loads((root / "curated" / "summaries" / "b1.json").read_text()) == before
    assert read_partition(spark, root, "images", "b1").count() == len(curated)
    assert read_partition(spark, root, "quarantine", "b1").count() == len(quarantine)
