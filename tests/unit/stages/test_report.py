"""The report stage end to end on tiny predictions in tmp_path: metrics JSON, ISIC CSV, HTML, run history."""

from __future__ import annotations

import argparse
import csv
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from molescope.core.constants import CLASS_INDEX, CLASSES, ISIC_COLUMNS
from molescope.core.registry import SIDECAR_FILE
from molescope.evaluation.calibration import calibrate
from molescope.evaluation.report_html import SECTIONS
from molescope.io import storage, tables
from molescope.stages import report
from tests.unit.published_tables import publish

PREDICTIONS_SCHEMA = (
    "image_id string, lesion_id string, dx string, label int, prediction int, probability array<double>, "
    "model string, split string"
)
PNG_PREFIX = "data:image/png;base64,"


class PageParser(HTMLParser):
    """Collects section ids, element ids and image sources of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.ids: set[str] = set()
        self.images: list[str] = []
        self.alts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if "id" in attributes:
            self.ids.add(attributes["id"] or "")
        if tag == "section":
            self.sections.append(attributes.get("id") or "")
        if tag == "img":
            self.images.append(attributes.get("src") or "")
            self.alts.append(attributes.get("alt") or "")


def parse(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    parser.close()
    return parser


def fake_rows(model: str, seed: int, n_test: int = 28, n_val: int = 0) -> list[tuple]:
    """Prediction rows with every class in the test split and probabilities leaning to the true class."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_test + n_val):
        label = i % len(CLASSES)
        proba = rng.dirichlet(np.ones(len(CLASSES)))
        proba[label] += rng.uniform(0, 0.8)
        proba = proba / proba.sum()
        split = "test" if i < n_test else "validation"
        dx = CLASSES[label]
        rows.append(
            (f"ISIC_{i:07d}", f"HAM_{i:07d}", dx, label, int(proba.argmax()), proba.tolist(), model, split)
        )
    # One unlabelled test image: scored into the CSV, left out of the metrics.
    rows.append(("ISIC_9999999", None, None, None, 0, [1 / 7] * 7, model, "test"))
    return rows


def write_predictions(spark, run: Path, model: str, rows: list[tuple], with_split: bool = True) -> None:
    frame = spark.createDataFrame(rows, PREDICTIONS_SCHEMA)
    if not with_split:
        frame = frame.drop("split")
    publish(spark, tables.model_predictions(str(run), model), frame)


def write_json(path: Path, payload: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


@pytest.fixture(scope="module")
def random_run(spark, tmp_path_factory):
    """A run with two models (one with validation rows), random backbone weights and every optional input."""
    root = tmp_path_factory.mktemp("bucket")
    run = root / "runs" / "run-1"
    write_predictions(spark, run, "logreg", fake_rows("logreg", seed=1, n_val=21))
    write_predictions(spark, run, "rf", fake_rows("rf", seed=2), with_split=False)
    for model in ("logreg", "rf"):
        # The train stage's sidecar layout (molescope.models.trained.SIDECAR_KEYS), trimmed.
        spec = {"backbone": "mobilenet_v2", "weights_id": "random-seed42", "feature_dim": 1280, "pca_k": None}
        sidecar = {"model": model, "format": "spark-pipeline", "params": {"reg": 0.1}, "feature_spec": spec}
        write_json(run / "models" / model / SIDECAR_FILE, sidecar)
    champion = {"champion": "logreg", "metric": "balanced_accuracy", "split": "validation", "models": {}}
    write_json(run / "models" / "champion.json", champion)
    write_json(run / "params.json", {"backbone": "mobilenet", "weights_id": "random-seed42", "reg": 0.1})
    upsample = {
        "strategy": "augment",
        "before": {"nv": 60, "mel": 10, "df": 2},
        "after": {"nv": 60, "mel": 40, "df": 40},
        "synthetic": {"nv": 0, "mel": 30, "df": 38},
    }
    write_json(run / "upsample_summary.json", upsample)
    write_json(root / "curated" / "summaries" / "b1.json", {"kept": 35, "quarantined": {"missing_image": 2}})
    settings = report.Settings(run=str(run), curated=str(root / "curated"))
    return run, settings, report.run(spark, settings)


def test_metrics_json_per_model_and_for_the_run(spark, random_run):
    run, _, summary = random_run
    assert summary["metrics"] == storage.join(str(run), "metrics.json")
    run_metrics = json.loads((run / "metrics.json").read_text())
    assert run_metrics["champion"] == "logreg"
    assert set(run_metrics["models"]) == {"logreg", "rf"}
    for model in ("logreg", "rf"):
        per_model = json.loads((run / "metrics" / f"{model}.json").read_text())
        required = {"accuracy", "balanced_accuracy", "melanoma_recall", "melanoma_precision", "per_class"}
        required |= {"confusion_matrix", "auc", "malignant", "operating_point", "n"}
        assert required <= set(per_model)
        assert per_model["n"] == 28  # test rows with a known dx only
        assert per_model["confusion_matrix"]["labels"] == list(CLASSES)
        assert set(per_model["per_class"]) == set(CLASSES)
        assert summary["models"][model]["balanced_accuracy"] == pytest.approx(per_model["balanced_accuracy"])


def test_metrics_match_an_independent_computation_on_the_same_rows(random_run):
    """The report's figures for rf, recomputed here from its rows (the unlabelled row left out)."""
    from sklearn.metrics import roc_auc_score

    run, _, _ = random_run
    rows = [r for r in fake_rows("rf", seed=2) if r[2] is not None]
    labels = np.array([r[3] for r in rows])
    proba = np.array([r[5] for r in rows])
    matrix = np.zeros((len(CLASSES), len(CLASSES)), dtype=int)
    np.add.at(matrix, (labels, proba.argmax(axis=1)), 1)  # the fake probabilities never tie
    auc = np.mean([roc_auc_score(labels == k, proba[:, k]) for k in range(len(CLASSES))])
    actual = json.loads((run / "metrics" / "rf.json").read_text())
    assert actual["confusion_matrix"]["matrix"] == matrix.tolist()
    assert actual["accuracy"] == pytest.approx(np.trace(matrix) / len(rows))
    assert actual["balanced_accuracy"] == pytest.approx(np.mean(matrix.diagonal() / matrix.sum(axis=1)))
    assert actual["auc"]["mean"] == pytest.approx(auc)


def test_every_figure_names_its_split_and_nothing_is_fitted_on_test(random_run):
    run, _, _ = random_run
    logreg = json.loads((run / "metrics" / "logreg.json").read_text())
    rf = json.loads((run / "metrics" / "rf.json").read_text())
    assert logreg["split"] == rf["split"] == "test"
    assert logreg["operating_point"]["threshold_source"] == "validation"
    assert logreg["operating_point"]["split"] == "test"
    assert logreg["operating_point"]["validation"]["split"] == "validation"
    assert logreg["validation"]["split"] == "validation" and logreg["validation"]["n"] == 21
    # rf has no validation rows: no operating point rather than one fitted on the test split.
    assert rf["operating_point"]["threshold_source"] is None and "validation" not in rf
    run_metrics = json.loads((run / "metrics.json").read_text())
    assert set(run_metrics["splits"]) == {"test", "validation"}
    assert run_metrics["champion_selection"]["split"] == "validation"
    page = parse((run / "report.html").read_text())
    assert {"no-operating-point", "splits"} <= page.ids


def test_the_models_own_rule_is_used_when_its_sidecar_has_one(spark, tmp_path):
    """A rule stored by train (sidecar) is applied as is, not re-fitted, when it aims at the same recall."""
    from molescope.evaluation.rules import DecisionRule

    run = tmp_path / "runs" / "r"
    write_predictions(spark, run, "lr", fake_rows("lr", seed=3, n_val=21))
    rule = DecisionRule((1 / 7,) * 7, -0.3, 0.123, 0.8, n=21)
    write_json(run / "models" / "lr" / SIDECAR_FILE, {"model": "lr", "decision_rule": rule.to_dict()})
    report.run(spark, report.Settings(run=str(run), history=str(tmp_path / "h.jsonl")))
    op = json.loads((run / "metrics" / "lr.json").read_text())["operating_point"]
    assert (op["threshold"], op["prior_tau"], op["rule_from"]) == (0.123, -0.3, "model sidecar (train)")
    report.run(spark, report.Settings(run=str(run), history=str(tmp_path / "h.jsonl"), target_mel_recall=0.9))
    op = json.loads((run / "metrics" / "lr.json").read_text())["operating_point"]
    assert op["rule_from"] == "validation rows (report)" and op["target_mel_recall"] == 0.9


def test_predictions_csv_is_an_isic_submission(random_run):
    run, _, _ = random_run
    text = (run / "predictions" / "rf.csv").read_text()
    reader = csv.reader(io.StringIO(text))
    assert next(reader) == ["image", *ISIC_COLUMNS]
    assert ISIC_COLUMNS == ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
    rows = list(reader)
    source = {r[0]: r[5] for r in fake_rows("rf", seed=2)}
    assert {r[0] for r in rows} == set(source)
    for image, *values in rows:
        assert len(values) == len(ISIC_COLUMNS)
        probabilities = [float(v) for v in values]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-9)
        # Columns are reordered from CLASSES order to the ISIC order.
        for column, value in zip(ISIC_COLUMNS, probabilities, strict=True):
            assert value == pytest.approx(source[image][CLASS_INDEX[column.lower()]])


def test_submission_and_auc_use_the_probabilities_calibrated_on_validation(random_run):
    run, _, _ = random_run
    metrics = json.loads((run / "metrics" / "logreg.json").read_text())
    block = metrics["calibration"]
    temperature = block["temperature"]
    assert temperature != pytest.approx(1.0, abs=0.01)
    assert metrics["operating_point"]["decision_rule"]["temperature"] == temperature
    assert set(block["splits"]) == {"test", "validation"} and block["fitted_on"] == "validation"
    rows = list(csv.reader(io.StringIO((run / "predictions" / "logreg.csv").read_text())))[1:]
    source = {r[0]: r for r in fake_rows("logreg", seed=1, n_val=21) if r[7] == "test"}
    raw = np.array([source[image][5] for image, *_ in rows])
    written = np.array([[float(v) for v in values] for _, *values in rows])
    order = [CLASS_INDEX[column.lower()] for column in ISIC_COLUMNS]
    assert written == pytest.approx(calibrate(raw, temperature)[:, order])
    labelled = [i for i, (image, *_) in enumerate(rows) if source[image][3] is not None]
    y = np.array([source[rows[i][0]][3] for i in labelled])
    auc_mel = roc_auc_score(y == CLASS_INDEX["mel"], written[labelled, ISIC_COLUMNS.index("MEL")])
    assert metrics["auc"]["per_class"]["mel"] == pytest.approx(auc_mel)
    # Never fitted on the evaluated rows: the test figures before scaling are the raw probabilities'.
    test_before = block["splits"]["test"]["before"]
    assert test_before["n"] == len(labelled)
    assert test_before["nll"] == pytest.approx(-np.mean(np.log(raw[labelled, y])))


def test_model_without_validation_rows_is_left_uncalibrated(random_run):
    run, _, _ = random_run
    block = json.loads((run / "metrics" / "rf.json").read_text())["calibration"]
    assert (block["temperature"], block["fitted_on"], list(block["splits"])) == (1.0, None, ["test"])
    assert block["splits"]["test"]["before"] == block["splits"]["test"]["after"]


def test_validation_rows_are_not_in_the_submission(random_run):
    run, _, _ = random_run
    rows = list(csv.DictReader(io.StringIO((run / "predictions" / "logreg.csv").read_text())))
    assert len(rows) == 28 + 1


def test_report_renders_every_section_with_embedded_figures(random_run):
    run, _, summary = random_run
    assert summary["report"] == storage.join(str(run), "report.html")
    page = parse((run / "report.html").read_text())
    assert page.sections == list(SECTIONS)
    assert page.images, "no figures"
    assert all(src.startswith(PNG_PREFIX) and len(src) > 1000 for src in page.images)
    # 2 confusion figures + recall bars + 2 ROC figures + 2 reliability diagrams + class distributions
    assert len(page.images) == 8
    assert any("class distributions" in alt for alt in page.alts)


def test_random_weights_warning_is_prominent(random_run):
    run, _, summary = random_run
    text = (run / "report.html").read_text()
    assert "random-weights-warning" in parse(text).ids
    assert "backbone weights were random" in text
    assert set(summary["random_weights"]) == {"logreg", "rf", "params.json"}


def test_context_inputs_appear_in_the_report(random_run):
    run, _, _ = random_run
    text = (run / "report.html").read_text()
    assert "quarantined.missing_image" in text  # cleaning summary, flattened
    assert "feature_spec.weights_id" in text  # sidecar
    assert "Champion: <b>logreg</b>" in text


def test_history_is_one_object_per_run_and_a_rereport_replaces_it(spark, random_run):
    run, settings, _ = random_run
    history = run.parent / "_history"
    assert sorted(p.name for p in history.iterdir() if not p.name.startswith(".")) == ["run-1.json"]
    first = json.loads((history / "run-1.json").read_text())["rows"]
    assert sorted((r["run_id"], r["model"]) for r in first) == [("run-1", "logreg"), ("run-1", "rf")]
    report.run(spark, settings)
    again = json.loads((history / "run-1.json").read_text())["rows"]
    assert len(again) == len(first)
    assert [r["balanced_accuracy"] for r in again] == [r["balanced_accuracy"] for r in first]


def test_pretrained_run_with_an_earlier_run_in_the_history(spark, tmp_path, capsys):
    run = tmp_path / "runs" / "run-2"
    write_predictions(spark, run, "logreg", fake_rows("logreg", seed=3))
    write_json(run / "models" / "logreg" / SIDECAR_FILE, {"weights_id": "imagenet"})
    history = str(tmp_path / "history")
    earlier = {"run_id": "run-0", "model": "logreg", "balanced_accuracy": 0.5, "champion": True}
    report.write_history(spark, history, "run-0", [earlier])
    settings = report.Settings(run=str(run), history=history, target_mel_recall=0.9)

    summary = report.run(spark, settings)
    report.run(spark, settings)

    text = (run / "report.html").read_text()
    assert "random-weights-warning" not in parse(text).ids
    assert summary["random_weights"] == []
    rows = report.read_history(spark, history)
    assert sorted(r["run_id"] for r in rows) == ["run-0", "run-2"]
    assert "run-0" in text  # earlier runs are compared on the page
    assert "bal_acc" in capsys.readouterr().out  # the summary table for the task log


def test_class_distributions_take_the_training_counts_from_the_upsample_summary():
    upsample = {
        "before": {"nv": 5, "mel": 1},
        "after": {"nv": 5, "mel": 5},
        "rows_before": 6,
        "strategy": "x",
    }
    found = report.class_distributions({"nv": 2}, upsample)
    assert found == {
        "test": {"nv": 2},
        "train before upsampling": {"nv": 5, "mel": 1},
        "train after upsampling": {"nv": 5, "mel": 5},
    }
    assert report.class_distributions({"nv": 2}, None) == {"test": {"nv": 2}}


def test_history_writes_of_two_runs_never_touch_each_other(spark, tmp_path):
    history = str(tmp_path / "history")
    report.write_history(spark, history, "a", [{"run_id": "a", "model": "m"}])
    report.write_history(spark, history, "b", [{"run_id": "b", "model": "m"}, {"run_id": "b", "model": "n"}])
    report.write_history(spark, history, "b", [{"run_id": "b", "model": "m", "x": 1}])
    rows = report.read_history(spark, history)
    assert rows == [{"run_id": "a", "model": "m"}, {"run_id": "b", "model": "m", "x": 1}]


def test_models_without_published_predictions_are_not_reported(spark, tmp_path):
    run = tmp_path / "runs" / "run-4"
    write_predictions(spark, run, "lr", fake_rows("lr", seed=5))
    (run / "predictions" / "rf" / "v20260101T000000Z-00000000").mkdir(parents=True)  # a killed attempt
    assert report.discover_models(spark, str(run)) == ["lr"]


def test_html_escapes_untrusted_text(spark, tmp_path):
    run = tmp_path / "runs" / "run-3"
    model = "m<script>"
    write_predictions(spark, run, model, fake_rows(model, seed=4))
    write_json(run / "params.json", {"note": "<b>bold</b>"})
    report.run(spark, report.Settings(run=str(run)))
    text = (run / "report.html").read_text()
    assert "<script>" not in text
    assert "&lt;b&gt;bold&lt;/b&gt;" in text


def test_settings_reject_an_unreachable_recall():
    parser = argparse.ArgumentParser()
    report.Settings.add_arguments(parser)
    with pytest.raises(SystemExit):
        report.Settings.from_args(parser.parse_args(["--run", "r", "--target-mel-recall", "1.5"]))
    settings = report.Settings.from_args(parser.parse_args(["--run", "s3a://b/runs/r7/"]))
    assert settings.run_id == "r7"
    assert settings.history_uri == "s3a://b/runs/_history"
