"""Model hyper-parameters: their declaration (`hyper`), their JSON Schema and its validation.

A hyper-parameter's JSON Schema (`HyperParameter.json_schema`: type, bounds, choices) is built once from its
declaration and is the one rule set of its values: the pipeline's trigger form puts it in the Param
(molescope_airflow.params), and `HyperParameter.problem` validates a setting against it with the `jsonschema`
library, as Airflow validates the Param. `jsonschema` is imported on the first validation only: the DAG files
read this module at parse time.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

#: JSON Schema bound keywords, as the sign a value must satisfy (`--lr-reg -1.0: must be >= 0`).
_BOUND_SIGNS = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}


@dataclass(frozen=True)
class HyperParameter:
    """One model hyper-parameter: its setting (`--<name>` on `molescope train`), default and search grid.

    `param` is the estimator's own name for it (Spark: regParam; Keras head: dropout). `kind` is its JSON
    schema type (number | integer | string); `schema` holds its bounds as JSON Schema keywords (minimum,
    maximum, ...), part of `json_schema`. `grid`: values `--cv-folds` searches (the setting's value is always
    added). `in_pipeline`: offered in the pipeline DAG's trigger form.
    """

    name: str
    param: str
    default: Any
    kind: str
    help: str
    schema: dict[str, Any] = field(default_factory=dict)
    choices: tuple[str, ...] = ()
    grid: tuple[Any, ...] = ()
    in_pipeline: bool = False

    @property
    def parser(self) -> type:
        """The Python type of its values (float, int or str), which also parses its command-line option."""
        return _TYPES[self.kind]

    @property
    def flag(self) -> str:
        """Its `molescope train` option."""
        return "--" + self.name.replace("_", "-")

    @functools.cached_property
    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema of its values (`type`, the bounds of `schema`, `enum` of `choices`), built once:
        the trigger form's Param and `problem` both use this dict (neither changes it)."""
        extra: dict[str, Any] = {"enum": list(self.choices)} if self.choices else {}
        return {"type": self.kind, **self.schema, **extra}

    def problem(self, value: Any) -> str | None:
        """Why `value` breaks `json_schema` (the trigger form's rules), naming the flag; None when it is valid
        and for None (an unset optional setting)."""
        if value is None:
            return None
        from jsonschema.exceptions import best_match

        error = best_match(_validator(json.dumps(self.json_schema, sort_keys=True)).iter_errors(value))
        if error is None:
            return None
        sign = _BOUND_SIGNS.get(str(error.validator))
        if sign is not None:
            return f"{self.flag} {value}: must be {sign} {error.validator_value}"
        return f"{self.flag}: {error.message}"


@functools.cache
def _validator(schema_json: str) -> Any:
    """A `jsonschema` validator of one schema (the draft Airflow's Param validation picks), checked and built
    once per schema: a declaration whose schema is not valid JSON Schema fails on its first validation."""
    from jsonschema import FormatChecker
    from jsonschema.validators import validator_for

    schema = json.loads(schema_json)
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=FormatChecker())


#: JSON Schema type of a hyper-parameter ↔ the Python type of its values.
_TYPES: dict[str, type] = {"number": float, "integer": int, "string": str}
_KINDS = {python: kind for kind, python in _TYPES.items()}


def hyper(
    name: str,
    param: str,
    default: Any,
    help: str,
    *,
    kind: type | None = None,
    grid: tuple = (),
    pipeline: bool = False,
    choices: tuple[str, ...] = (),
    **schema: Any,
) -> HyperParameter:
    """A HyperParameter whose JSON kind follows `default` (or `kind`, for a default of None)."""
    json_kind = _KINDS[kind or type(default)]
    return HyperParameter(name, param, default, json_kind, help, schema, choices, grid, pipeline)
