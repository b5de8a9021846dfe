"""Where the tables live: `Table` (versions, manifests, name in a manifest, schema) and one constructor each.

`molescope.core.registry` holds the folder and file names.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import types as T

from molescope.core.registry import (
    IMAGES_DIR,
    MANIFEST_FILE,
    MANIFESTS_DIR,
    PREDICTIONS_DIR,
    QUARANTINE_DIR,
    SUMMARIES_DIR,
    TRAIN_SET_DIR,
    validate_batch_id,
)
from molescope.io import storage
from molescope.io.tables.schemas import (
    CURATED_SCHEMA,
    FEATURES_SCHEMA,
    PREDICTIONS_SCHEMA,
    QUARANTINE_SCHEMA,
    TRAIN_SET_SCHEMA,
)

BATCH_COLUMN = "batch_id"


@dataclass(frozen=True)
class Table:
    """A published table: where its versions and manifests live, its name in a manifest, and its schema.

    Partitioned by batch: versions under `<root>/batch_id=<id>/`, one manifest per batch in the folder
    `manifests` (`<manifests>/<id>.json`). Otherwise versions under `<root>/` and the manifest file
    `manifests`.
    """

    root: str
    name: str
    schema: T.StructType
    manifests: str
    partitioned: bool = True

    def folder(self, batch_id: str | None = None) -> str:
        """Where the versions of `batch_id` (or of the unpartitioned table) go."""
        if not self.partitioned:
            return self.root
        return storage.partition_uri(self.root, BATCH_COLUMN, validate_batch_id(batch_id or ""))

    def manifest_uri(self, batch_id: str | None = None) -> str:
        if not self.partitioned:
            return self.manifests
        return storage.join(self.manifests, f"{validate_batch_id(batch_id or '')}.json")


def curated_images(curated: str) -> Table:
    """Curated images, published with the quarantine by the batch summary `<curated>/summaries/<id>.json`."""
    return Table(storage.join(curated, IMAGES_DIR), IMAGES_DIR, CURATED_SCHEMA, _summaries(curated))


def curated_quarantine(curated: str) -> Table:
    return Table(
        storage.join(curated, QUARANTINE_DIR), QUARANTINE_DIR, QUARANTINE_SCHEMA, _summaries(curated)
    )


def _summaries(curated: str) -> str:
    return storage.join(curated, SUMMARIES_DIR)


def features_table(uri: str) -> Table:
    """A features table (`<features>/<backbone>/<weights dir>`): manifests in `<uri>/_manifests/`."""
    return Table(uri, "features", FEATURES_SCHEMA, storage.join(uri, MANIFESTS_DIR))


def run_table(uri: str, name: str, schema: T.StructType) -> Table:
    """A table of one run (train_set, a model's predictions): one manifest, `<uri>/_manifest.json`."""
    return Table(uri, name, schema, storage.join(uri, MANIFEST_FILE), partitioned=False)


def train_set(uri: str) -> Table:
    """A run's training set (`<run>/train_set/`): upsample writes it, train reads it."""
    return run_table(uri, TRAIN_SET_DIR, TRAIN_SET_SCHEMA)


def model_predictions(run: str, model: str) -> Table:
    """`<run>/predictions/<model>/`: what train predicted with one model (train writes, report reads)."""
    return run_table(storage.join(run, PREDICTIONS_DIR, model), PREDICTIONS_DIR, PREDICTIONS_SCHEMA)
