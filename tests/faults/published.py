"""What a warehouse publishes, read independently of molescope's readers: manifests (JSON) and the Parquet
files they name (pyarrow), on a local folder or through an S3 client. The fault tests compare these row sets
between an interrupted-and-rerun warehouse and an uninterrupted one."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

#: Columns that name where a row came from, not what it is (they differ between warehouses).
LOCATION_COLUMNS = ("source_path",)


class Warehouse:
    """A warehouse root read through `get` (bytes of a key relative to the root) and `keys` (listing)."""

    def __init__(self, get: Callable[[str], bytes], keys: Callable[[str], list[str]]):
        self.get = get
        self.keys = keys

    @classmethod
    def local(cls, root: Path) -> Warehouse:
        def keys(prefix: str) -> list[str]:
            base = root / prefix
            return (
                sorted(str(p.relative_to(root)) for p in base.rglob("*") if p.is_file())
                if base.exists()
                else []
            )

        return cls(lambda key: (root / key).read_bytes(), keys)

    @classmethod
    def s3(cls, client: Any, bucket: str) -> Warehouse:
        def keys(prefix: str) -> list[str]:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

        return cls(lambda key: client.get_object(Bucket=bucket, Key=key)["Body"].read(), keys)

    def json(self, key: str) -> Any:
        return json.loads(self.get(key))

    def rows(self, manifest: str, table_root: str, name: str) -> list[dict[str, Any]]:
        """Rows of table `name` (files relative to `table_root`) that the manifest `manifest` publishes."""
        files = self.json(manifest)["tables"][name]["files"]
        found = []
        for file in files:
            table = pq.read_table(io.BytesIO(self.get(f"{table_root}/{file}")))
            found.extend(table.to_pylist())
        return found

    def data_files(self, prefix: str) -> list[str]:
        """Every Parquet data file under `prefix`, published or not."""
        return [
            k
            for k in self.keys(prefix)
            if k.endswith(".parquet") and not k.rsplit("/", 1)[-1].startswith(".")
        ]

    def version_folders(self, prefix: str) -> set[str]:
        """Version folders (`.../v<time>-<hex>/`) holding data files under `prefix`."""
        return {k.rsplit("/", 1)[0] for k in self.data_files(prefix)}


def keyed(rows: list[dict[str, Any]], key: str = "image_id") -> dict[str, dict[str, Any]]:
    """{key: row without location columns}; AssertionError when a key repeats (a doubled row)."""
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        assert row[key] not in found, f"{key} {row[key]} appears twice"
        found[row[key]] = {c: v for c, v in row.items() if c not in LOCATION_COLUMNS}
    return found


def curated(warehouse: Warehouse, batch_id: str) -> tuple[dict, dict, dict]:
    """(curated rows, quarantine rows, summary) of a batch, keyed by image_id (quarantine: by position)."""
    manifest = f"curated/summaries/{batch_id}.json"
    images = keyed(warehouse.rows(manifest, "curated/images", "images"))
    quarantine = warehouse.rows(manifest, "curated/quarantine", "quarantine")
    rejected = {(q["image_id"], q["reason"]): q["detail"] for q in quarantine}
    assert len(rejected) == len(quarantine), "a quarantine row appears twice"
    return images, rejected, warehouse.json(manifest)


def features(warehouse: Warehouse, table: str, batch_id: str) -> dict[str, dict[str, Any]]:
    return keyed(warehouse.rows(f"{table}/_manifests/{batch_id}.json", table, "features"))


def predictions(warehouse: Warehouse, run: str, model: str) -> dict[str, dict[str, Any]]:
    table = f"{run}/predictions/{model}"
    return keyed(warehouse.rows(f"{table}/_manifest.json", table, "predictions"))


def train_set(warehouse: Warehouse, run: str) -> dict[str, dict[str, Any]]:
    """The published train set of a run (strategy `none`: one row per image)."""
    table = f"{run}/train_set"
    return keyed(warehouse.rows(f"{table}/_manifest.json", table, "train_set"))


def scores(warehouse: Warehouse, out: str) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], dict]:
    """(predictions keyed by image_id, quarantine rows, summary) that a score summary.json publishes."""
    manifest = f"{out}/summary.json"
    rows = keyed(warehouse.rows(manifest, f"{out}/predictions", "predictions"))
    return rows, warehouse.rows(manifest, f"{out}/quarantine", "quarantine"), warehouse.json(manifest)
