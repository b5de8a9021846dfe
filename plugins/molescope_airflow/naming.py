"""Run ids as S3 path segments (batch ids: molescope.core.registry.is_batch_id)."""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def slug(value: str) -> str:
    """Turn an Airflow run id (`manual__2026-11-25T10:00:00+00:00`) into a path-safe segment."""
    return _UNSAFE.sub("_", value).strip("_.")
