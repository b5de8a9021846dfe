"""The champion file: which of a run's models later scoring uses by default.

Light on purpose (no Spark, no pandas): the Airflow plugins import it while DAG files are parsed.
"""

from __future__ import annotations

from typing import Any

#: Written by the train stage beside the models: `<run>/models/champion.json`.
CHAMPION_FILE = "champion.json"
#: `molescope score --model` value: the newest champion under the warehouse.
MODEL_CHAMPION = "champion"
#: `molescope score --weights` value: derive the weights source from the model's weights_id.
WEIGHTS_AUTO = "auto"
#: Folder of the models inside a run prefix (`<run>/models/<model>`).
MODELS_DIR = "models"
#: Run id used in score output paths when a model folder does not sit at `<run>/models/<model>`.
EXTERNAL_RUN = "external"
#: Written last for each scored batch: `<scores>/<batch_id>/<run id>/<model>/summary.json`.
SCORE_SUMMARY_FILE = "summary.json"
#: Keys a champion file may name its model under (`champion` is what train writes).
_NAME_KEYS = ("model", "champion", "name")


def champion_name(payload: Any) -> str | None:
    """The model a parsed champion.json names, or None."""
    if not isinstance(payload, dict):
        return None
    for key in _NAME_KEYS:
        if isinstance(payload.get(key), str) and payload[key]:
            return payload[key]
    return None


def run_id_of(model_uri: str) -> str:
    """The run id of `<...>/runs/<run id>/models/<model>`, else EXTERNAL_RUN."""
    parts = model_uri.rstrip("/").split("/")
    return parts[-3] if len(parts) >= 3 and parts[-2] == MODELS_DIR else EXTERNAL_RUN


def score_summary_key(batch_id: str, model_uri: str) -> str:
    """`<batch_id>/<run id>/<model>/summary.json`, relative to the scores root: marks the batch scored."""
    model = model_uri.rstrip("/").rsplit("/", 1)[-1]
    return f"{batch_id}/{run_id_of(model_uri)}/{model}/{SCORE_SUMMARY_FILE}"
