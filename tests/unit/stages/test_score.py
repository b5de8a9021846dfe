"""score stage: a tiny LR model trained on real MobileNet-0.25 features scores new batches of real images.

One model is trained per module (2 real HAM10000 images per class, features from the real MobileNet-0.25
ImageNet weights), saved the way the train stage saves it, and marked champion of a run in a local warehouse.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from molescope.core.champion import EXTERNAL_RUN, run_id_of
from molescope.core.constants import CLASSES, ISIC_COLUMNS
from molescope.core.registry import CHAMPION_FILE, DEFAULT_SIMILAR_K, SIDECAR_FILE, WEIGHTS_AUTO
from molescope.evaluation.calibration import calibrate
from molescope.evaluation.drift import LEVELS as DRIFT_LEVELS
from molescope.evaluation.drift import NOT_TESTED
from molescope.evaluation.drift import SUMMARIES as DRIFT_SUMMARIES
from molescope.evaluation.rules import DecisionRule
from molescope.features import image_stats, weights
from molescope.features.backbones import content_weights_id, resolve_backbone
from molescope.features.extract import compute_features
from molescope.features.spec import FeatureSpec, FeatureSpecMismatch
from molescope.io import tables
from molescope.io.tables import FEATURES_SCHEMA
from molescope.models import trained
from molescope.models.finetune import FORMAT_FINETUNE
from molescope.models.model_specs import FitJob, model_spec
from molescope.scoring import inputs as scoring_inputs
from molescope.scoring import model as scoring_model
from molescope.scoring import outputs, pending, review
from molescope.stages import score, train
from tests.conftest import HAM10000, MOBILENET_025_WEIGHTS, require
from tests.unit.published_tables import publish_curated, publish_features

IMAGES_PER_CLASS = 2
RUN_ID = "r1"
MODEL = "lr"
#: Bytes that start like a JPEG and then are not one.
CORRUPT_JPEG = b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 8
METADATA_HEADER = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")


def metadata_rows() -> list[dict[str, str]]:
    with (require(HAM10000) / "HAM10000_metadata.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def pick_images(per_class: int = IMAGES_PER_CLASS) -> list[dict[str, str]]:
    """`per_class` metadata rows per class whose image exists (first image ids in sort order)."""
    images = require(HAM10000) / "images"
    rows = metadata_rows()
    chosen: list[dict[str, str]] = []
    for dx in CLASSES:
        found = [r for r in rows if r["dx"] == dx and (images / f"{r['image_id']}.jpg").exists()]
        chosen.extend(sorted(found, key=lambda r: r["image_id"])[:per_class])
    return chosen


@pytest.fixture(scope="module")
def picked() -> list[dict[str, str]]:
    return pick_images()


def image_path(image_id: str) -> Path:
    return HAM10000 / "images" / f"{image_id}.jpg"


def train_champion(spark, picked: list[dict[str, str]], root: Path, run_id: str = RUN_ID) -> Path:
    """Train an LR on real MobileNet-0.25 features of `picked` into `<root>/runs/<run_id>/`, as champion."""
    spec = resolve_backbone("mobilenet", str(require(MOBILENET_025_WEIGHTS)), alpha=0.25)
    rows = [
        (
            r["image_id"],
            r["lesion_id"],
            r["dx"],
            r["dx_type"],
            "train",
            image_path(r["image_id"]).read_bytes(),
            "b1",
        )
        for r in picked
    ]
    columns = ["image_id", "lesion_id", "dx", "dx_type", "split", "image", "batch_id"]
    curated = spark.createDataFrame(rows, columns)
    features = compute_features(curated.drop("dx_type"), spec, batch_size=8).localCheckpoint(eager=True)
    # Published as the stages publish them: the case review's similar cases come from these two tables.
    publish_curated(spark, root / "curated", curated)
    publish_features(spark, root / "features", features)
    rows_to_fit = train.training_rows(features)
    run = root / "runs" / run_id
    curated_uri = str(root / "curated")
    settings = train.Settings(
        train_set="unused", features="unused", out=str(run), lr_max_iter=10, curated=curated_uri
    )
    feature_spec = train.feature_spec_of(rows_to_fit, None, standardize=False)
    job = FitJob(spark, settings, rows_to_fit, features, feature_spec, weighted=False)
    training_set = {
        "features_uri": str(root / "features"),
        "curated": curated_uri,
        "image_statistics": train.image_reference(spark, settings, rows_to_fit),
    }
    train.train_model(model_spec(MODEL), job, training_set)
    (run / "models" / CHAMPION_FILE).write_text(json.dumps({"champion": MODEL}))
    return run


@pytest.fixture(scope="module")
def warehouse(spark, picked, tmp_path_factory) -> Path:
    """A local warehouse with one run whose champion is an LR on real MobileNet-0.25 features."""
    root = tmp_path_factory.mktemp("warehouse")
    train_champion(spark, picked, root)
    return root


def run_score(spark, batch: Path, out: Path, **overrides) -> dict:
    settings = score.Settings(
        batch_dir=str(batch),
        batch_id=overrides.pop("batch_id", "new-1"),
        out=str(out),
        weights=overrides.pop("weights", str(MOBILENET_025_WEIGHTS)),
        batch_size=8,
        **overrides,
    )
    return score.run(spark, settings)


def saliency_rows(spark, out: Path | str) -> list[str]:
    """The image ids of the Grad-CAM overlays written beside a scored batch's predictions."""
    return sorted(row.image_id for row in spark.read.parquet(f"{out}/saliency").collect())


def scored_table(spark, out: Path, index: int):
    """The published predictions (0) or quarantine (1) of a scored batch (named by its summary.json)."""
    return tables.read_table(spark, outputs.output_tables(str(out))[index])


def isic_rows(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text())))


def test_scores_batch_without_metadata_with_latest_champion(spark, warehouse, picked, tmp_path):
    batch = tmp_path / "batch"
    (batch / "sub").mkdir(parents=True)
    ids = [r["image_id"] for r in picked[::4]]
    for image_id in ids:
        shutil.copy(image_path(image_id), batch / "sub" / f"{image_id}.jpg")
    (batch / "broken.jpg").write_bytes(CORRUPT_JPEG)
    (batch / "README.txt").write_text("not an input")

    summary = run_score(spark, batch, tmp_path / "scores", model="champion", champion_of=str(warehouse))

    out = tmp_path / "scores" / "new-1" / RUN_ID / MODEL
    assert summary["out"] == str(out)
    assert summary["champion_file"].endswith(f"runs/{RUN_ID}/models/champion.json")
    assert (summary["rows_in"], summary["scored"], summary["quarantined"]) == (len(ids) + 1, len(ids), 1)
    assert summary["quarantined_by_reason"] == {"image_corrupt": 1}
    assert summary["labelled"] == 0 and "metrics" not in summary
    # auto on CPU: litert; the model was trained on keras features (equal to float32 rounding).
    assert summary["engine"] == "litert"
    rows = isic_rows(out / "predictions.csv")
    assert rows[0] == ["image", *ISIC_COLUMNS]
    assert sorted(r[0] for r in rows[1:]) == sorted(ids)
    for row in rows[1:]:
        assert sum(float(v) for v in row[1:]) == pytest.approx(1.0, abs=1e-6)
    predictions = scored_table(spark, out, 0).collect()
    assert {p.image_id for p in predictions} == set(ids)
    assert all(p.dx is None and p.label is None and len(p.probability) == len(CLASSES) for p in predictions)
    quarantine = scored_table(spark, out, 1).collect()
    assert [(q.image_id, q.reason, q.source) for q in quarantine] == [("broken", "image_corrupt", "image")]
    assert not (out / "metrics.json").exists() and not (out / "report.html").exists()
    assert json.loads((out / "summary.json").read_text())["scored"] == len(ids)
    # The case review: every scored image is a card (fewer than --review-top), in worklist order, each
    # with its most similar training images, never one of the batch's own.
    assert summary["review"] == str(out / "review.html") and summary["review_cards"] == len(ids)
    html = (out / "review.html").read_text()
    mel = [float(v) for v in re.findall(r'data-mel="([0-9.]+)"', html)]
    assert len(mel) == len(ids) and mel == sorted(mel, reverse=True)
    cards = re.split(r'<div class="card[ "]', html)[1:]
    assert len(cards) == len(ids)
    dx_type = {r["image_id"]: r["dx_type"] for r in picked}
    for card in cards:
        neighbours = re.findall(r'class="neighbour" title="(ISIC_\d+)"', card)
        assert len(neighbours) == DEFAULT_SIMILAR_K
        assert not set(neighbours) & set(ids) and set(neighbours) <= set(dx_type)
        assert all(f"<br>{dx_type[n]}<br>" in card for n in neighbours)
    # Saliency: a Grad-CAM overlay per card, for its decided class, in the page and beside the predictions.
    assert summary["saliency"].startswith("Grad-CAM") and summary["saliency_s"] > 0
    assert html.count('class="saliency"') == len(ids) and saliency_rows(spark, out) == sorted(ids)
    overlays = spark.read.parquet(str(out / "saliency")).collect()
    assert all(row.overlay[:2] == b"\xff\xd8" for row in overlays)
    assert sorted(row.explained for row in overlays) == sorted(re.findall(r'data-decided="(\w+)"', html))
    # Drift: the batch's images against the training sample (every picked image); too few for a verdict,
    # and no class mix without a decision rule (no validation rows): the page and the summary say so.
    drift = summary["drift"]
    assert drift["reference_images"] == len(picked) and drift["n"] == len(ids)
    assert [t["test"] for t in drift["tests"]] == list(DRIFT_SUMMARIES)
    assert all(t["psi"] >= 0 and t["level"] in DRIFT_LEVELS for t in drift["tests"])
    assert drift["verdict"] == NOT_TESTED and len(drift["notes"]) == 2
    assert f'id="drift-verdict">{NOT_TESTED}<' in html and html.count('<tr class="') >= len(DRIFT_SUMMARIES)


def test_the_drift_reference_samples_real_training_images_only(spark, warehouse, picked, monkeypatch):
    """Upsampled rows (augmented copies under new ids, no curated image) never take a place in the sample."""
    from pyspark.sql import functions as F

    monkeypatch.setattr(image_stats, "REFERENCE_SAMPLE", 5)
    rows = train.training_rows(tables.read_features(spark, str(warehouse / "features")))
    real = rows.withColumn("synthetic", F.lit(False))
    copies = real.withColumn("image_id", F.concat("image_id", F.lit("-aug1"))).withColumn(
        "synthetic", F.lit(True)
    )
    settings = train.Settings(
        train_set="unused", features="unused", out="unused", curated=str(warehouse / "curated")
    )
    reference = train.image_reference(spark, settings, real.unionByName(copies))
    assert reference["n"] == 5 and len(picked) > 5


def write_metadata(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METADATA_HEADER, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def test_labelled_batch_writes_metrics_and_report(spark, warehouse, picked, tmp_path):
    batch = tmp_path / "batch"
    batch.mkdir()
    labelled = picked[1::3]
    for row in labelled:
        shutil.copy(image_path(row["image_id"]), batch / f"{row['image_id']}.jpg")
    unlabelled = {**labelled[0], "dx": ""}
    missing = {**labelled[0], "image_id": "ISIC_9999999"}
    # First row of an image_id wins: the unlabelled repeat is quarantined, the image keeps its label.
    write_metadata(batch / "metadata.csv", [*labelled, unlabelled, missing])
    model_uri = str(warehouse / "runs" / RUN_ID / "models" / MODEL)

    summary = run_score(spark, batch, tmp_path / "scores", model=model_uri, batch_id="labelled")

    out = Path(summary["out"])
    assert summary["scored"] == summary["labelled"] == len(labelled)
    assert summary["quarantined_by_reason"] == {"duplicate_image_id": 1, "image_missing": 1}
    assert summary["rows_in"] == len(labelled) + 2 == summary["scored"] + summary["quarantined"]
    metrics = json.loads((out / "metrics.json").read_text())["models"][MODEL]
    assert metrics["n"] == len(labelled) and metrics["split"] == "scored batch"
    # This model's run had no validation rows: no rule, and none is ever fitted on the scored batch.
    assert metrics["operating_point"]["threshold_source"] is None
    assert 0.0 <= metrics["balanced_accuracy"] <= 1.0
    assert summary["metrics"]["n"] == len(labelled)
    html = (out / "report.html").read_text()
    assert "<html" in html and "data:image/png;base64" in html
    predictions = {p.image_id: p for p in scored_table(spark, out, 0).collect()}
    # The review of a labelled batch: its figures, and a card for every melanoma the model missed.
    page = (out / "review.html").read_text()
    assert 'id="metrics"' in page
    missed = [
        r
        for r in labelled
        if r["dx"] == "mel" and predictions[r["image_id"]].prediction != CLASSES.index("mel")
    ]
    assert page.count('class="missed"') == len(missed)
    for row in labelled:
        assert predictions[row["image_id"]].dx == row["dx"]
        assert predictions[row["image_id"]].lesion_id == row["lesion_id"]
        assert predictions[row["image_id"]].label == CLASSES.index(row["dx"])


def test_written_probabilities_are_calibrated_by_the_models_rule(spark, warehouse, picked, tmp_path):
    """A model whose sidecar rule holds a temperature (train fits one on validation rows) writes
    softmax(log P / T) into predictions.csv; the table keeps the model's own P, which the rule applies to."""
    model_dir = tmp_path / "runs" / "calibrated" / "models" / MODEL
    shutil.copytree(warehouse / "runs" / RUN_ID / "models" / MODEL, model_dir)
    sidecar = json.loads((model_dir / SIDECAR_FILE).read_text())
    rule = DecisionRule(
        prior=(1 / len(CLASSES),) * len(CLASSES),
        tau=0.0,
        mel_threshold=None,
        target_mel_recall=0.85,
        n=20,
        temperature=2.5,
    )
    (model_dir / SIDECAR_FILE).write_text(json.dumps({**sidecar, "decision_rule": rule.to_dict()}))
    batch = tmp_path / "batch"
    batch.mkdir()
    ids = [r["image_id"] for r in picked[::5]]
    for image_id in ids:
        shutil.copy(image_path(image_id), batch / f"{image_id}.jpg")

    summary = run_score(spark, batch, tmp_path / "scores", model=str(model_dir))

    assert summary["calibration_temperature"] == 2.5
    out = Path(summary["out"])
    raw = {p.image_id: p.probability for p in scored_table(spark, out, 0).collect()}
    rows = isic_rows(out / "predictions.csv")[1:]
    order = [CLASSES.index(column.lower()) for column in ISIC_COLUMNS]
    expected = calibrate(np.array([raw[image] for image, *_ in rows]), 2.5)[:, order]
    written = np.array([[float(v) for v in values] for _, *values in rows])
    assert written == pytest.approx(expected, abs=1e-9)
    # Softer than the model's own probabilities, the same most probable class.
    assert (written.max(axis=1) < np.array([max(raw[image]) for image, *_ in rows])).all()
    assert (written.argmax(axis=1) == expected.argmax(axis=1)).all()


def test_zero_byte_files_and_invalid_rows_are_quarantined_in_a_literal_folder(
    spark, warehouse, picked, tmp_path
):
    batch = tmp_path / "batch[1]"  # read as named, not as the glob "batch1"
    batch.mkdir()
    good, invalid = picked[:2], {**picked[2], "sex": "M"}
    for row in [*good, invalid]:
        shutil.copy(image_path(row["image_id"]), batch / f"{row['image_id']}.jpg")
    (batch / "ISIC_0000000.jpg").write_bytes(b"")
    write_metadata(batch / "metadata.csv", [*good, invalid])
    model_uri = str(warehouse / "runs" / RUN_ID / "models" / MODEL)

    summary = run_score(spark, batch, tmp_path / "scores", model=model_uri, batch_id="literal")

    assert summary["quarantined_by_reason"] == {"image_empty": 1, "invalid_sex": 1}
    assert (summary["rows_in"], summary["scored"], summary["image_files"]) == (4, 2, 4)
    rejected = {q.image_id: q for q in scored_table(spark, Path(summary["out"]), 1).collect()}
    assert rejected[invalid["image_id"]].detail.startswith("row 3: sex='m' not in")
    assert rejected["ISIC_0000000"].source_path.endswith("batch[1]/ISIC_0000000.jpg")


def test_a_malformed_metadata_line_costs_its_own_row_in_a_labelled_batch(spark, warehouse, picked, tmp_path):
    """An unclosed quote on the first row quarantines that row's image (not scored on a label that may be
    wrong) and nothing else; a malformed line with no readable image_id is an input of its own."""
    batch = tmp_path / "batch"
    batch.mkdir()
    rows = picked[:3]
    for row in rows:
        shutil.copy(image_path(row["image_id"]), batch / f"{row['image_id']}.jpg")
    write_metadata(batch / "metadata.csv", rows)
    lines = (batch / "metadata.csv").read_bytes().split(b"\r\n")
    fields = lines[1].split(b",")
    lines[1] = b",".join([*fields[:-1], b'"' + fields[-1]])  # the localization opens a quote, never closed
    lines.insert(3, b'"')  # a line holding only an opening quote: no image_id to read
    (batch / "metadata.csv").write_bytes(b"\r\n".join(lines))
    model_uri = str(warehouse / "runs" / RUN_ID / "models" / MODEL)

    summary = run_score(spark, batch, tmp_path / "scores", model=model_uri, batch_id="malformed")

    assert summary["quarantined_by_reason"] == {"malformed_row": 2}
    assert (summary["rows_in"], summary["scored"], summary["image_files"]) == (4, 2, 3)
    rejected = {q.image_id: q.detail for q in scored_table(spark, Path(summary["out"]), 1).collect()}
    assert rejected[rows[0]["image_id"]].startswith("row 1 (line 2): a quoted field never closes")
    assert rejected[None].startswith("row 3 (line 4): a quoted field never closes")


def tampered_model(warehouse: Path, tmp_path: Path, **feature_spec) -> str:
    """A copy of the trained model whose sidecar claims other training features."""
    source = warehouse / "runs" / RUN_ID / "models" / MODEL
    target = tmp_path / "runs" / "other" / "models" / MODEL
    shutil.copytree(source, target)
    sidecar_path = target / SIDECAR_FILE
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["feature_spec"].update(feature_spec)
    sidecar_path.write_text(json.dumps(sidecar))
    # Hadoop's local file system keeps a checksum beside each file it wrote; the edit invalidates it.
    (target / f".{SIDECAR_FILE}.crc").unlink(missing_ok=True)
    return str(target)


@pytest.mark.parametrize(
    "claimed",
    [
        {"weights_id": "sha256:0123456789abcdef"},
        {"backbone": "resnet50", "weights_id": "imagenet", "feature_dim": 2048},
    ],
    ids=["other-weights", "other-backbone"],
)
def test_refuses_model_trained_on_other_features(spark, warehouse, picked, tmp_path, claimed):
    batch = tmp_path / "batch"
    batch.mkdir()
    shutil.copy(image_path(picked[0]["image_id"]), batch / "a.jpg")
    model_uri = tampered_model(warehouse, tmp_path, **claimed)

    with pytest.raises(FeatureSpecMismatch, match="refusing to score") as caught:
        run_score(spark, batch, tmp_path / "scores", model=model_uri)

    message = str(caught.value)
    for value in claimed.values():
        assert str(value) in message  # the model's spec
    assert content_weights_id(MOBILENET_025_WEIGHTS) in message  # the spec the batch would get
    assert not (tmp_path / "scores").exists()


def test_sha256_model_needs_its_weights_file(spark, warehouse, picked, tmp_path):
    batch = tmp_path / "batch"
    batch.mkdir()
    model_uri = str(warehouse / "runs" / RUN_ID / "models" / MODEL)
    with pytest.raises(ValueError, match="pass --weights"):
        run_score(spark, batch, tmp_path / "scores", model=model_uri, weights=WEIGHTS_AUTO)


def test_predict_refuses_features_of_other_weights(spark, warehouse):
    """The second line of defence: TrainedModel.predict checks the feature rows themselves."""
    model = trained.load_model(spark, str(warehouse / "runs" / RUN_ID / "models" / MODEL))
    dim = model.feature_spec.feature_dim
    row = ("x", None, None, None, model.feature_spec.backbone, "imagenet", dim, [0.0] * dim, "b")
    features = spark.createDataFrame([row], FEATURES_SCHEMA)
    with pytest.raises(FeatureSpecMismatch):
        model.predict(features)


def image_model(spark, root: Path) -> str:
    """An untrained `finetune` network (MobileNet-0.25, ImageNet weights) saved as train saves one."""
    from molescope.models import finetune

    spec = resolve_backbone("mobilenet", str(require(MOBILENET_025_WEIGHTS)), alpha=0.25)
    _, model, _ = finetune.build_models(spec, finetune.FinetuneConfig(), metadata_dim=0)
    target = root / "runs" / "ft" / "models" / "finetune"
    trained.save_keras(spark, model, str(target / trained.KERAS_FILE))
    sidecar = {
        "model": "finetune",
        "format": FORMAT_FINETUNE,
        "classes": list(CLASSES),
        "params": {"batch_size": 4, "tta": "hflip", "backbone_spec": finetune.spec_to_dict(spec)},
        "feature_spec": FeatureSpec(spec.name, spec.weights_id, spec.feature_dim, None, False).to_dict(),
        "artifacts": {"keras": trained.KERAS_FILE},
    }
    (target / SIDECAR_FILE).write_text(json.dumps(sidecar))
    return str(target)


def test_image_model_scores_jpeg_bytes_without_weights(spark, picked, tmp_path):
    batch = tmp_path / "batch"
    batch.mkdir()
    ids = [r["image_id"] for r in picked[:3]]
    for image_id in ids:
        shutil.copy(image_path(image_id), batch / f"{image_id}.jpg")

    summary = run_score(
        spark, batch, tmp_path / "scores", model=image_model(spark, tmp_path), weights=WEIGHTS_AUTO
    )

    assert (summary["scored_on"], summary["scored"], summary["weights"]) == ("images", len(ids), None)
    assert summary["tta"] == "hflip"  # the views recorded in the sidecar
    assert summary["metadata"]["model_uses"] is False
    rows = isic_rows(Path(summary["out"]) / "predictions.csv")
    assert sorted(r[0] for r in rows[1:]) == sorted(ids)
    plain = run_score(
        spark, batch, tmp_path / "plain", model=image_model(spark, tmp_path), weights=WEIGHTS_AUTO, tta="none"
    )
    assert plain["tta"] == "none"
    assert summary["similar_cases"] == review.IMAGE_MODEL_NOTE and summary["review_cards"] == len(ids)
    page = (Path(summary["out"]) / "review.html").read_text()
    assert 'id="neighbours-note"' in page
    # The fine-tune's maps come from its own nested backbone: one overlay per card.
    assert summary["saliency"].startswith("Grad-CAM") and page.count('class="saliency"') == len(ids)
    assert saliency_rows(spark, summary["out"]) == sorted(ids)


def test_tta_is_refused_for_a_feature_model_before_any_image_is_read(spark, warehouse, tmp_path):
    model_uri = str(warehouse / "runs" / RUN_ID / "models" / MODEL)
    with pytest.raises(ValueError, match="--tta flip4: model lr scores frozen-backbone features"):
        run_score(spark, tmp_path / "does-not-exist", tmp_path / "scores", model=model_uri, tta="flip4")


# ---------------------------------------------------------------------------------------------- pending mode


def pending_settings(root: Path, out: Path, warehouse: Path) -> score.Settings:
    """Pending mode as the scoring DAG runs it: --scoring-root with an empty --batch-id, the champion."""
    return score.Settings(
        out=str(out),
        scoring_root=str(root),
        batch_id="",
        champion_of=str(warehouse),
        weights=str(MOBILENET_025_WEIGHTS),
        batch_size=8,
    )


def land(root: Path, batch: str, image_ids: list[str]) -> None:
    (root / batch).mkdir(parents=True)
    for image_id in image_ids:
        shutil.copy(image_path(image_id), root / batch / f"{image_id}.jpg")


def test_pending_mode_scores_each_batch_once(spark, warehouse, picked, tmp_path, monkeypatch):
    root, out = tmp_path / "scoring", tmp_path / "scores"
    batches = {
        "clinic-b": [r["image_id"] for r in picked[:2]],
        "clinic-a": [r["image_id"] for r in picked[2:4]],
    }
    for batch, ids in batches.items():
        land(root, batch, ids)
    land(root, "bad name!", [picked[4]["image_id"]])
    (root / "README.txt").write_text("a file, not a batch")
    loads = []
    monkeypatch.setattr(scoring_model, "load_model", lambda *a: loads.append(a) or trained.load_model(*a))

    first = score.run(spark, pending_settings(root, out, warehouse))

    assert len(loads) == 1  # one model for every batch of the job
    assert (first["mode"], first["scoring_root"], first["model"]) == ("pending", str(root), MODEL)
    assert first["model_uri"].endswith(f"{warehouse}/runs/{RUN_ID}/models/{MODEL}")
    assert (first["scored"], first["already_scored"], first["failed"]) == (["clinic-a", "clinic-b"], [], {})
    assert list(first["ignored_folders"]) == ["bad name!"]
    assert "invalid batch id" in first["ignored_folders"]["bad name!"]
    assert not (out / "bad name!").exists()
    summaries = {batch: out / batch / RUN_ID / MODEL / "summary.json" for batch in batches}
    for batch, ids in batches.items():
        written = json.loads(summaries[batch].read_text())
        assert first["batches"][batch] == written
        assert (written["batch_id"], written["batch_dir"]) == (batch, str(root / batch))
        assert (written["scored"], written["quarantined"]) == (len(ids), 0)
        rows = isic_rows(summaries[batch].parent / "predictions.csv")
        assert sorted(r[0] for r in rows[1:]) == sorted(ids)
    before = {batch: path.read_bytes() for batch, path in summaries.items()}

    second = score.run(spark, pending_settings(root, out, warehouse))

    assert (second["scored"], second["already_scored"]) == ([], ["clinic-a", "clinic-b"])
    assert (second["batches"], second["failed"], list(second["ignored_folders"])) == ({}, {}, ["bad name!"])
    assert {batch: path.read_bytes() for batch, path in summaries.items()} == before


def test_pending_mode_scores_other_batches_then_raises_for_failed(spark, warehouse, picked, tmp_path):
    root, out = tmp_path / "scoring", tmp_path / "scores"
    land(root, "empty", [])
    (root / "empty" / "notes.txt").write_text("no image here")
    land(root, "good", [picked[0]["image_id"]])

    with pytest.raises(
        pending.PendingBatchesFailed, match=r"empty: ValueError: batch empty: no usable image"
    ) as caught:
        score.run(spark, pending_settings(root, out, warehouse))

    summary = caught.value.summary
    assert (summary["scored"], list(summary["failed"])) == (["good"], ["empty"])
    assert (out / "good" / RUN_ID / MODEL / "summary.json").exists()
    assert not (out / "empty").exists()


def test_one_batch_under_scoring_root(spark, warehouse, picked, tmp_path):
    root = tmp_path / "scoring"
    land(root, "one", [picked[5]["image_id"]])
    settings = replace(pending_settings(root, tmp_path / "scores", warehouse), batch_id="one")

    summary = score.run(spark, settings)

    assert (summary["batch_id"], summary["batch_dir"], summary["scored"]) == ("one", str(root / "one"), 1)
    assert summary["out"] == str(tmp_path / "scores" / "one" / RUN_ID / MODEL)


def test_pending_batches_sorted_scored_and_ignored():
    folders = ["clinic-b", "bad name!", "clinic-a", ".hidden", "a..b", "done_1", "_tmp", "x" * 65]
    to_score, already, ignored = pending.pending_batches(folders, {"done_1", "gone"})
    assert (to_score, already) == (["clinic-a", "clinic-b"], ["done_1"])
    assert list(ignored) == sorted([".hidden", "_tmp", "a..b", "bad name!", "x" * 65])
    assert all(reason.startswith("invalid batch id") for reason in ignored.values())
    assert pending.pending_batches(["a"], {"a"}) == ([], ["a"], {})
    assert pending.pending_batches([], set()) == ([], [], {})


def test_error_message_is_one_short_line():
    assert pending.error_message(ValueError("no\n  image")) == "ValueError: no image"
    long = pending.error_message(RuntimeError("x" * 1000), limit=50)
    assert len(long) == 50 and long.endswith("...")


# ---------------------------------------------------------------------------------------------- pure parts


def test_latest_champion_is_newest_naming_a_model():
    found = [
        scoring_model.ChampionFile("w/runs/a/models/champion.json", 100, "lr"),
        scoring_model.ChampionFile("w/runs/b/models/champion.json", 300, None),
        scoring_model.ChampionFile("w/runs/c/models/champion.json", 200, "gbt"),
    ]
    latest = scoring_model.latest_champion(found)
    assert latest.uri == "w/runs/c/models/champion.json"
    assert scoring_model.champion_model_uri(latest) == "w/runs/c/models/gbt"
    with pytest.raises(ValueError, match="no champion"):
        scoring_model.latest_champion(found[1:2])


def test_run_id_of_model_folder():
    assert run_id_of("s3a://b/runs/manual_2026/models/lr/") == "manual_2026"
    assert run_id_of("/somewhere/my_model") == EXTERNAL_RUN


def spec_with(weights_id: str) -> FeatureSpec:
    return FeatureSpec("mobilenet_0.25", weights_id, 256, None, False)


def test_weights_source_derived_from_weights_id():
    assert weights.weights_source("imagenet", "auto") == ("imagenet", 0)
    assert weights.weights_source("random-seed7", "auto") == ("random", 7)
    assert weights.weights_source("random-seed7", "random") == ("random", 7)
    assert weights.weights_source("sha256:ab", "/w.h5") == ("/w.h5", 0)
    with pytest.raises(ValueError, match="weights file"):
        weights.weights_source("sha256:ab", "auto")


def test_random_weights_model_rebuilds_its_seed():
    backbone = weights.matching_backbone(spec_with("random-seed3"), "auto", "score")
    assert (backbone.name, backbone.weights_id, backbone.feature_dim) == (
        "mobilenet_0.25",
        "random-seed3",
        256,
    )
    with pytest.raises(FeatureSpecMismatch, match=r"imagenet"):
        weights.matching_backbone(spec_with("random-seed3"), "imagenet", "score")


def parse(argv: list[str]) -> score.Settings:
    parser = argparse.ArgumentParser()
    score.Settings.add_arguments(parser)
    return score.Settings.from_args(parser.parse_args(argv))


def test_cli_arguments():
    base = ["--batch-dir", "s3a://b/scoring/x", "--batch-id", "x", "--out", "s3a://b/scores"]
    settings = parse([*base, "--champion-of", "s3a://b"])
    assert (settings.model, settings.weights, settings.champion_of) == ("champion", "auto", "s3a://b")
    assert parse([*base, "--model", "s3a://b/runs/r/models/lr"]).model == "s3a://b/runs/r/models/lr"
    with pytest.raises(ValueError, match="champion-of"):
        parse(base)
    with pytest.raises(ValueError, match="invalid batch id"):
        parse(["--batch-dir", "d", "--batch-id", "../x", "--out", "o", "--champion-of", "w"])


def test_cli_batch_dir_or_scoring_root():
    tail = ["--out", "o", "--champion-of", "w"]
    with pytest.raises(ValueError, match=r"exactly one of --batch-dir and --scoring-root.*neither"):
        parse(["--batch-id", "x", *tail])
    with pytest.raises(ValueError, match=r"exactly one of --batch-dir and --scoring-root.*both"):
        parse(["--batch-dir", "d", "--scoring-root", "r", "--batch-id", "x", *tail])
    for batch_id in ([], ["--batch-id", ""]):
        with pytest.raises(ValueError, match="--batch-dir needs a non-empty --batch-id"):
            parse(["--batch-dir", "d", *batch_id, *tail])
    with pytest.raises(ValueError, match="invalid batch id"):
        parse(["--scoring-root", "r", "--batch-id", "a b", *tail])
    assert parse(["--scoring-root", "s3a://b/scoring/", "--batch-id", "", *tail]).pending
    assert parse(["--scoring-root", "s3a://b/scoring", *tail]).pending
    one = parse(["--scoring-root", "s3a://b/scoring/", "--batch-id", "x", *tail])
    assert not one.pending
    assert one.for_batch("x").batch_dir == "s3a://b/scoring/x"
    single = parse(["--batch-dir", "s3a://b/elsewhere", "--batch-id", "x", *tail])
    assert not single.pending
    assert single.for_batch("x", single.batch_dir).batch_dir == "s3a://b/elsewhere"


def test_counts_invariant():
    counts = scoring_inputs.Counts(
        image_files=3, metadata_rows=4, metadata_only_rows=2, scored=2, quarantined=3, labelled=1
    )
    assert counts.rows_in == 5
    counts.check("b")
    with pytest.raises(RuntimeError, match="invariant"):
        scoring_inputs.Counts(3, 0, 0, 3, 1, 0).check("b")
