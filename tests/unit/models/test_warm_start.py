"""warm_start: the rule (warm or full, and why), the one-line refusal of another network, and which
previous model a run (or a re-run of it) starts from, on sidecars in a real runs folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from molescope.core.errors import InputError
from molescope.core.registry import MODELS_DIR, SIDECAR_FILE
from molescope.features.backbones import BackboneSpec
from molescope.models import warm_start

RULE = warm_start.Rule(every=3, growth=0.2)
BACKBONE = {"name": "mobilenet_0.25", "alpha": 0.25, "input_size": 64, "feature_dim": 256}


def sidecar(
    chain: int | None = None, full_rows: int = 1000, model: str = "finetune", start=None, **backbone
) -> dict:
    params = {"backbone_spec": {**BACKBONE, **backbone}}
    if chain is not None:
        params["warm_start"] = {"chain": chain, "full_fit_rows": full_rows, "from": start}
    return {"model": model, "params": params, "keras_history": {"train_images": full_rows}}


def spec(**changes) -> BackboneSpec:
    fields = dict.fromkeys(BackboneSpec.__dataclass_fields__)
    return BackboneSpec(**{**fields, **BACKBONE, **changes})


def test_the_first_run_is_a_full_retrain():
    decision = warm_start.decide(None, None, 1000, RULE)
    assert not decision.warm and decision.why == "full retrain: no earlier fine-tuned model of this network"
    assert decision.record == {"chain": 1, "full_fit_rows": 1000, "from": None}


def test_a_small_growth_warm_starts_and_extends_the_chain():
    decision = warm_start.decide("s3a://b/runs/r1/models/finetune", sidecar(chain=1), 1100, RULE)
    assert decision.warm and decision.previous == "s3a://b/runs/r1/models/finetune"
    assert decision.record == {"chain": 2, "full_fit_rows": 1000, "from": "s3a://b/runs/r1/models/finetune"}
    assert "rows +10.0%" in decision.why


def test_a_model_from_before_the_chain_was_recorded_counts_as_a_full_fit():
    decision = warm_start.decide("m", sidecar(chain=None, full_rows=1000), 1050, RULE)
    assert decision.warm and decision.record["chain"] == 2 and decision.record["full_fit_rows"] == 1000


def test_the_rule_asks_for_a_full_retrain_every_n_fits():
    decision = warm_start.decide("m", sidecar(chain=3), 1000, RULE)
    assert not decision.warm and "fit 4 since the last full retrain, the rule allows 3" in decision.why
    assert decision.record["chain"] == 1 and decision.record["full_fit_rows"] == 1000


def test_the_rule_asks_for_a_full_retrain_when_the_rows_grew_too_much():
    decision = warm_start.decide("m", sidecar(chain=1, full_rows=1000), 1201, RULE)
    assert not decision.warm and "grew 20.1%" in decision.why
    assert decision.record["full_fit_rows"] == 1201


@pytest.mark.parametrize(
    ("previous", "message"),
    [
        (sidecar(input_size=224), "another network (input_size 224 → 64); use --warm-start none"),
        (
            sidecar(name="resnet50", feature_dim=2048),
            "name resnet50 → mobilenet_0.25, feature_dim 2048 → 256",
        ),
        (sidecar(model="lr"), "a 'lr' model, not a fine-tuned network"),
        ({**sidecar(), "classes": ["nv", "mel"]}, "classes ('nv', 'mel') differ"),
        ({**sidecar(), "metadata": {"names": ["age", "sex"]}}, "metadata input of 2 values, this fit has 0"),
    ],
)
def test_another_network_is_refused_in_one_line(previous, message):
    with pytest.raises(InputError) as refused:
        warm_start.check_compatible("s3a://b/runs/r1/models/finetune", previous, spec(), 0)
    line = str(refused.value)
    assert "\n" not in line and line.startswith("--warm-start s3a://b/runs/r1/models/finetune: ")
    assert message in line


def test_the_same_network_is_accepted():
    warm_start.check_compatible("m", sidecar(), spec(weights_id="sha256:other"), 0)


def publish(runs: Path, run: str, age_s: int, **fields) -> str:
    """A fine-tuned model's sidecar under `runs/<run>/models/finetune`, `age_s` seconds old."""
    folder = runs / run / MODELS_DIR / warm_start.FINETUNE_MODEL
    folder.mkdir(parents=True)
    path = folder / SIDECAR_FILE
    path.write_text(json.dumps(sidecar(**fields)))
    os.utime(path, (path.stat().st_mtime - age_s,) * 2)
    return str(folder)


def plan(spark, runs: Path, run: str, fit_rows: int = 1050) -> warm_start.Decision:
    return warm_start.plan(spark, str(runs), str(runs / run), RULE, fit_rows, (spec(), 0))


def test_a_run_starts_from_the_newest_model_of_the_other_runs(spark, tmp_path):
    publish(tmp_path, "r1", 200, chain=1)
    newest = publish(tmp_path, "r2", 100, chain=1)
    decision = plan(spark, tmp_path, "r3")
    assert decision.warm and decision.previous.endswith(newest) and decision.record["chain"] == 2


def test_a_re_run_repeats_the_previous_model_its_earlier_attempt_started_from(spark, tmp_path):
    first = publish(tmp_path, "r1", 300, chain=1)
    publish(tmp_path, "r3", 200, chain=2, start=first)  # r3's earlier attempt, from r1
    publish(tmp_path, "r4", 100, chain=1)  # a newer model, published after it
    decision = plan(spark, tmp_path, "r3")
    assert decision.warm and decision.previous == first
    assert decision.record == {"chain": 2, "full_fit_rows": 1000, "from": first}


def test_a_re_run_of_a_full_retrain_is_a_full_retrain(spark, tmp_path):
    publish(tmp_path, "r3", 200, chain=1)
    publish(tmp_path, "r4", 100, chain=1)
    decision = plan(spark, tmp_path, "r3")
    assert not decision.warm and "earlier attempt" in decision.why


def test_a_re_run_whose_previous_model_is_gone_searches_again(spark, tmp_path):
    publish(tmp_path, "r3", 200, chain=2, start=str(tmp_path / "deleted" / MODELS_DIR / "finetune"))
    newest = publish(tmp_path, "r4", 100, chain=1)
    decision = plan(spark, tmp_path, "r3")
    assert decision.warm and decision.previous.endswith(newest)


def test_the_newest_model_of_this_network_is_chosen_newer_ones_of_another_are_passed_over(spark, tmp_path):
    same = publish(tmp_path, "r1", 300, chain=1)
    publish(tmp_path, "r2", 200, chain=1, input_size=224)
    publish(tmp_path, "r3", 100, chain=1, name="resnet50", feature_dim=2048)
    decision = plan(spark, tmp_path, "r4")
    assert decision.warm and decision.previous.endswith(same)


def test_no_model_of_this_network_is_a_full_retrain_saying_so(spark, tmp_path):
    publish(tmp_path, "r1", 100, chain=1, input_size=224)
    decision = plan(spark, tmp_path, "r2")
    assert not decision.warm and decision.why == "full retrain: no earlier fine-tuned model of this network"


def test_a_model_folder_named_explicitly_must_be_of_this_network(spark, tmp_path):
    other = publish(tmp_path, "r1", 100, chain=1, input_size=224)
    with pytest.raises(InputError, match="another network"):
        warm_start.plan(spark, other, str(tmp_path / "r2"), RULE, 1050, (spec(), 0))


def test_warm_start_none_is_always_a_full_retrain(spark, tmp_path):
    publish(tmp_path, "r1", 100, chain=1)
    decision = warm_start.plan(spark, "none", str(tmp_path / "r2"), RULE, 1050, (spec(), 0))
    assert not decision.warm and decision.why == "full retrain: --warm-start none"
