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
