"""End to end: `airflow dags test skin_lesion_scoring` scores a labelled batch in a real S3 server with the
latest champion, through real spark-submit; the assertions read what the stage wrote to S3.

The champion is a tiny LR trained in-process by the train stage's functions on real MobileNet-0.25 features
(tests/unit/test_score.py), then uploaded as `runs/<run>/models/` next to the weights file it needs.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from molescope.cli import SPARK_STAGES
from molescope.constants import ISIC_COLUMNS
from tests.conftest import MOBILENET_025_WEIGHTS, require
from tests.unit.test_score import CORRUPT_JPEG, MODEL, image_path, pick_images, train_champion, write_metadata

pytestmark = pytest.mark.integration

DAG_ID = "skin_lesion_scoring"
BATCH = "clinic-001"
#: Sorts after any run id the pipeline test makes, and its champion.json is uploaded later: the newest.
RUN_ID = "scoring-test-run"
WEIGHTS_KEY = "models/mobilenet_0.25.h5"
DAG_TIMEOUT_S = 900


def upload_tree(s3_server, local: Path, prefix: str) -> None:
    """Every file below `local` to `<prefix>/<relative path>`, skipping Hadoop's .crc checksum files."""
    client = s3_server.client()
    for path in sorted(p for p in local.rglob("*") if p.is_file() and not p.name.endswith(".crc")):
        client.upload_file(str(path), s3_server.bucket, f"{prefix}/{path.relative_to(local).as_posix()}")


@pytest.fixture(scope="module")
def scoring_run(spark, s3_server, pipeline_env, tmp_path_factory) -> dict:
    if "score" not in SPARK_STAGES:
        pytest.skip("`score` is not registered in molescope.cli.SPARK_STAGES yet")
    weights = require(MOBILENET_025_WEIGHTS)
    picked = pick_images(per_class=2)
    run = train_champion(spark, picked, tmp_path_factory.mktemp("warehouse"), run_id=RUN_ID)
    batch = tmp_path_factory.mktemp("batch")
    labelled = picked[::2]
    for row in labelled:
        shutil.copy(image_path(row["image_id"]), batch / f"{row['image_id']}.jpg")
    (batch / "unreadable.jpg").write_bytes(CORRUPT_JPEG)
    write_metadata(batch / "metadata.csv", labelled)

    client = s3_server.client()
    client.upload_file(str(weights), s3_server.bucket, WEIGHTS_KEY)
    upload_tree(s3_server, run / "models", f"runs/{RUN_ID}/models")
    upload_tree(s3_server, batch, f"scoring/{BATCH}")
    conf = {"batch_id": BATCH, "weights": f"s3a://{s3_server.bucket}/{WEIGHTS_KEY}"}
    cmd = ["airflow", "dags", "test", DAG_ID, "--conf", json.dumps(conf)]
    done = subprocess.run(cmd, env=pipeline_env, capture_output=True, text=True, timeout=DAG_TIMEOUT_S)
    if done.returncode != 0:
        pytest.fail(f"{DAG_ID} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}")
    return {"prefix": f"scores/{BATCH}/{RUN_ID}/{MODEL}", "labelled": labelled, "log": done.stdout}


def test_latest_champion_scored_every_image(s3_server, scoring_run):
    summary = json.loads(s3_server.get(f"{scoring_run['prefix']}/summary.json"))
    n = len(scoring_run["labelled"])
    assert summary["champion_file"].endswith(f"runs/{RUN_ID}/models/champion.json")
    assert (summary["scored"], summary["quarantined"], summary["rows_in"]) == (n, 1, n + 1)
    assert summary["quarantined_by_reason"] == {"image_corrupt": 1}


def test_isic_predictions_and_metrics_written(s3_server, scoring_run):
    prefix = scoring_run["prefix"]
    rows = list(csv.reader(io.StringIO(s3_server.get(f"{prefix}/predictions.csv").decode())))
    assert rows[0] == ["image", *ISIC_COLUMNS]
    assert sorted(r[0] for r in rows[1:]) == sorted(r["image_id"] for r in scoring_run["labelled"])
    metrics = json.loads(s3_server.get(f"{prefix}/metrics.json"))["models"][MODEL]
    assert metrics["n"] == len(scoring_run["labelled"])
    assert 0.0 <= metrics["balanced_accuracy"] <= 1.0
    assert "<html" in s3_server.get(f"{prefix}/report.html").decode().lower()
