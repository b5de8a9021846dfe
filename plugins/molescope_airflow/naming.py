"""Names that become S3 path segments: run slugs and batch ids."""

from __future__ import annotations

import re

#: Batch ids: letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64 characters.
#: This excludes '/', '..' and '=' so a batch id can never climb out of its prefix or fake a partition.
BATCH_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_BATCH_ID = re.compile(BATCH_ID_PATTERN)


def is_batch_id(name: str) -> bool:
    """Whether `name` can be a batch id (the pattern, and no `..`)."""
    return bool(_BATCH_ID.match(name)) and ".." not in name


def slug(value: str) -> str:
    """Turn an Airflow run id (`manual__2026-11-25T10:00:00+00:00`) into a path-safe segment."""
    return _UNSAFE.sub("_", value).strip("_.")
