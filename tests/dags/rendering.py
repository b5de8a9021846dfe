"""Render DAG tasks the way Airflow does for a run, and parse Params the way the trigger form does."""

from __future__ import annotations

import copy
from typing import Any

#: The run every rendering pretends to be (a scheduled run of 2026-11-25).
RUN_ID = "scheduled__2026-11-25T00:00:00+00:00"
DS = "2026-11-25"


def validated(params, conf: dict[str, Any]) -> dict[str, Any]:
    """The DAG's Params with `conf` applied, validated as a trigger would (raises for bad values)."""
    merged = copy.deepcopy(params)
    merged.update(conf)
    return merged.validate()


class FakeTaskInstance:
    """What the templates ask of `ti`: an upstream task's XCom."""

    def __init__(self, xcom: Any):
        self.xcom = xcom

    def xcom_pull(self, task_ids: str | None = None) -> Any:
        return self.xcom


def render_args(
    dag, task_id: str, conf: dict[str, Any], *, ds: str | None = DS, xcom: Any = None
) -> list[str]:
    """The task's application args rendered by the DAG's Jinja environment for a run with `conf`.

    The warehouse Variable is unset (its default applies); `xcom` is what upstream tasks pushed.
    """
    task = dag.get_task(task_id)
    env = dag.get_template_env()
    context = {
        "params": validated(dag.params, conf),
        "run_id": RUN_ID,
        "var": {"value": {"get": lambda key, default=None: default}},
        "ti": FakeTaskInstance(xcom),
        "task": task,
    }
    if ds is not None:
        context["ds"] = ds
    return [env.from_string(arg).render(**context) for arg in task.application_args]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]
