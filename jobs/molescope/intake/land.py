"""Upload a local batch folder (metadata CSV + images) to the S3 landing zone, as new batches arrive.

`molescope land --source ~/HAM10000 --dest s3a://molescope/landing/2026-11-25` copies the metadata CSV(s)
and JPEGs found anywhere below the source, keeping relative paths. Existing objects of the same size are
skipped, so a re-run after an interruption only sends what is missing.

The metadata CSV is uploaded last, after every image: the pipeline's `wait_for_batch` sensor treats
`landing/<batch>/*.csv` as the batch's arrival, so a batch must be complete when its CSV appears.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from molescope.core.progress import Progress
from molescope.core.settings import CliSettings, option
from molescope.io import s3

log = logging.getLogger(__name__)

#: Files that make up a batch; anything else below the source folder is left out (and counted).
BATCH_SUFFIXES = frozenset({".csv", ".jpg", ".jpeg"})
UPLOAD_THREADS = 8


@dataclass(frozen=True)
class Settings(CliSettings):
    source: Path = option(type=Path, help="local folder holding the batch")
    dest: str = option(help="landing URI, s3a://bucket/landing/<batch_id>")


def batch_files(source: Path) -> tuple[list[Path], int]:
    """Files of the batch below `source`, and how many other files were left out."""
    if not source.is_dir():
        raise FileNotFoundError(f"batch folder not found: {source}")
    files, skipped = [], 0
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        if path.suffix.lower() in BATCH_SUFFIXES:
            files.append(path)
        else:
            skipped += 1
    return files, skipped


def run(settings: Settings) -> dict:
    bucket, prefix = s3.split_uri(settings.dest)
    files, skipped = batch_files(settings.source)
    if not any(f.suffix.lower() == ".csv" for f in files):
        raise ValueError(f"no metadata CSV below {settings.source}")
    client = s3.client()
    existing = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        existing.update({obj["Key"]: obj["Size"] for obj in page.get("Contents", [])})
    progress = Progress("land", total=len(files))

    def upload(path: Path) -> bool:
        key = f"{prefix}/{path.relative_to(settings.source).as_posix()}"
        if existing.get(key) == path.stat().st_size:
            progress.add(1)
            return False
        client.upload_file(str(path), bucket, key)
        progress.add(1)
        return True

    images = [f for f in files if f.suffix.lower() != ".csv"]
    metadata = [f for f in files if f.suffix.lower() == ".csv"]
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        uploaded = sum(pool.map(upload, images))
    # Only now: the CSV is the arrival marker the sensor waits for.
    uploaded += sum(upload(path) for path in metadata)
    progress.finish()
    return {
        "dest": settings.dest,
        "files": len(files),
        "uploaded": uploaded,
        "already_present": len(files) - uploaded,
        "other_files_left_out": skipped,
    }
