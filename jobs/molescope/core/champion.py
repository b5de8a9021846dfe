"""The champion file (`<run>/models/champion.json`): which of a run's models later scoring uses by default.

Light on purpose (no Spark, no pandas): the Airflow plugins import it while DAG files are parsed.
"""

from __future__ import annotations

from typing import Any

from molescope.core.registry import MODELS_DIR, SCORE_SUMMARY_FILE

#: Run id used in score output paths when a model folder does not sit at `<run>/models/<model>`.
EXTERNAL_RUN = "external"
#: The key of champion.json naming the model (train writes {"champion": <model>, "metric": ..., ...}).
CHAMPION_KEY = "champion"


def champion_name(payload: Any) -> str | None:
    """The model a parsed champion.json names, or None."""
    name = payload.get(CHAMPION_KEY) if isinstance(payload, dict) else None
    return name if isinstance(name, str) and name else None


def run_id_of(model_uri: str) -> str:
    """The run id of `<...>/runs/<run id>/models/<model>`, else EXTERNAL_RUN."""
    parts = model_uri.rstrip("/").split("/")
    return parts[-3] if len(parts) >= 3 and parts[-2] == MODELS_DIR else EXTERNAL_RUN


def score_summary_key(batch_id: str, model_uri: str) -> str:
    """`<batch_id>/<run id>/<model>/summary.json`, relative to the scores root: marks the batch scored."""
    model = model_uri.rstrip("/").rsplit("/", 1)[-1]
    return f"{batch_id}/{run_id_of(model_uri)}/{model}/{SCORE_SUMMARY_FILE}"
