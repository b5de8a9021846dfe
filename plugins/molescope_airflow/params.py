"""Trigger-form Params built from `molescope.core.registry`, so that the DAGs offer exactly what the CLI
accepts.

A model hyper-parameter registered with `in_pipeline=True` becomes a Param (default and description from its
declaration; its JSON Schema, `HyperParameter.json_schema`: type, bounds and choices) and a
`--<name> {{ params.<name> }}` pair in the train task's arguments; nothing else has to change for the trigger
form to show it. The CLI validates the setting against the same schema (`HyperParameter.problem`, with
jsonschema, as Airflow validates the Param), so the form and the CLI accept the same values.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from airflow.sdk import Param

from molescope.core.registry import HyperParameter, hyper_parameters


def enum_param(default: Any, choices: Iterable[str], **kwargs: Any) -> Param:
    """A drop-down Param over a registry tuple."""
    return Param(default, enum=list(choices), **kwargs)


def pipeline_hypers() -> tuple[HyperParameter, ...]:
    """The hyper-parameters the pipeline's trigger form offers (registry order)."""
    chosen = tuple(h for h in hyper_parameters() if h.in_pipeline)
    nullable = [h.name for h in chosen if h.default is None]
    if nullable:
        raise ValueError(f"hyper-parameters without a default cannot be pipeline params: {nullable}")
    return chosen


def hyper_params(section: str) -> dict[str, Param]:
    """{name: Param} of `pipeline_hypers`, in the given form section."""
    return {
        h.name: Param(h.default, description=h.help, section=section, **h.json_schema)
        for h in pipeline_hypers()
    }


def hyper_args() -> list[str]:
    """`--<name>`, `{{ params.<name> }}` for every `pipeline_hypers` entry (the train task's arguments)."""
    return [arg for h in pipeline_hypers() for arg in (h.flag, f"{{{{ params.{h.name} }}}}")]
