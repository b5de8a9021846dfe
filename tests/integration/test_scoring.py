"""End to end: a manual run of `skin_lesion_scoring` on the live Airflow scores a labelled batch of real
HAM10000 images (plus one corrupt JPEG) with the latest champion, found through the newest
`runs/*/models/champion.json`, through real spark-submit; the assertions read what the stage wrote to S3.

The champion is the one the live scenario's backfill trained last (tests/integration/scenario.py, phase C).
"""

from __future__ import annotations

import csv
import io

import pytest

from tests.integration.scenario import ISIC_HEADER

pytestmark = pytest.mark.integration


def test_latest_champion_scored_every_image(s3_server, labelled_scoring):
    summary = s3_server.json(f"{labelled_scoring['prefix']}/summary.json")
    n = len(labelled_scoring["labelled"])
    assert summary["champion_file"].endswith(f"runs/{labelled_scoring['run_folder']}/models/champion.json")
    assert (summary["scored"], summary["quarantined"], summary["rows_in"]) == (n, 1, n + 1)
    assert summary["quarantined_by_reason"] == {"image_corrupt": 1}


def test_isic_predictions_and_metrics_written(s3_server, labelled_scoring):
    prefix = labelled_scoring["prefix"]
    rows = list(csv.reader(io.StringIO(s3_server.get(f"{prefix}/predictions.csv").decode())))
    assert rows[0] == ISIC_HEADER
    assert sorted(r[0] for r in rows[1:]) == sorted(r["image_id"] for r in labelled_scoring["labelled"])
    metrics = s3_server.json(f"{prefix}/metrics.json")["models"][labelled_scoring["model"]]
    assert metrics["n"] == len(labelled_scoring["labelled"])
    assert 0.0 <= metrics["balanced_accuracy"] <= 1.0
    assert "<html" in s3_server.get(f"{prefix}/report.html").decode().lower()
