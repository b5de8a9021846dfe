"""The Spark stages, their execution timeouts, and the Airflow connections and Variables they use."""

from __future__ import annotations

from datetime import timedelta

#: Spark stages (`molescope <stage>`), in pipeline order; each is `molescope.stages.<stage>`.
SPARK_STAGES: tuple[str, ...] = ("clean", "featurize", "upsample", "train", "report", "score")
#: Execution timeouts per stage, sized for a full HAM10000 batch (10,015 images) on a 2-core machine from
#: the benchmarks (`make bench-*`), with a ~4-5x margin for a slower machine, JVM/TF start-up and S3:
#: - clean ≈ 85 img/s → 10k images ≈ 2 min                                   → 20 min
#: - featurize ResNet50 on CPU ≈ 24 img/s in Spark → 10k ≈ 7 min + start-up  → 45 min
#: - upsample (oversample/SMOTE on 2048-d features; augment re-featurizes)   → 30 min
#: - train lr/rf/gbt on 10k × 2048 ≈ several minutes each (+ CV folds)       → 90 min
#: - report (pandas on the test predictions)                                  → 15 min
#: - score (featurize + predict one batch, as featurize)                      → 60 min
#: A larger batch or a cluster needs other figures: pass `execution_timeout=` to `spark_stage`.
STAGE_TIMEOUTS: dict[str, timedelta] = {
    "clean": timedelta(minutes=20),
    "featurize": timedelta(minutes=45),
    "upsample": timedelta(minutes=30),
    "train": timedelta(minutes=90),
    "report": timedelta(minutes=15),
    "score": timedelta(minutes=60),
}
#: For a stage not listed above.
DEFAULT_STAGE_TIMEOUT = timedelta(minutes=60)

#: Airflow connection with the S3 endpoint and credentials (conn_type aws).
S3_CONN_ID = "molescope_s3"
#: Airflow connection naming the Spark master (conn_type spark).
SPARK_CONN_ID = "spark_default"
#: Airflow Variable holding the warehouse root, and its default.
WAREHOUSE_VARIABLE = "molescope_warehouse"
DEFAULT_WAREHOUSE = "s3a://molescope"
