"""A DagBag of dags/ with plugins/ on sys.path, as the DAG processor sees it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
PIPELINE = "skin_lesion_pipeline"


@pytest.fixture(scope="session")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(REPO / "plugins"))
        started = time.monotonic()
        bag = DagBag(dag_folder=str(DAGS))
        print(f"\nDagBag parse of {DAGS}: {time.monotonic() - started:.2f}s for {len(bag.dags)} DAG(s)")
        yield bag
