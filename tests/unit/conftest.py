"""Fixtures of the unit tests that several modules share."""

from __future__ import annotations

import pytest

from tests.conftest import HAM10000, require


@pytest.fixture(scope="session")
def real_metadata(spark):
    """The real HAM10000 metadata CSV (10,015 rows), parsed as clean parses it, cached."""
    from molescope.intake.landed import read_metadata_csv
    from molescope.intake.metadata import parse_metadata

    path = require(HAM10000 / "HAM10000_metadata.csv")
    return parse_metadata(read_metadata_csv(spark, str(path)), str(path)).cache()
