"""molescope.features.image_stats: the drift summaries computed in Spark equal the pure function's on the
same real images (bytes that do not decode are left out, not fatal), and the reference sample is bounded,
distinct and the same on every run.
"""

from __future__ import annotations

import numpy as np
import pytest

from molescope.evaluation.drift import SUMMARIES, SUMMARY_PX, image_summaries
from molescope.features import image_stats
from molescope.io.imaging import decode_resized
from tests.conftest import HAM10000, require


@pytest.fixture(scope="module")
def jpegs() -> dict[str, bytes]:
    paths = sorted(require(HAM10000 / "images").glob("*.jpg"))[:12]
    return {path.stem: path.read_bytes() for path in paths}


def test_spark_statistics_equal_the_pure_function(spark, jpegs):
    rows = [*jpegs.items(), ("ISIC_broken", b"\xff\xd8\xff not a jpeg"), ("ISIC_empty", b"")]
    frame = spark.createDataFrame(rows, "image_id string, image binary").repartition(3)
    values = image_stats.image_statistics(frame)
    expected = np.array([image_summaries(decode_resized(jpegs[name], SUMMARY_PX)) for name in sorted(jpegs)])
    assert values.shape == (len(jpegs), len(SUMMARIES))
    np.testing.assert_allclose(values, expected, rtol=1e-6)


def test_reference_sample_is_bounded_distinct_and_stable(spark):
    ids = [(f"ISIC_{i:07d}",) for i in range(50) for _ in range(3)]  # upsampling repeats rows
    frame = spark.createDataFrame(ids, "image_id string").repartition(4)
    first = [r.image_id for r in image_stats.reference_sample(frame, 20).collect()]
    again = [r.image_id for r in image_stats.reference_sample(frame.repartition(2), 20).collect()]
    assert len(first) == 20 == len(set(first)) and first == again
    assert sorted(first) != [f"ISIC_{i:07d}" for i in range(20)]  # a hash order, not the first ids
    assert len(image_stats.reference_sample(frame, 500).collect()) == 50
