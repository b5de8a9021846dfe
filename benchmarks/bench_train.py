"""Benchmark the train stage's models on a HAM10000-sized feature matrix, next to scikit-learn.

For each Spark model (and optionally the Keras head) it reports fit seconds, the peak resident memory of
the process doing the work during the fit (the Spark JVM for Spark models, this Python process for
scikit-learn and Keras) and the test-split metrics. scikit-learn's LogisticRegression and
RandomForestClassifier are fitted on the same matrix in the same run; `ratio` = Spark fit seconds /
scikit-learn fit seconds for the same model family.

    python benchmarks/bench_train.py                       # synthetic 10015 x 256, HAM10000 class counts
    python benchmarks/bench_train.py --features s3a://molescope/features/mobilenet/<weights_id>
    python benchmarks/bench_train.py --pca none,64 --models lr,rf,gbt,mlp

The synthetic matrix is learnable but overlapping (class centres close relative to the noise), so the
metrics are not trivially 1. Its train/test split is a hash of the lesion id, as in the pipeline.

`--finetune-images N` instead times the `finetune` model (no Spark): two epochs of fine-tuning on N real
images (`--images-dir` with a HAM10000 metadata CSV beside the images folder) and scoring them, per
`--finetune-recipes` recipe (default: today's default against the speed variants explored on
validation), in images per second with the peak RSS of this process and the ratio of the training rates:

    python benchmarks/bench_train.py --finetune-images 1024 --images-dir ../shared/data/ham10000 \
        --backbone mobilenet_0.25 --weights ../shared/models/mobilenet_2_5_224_tf_no_top.h5
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from molescope.core.constants import CLASSES, SPLIT_TEST, SPLIT_TRAIN
from molescope.evaluation import outcomes
from molescope.evaluation.scores import decide
from molescope.features.backbones import resolve_backbone
from molescope.io.imaging import decode_resized
from molescope.io.session import get_spark
from molescope.io.tables import FEATURES_SCHEMA, read_features
from molescope.models import finetune, finetune_data, finetune_predict
from molescope.models import trained as models
from molescope.models.model_specs import FitJob, model_spec
from molescope.stages import train

#: Class counts as specified (9948 rows; the released HAM10000 has 10015); images per lesion 10015/7470.
HAM10000_COUNTS = {"nv": 6650, "mel": 1111, "bkl": 1089, "bcc": 514, "akiec": 327, "vasc": 142, "df": 115}
IMAGES_PER_LESION = 10015 / 7470
SYNTHETIC_DIM = 256
#: Class-centre spread relative to unit noise: overlapping classes, so accuracy is well below 1.
CENTRE_SPREAD = 0.12
TEST_FRACTION = 0.2
SAMPLE_EVERY_S = 0.05
MIB = 1024 * 1024


class PeakRss:
    """Samples a process's resident set size in a thread; `peak` is the largest seen, in bytes."""

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self.baseline = self.process.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


@contextmanager
def measured(pid: int):
    """Yields a dict filled with fit seconds and peak RSS (MiB, and growth over the start) of `pid`."""
    result: dict[str, float] = {}
    with PeakRss(pid) as rss:
        started = time.monotonic()
        yield result
        result["fit_s"] = time.monotonic() - started
    result["peak_rss_mib"] = rss.peak / MIB
    result["rss_growth_mib"] = (rss.peak - rss.baseline) / MIB


def synthetic_features(seed: int, dim: int) -> pd.DataFrame:
    """A features-schema pandas frame with HAM10000's class counts and lesion structure."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, CENTRE_SPREAD, size=(len(CLASSES), dim))
    labels = np.repeat(np.arange(len(CLASSES)), [HAM10000_COUNTS[dx] for dx in CLASSES])
    # Images of one lesion share a lesion-level offset, as photos of one lesion resemble each other.
    lesion_of = (np.arange(len(labels)) / IMAGES_PER_LESION).astype(int)
    lesion_offset = rng.normal(0.0, 0.5, size=(lesion_of.max() + 1, dim))
    x = centres[labels] + lesion_offset[lesion_of] + rng.normal(0.0, 1.0, size=(len(labels), dim))
    lesion_ids = np.array([f"HAM_L{i:07d}" for i in lesion_of])
    lesion_test = rng.random(lesion_of.max() + 1) < TEST_FRACTION
    return pd.DataFrame(
        {
            "image_id": [f"ISIC_{i:07d}" for i in range(len(labels))],
            "lesion_id": lesion_ids,
            "dx": [CLASSES[i] for i in labels],
            "split": np.where(lesion_test[lesion_of], SPLIT_TEST, SPLIT_TRAIN),
            "backbone": "synthetic",
            "weights_id": f"synthetic-{dim}",
            "feature_dim": np.int32(dim),
            "features": list(x.astype(np.float32)),
            "batch_id": "bench",
        }
    )


def load_features(spark: SparkSession, uri: str | None, seed: int, scratch: str) -> DataFrame:
    """The features table at `uri`, or the synthetic one written as Parquet under `scratch` and read back
    (so Spark reads files as in the pipeline, rather than shipping an in-memory frame inside its tasks)."""
    if uri:
        return read_features(spark, uri)
    path = str(Path(scratch) / "features")
    synthetic = spark.createDataFrame(synthetic_features(seed, SYNTHETIC_DIM), schema=FEATURES_SCHEMA)
    synthetic.write.mode("overwrite").partitionBy("batch_id").parquet(path)
    return spark.read.parquet(path)


def as_train_set(features: DataFrame, class_weights: bool) -> DataFrame:
    """The train split in the train_set schema, nothing synthetic; weight 1, or upsample's `class_weight`
    strategy (n_total / (n_classes · n_class)) when `class_weights`."""
    rows = features.where(F.col("split") == SPLIT_TRAIN)
    weight = F.lit(1.0)
    if class_weights:
        counts = {r["dx"]: r["count"] for r in rows.groupBy("dx").count().collect()}
        total = sum(counts.values())
        per_class = {dx: total / (len(counts) * n) for dx, n in counts.items()}
        weight = F.create_map(*[F.lit(x) for item in per_class.items() for x in item])[F.col("dx")]
    return rows.select(
        *[c for c in features.columns if c != "batch_id"],
        weight.cast("double").alias("weight"),
        F.lit(False).alias("synthetic"),
        F.col("image_id").alias("source_image_id"),
    )


def headline(labels: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """Argmax figures of the test rows (decision rules are fitted on validation by train: not timed here)."""
    return outcomes.figures(labels, decide(proba), proba)


def metrics_of(predictions: DataFrame) -> dict[str, Any]:
    pdf = predictions.where(F.col("label").isNotNull()).select("dx", "probability").toPandas()
    return headline(*outcomes.labelled(pdf))


def bench_spark(
    name: str,
    train_rows: DataFrame,
    test: DataFrame,
    spec: models.FeatureSpec,
    s: train.Settings,
    jvm_pid: int,
    weighted: bool,
) -> dict[str, Any]:
    model = model_spec(name)
    job = FitJob(train_rows.sparkSession, s, train_rows, test, spec, weighted)
    pid = os.getpid() if name == "mlp" else jvm_pid
    with measured(pid) as result:
        fitted = model.fit(model, job)
    trained = replace(fitted.model, sidecar={"feature_spec": fitted.feature_spec.to_dict()})
    return {**result, **metrics_of(trained.predict(test, check=False))}


def sklearn_matrix(df: DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels, weights) on the driver; the test split has no weight column (weights 1)."""
    weight = F.col("weight") if "weight" in df.columns else F.lit(1.0)
    pdf = df.select(
        models.label_expr(F.col("dx")).alias("label"), weight.cast("double").alias("weight"), "features"
    ).toPandas()
    x = np.stack(pdf["features"].to_numpy()).astype(np.float32)
    return x, pdf["label"].to_numpy(), pdf["weight"].to_numpy()


def sklearn_models(s: train.Settings) -> dict[str, Callable[[int], Any]]:
    """scikit-learn counterparts with the Spark settings (C = 1 / (regParam · n) matches Spark's scaling)."""
    from sklearn.decomposition import PCA
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def reduce() -> list[Any]:
        return [PCA(n_components=s.pca_k, random_state=s.seed)] if s.pca_k else []

    return {
        "lr": lambda n: make_pipeline(
            StandardScaler(),
            *reduce(),
            LogisticRegression(C=1.0 / (s.lr_reg * n), max_iter=s.lr_max_iter),
        ),
        "rf": lambda n: make_pipeline(
            *reduce(),
            RandomForestClassifier(
                n_estimators=s.rf_trees, max_depth=s.rf_depth, n_jobs=-1, random_state=s.seed
            ),
        ),
    }


def bench_sklearn(build: Callable[[int], Any], train_xy: tuple, test_xy: tuple) -> dict[str, Any]:
    x, y, w = train_xy
    with measured(os.getpid()) as result:
        model = build(len(y))
        model.fit(x, y, **{f"{model.steps[-1][0]}__sample_weight": w})
    proba = np.zeros((len(test_xy[1]), len(CLASSES)))
    proba[:, model.classes_.astype(int)] = model.predict_proba(test_xy[0])
    return {**result, **headline(test_xy[1], proba)}


@dataclass
class RealImages:
    """Real HAM10000 rows on the driver: ids and JPEG bytes."""

    image_id: list[str] = field(default_factory=list)
    lesion_id: list[str] = field(default_factory=list)
    dx: list[str] = field(default_factory=list)
    images: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def decoded(self, size: int) -> finetune_data.ImageSet:
        """The rows as fine-tuning reads them: uint8 pixels at size × size (the pipeline's decoder)."""
        pixels = np.empty((len(self), size, size, 3), dtype=np.uint8)
        for i, blob in enumerate(self.images):
            pixels[i] = decode_resized(blob, size)
        ids = {"image_id": self.image_id, "lesion_id": self.lesion_id, "dx": self.dx}
        return finetune_data.ImageSet({**ids, "split": [SPLIT_TRAIN] * len(self)}, pixels)


def real_images(root: Path, n: int) -> RealImages:
    """The first `n` images of `<root>/HAM10000_metadata.csv` found under `<root>/images`, as driver rows."""
    rows = RealImages()
    with open(root / "HAM10000_metadata.csv", newline="") as handle:
        for meta in csv.DictReader(handle):
            path = root / "images" / f"{meta['image_id']}.jpg"
            if len(rows) == n:
                break
            if path.exists():
                rows.image_id.append(meta["image_id"])
                rows.lesion_id.append(meta["lesion_id"])
                rows.dx.append(meta["dx"])
                rows.images.append(path.read_bytes())
    return rows


#: `--finetune-recipes`: the registry's default against the speed variants explored on validation
#: (docs/benchmarks.md, "Time to a model"), measured in one run: the ratios are what compare.
FINETUNE_RECIPES = "default;160px=input_size=160;160px-top60=input_size=160,unfreeze=top,layers=60"


def finetune_recipes(text: str) -> list[tuple[str, finetune.FinetuneConfig]]:
    """`name=key=value,key=value;default` → [(name, the default config with those fields, 2 epochs)]."""
    recipes = []
    for item in filter(None, text.split(";")):
        name, _, fields = item.partition("=")
        changes: dict[str, Any] = {}
        for pair in filter(None, fields.split(",")):
            key, _, value = pair.partition("=")
            kind = type(getattr(finetune.FinetuneConfig(), key))
            changes[key] = kind(value)
        recipes.append((name, replace(finetune.FinetuneConfig(epochs=2), **changes)))
    return recipes


def bench_finetune(ns: argparse.Namespace) -> list[dict[str, Any]]:
    """Two epochs of fine-tuning per recipe (its sampler and augmentation, no validation) + one scoring pass
    with its TTA views, on real images decoded beforehand (no Spark). `train_images_per_s` is the second
    epoch's (the first one traces the graph)."""
    rows_in = real_images(Path(ns.images_dir), ns.finetune_images)
    backbone = resolve_backbone(ns.backbone, ns.weights)
    results = []
    for name, config in finetune_recipes(ns.finetune_recipes):
        spec = replace(backbone, input_size=config.input_size)
        data, no_validation = rows_in.decoded(spec.input_size), RealImages().decoded(spec.input_size)
        with measured(os.getpid()) as result:
            model, info = finetune.fit(spec, config, data, no_validation)
        started = time.monotonic()
        finetune_predict.predict_probabilities(model, spec, data, config.tta)
        predict_s = time.monotonic() - started
        results.append(
            {
                "model": f"finetune-{name}",
                "backbone": spec.name,
                "recipe": {k: getattr(config, k) for k in ("input_size", "unfreeze", "layers", "batch_size")},
                "images": len(rows_in),
                **result,
                "train_images_per_s": info["epochs"][-1]["img_per_s"],
                "predict_images_per_s": round(len(rows_in) / predict_s, 1),
                "tta": config.tta,
                "trainable_layers": info["trainable_layers"],
                "load_1min": os.getloadavg()[0],
            }
        )
        print(json.dumps(results[-1]), flush=True)
    base = results[0]["train_images_per_s"]
    for row in results[1:]:
        print(
            f"{row['model']}: {row['train_images_per_s'] / base:.2f}x {results[0]['model']}'s training rate"
        )
    return results


def format_table(rows: list[dict[str, Any]]) -> str:
    columns = [
        ("model", "{}"),
        ("pca", "{}"),
        ("fit_s", "{:.1f}"),
        ("ratio", "{:.2f}"),
        ("peak_rss_mib", "{:.0f}"),
        ("rss_growth_mib", "{:.0f}"),
        ("accuracy", "{:.3f}"),
        ("balanced_accuracy", "{:.3f}"),
        ("mel_recall", "{:.3f}"),
    ]
    cells = [[c for c, _ in columns]]
    for row in rows:
        cells.append([fmt.format(row[c]) if row.get(c) is not None else "-" for c, fmt in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)) for line in cells)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", default=None, help="features table URI (default: synthetic matrix)")
    parser.add_argument("--models", default="lr,rf,gbt", help="Spark/Keras models: lr,rf,gbt,mlp")
    parser.add_argument("--pca", default="none", help="comma list of PCA settings, e.g. none,64")
    parser.add_argument("--no-sklearn", action="store_true", help="skip the scikit-learn comparison")
    parser.add_argument(
        "--class-weights", action="store_true", help="weight rows n/(K·n_class) (weightCol / sample_weight)"
    )
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    parser.add_argument("--finetune-images", type=int, default=0, help="N > 0: time finetune on N images")
    parser.add_argument("--images-dir", default=None, help="HAM10000 root: metadata CSV + images/")
    parser.add_argument("--backbone", default="mobilenet_0.25")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument(
        "--finetune-recipes",
        default=FINETUNE_RECIPES,
        help="';'-separated name=field=value,... (FinetuneConfig fields; 'default' alone: the defaults)",
    )
    defaults = train.Settings(train_set="-", features="-", out="-")
    for flag, name in [
        ("--lr-reg", "lr_reg"),
        ("--lr-max-iter", "lr_max_iter"),
        ("--rf-trees", "rf_trees"),
        ("--rf-depth", "rf_depth"),
        ("--gbt-iter", "gbt_iter"),
        ("--gbt-depth", "gbt_depth"),
        ("--mlp-epochs", "mlp_epochs"),
        ("--seed", "seed"),
    ]:
        default = getattr(defaults, name)
        parser.add_argument(flag, dest=name, type=type(default), default=default)
    return parser.parse_args(argv)


def settings_from(ns: argparse.Namespace, pca: str) -> train.Settings:
    return train.Settings(
        train_set="-",
        features=ns.features or "synthetic",
        out="-",
        models=tuple(ns.models.split(",")),
        pca_k=None if pca == "none" else int(pca),
        lr_reg=ns.lr_reg,
        lr_max_iter=ns.lr_max_iter,
        rf_trees=ns.rf_trees,
        rf_depth=ns.rf_depth,
        gbt_iter=ns.gbt_iter,
        gbt_depth=ns.gbt_depth,
        seed=ns.seed,
        mlp_epochs=ns.mlp_epochs,
    )


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    if ns.finetune_images > 0:
        rows = bench_finetune(ns)
        if ns.json:
            Path(ns.json).write_text(json.dumps(rows, indent=2) + "\n")
        return 0
    spark = get_spark(
        "molescope-bench-train",
        master=ns.master,
        extra_conf={"spark.driver.memory": ns.driver_memory, "spark.ui.enabled": "false"},
    )
    jvm_pid = int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
    scratch = tempfile.mkdtemp(prefix="molescope-bench-train-")
    features = load_features(spark, ns.features, ns.seed, scratch).cache()
    train_rows = train.training_rows(as_train_set(features, ns.class_weights)).cache()
    test = train.test_split(features).cache()
    n_train, n_test = train_rows.count(), test.count()
    spec = train.feature_spec_of(train_rows, None, standardize=False)
    print(
        f"features: {ns.features or 'synthetic'} dim={spec.feature_dim} train={n_train} test={n_test} "
        f"class_weights={ns.class_weights} master={ns.master}"
    )
    train_xy = test_xy = None
    if not ns.no_sklearn:
        train_xy, test_xy = sklearn_matrix(train_rows), sklearn_matrix(test)
    rows: list[dict[str, Any]] = []
    for pca in ns.pca.split(","):
        s = settings_from(ns, pca)
        pca_spec = replace(spec, pca_k=s.pca_k)
        spark_fit: dict[str, float] = {}
        for name in s.models:
            row = {
                "model": name,
                "pca": pca,
                **bench_spark(name, train_rows, test, pca_spec, s, jvm_pid, ns.class_weights),
            }
            spark_fit[name] = row["fit_s"]
            rows.append(row)
            print(format_table([row]).splitlines()[1], flush=True)
        if train_xy is None:
            continue
        for name, build in sklearn_models(s).items():
            row = {"model": f"sklearn-{name}", "pca": pca, **bench_sklearn(build, train_xy, test_xy)}
            if name in spark_fit:
                # Reported on the Spark row: Spark seconds per scikit-learn second.
                next(r for r in rows if r["model"] == name and r["pca"] == pca)["ratio"] = (
                    spark_fit[name] / row["fit_s"]
                )
            rows.append(row)
    print()
    print(format_table(rows))
    if ns.json:
        Path(ns.json).write_text(json.dumps(rows, indent=2) + "\n")
    spark.stop()
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
