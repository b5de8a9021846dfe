"""The scoring DAG runs on each new champion, with the model and weights its event names."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.dags.conftest import PIPELINE
from tests.dags.rendering import flag, render_args, validated

SCORING = "skin_lesion_scoring"
MODELS = "s3a://molescope/runs/r7/models"


def test_scoring_is_triggered_by_the_champion_asset(dagbag):
    dag = dagbag.dags[SCORING]
    assert type(dag.timetable).__name__ == "AssetTriggeredTimetable"
    assert [a.name for a in dag.timetable.asset_condition.objects] == ["molescope_champion"]
    assert dag.max_active_runs == 1
    assert dag.get_task("score").upstream_task_ids == {"choose_model"}
    assert dag.get_task("score").pool == "spark"


def test_train_announces_its_champion(dagbag):
    train = dagbag.dags[PIPELINE].get_task("train")
    assert "molescope_champion" in {a.name for a in train.outlets}
    assert train.champion["models"].endswith("/models")
    assert train.champion["weights"] == "{{ params.weights }}"


def test_scoring_params(dagbag):
    dag = dagbag.dags[SCORING]
    defaults = validated(dag.params, {})
    assert defaults == {"batch_id": None, "model": "champion", "weights": "auto", "engine": "auto"}
    assert validated(dag.params, {"batch_id": "clinic-7"})["batch_id"] == "clinic-7"
    for bad in ({"batch_id": "../landing"}, {"batch_id": "a/b"}, {"model": ""}, {"engine": "tflite"}):
        with pytest.raises(Exception, match=r"(?i)invalid|valid|param"):
            validated(dag.params, bad)


def rendered(dagbag, conf: dict, choice: dict) -> list[str]:
    return render_args(dagbag.dags[SCORING], "score", conf, xcom=choice)


def test_score_args_from_params_and_choice(dagbag):
    choice = {"model": f"{MODELS}/lr", "weights": "s3a://molescope/w.h5", "reason": "test"}
    pending = rendered(dagbag, {}, choice)
    assert pending[0] == "score"
    assert flag(pending, "--scoring-root") == "s3a://molescope/scoring"
    assert flag(pending, "--batch-id") == ""  # every batch the model has not scored
    assert flag(pending, "--model") == f"{MODELS}/lr"
    assert flag(pending, "--weights") == "s3a://molescope/w.h5"
    assert flag(pending, "--out") == "s3a://molescope/scores"
    assert flag(pending, "--engine") == "auto"
    one = rendered(dagbag, {"batch_id": "clinic-7", "engine": "keras"}, choice)
    assert flag(one, "--batch-id") == "clinic-7"
    assert flag(one, "--engine") == "keras"


# -- pure functions of molescope_airflow.champion ------------------------------------------------------


def event(day: int, **extra):
    from molescope_airflow.champion import ChampionEvent

    return ChampionEvent(datetime(2026, 11, day, tzinfo=UTC), extra)


def test_champion_extra_names_the_exact_model():
    from molescope_airflow.champion import champion_extra

    chosen = {"champion": "gbt", "metric": "balanced_accuracy", "split": "validation", "value": 0.61}
    extra = champion_extra(MODELS + "/", chosen, "imagenet", "d1")
    assert extra == {
        "model_uri": f"{MODELS}/gbt",
        "champion": "gbt",
        "champion_file": f"{MODELS}/champion.json",
        "weights": "imagenet",
        "batch_id": "d1",
        "selected_by": "balanced_accuracy",
        "selected_on": "validation",
        "selection_value": "0.61",
    }
    with pytest.raises(ValueError, match="names no champion"):
        champion_extra(MODELS, {"metric": "accuracy"}, "imagenet", "d1")


def test_explicit_model_param_wins_over_events():
    from molescope_airflow.champion import scoring_choice

    choice = scoring_choice(f"{MODELS}/rf", "auto", [event(2, model_uri=f"{MODELS}/lr", weights="w.h5")])
    assert (choice.model, choice.weights) == (f"{MODELS}/rf", "auto")


def test_newest_event_with_a_model_is_used_and_fills_auto_weights():
    from molescope_airflow.champion import scoring_choice

    events = [
        event(3, model_uri="s3a://m/runs/b/models/gbt", weights="s3a://m/new.h5"),
        event(1, model_uri="s3a://m/runs/a/models/lr", weights="s3a://m/old.h5"),
        event(4),  # an event without extras (e.g. marked by hand in the UI) names nothing
    ]
    choice = scoring_choice("champion", "auto", events)
    assert (choice.model, choice.weights) == ("s3a://m/runs/b/models/gbt", "s3a://m/new.h5")
    assert "2 triggering event" in choice.reason
    kept = scoring_choice("champion", "imagenet", events)
    assert kept.weights == "imagenet"  # an explicit weights param is kept


def test_without_events_the_job_resolves_the_latest_champion():
    from molescope_airflow.champion import scoring_choice

    choice = scoring_choice("champion", "auto", [event(4)])
    assert (choice.model, choice.weights) == ("champion", "auto")
    assert scoring_choice("champion", "auto", []).model == "champion"


def test_pending_batches_are_those_without_the_models_summary():
    from molescope_airflow.champion import pending_batches

    model = "s3a://m/runs/r7/models/lr"
    folders = ["clinic-b", "clinic-a", "bad name!", ".hidden", "clinic-c"]
    done = ["clinic-a/r7/lr/summary.json", "clinic-c/r6/lr/summary.json", "clinic-b/r7/rf/summary.json"]
    assert pending_batches(folders, model, done) == ["clinic-b", "clinic-c"]
    assert pending_batches(["clinic-a"], model, done) == []
    # A model outside runs/<run>/models/ is filed under the "external" run id, as the job does.
    assert pending_batches(["x"], "/somewhere/mine", ["x/external/mine/summary.json"]) == []
