"""Assets the pipeline produces, so lineage shows in the Airflow UI and DAGs can react to new outputs.

An Asset here is a *logical* identity (`x-molescope://<output>`), not a bucket path: Airflow keys assets by
name and URI, and the same DAG runs against different warehouses (the Variable `molescope_warehouse`, a
test bucket, a cluster), so a URI built from the environment would make the same asset name collide with
another URI in a shared metadata DB. The stages get their real `s3a://` locations from templated arguments.
The `x-` scheme also keeps Airflow from loading every provider's URI normaliser (the Amazon one imports
boto3) while the DAG file is parsed.
"""

from __future__ import annotations

from airflow.sdk import Asset

_ROOT = "x-molescope://warehouse"

#: Cleaned images of every batch (<warehouse>/curated/images/batch_id=...).
CURATED = Asset(name="molescope_curated", uri=f"{_ROOT}/curated/images", group="molescope")
#: CNN feature tables (<warehouse>/features/<backbone>/<weights>/batch_id=...).
FEATURES = Asset(name="molescope_features", uri=f"{_ROOT}/features", group="molescope")
#: Trained models of a run (<warehouse>/runs/<run>/models/).
MODELS = Asset(name="molescope_models", uri=f"{_ROOT}/runs/models", group="molescope")
#: Updated whenever a run marks a new champion (runs/<run>/models/champion.json); the scoring DAG is
#: scheduled on it.
CHAMPION = Asset(name="molescope_champion", uri=f"{_ROOT}/champion", group="molescope")
