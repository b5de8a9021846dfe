"""
### Skin lesion pipeline

Classifies a batch of dermoscopic images into the 7 HAM10000 classes (nv, mel, bkl, bcc, akiec, vasc, df):

`clean` → `featurize` → `upsample` → `train` → `report`, each a Spark job (`molescope <stage>` through
spark-submit) that reads and writes S3-compatible storage:

| prefix | content |
|---|---|
| `landing/<batch_id>/` | the raw batch: metadata CSV + JPEGs |
| `curated/` | cleaned images with split assignment, quarantine, per-batch summaries |
| `features/<backbone>/<weights_id>/` | CNN feature vectors |
| `runs/<run>/` | training set, models, predictions, metrics.json, report.html |

Trigger with parameters from the UI (**Trigger DAG** form) or
`airflow dags trigger skin_lesion_pipeline --conf '{"batch_id": "2026-11-25"}'`.
Connections: `spark_default` (Spark master) and `molescope_s3` (S3 endpoint + credentials).
The warehouse root is the Variable `molescope_warehouse` (default `s3a://molescope`).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, task

from molescope_airflow.factory import spark_stage
from molescope_airflow.naming import BATCH_ID_PATTERN, slug
from molescope_airflow.run_params import params_document, write_params

WAREHOUSE = "{{ var.value.get('molescope_warehouse', 's3a://molescope') }}"
BATCH = "{{ params.batch_id }}"
RUN = f"{WAREHOUSE}/runs/{{{{ run_id | slug }}}}"
CURATED = f"{WAREHOUSE}/curated"
FEATURES = f"{WAREHOUSE}/features"
FEATURES_REF = f"{RUN}/features.json"

BACKBONES = [
    "resnet50",
    "mobilenet",
    "mobilenet_0.75",
    "mobilenet_0.5",
    "mobilenet_0.25",
    "mobilenetv2",
    "efficientnetb0",
    "densenet121",
]
STRATEGIES = ["none", "oversample", "augment", "smote", "class_weight"]
MODELS = ["lr", "rf", "gbt", "mlp"]

with DAG(
    dag_id="skin_lesion_pipeline",
    description="HAM10000 dermoscopy: clean → featurize → upsample → train → report on Spark + S3",
    doc_md=__doc__,
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["molescope", "spark", "dermoscopy"],
    user_defined_filters={"slug": slug},
    render_template_as_native_obj=False,
    params={
        "batch_id": Param(
            "sample",
            type="string",
            pattern=BATCH_ID_PATTERN,
            description="Batch to ingest: the folder landing/<batch_id>/ under the warehouse root.",
        ),
        "backbone": Param(
            "resnet50", enum=BACKBONES, description="Keras ImageNet CNN used as feature extractor."
        ),
        "weights": Param(
            "imagenet",
            type="string",
            minLength=1,
            description="imagenet (Keras download/cache), random (tests), a file path or an s3a:// URI.",
        ),
        "upsample": Param("oversample", enum=STRATEGIES, description="How the training split is rebalanced."),
        "models": Param(
            ["lr", "rf", "gbt"],
            type="array",
            items={"type": "string", "enum": MODELS},
            minItems=1,
            uniqueItems=True,
            description="Models to train; the champion is chosen by balanced accuracy.",
        ),
        "test_fraction": Param(0.2, type="number", exclusiveMinimum=0, exclusiveMaximum=0.5),
        "seed": Param(42, type="integer", minimum=0),
    },
) as dag:

    @task(retries=2, doc_md="Writes the run's effective parameters to `<run>/params.json`.")
    def record_params(run_uri: str, params=None, run_id=None, logical_date=None) -> str:
        document = params_document(params, run_id, logical_date.isoformat() if logical_date else None)
        return write_params(run_uri, document, s3_conn_id="molescope_s3")

    params_json = record_params(RUN)
    clean = spark_stage(
        "clean",
        [
            "--batch-dir",
            f"{WAREHOUSE}/landing/{BATCH}",
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
        execution_timeout=timedelta(minutes=30),
        doc_md="Validates metadata and images of the batch; writes curated rows, quarantine and a summary.",
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
        ],
        batch_id=BATCH,
        execution_timeout=timedelta(hours=2),
        driver_memory="6g",
        doc_md="Runs the CNN backbone over the batch's curated images (incremental per backbone + weights).",
    )
    upsample = spark_stage(
        "upsample",
        [
            "--features",
            FEATURES_REF,
            "--curated",
            CURATED,
            "--out",
            RUN,
            "--weights",
            "{{ params.weights }}",
            "--strategy",
            "{{ params.upsample }}",
            "--seed",
            "{{ params.seed }}",
        ],
        batch_id=BATCH,
        execution_timeout=timedelta(minutes=30),
        doc_md="Rebalances the training split (the test split is never touched).",
    )
    train = spark_stage(
        "train",
        [
            "--train-set",
            f"{RUN}/train_set",
            "--features",
            FEATURES_REF,
            "--out",
            RUN,
            "--models",
            "{{ params.models | join(',') }}",
            "--seed",
            "{{ params.seed }}",
        ],
        batch_id=BATCH,
        execution_timeout=timedelta(hours=1),
        driver_memory="6g",
        doc_md="Fits the requested models, predicts the test split and marks the champion.",
    )
    report = spark_stage(
        "report",
        ["--run", RUN, "--curated", CURATED],
        batch_id=BATCH,
        outputs={"report": f"{RUN}/report.html", "metrics": f"{RUN}/metrics.json"},
        execution_timeout=timedelta(minutes=15),
        doc_md="Computes ISIC-standard metrics and writes metrics.json, predictions.csv and report.html.",
    )

    clean >> featurize >> upsample >> train >> report
    params_json >> upsample
