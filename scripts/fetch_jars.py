"""Fetch the S3A jars (hadoop-aws, AWS SDK bundle, spark-hadoop-cloud) once into a local folder.

Idempotent: a jar whose SHA-1 matches Maven Central's is kept; a partial download never lands under its final
name. Jobs put these files on the driver's and executors' classpath (molescope.core.sparkconf); nothing is
resolved at task start.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))

from molescope.core.sparkconf import JAR_COORDINATES, jar_filename, jar_url

CHUNK = 1 << 20


def sha1_of(path: Path) -> str:
    digest = hashlib.sha1()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def expected_sha1(url: str) -> str:
    with urllib.request.urlopen(url + ".sha1", timeout=60) as response:
        return response.read().decode().split()[0].strip()


def fetch(coordinate: str, dest_dir: Path, repository: str) -> Path:
    url = jar_url(coordinate, repository)
    target = dest_dir / jar_filename(coordinate)
    # The checksum Maven published is kept beside the jar, so a warm re-run needs no network.
    recorded = target.with_suffix(".jar.sha1")
    if target.exists() and recorded.exists() and sha1_of(target) == recorded.read_text().strip():
        print(f"jar ok      {target.name}")
        return target
    want = expected_sha1(url)
    if target.exists() and sha1_of(target) == want:
        recorded.write_text(want + "\n")
        print(f"jar ok      {target.name}")
        return target
    partial = target.with_suffix(".jar.part")
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=120) as response, partial.open("wb") as out:
        while chunk := response.read(CHUNK):
            out.write(chunk)
    got = sha1_of(partial)
    if got != want:
        partial.unlink()
        raise SystemExit(f"checksum mismatch for {url}: got {got}, Maven says {want}")
    partial.replace(target)
    recorded.write_text(want + "\n")
    size_mb = target.stat().st_size / 1e6
    print(f"jar fetched {target.name} ({size_mb:.1f} MB in {time.monotonic() - started:.1f}s)")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dest", type=Path, help="folder to hold the jars")
    parser.add_argument("--repository", default="https://repo1.maven.org/maven2")
    args = parser.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    for coordinate in JAR_COORDINATES:
        fetch(coordinate, args.dest, args.repository)


if __name__ == "__main__":
    main()
