"""
### Skin lesion pipeline

Classifies dermoscopic images into the 7 HAM10000 classes (nv, mel, bkl, bcc, akiec, vasc, df), one
**batch** per run:

`wait_for_batch` → `clean` → `training_batches` → `featurize` → `upsample` → `train` → `report`
(+ `record_params`); each stage is a Spark job (`molescope <stage>` through spark-submit) reading and
writing S3-compatible storage:

| prefix | content |
|---|---|
| `landing/<batch>/` | the raw batch: metadata CSV + JPEGs |
| `curated/` | cleaned images, quarantine, per-batch summaries (asset `molescope_curated`) |
| `features/<backbone>/<weights_id>/` | CNN feature vectors (asset `molescope_features`) |
| `runs/<run>/` | params.json, train set, models, predictions, metrics, report (`molescope_models`) |

**Schedule.** Daily by default (`MOLESCOPE_SCHEDULE`, any cron or preset). A run's logical date names
the batch it ingests: the run for 2026-11-25 ingests `landing/2026-11-25/`. `wait_for_batch` is a
deferrable S3 sensor (no worker slot while waiting) that waits until the end of the day plus
`batch_wait_hours`; a day without a batch **skips** the run's stages (the run succeeds).

**Training data.** `training_batches` lists the curated batches the run trains and tests on; by default
every batch up to and including the run's batch (also: this batch only, a date range, all).

**Backfill.** `airflow backfill create --dag-id skin_lesion_pipeline --from-date 2026-11-01 --to-date
2026-11-07 --max-active-runs 1` runs each past day once, in date order (a larger `--max-active-runs` runs
several at once; their Spark stages still queue on the one-slot `spark` pool). Add
`--reprocess-behavior completed` to re-run dates that already ran: a re-run rewrites that batch's
partitions and writes its own run's outputs, nothing else.

**Default recipe.** MobileNet-0.25 fine-tuned end to end on the images (`finetune`: augmentation,
class-balanced sampling, label smoothing, warmup + cosine, best epoch on validation, flip TTA) beside
logistic regression on its frozen features; the champion, each model's decision rule (class-prior shift +
melanoma threshold) and every other choice are made on a lesion-grouped validation part of the training
split, and the report evaluates the test split once. It is the best recipe measured on a 2-core CPU machine
(docs/benchmarks.md, "Model quality"); on a GPU, pick a larger `backbone` and input size.

**Manual runs.** Trigger form (**Trigger DAG**) or
`airflow dags trigger skin_lesion_pipeline --conf '{"batch_id": "ham10000"}'`: `batch_id` names any
landed batch; empty means the run's logical date.

Connections: `spark_default` (Spark master) and `molescope_s3` (S3 endpoint + credentials). Variable
`molescope_warehouse` (default `s3a://molescope`). Pool `spark` (1 slot). See docs/orchestration.md.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, task
from airflow.timetables.interval import CronDataIntervalTimetable

from molescope.core import registry as r
from molescope_airflow import assets
from molescope_airflow.batches import batch_of, curated_batches, select_batches
from molescope_airflow.factory import spark_stage
from molescope_airflow.naming import slug
from molescope_airflow.params import hyper_args
from molescope_airflow.pipeline_params import pipeline_params
from molescope_airflow.run_params import params_document, write_params
from molescope_airflow.sensors import BatchSensor

_ROOT = f"var.value.get('{r.WAREHOUSE_VARIABLE}', '{r.DEFAULT_WAREHOUSE}')"
WAREHOUSE = f"{{{{ {_ROOT} }}}}"
#: The run's batch: the batch_id param, else the logical date (a clear error when neither exists).
BATCH = "{{ batch_of(params.batch_id, ds | default(none)) }}"
RUN = f"{WAREHOUSE}/{r.RUNS_DIR}/{{{{ run_id | slug }}}}"
CURATED = f"{WAREHOUSE}/{r.CURATED_DIR}"
FEATURES = f"{WAREHOUSE}/{r.FEATURES_DIR}"
FEATURES_REF = f"{RUN}/{r.FEATURES_REF_FILE}"
#: The same root as an s3:// URI, for the S3 hook/sensor (s3a:// is Hadoop's scheme).
WAREHOUSE_S3 = f"{{{{ {_ROOT} | replace('s3a://', 's3://') }}}}"
TRAINING = "{{ ti.xcom_pull(task_ids='training_batches') }}"

#: Any cron expression or preset; empty: manual runs only (no schedule, no backfill).
SCHEDULE = os.environ.get("MOLESCOPE_SCHEDULE", "@daily")
#: Default of the batch_wait_hours param (scheduled runs use it).
BATCH_WAIT_HOURS = float(os.environ.get("MOLESCOPE_BATCH_WAIT_HOURS", "12"))
#: How often the triggerer looks for a batch that has not landed yet (seconds; one S3 LIST each time).
BATCH_POKE_S = int(os.environ.get("MOLESCOPE_BATCH_POKE_S", "300"))

with DAG(
    dag_id="skin_lesion_pipeline",
    description="HAM10000 dermoscopy: the day's batch → clean → featurize → upsample → train → report",
    doc_md=__doc__,
    # Data intervals (not cron triggers): the run for day D starts after D ends, with logical date D, so
    # its `ds` names the batch that landed during D.
    schedule=CronDataIntervalTimetable(SCHEDULE, timezone="UTC") if SCHEDULE else None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    # Two runs: one may sit deferred waiting for its batch while a manual run works. Spark stages never run
    # side by side whatever the number of runs: they share the one-slot `spark` pool.
    max_active_runs=2,
    max_active_tasks=2,
    tags=["molescope", "spark", "dermoscopy"],
    user_defined_filters={"slug": slug},
    user_defined_macros={"batch_of": batch_of},
    render_template_as_native_obj=False,
    params=pipeline_params(BATCH_WAIT_HOURS),
) as dag:
    wait_for_batch = BatchSensor(
        task_id="wait_for_batch",
        batch_id=BATCH,
        bucket_key=f"{WAREHOUSE_S3}/{r.LANDING_DIR}/{BATCH}/*.csv",
        aws_conn_id=r.S3_CONN_ID,
        wait_hours="{{ params.batch_wait_hours }}",
        poke_interval=BATCH_POKE_S,
        retries=2,
        doc_md="Waits (deferred to the triggerer, no worker slot) for `landing/<batch>/*.csv`; skips the "
        "run's stages when the batch's wait window ends without it.",
    )

    @task(retries=2, doc_md="Writes the run's effective parameters (and its batch) to `<run>/params.json`.")
    def record_params(run_uri: str, batch: str, params=None, run_id=None, logical_date=None) -> str:
        document = params_document(
            {**params, "batch": batch}, run_id, logical_date.isoformat() if logical_date else None
        )
        return write_params(run_uri, document, s3_conn_id=r.S3_CONN_ID)

    @task(retries=2, doc_md="Lists the curated batches and picks those this run trains and tests on.")
    def training_batches(curated_uri: str, batch: str, params=None) -> str:
        available = curated_batches(curated_uri, s3_conn_id=r.S3_CONN_ID)
        chosen = select_batches(
            available, batch, params["training_batches"], params.get("range_start"), params.get("range_end")
        )
        print(f"batch {batch}: training on {len(chosen)} of {len(available)} curated batches: {chosen}")
        return ",".join(chosen)

    clean = spark_stage(
        "clean",
        [
            "--batch-dir",
            f"{WAREHOUSE}/{r.LANDING_DIR}/{BATCH}",
            "--batch-id",
            BATCH,
            "--curated",
            CURATED,
            "--test-fraction",
            "{{ params.test_fraction }}",
            "--seed",
            "{{ params.seed }}",
        ],
        batch_id=BATCH,
        outlets=[assets.CURATED],
        doc_md="Validates the batch's metadata and images; rewrites its curated and quarantine partitions "
        "and its summary.",
    )
    featurize = spark_stage(
        "featurize",
        [
            "--curated",
            CURATED,
            "--batch-id",
            BATCH,
            "--features",
            FEATURES,
            "--ref-out",
            FEATURES_REF,
            "--backbone",
            "{{ params.backbone }}",
            "--weights",
            "{{ params.weights }}",
            "--engine",
            "{{ params.engine }}",
            # The batch's partition is recomputed, so a re-run of a date rewrites it (idempotent).
            "--recompute",
        ],
        batch_id=BATCH,
        driver_memory="6g",
        outlets=[assets.FEATURES],
        doc_md="Runs the CNN backbone over the batch's curated images and rewrites its feature partition. "
        "Earlier batches' features (same backbone + weights) come from their own runs.",
    )
    upsample = spark_stage(
        "upsample",
        [
            "--features",
            FEATURES_REF,
            "--batches",
            TRAINING,
            "--curated",
            CURATED,
            "--out",
            RUN,
            "--weights",
            "{{ params.weights }}",
            "--engine",
            "{{ params.engine }}",
            "--strategy",
            "{{ params.upsample }}",
            "--target",
            "{{ params.upsample_target }}",
            "--seed",
            "{{ params.seed }}",
        ],
        batch_id=BATCH,
        doc_md="Rebalances the training split of the selected batches (the test split is never touched).",
    )
    train = spark_stage(
        "train",
        [
            "--train-set",
            f"{RUN}/{r.TRAIN_SET_DIR}",
            "--features",
            FEATURES_REF,
            "--batches",
            TRAINING,
            "--out",
            RUN,
            "--models",
            "{{ params.models | join(',') }}",
            "--pca",
            "{{ params.pca if params.pca else 'none' }}",
            "--distributed",
            "{{ params.distributed }}",
            "--num-proc",
            "{{ params.num_proc }}",
            *hyper_args(),
            "{{ '--metadata' if params.metadata else '--no-metadata' }}",
            "--curated",
            CURATED,
            "--champion-metric",
            "{{ params.champion_metric }}",
            "--target-mel-recall",
            "{{ params.target_mel_recall }}",
            "--seed",
            "{{ params.seed }}",
            "--warm-start",
            # Horovod's fine-tune always trains in full (the Param's description says so).
            f"{{{{ ({_ROOT} ~ '/{r.RUNS_DIR}') if params.warm_start and params.distributed == "
            f"'{r.DISTRIBUTED_NONE}' else '{r.WARM_START_NONE}' }}}}",
            "--full-retrain-every",
            "{{ params.full_retrain_every }}",
            "--full-retrain-growth",
            "{{ params.full_retrain_growth }}",
            # A fine-tune that cannot end inside this task's timeout fails in its first minute, saying why.
            "--time-budget",
            "{{ task.execution_timeout.total_seconds() | int if task.execution_timeout else 'none' }}",
        ],
        batch_id=BATCH,
        driver_memory="6g",
        outlets=[assets.MODELS, assets.CHAMPION],
        champion={"models": f"{RUN}/{r.MODELS_DIR}", "weights": "{{ params.weights }}"},
        doc_md="Fits the requested models on the selected batches, chooses everything (early stopping, "
        "decision rules, the champion) on the validation part of the training split, predicts the test split "
        "without reading it and marks the champion (asset `molescope_champion`: the scoring DAG runs on it).",
    )
    report = spark_stage(
        "report",
        ["--run", RUN, "--curated", CURATED, "--target-mel-recall", "{{ params.target_mel_recall }}"],
        batch_id=BATCH,
        outputs={"report": f"{RUN}/{r.REPORT_FILE}", "metrics": f"{RUN}/{r.METRICS_FILE}"},
        doc_md="Computes ISIC-standard metrics and writes metrics.json, predictions.csv and report.html.",
    )

    params_json = record_params(RUN, BATCH)
    batches = training_batches(CURATED, BATCH)
    wait_for_batch >> clean >> batches >> featurize >> upsample >> train >> report
    wait_for_batch >> params_json >> upsample
