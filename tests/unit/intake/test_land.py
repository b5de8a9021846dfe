"""molescope.intake.land: a local batch folder (real HAM10000 JPEGs + their metadata rows) copied to a real
S3 server on this machine (SeaweedFS `weed mini` on 127.0.0.1, private to the module).

What it copies (the CSV and JPEGs anywhere below the source, relative paths kept, nothing else), what it
refuses (no folder, no CSV, a destination that is not S3) before sending anything, that a re-run only sends
what is missing or changed, and that the CSV, the batch's arrival marker, is sent only after every image.
"""

from __future__ import annotations

import csv
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from boto3.exceptions import S3UploadFailedError

from molescope.intake import land
from tests.conftest import HAM10000, require
from tests.faults.s3server import SeaweedFS

BUCKET = "landing-tests"
IMAGES = ("ISIC_0024306", "ISIC_0024307", "ISIC_0024308", "ISIC_0024309", "ISIC_0024310")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[SeaweedFS]:
    s3 = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"), bucket=BUCKET)
    s3.start()
    yield s3
    s3.stop()


@pytest.fixture
def s3_env(server, monkeypatch) -> SeaweedFS:
    """land's S3 client (molescope.io.s3) reaches the test server through the environment, as in a job."""
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    return server


@pytest.fixture
def source(tmp_path) -> Path:
    """A batch as it arrives: the metadata CSV on top, JPEGs in two part folders (one with an upper-case
    suffix), plus files that are not part of a batch."""
    images = require(HAM10000) / "images"
    folder = tmp_path / "batch"
    for index, image_id in enumerate(IMAGES):
        part = folder / f"HAM10000_images_part_{index % 2 + 1}"
        part.mkdir(parents=True, exist_ok=True)
        suffix = ".JPG" if index == 4 else ".jpg"
        shutil.copyfile(images / f"{image_id}.jpg", part / f"{image_id}{suffix}")
    with (HAM10000 / "HAM10000_metadata.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [row for row in reader if row["image_id"] in IMAGES]
        fields = reader.fieldnames
    with (folder / "HAM10000_metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    (folder / "README.txt").write_text("not part of the batch\n")
    (folder / "HAM10000_images_part_1" / ".DS_Store").write_bytes(b"\0\0")
    return folder


def batch_files(folder: Path) -> dict[str, Path]:
    """Relative path -> file of every CSV and JPEG below `folder` (what the landing zone should hold)."""
    return {
        p.relative_to(folder).as_posix(): p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in {".csv", ".jpg", ".jpeg"}
    }


def landed(server: SeaweedFS, prefix: str) -> dict[str, bytes]:
    client = server.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=server.bucket, Prefix=prefix + "/")
    keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    return {
        key.removeprefix(prefix + "/"): client.get_object(Bucket=server.bucket, Key=key)["Body"].read()
        for key in keys
    }


def run(source: Path, dest: str) -> dict:
    return land.run(land.Settings(source=source, dest=dest))


def test_copies_the_csv_and_the_jpegs_with_their_relative_paths(s3_env, source, caplog):
    caplog.set_level(logging.INFO, logger="molescope.core.progress")
    summary = run(source, f"s3a://{BUCKET}/landing/2026-11-25")
    expected = batch_files(source)
    assert len(expected) == len(IMAGES) + 1
    assert summary == {
        "dest": f"s3a://{BUCKET}/landing/2026-11-25",
        "files": len(expected),
        "uploaded": len(expected),
        "already_present": 0,
        "other_files_left_out": 2,  # README.txt and .DS_Store
    }
    objects = landed(s3_env, "landing/2026-11-25")
    assert sorted(objects) == sorted(expected)
    assert "HAM10000_images_part_1/ISIC_0024310.JPG" in objects  # the suffix is matched case-insensitively
    for relative, path in expected.items():
        assert objects[relative] == path.read_bytes(), relative
    # The progress of the upload ends with every file counted.
    lines = [r.getMessage() for r in caplog.records if r.name == "molescope.core.progress"]
    assert lines[-1].startswith(f"land: {len(expected)}/{len(expected)} done, ")


def test_a_rerun_sends_only_what_is_missing_or_changed(s3_env, source):
    dest = f"s3a://{BUCKET}/landing/rerun/"  # a trailing slash names the same prefix
    first = run(source, dest)
    assert first["uploaded"] == first["files"] == len(IMAGES) + 1
    again = run(source, dest)
    assert (again["uploaded"], again["already_present"]) == (0, first["files"])
    # An interrupted run: one image and the CSV never arrived. Only those two are sent.
    client = s3_env.client()
    for key in ("HAM10000_images_part_2/ISIC_0024307.jpg", "HAM10000_metadata.csv"):
        client.delete_object(Bucket=BUCKET, Key=f"landing/rerun/{key}")
    resumed = run(source, dest)
    assert (resumed["uploaded"], resumed["already_present"]) == (2, first["files"] - 2)
    # A local file whose size changed is sent again.
    csv_path = source / "HAM10000_metadata.csv"
    csv_path.write_text(csv_path.read_text() + "HAM_0000000,ISIC_0000000,nv,histo,40.0,male,back\n")
    changed = run(source, dest)
    assert changed["uploaded"] == 1
    objects = landed(s3_env, "landing/rerun")
    assert sorted(objects) == sorted(batch_files(source))
    assert objects["HAM10000_metadata.csv"] == csv_path.read_bytes()


def test_refuses_a_folder_without_metadata_csv_before_sending_anything(s3_env, source):
    (source / "HAM10000_metadata.csv").unlink()
    with pytest.raises(ValueError, match=re.escape(f"no metadata CSV below {source}")):
        run(source, f"s3a://{BUCKET}/landing/no-csv")
    assert landed(s3_env, "landing/no-csv") == {}


def test_refuses_a_missing_folder(s3_env, tmp_path):
    with pytest.raises(FileNotFoundError, match="batch folder not found"):
        run(tmp_path / "missing", f"s3a://{BUCKET}/landing/missing")
    assert landed(s3_env, "landing/missing") == {}


def test_refuses_a_destination_that_is_not_s3(s3_env, source, tmp_path):
    with pytest.raises(ValueError, match="not an S3 URI"):
        run(source, str(tmp_path / "landing"))
    assert not (tmp_path / "landing").exists()


def test_the_csv_is_not_sent_when_an_image_cannot_be(s3_env, source):
    """The CSV tells the pipeline's sensor that the batch is complete: it must not land when an image did
    not. Here the server refuses one image's key (longer than S3's 1024 bytes)."""
    deep = source / "/".join(["d" * 200] * 6)
    deep.mkdir(parents=True)
    shutil.copyfile(source / "HAM10000_images_part_1" / "ISIC_0024306.jpg", deep / "ISIC_0024306.jpg")
    with pytest.raises(S3UploadFailedError, match="KeyTooLongError"):
        run(source, f"s3a://{BUCKET}/landing/incomplete")
    objects = landed(s3_env, "landing/incomplete")
    assert "HAM10000_metadata.csv" not in objects
    assert set(objects) <= set(batch_files(source))


def test_batch_files_lists_batch_files_and_counts_the_others(source):
    files, skipped = land.batch_files(source)
    assert files == sorted(batch_files(source).values())
    assert skipped == 2
