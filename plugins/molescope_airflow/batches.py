"""Which batch a run ingests and which curated batches its training sees.

A run's batch is the `batch_id` param when given, else its logical date (`YYYY-MM-DD`): scheduled and
backfill runs ingest `landing/<logical date>/`, manual runs can name any landed batch. Training uses the
curated batches selected by the `training_batches` param (default: every batch up to and including the
run's batch). Pure functions here; the only I/O helper (`curated_batches`) imports the S3 hook lazily.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date
from urllib.parse import urlparse

from molescope.core.registry import BATCH_ID_PATTERN, SUMMARIES_DIR, is_batch_id

#: `training_batches` choices (the trigger form shows them as a drop-down).
UP_TO_BATCH = "up_to_batch"
THIS_BATCH = "this_batch"
DATE_RANGE = "range"
ALL = "all"
TRAINING_BATCHES = [UP_TO_BATCH, THIS_BATCH, DATE_RANGE, ALL]

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}")


class BatchSelectionError(ValueError):
    """The run's parameters do not name a batch, or select no curated batch."""


def batch_of(batch_id: str | None, ds: str | None) -> str:
    """The batch a run ingests: the explicit `batch_id` param, else the run's logical date (`ds`)."""
    batch = (batch_id or "").strip() or (ds or "").strip()
    if not batch:
        raise BatchSelectionError(
            "no batch to ingest: this run has no logical date and the batch_id parameter is empty; "
            "trigger with a logical date or set batch_id (a folder under landing/)"
        )
    if not is_batch_id(batch):
        raise BatchSelectionError(f"invalid batch id {batch!r}: must match {BATCH_ID_PATTERN}")
    return batch


def _sort_key(batch: str) -> tuple[int, str]:
    # Date-named batches first, chronologically (ISO dates sort as strings); other ids after, by name.
    return (0 if _DATE_RE.match(batch) else 1, batch)


def select_batches(
    available: Iterable[str],
    batch: str,
    mode: str = UP_TO_BATCH,
    start: str | None = None,
    end: str | None = None,
) -> list[str]:
    """The curated batches training uses, sorted (dates chronologically), always including `batch`.

    - `up_to_batch`: every batch whose id sorts at or before `batch` (for date ids: every earlier day);
      non-date ids sort after dates, by name.
    - `this_batch`: `batch` only.
    - `range`: batches whose id is a date within [`start`, `end`] (either bound may be empty), plus `batch`.
    - `all`: every curated batch.
    """
    pool = set(available) | {batch}
    if mode == THIS_BATCH:
        chosen = {batch}
    elif mode == ALL:
        chosen = pool
    elif mode == UP_TO_BATCH:
        chosen = {b for b in pool if _sort_key(b) <= _sort_key(batch)}
    elif mode == DATE_RANGE:
        lo, hi = _as_date(start, "range_start"), _as_date(end, "range_end")
        if lo and hi and lo > hi:
            raise BatchSelectionError(f"range_start {lo} is after range_end {hi}")
        chosen = {batch}
        for b in pool:
            if _DATE_RE.match(b):
                day = b[:10]
                if (not lo or day >= lo) and (not hi or day <= hi):
                    chosen.add(b)
    else:
        raise BatchSelectionError(f"unknown training_batches {mode!r}; expected one of {TRAINING_BATCHES}")
    return sorted(chosen, key=_sort_key)


def _as_date(value: str | None, name: str) -> str | None:
    if not value:
        return None
    try:
        return date.fromisoformat(str(value)[:10]).isoformat()
    except ValueError as exc:
        raise BatchSelectionError(f"{name} {value!r} is not a date (YYYY-MM-DD)") from exc


def curated_batches(curated_uri: str, s3_conn_id: str) -> list[str]:
    """Batch ids that have a clean summary (`<curated>/summaries/<id>.json`) in the warehouse."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    parsed = urlparse(curated_uri)
    prefix = f"{parsed.path.strip('/')}/{SUMMARIES_DIR}/"
    keys = S3Hook(aws_conn_id=s3_conn_id).list_keys(bucket_name=parsed.netloc, prefix=prefix) or []
    names = (key[len(prefix) :] for key in keys)
    return sorted({n[: -len(".json")] for n in names if n.endswith(".json") and "/" not in n})
