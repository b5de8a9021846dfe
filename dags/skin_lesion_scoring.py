"""
### Skin lesion scoring

Applies a trained model to a new batch of dermoscopic images: one Spark job, `molescope score`, that

1. reads `scoring/<batch_id>/` under the warehouse root: JPEG images anywhere below it, with at most one
   optional metadata CSV (HAM10000 columns; `dx` optional) — without it, image ids are the file stems;
2. validates every image with the clean stage's inspection (unreadable ones are quarantined with a reason);
3. featurizes the images with the backbone and weights the model was trained with (a model trained on
   other features is refused);
4. writes `scores/<batch_id>/<model run>/<model>/`: `predictions/` (Parquet), `predictions.csv` (ISIC 2018
   Task 3 format), `quarantine/`, `summary.json`, and, when images carry labels, `metrics.json` and
   `report.html`.

Parameters: `batch_id`; `model` = `champion` (the latest `runs/*/models/champion.json`) or a model folder
`s3a://<bucket>/runs/<run>/models/<model>`; `weights` = `auto` (from the model's weights_id) or, for a model
trained on a weights file, that file's path or `s3a://` URI (its hash must match).

Trigger: `airflow dags trigger skin_lesion_scoring --conf '{"batch_id": "clinic-2026-11"}'`.
Connections: `spark_default`, `molescope_s3`; warehouse root: Variable `molescope_warehouse`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from molescope_airflow.factory import spark_stage
from molescope_airflow.naming import BATCH_ID_PATTERN

WAREHOUSE = "{{ var.value.get('molescope_warehouse', 's3a://molescope') }}"
BATCH = "{{ params.batch_id }}"
#: Where users put batches to score (the training pipeline's batches live under landing/).
SCORING = f"{WAREHOUSE}/scoring"
SCORES = f"{WAREHOUSE}/scores"
SCORE_TIMEOUT = timedelta(hours=1)
RETRIES = 1

with DAG(
    dag_id="skin_lesion_scoring",
    description="Score a batch of dermoscopy images with the champion (or a chosen) model on Spark + S3",
    doc_md=__doc__,
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["molescope", "spark", "dermoscopy", "scoring"],
    render_template_as_native_obj=False,
    params={
        "batch_id": Param(
            "sample",
            type="string",
            pattern=BATCH_ID_PATTERN,
            description="Batch to score: the folder scoring/<batch_id>/ under the warehouse root.",
        ),
        "model": Param(
            "champion",
            type="string",
            minLength=1,
            description="champion (latest runs/*/models/champion.json) or s3a://…/runs/<run>/models/<model>.",
        ),
        "weights": Param(
            "auto",
            type="string",
            minLength=1,
            description="auto (from the model's weights_id), or the weights file (path / s3a:// URI).",
        ),
    },
) as dag:
    spark_stage(
        "score",
        [
            "--batch-dir",
            f"{SCORING}/{BATCH}",
            "--batch-id",
            BATCH,
            "--model",
            "{{ params.model }}",
            "--champion-of",
            WAREHOUSE,
            "--weights",
            "{{ params.weights }}",
            "--out",
            SCORES,
        ],
        batch_id=BATCH,
        retries=RETRIES,
        execution_timeout=SCORE_TIMEOUT,
        driver_memory="6g",
        doc_md="Featurizes the batch with the model's backbone + weights and writes predictions (+ metrics).",
    )
