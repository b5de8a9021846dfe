"""molescope.scoring.report: what a scored batch says beyond its predictions, on the inputs score gives it.

- the images come from `scoring.inputs.read_inputs` on a real batch folder (real HAM10000 JPEGs, a metadata
  CSV naming only some of them), as score reads a batch;
- the predictions are the predictions table (`trained.predictions_frame`) brought to the driver as score
  brings it, with probabilities chosen so that the model's decision rule (from its sidecar) and the plain
  argmax disagree on known rows: the expected figures follow from those rows, worked out below.
"""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from molescope.core.constants import CLASSES, METADATA_COLUMNS
from molescope.core.registry import METRICS_FILE, REPORT_FILE
from molescope.evaluation import outcomes
from molescope.evaluation.rules import FITTED_ON, DecisionRule
from molescope.intake.metadata import VocabularySettings
from molescope.models.fusion import MetadataEncoding
from molescope.models.trained import TrainedModel, predictions_frame
from molescope.scoring import report
from molescope.scoring.inputs import read_inputs
from tests.conftest import HAM10000, require

MODEL = "lr"
#: The model's own rule, as train stores it in the sidecar: no prior shift, melanoma from q(mel) >= 0.3.
RULE = DecisionRule(prior=(1 / 7,) * 7, tau=0.0, mel_threshold=0.3, target_mel_recall=0.9, n=120)


def proba(**by_class: float) -> list[float]:
    row = [by_class.get(dx, 0.0) for dx in CLASSES]
    assert sum(row) == pytest.approx(1.0)
    return row


#: (image_id, dx, probabilities, argmax decision, the rule's decision)
ROWS = [
    ("ISIC_1", "mel", proba(nv=0.55, mel=0.35, bkl=0.1), "nv", "mel"),  # the rule catches this melanoma
    ("ISIC_2", "nv", proba(nv=0.7, mel=0.2, bkl=0.1), "nv", "nv"),
    ("ISIC_3", "bcc", proba(bcc=0.5, mel=0.25, nv=0.25), "bcc", "bcc"),
    ("ISIC_4", "mel", proba(mel=0.6, nv=0.4), "mel", "mel"),
    ("ISIC_5", "bkl", proba(bkl=0.4, nv=0.35, mel=0.25), "bkl", "bkl"),  # q(mel) < 0.3: best other class
    ("ISIC_6", None, proba(nv=0.69, mel=0.31), "nv", "mel"),  # unlabelled: decided, never evaluated
]
LABELLED = [row for row in ROWS if row[1] is not None]


def sidecar(*, rule: DecisionRule | None = RULE, metadata: bool = False) -> dict:
    payload = {
        "model": MODEL,
        "feature_spec": {"backbone": "mobilenet_v2_0.25", "weights_id": "imagenet:mobilenet"},
    }
    if rule is not None:
        payload["decision_rule"] = rule.to_dict()
    if metadata:
        payload["metadata"] = MetadataEncoding().to_dict()
    return payload


def model(**kwargs) -> TrainedModel:
    return TrainedModel(name=MODEL, sidecar=sidecar(**kwargs), pipeline=None)


@pytest.fixture(scope="module")
def predictions(spark):
    """The predictions of ROWS, as score has them after writing its table (ordered by image_id)."""
    ids = {
        "image_id": [r[0] for r in ROWS],
        "lesion_id": [f"HAM_{r[0]}" for r in ROWS],
        "dx": [r[1] for r in ROWS],
        "split": [None] * len(ROWS),
    }
    frame = predictions_frame(spark, ids, np.array([r[2] for r in ROWS]), MODEL)
    return frame.orderBy("image_id").toPandas()


def test_the_rows_decide_as_worked_out():
    """The worked-out decisions above are what the rule and argmax make of the rows (guards the fixture)."""
    p = np.array([r[2] for r in ROWS])
    assert [CLASSES[i] for i in RULE.decide(p)] == [r[4] for r in ROWS]
    assert [CLASSES[i] for i in p.argmax(axis=1)] == [r[3] for r in ROWS]


# ---------------------------------------------------------------------------------------- decided classes


def test_decided_per_class_follows_the_models_rule_over_every_scored_image(predictions):
    decided = report.decided_per_class(model(), predictions)
    expected = dict.fromkeys(CLASSES, 0)
    for row in ROWS:
        expected[row[4]] += 1
    assert decided == expected == {"nv": 1, "mel": 3, "bkl": 1, "bcc": 1, "akiec": 0, "vasc": 0, "df": 0}
    assert sum(decided.values()) == len(ROWS)
    # Not the argmax counts, which the summary already has (predicted_per_class).
    argmax = {dx: int((predictions["prediction"] == i).sum()) for i, dx in enumerate(CLASSES)}
    assert argmax["mel"] == 1 and decided != argmax


def test_no_decided_classes_without_a_rule(predictions):
    assert report.decided_per_class(model(rule=None), predictions) is None


# ---------------------------------------------------------------------------------------- report files


def test_write_report_evaluates_labelled_rows_at_the_models_rule(spark, predictions, tmp_path, capsys):
    out = tmp_path / "scores" / "b1" / "r1" / MODEL
    summary = {"batch_id": "b1", "scored": len(ROWS)}
    headline = report.write_report(spark, str(out), model(), predictions, "b1", 0.9, summary)

    payload = json.loads((out / METRICS_FILE).read_text())
    assert payload["batch_id"] == "b1" and set(payload["models"]) == {MODEL}
    metrics = payload["models"][MODEL]
    assert metrics["model"] == MODEL and metrics["split"] == "scored batch"
    # Only the labelled rows are evaluated: 4 of 5 right by argmax (ISIC_1 is a missed melanoma) ...
    assert metrics["n"] == len(LABELLED) == 5
    assert metrics["accuracy"] == pytest.approx(4 / 5)
    assert metrics["melanoma_recall"] == pytest.approx(1 / 2)
    # ... all 5 at the model's own rule, whose threshold is the sidecar's (never fitted on this batch).
    op = metrics["operating_point"]
    assert op["threshold"] == RULE.mel_threshold and op["threshold_source"] == FITTED_ON
    assert op["decision_rule"] == RULE.to_dict()
    assert op["accuracy"] == pytest.approx(1.0) and op["mel_recall"] == pytest.approx(1.0)
    assert op["n"] == 5
    # The headline returned is the summary of those metrics.
    assert headline == outcomes.model_summary(metrics)
    assert headline["n"] == 5 and headline["operating_point"]["accuracy"] == pytest.approx(1.0)

    html = (out / REPORT_FILE).read_text()
    assert "<html" in html
    assert "score b1 (lr)" in html and "scored batch" in html
    printed = capsys.readouterr().out
    assert printed.strip() == outcomes.summary_table({MODEL: metrics})


def test_write_report_replaces_the_previous_files(spark, predictions, tmp_path):
    out = tmp_path / "out"
    report.write_report(spark, str(out), model(), predictions, "first", 0.9, {})
    report.write_report(spark, str(out), model(), predictions, "second", 0.9, {})
    assert json.loads((out / METRICS_FILE).read_text())["batch_id"] == "second"
    html = (out / REPORT_FILE).read_text()
    assert "score second (lr)" in html and "score first" not in html
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [METRICS_FILE, REPORT_FILE]


def test_without_a_rule_the_report_says_none_was_fitted_on_the_batch(spark, predictions, tmp_path):
    out = tmp_path / "out"
    headline = report.write_report(spark, str(out), model(rule=None), predictions, "b", 0.9, {})
    op = json.loads((out / METRICS_FILE).read_text())["models"][MODEL]["operating_point"]
    assert op["rule"] is None and op["threshold"] is None and op["threshold_source"] is None
    assert "never fitted on the evaluated rows" in op["reason"]
    assert headline["threshold_source"] is None


def test_write_report_refuses_a_batch_without_labelled_rows(spark, predictions, tmp_path):
    unlabelled = predictions[predictions["dx"].isna()]
    with pytest.raises(ValueError, match="no labelled rows"):
        report.write_report(spark, str(tmp_path / "out"), model(), unlabelled, "b", 0.9, {})
    assert not (tmp_path / "out" / METRICS_FILE).exists()


# ---------------------------------------------------------------------------------------- metadata note

#: Real images of the batch; the CSV names the first two fully and the third with its sex only.
BATCH = ("ISIC_0024306", "ISIC_0024307", "ISIC_0024308", "ISIC_0024309", "ISIC_0024310")


@pytest.fixture(scope="module")
def scored_images(spark, tmp_path_factory):
    """(images, n) as score's read_inputs gives them for a batch whose CSV names only some images."""
    folder = tmp_path_factory.mktemp("batch")
    for image_id in BATCH:
        shutil.copyfile(require(HAM10000) / "images" / f"{image_id}.jpg", folder / f"{image_id}.jpg")
    with (HAM10000 / "HAM10000_metadata.csv").open(newline="") as handle:
        real = {row["image_id"]: row for row in csv.DictReader(handle) if row["image_id"] in BATCH}
    third = {**real[BATCH[2]], "age": "", "localization": ""}
    with (folder / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METADATA_COLUMNS)
        writer.writeheader()
        writer.writerows([real[BATCH[0]], real[BATCH[1]], third])
    images, quarantine, counts = read_inputs(spark, str(folder), "b1", 32, VocabularySettings().vocabulary)
    quarantine.unpersist()
    assert counts.scored == len(BATCH)
    return images, counts.scored


def test_metadata_note_counts_the_images_scored_without_metadata(scored_images):
    images, n = scored_images
    note = report.metadata_note(model(metadata=True), images, n)
    # Two images have no row in the CSV; the one with only its sex still has metadata.
    assert note["model_uses"] is True
    assert (note["images_with_metadata"], note["images_without"]) == (3, 2)
    assert note["note"].startswith("scored WITHOUT metadata for 2 of 5 images")
    assert "encoded as unknown" in note["note"]


def test_metadata_note_when_every_image_has_metadata(scored_images):
    images, _ = scored_images
    named = images.where(images.image_id.isin(*BATCH[:3]))
    note = report.metadata_note(model(metadata=True), named, 3)
    assert note == {
        "model_uses": True,
        "images_with_metadata": 3,
        "images_without": 0,
        "note": "age, sex and localization from the batch's metadata CSV",
    }


def test_metadata_note_of_a_model_without_metadata(scored_images):
    images, n = scored_images
    assert report.metadata_note(model(), images, n) == {
        "model_uses": False,
        "note": "the model uses no metadata (images only)",
    }
