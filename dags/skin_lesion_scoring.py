"""
### Skin lesion scoring

Applies a trained model to batches of dermoscopic images: `choose_model`, then one Spark job,
`molescope score`, that for each batch to score

1. reads `scoring/<batch_id>/` under the warehouse root: JPEG images anywhere below it, with at most one
   optional metadata CSV (HAM10000 columns; `dx` optional) — without it, image ids are the file stems;
2. validates every image with the clean stage's inspection (unreadable ones are quarantined with a reason);
3. featurizes the images with the backbone and weights the model was trained with (a model trained on
   other features is refused);
4. writes `scores/<batch_id>/<model run>/<model>/`: `predictions/` (Parquet), `predictions.csv` (ISIC 2018
   Task 3 format), `quarantine/`, `review.html` (the case review: triage worklist, Grad-CAM overlays kept
   in `saliency/`, similar confirmed cases, drift from the training data), `summary.json`, and, when images
   carry labels, `metrics.json` and `report.html`.

**When it runs.** On every new champion: the pipeline's `train` task updates the asset
`molescope_champion`, and its event names the exact model and weights source, which this run then uses
(not "whatever champion is newest when the job starts"). It scores every batch under `scoring/` that this
model has not scored yet, so a new champion re-scores all batches and a re-run scores nothing new.
Manual runs work the same way, or name one batch. When there is nothing to score (no folder under
`scoring/`, or the event's model has scored them all) `choose_model` skips the run: no Spark job.

Parameters: `batch_id` = empty (every batch not yet scored by the model) or one folder under `scoring/`
(always re-scored); `model` = `champion` (the triggering event's model, else the latest
`runs/*/models/champion.json`) or a model folder `s3a://<bucket>/runs/<run>/models/<model>`; `weights` =
`auto` (the triggering event's weights source, else derived from the model's weights_id: `imagenet`,
`random`) or, for a model trained on a weights file, that file's path or `s3a://` URI (its hash must match).

Manual trigger: `airflow dags trigger skin_lesion_scoring --conf '{"batch_id": "clinic-2026-11"}'`.
Connections: `spark_default`, `molescope_s3`; warehouse root: Variable `molescope_warehouse`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, task
from airflow.sdk.exceptions import AirflowSkipException

from molescope.core import registry as r
from molescope_airflow import assets
from molescope_airflow.champion import ChampionEvent, nothing_to_score, scoring_choice
from molescope_airflow.factory import spark_stage
from molescope_airflow.params import enum_param

WAREHOUSE = f"{{{{ var.value.get('{r.WAREHOUSE_VARIABLE}', '{r.DEFAULT_WAREHOUSE}') }}}}"
BATCH = "{{ params.batch_id or '' }}"
#: How failure messages name the batch of a run that scores every pending batch.
BATCH_LABEL = "{{ params.batch_id or 'every pending batch' }}"
CHOICE = "ti.xcom_pull(task_ids='choose_model')"
#: Where users put batches to score (the training pipeline's batches live under landing/).
SCORING = f"{WAREHOUSE}/{r.SCORING_DIR}"
SCORES = f"{WAREHOUSE}/{r.SCORES_DIR}"
RETRIES = 1

with DAG(
    dag_id="skin_lesion_scoring",
    description="Score batches of dermoscopy images with each new champion (or a chosen model) on Spark + S3",
    doc_md=__doc__,
    # Asset-triggered: each new champion scores the batches it has not scored yet. Manual runs still work.
    schedule=[assets.CHAMPION],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["molescope", "spark", "dermoscopy", "scoring"],
    render_template_as_native_obj=False,
    params={
        "batch_id": Param(
            None,
            type=["null", "string"],
            pattern=r.BATCH_ID_PATTERN,
            title="Batch to score",
            description="A folder scoring/<batch_id>/ under the warehouse root (re-scored). Empty: every "
            "batch under scoring/ that the model has not scored yet.",
        ),
        "model": Param(
            r.MODEL_CHAMPION,
            type="string",
            minLength=1,
            description="champion (the triggering event's model, else the latest "
            "runs/*/models/champion.json) or s3a://…/runs/<run>/models/<model>.",
        ),
        "weights": Param(
            r.WEIGHTS_AUTO,
            type="string",
            minLength=1,
            description="auto (the triggering event's weights, else from the model's weights_id), or the "
            "weights file (path / s3a:// URI).",
        ),
        "engine": enum_param(
            r.ENGINE_AUTO,
            r.ENGINES,
            description="Inference engine of the featurization: keras (TensorFlow, uses GPUs), litert (CPU) "
            "or auto (keras for GPU jobs, else litert).",
        ),
    },
) as dag:

    @task(
        doc_md="Picks the model and weights (explicit params, else the triggering champion event's) and "
        "skips the run when there is nothing to score."
    )
    def choose_model(scoring_root: str, scores_root: str, params=None, triggering_asset_events=None):
        events = []
        if triggering_asset_events:
            for event in triggering_asset_events.get(assets.CHAMPION, []):
                events.append(ChampionEvent(event.timestamp, dict(event.extra or {})))
        choice = scoring_choice(params["model"], params["weights"], events)
        print(f"scoring with model {choice.model} (weights {choice.weights}): {choice.reason}")
        if not params.get("batch_id"):
            reason = nothing_to_score(choice.model, scoring_root, scores_root, r.S3_CONN_ID)
            if reason:
                raise AirflowSkipException(f"nothing to score: {reason}")
        return choice.to_dict()

    score = spark_stage(
        "score",
        [
            "--scoring-root",
            SCORING,
            "--batch-id",
            BATCH,
            "--model",
            f"{{{{ {CHOICE}['model'] }}}}",
            "--champion-of",
            WAREHOUSE,
            "--weights",
            f"{{{{ {CHOICE}['weights'] }}}}",
            "--out",
            SCORES,
            "--engine",
            "{{ params.engine }}",
        ],
        batch_id=BATCH_LABEL,
        retries=RETRIES,
        driver_memory="6g",
        doc_md="Featurizes each batch to score with the model's backbone + weights and writes its "
        "predictions (+ metrics when labelled).",
    )
    choose_model(SCORING, SCORES) >> score
