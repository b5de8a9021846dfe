"""Pending-batch bookkeeping of scoring: which folders of a scoring root a model has not scored yet.

Every immediate subfolder of the scoring root is a batch named after the folder. Folders whose names are not
valid batch ids are ignored (with the reason); files directly under the root are no batches, and a root that
does not exist (on S3: an empty one) holds none. A batch is scored once its
`<out>/<batch_id>/<model run id>/<model>/summary.json` exists: the score stage writes it last, so a batch that
failed half-way is pending again.
"""

from __future__ import annotations

import logging
from typing import Any

from pyspark.sql import SparkSession

from molescope.core.errors import MolescopeError
from molescope.core.registry import validate_batch_id
from molescope.io import storage

log = logging.getLogger(__name__)


def batch_id_problem(name: str) -> str | None:
    """Why the folder `name` cannot be a batch id (validate_batch_id's message), None when it can."""
    try:
        validate_batch_id(name)
    except ValueError as error:
        return str(error)
    return None


def pending_batches(folders: list[str], scored: set[str]) -> tuple[list[str], list[str], dict[str, str]]:
    """(batches to score, batches already scored, {ignored folder: reason}) of the folders of a scoring root.

    Folders whose names are not valid batch ids are ignored; the batch lists are sorted.
    """
    ignored = {name: problem for name in folders if (problem := batch_id_problem(name))}
    batches = sorted(set(folders) - set(ignored))
    return (
        [b for b in batches if b not in scored],
        [b for b in batches if b in scored],
        dict(sorted(ignored.items())),
    )


def list_folders(spark: SparkSession, root: str) -> list[str]:
    """Names of the immediate subfolders of `root` (one listing; files are skipped)."""
    entries = storage.list_dir(spark, root)
    if not entries and not storage.exists(spark, root):
        log.warning("scoring root %s does not exist (or is empty): no batch to score", root)
    return sorted(f.name for f in entries if f.is_dir)


def error_message(error: Exception, limit: int = 500) -> str:
    """`<type>: <message>` on one line, cut at `limit` characters (Java errors carry their stack trace)."""
    text = f"{type(error).__name__}: {' '.join(str(error).split())}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class PendingBatchesFailed(MolescopeError, RuntimeError):
    """Some pending batches failed (the others were scored); `summary` is the job summary."""

    def __init__(self, summary: dict[str, Any]) -> None:
        failed = summary["failed"]
        listed = "; ".join(f"{batch}: {message}" for batch, message in failed.items())
        super().__init__(f"{len(failed)} pending batch(es) failed under {summary['scoring_root']}: {listed}")
        self.summary = summary
