"""Stage settings declared once per field: a frozen dataclass whose fields carry their command-line option.

    @dataclass(frozen=True)
    class Settings(CliSettings):
        curated: str = option(help="curated root URI")
        batch_size: int = option(32, type=int, help="images per predict")
        figures: bool = option(True, flag="--no-figures", action="store_false", help="skip the figures")

`Settings.add_arguments(parser)` adds one option per field (flag `--<field-name>` with dashes unless given;
a field without a default is required) and `Settings.from_args(namespace)` builds the instance from the
parsed values, so a field's name, type, default and help are written once. `validate()` holds the checks that
involve several fields; it runs whenever a Settings is built, from the CLI or from code. Fields declared with
plain `dataclasses.field` stay off the command line.

A model hyper-parameter of the registry (`molescope.core.registry.hyper_parameters()`) is declared by name
only, `lr_reg: float = option(hyper="lr_reg")`: its default, flag, parser, choices and help come from the
registry, its one source; the annotation is there for type checkers (`hyper_declarations()` writes these
lines, and a test compares them with the registry). `@with_registry_hypers` on the class adds, at run time, a
field for any registered hyper-parameter the class does not declare (a model type registered by a plugin or a
test), so a value added to the registry is a setting and a flag with no other edit.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import MISSING, dataclass
from typing import Any, TypeVar

from molescope.core.registry import HyperParameter, hyper_parameters

#: Key of a field's option in `dataclasses.Field.metadata`.
CLI = "molescope.cli"
#: Key of the registry hyper-parameter a field stands for (`option(hyper=...)`) in its metadata.
HYPER = "molescope.hyper"

T = TypeVar("T")


@dataclass(frozen=True)
class Option:
    """argparse details of one settings field (everything argparse takes besides dest and default)."""

    help: str | None = None
    flag: str | None = None
    type: Callable[[str], Any] | None = None
    choices: Sequence[Any] | None = None
    action: str | type[argparse.Action] | None = None
    metavar: str | None = None

    def add_to(self, parser: argparse.ArgumentParser, name: str, default: Any) -> None:
        flag = self.flag or "--" + name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": name, "help": self.help}
        if default is MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
        for key in ("type", "choices", "action", "metavar"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        parser.add_argument(flag, **kwargs)


def option(
    default: Any = MISSING,
    *,
    hyper: str | None = None,
    help: str | None = None,
    flag: str | None = None,
    type: Callable[[str], Any] | None = None,
    choices: Sequence[Any] | None = None,
    action: str | type[argparse.Action] | None = None,
    metavar: str | None = None,
) -> Any:
    """A dataclass field that is also a command-line option (see the module docstring); with `hyper`, the
    registry's hyper-parameter of that name gives everything else."""
    if hyper is not None:
        given = (help, flag, type, choices, action, metavar)
        if default is not MISSING or any(value is not None for value in given):
            raise TypeError(f"option(hyper={hyper!r}) takes its default and option from the registry")
        return _hyper_field(registered_hyper(hyper))
    cli = Option(help, flag, type, tuple(choices) if choices is not None else None, action, metavar)
    return dataclasses.field(default=default, metadata={CLI: cli})


class CliSettings:
    """Base of the stages' frozen `Settings` dataclasses: the CLI comes from the fields' `option`s."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Checks across fields; raise ValueError with the offending flag in the message."""

    @classmethod
    def cli_fields(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if CLI in f.metadata]  # type: ignore[arg-type]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for f in cls.cli_fields():
            f.metadata[CLI].add_to(parser, f.name, _default(f))

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> Any:
        return cls(**{f.name: getattr(ns, f.name) for f in cls.cli_fields() if hasattr(ns, f.name)})


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def extended(base: type, name: str, fields: Iterable[tuple[str, Any, Any]]) -> type:
    """A frozen dataclass `name` deriving from `base` with extra `(name, annotation, option(...))` fields.

    For settings whose options come from a registry (e.g. train's model hyper-parameters), so that a value
    added there becomes a setting and a flag with no edit here.
    """
    cls = dataclasses.make_dataclass(name, list(fields), bases=(base,), frozen=True)
    cls.__module__ = base.__module__  # where it is defined (and pickled from), as for a class statement
    return cls


# ------------------------------------------------------------------------ registry hyper-parameters


def registered_hyper(name: str) -> HyperParameter:
    """The registry's hyper-parameter `name`; ValueError naming the known ones otherwise."""
    hypers = {h.name: h for h in hyper_parameters()}
    if name not in hypers:
        raise ValueError(f"unknown hyper-parameter {name!r}; known: {', '.join(hypers)}")
    return hypers[name]


def hyper_annotation(h: HyperParameter) -> Any:
    """The type of `h`'s setting: its kind's parser, or that or None for a default of None."""
    return h.parser if h.default is not None else h.parser | None


def _hyper_field(h: HyperParameter) -> Any:
    cli = Option(h.help, h.flag, h.parser, h.choices or None)
    return dataclasses.field(default=h.default, metadata={CLI: cli, HYPER: h.name})


def declared_hypers(cls: type) -> dict[str, dataclasses.Field]:
    """{hyper-parameter name: field} of the `option(hyper=...)` fields of settings class `cls`."""
    return {f.metadata[HYPER]: f for f in dataclasses.fields(cls) if HYPER in f.metadata}  # type: ignore[arg-type]


def with_registry_hypers(cls: type[T]) -> type[T]:
    """Class decorator (above `@dataclass`): `cls` itself when it declares every registered hyper-parameter,
    else a frozen subclass of the same name adding a field for each one it lacks (module docstring)."""
    declared = declared_hypers(cls)
    missing = [
        (h.name, hyper_annotation(h), _hyper_field(h)) for h in hyper_parameters() if h.name not in declared
    ]
    return extended(cls, cls.__name__, missing) if missing else cls


def hyper_declarations() -> str:
    """The declaration of every registered hyper-parameter, in registry order, as a settings class spells it
    (`    lr_reg: float = option(hyper="lr_reg")`): generated once, checked in, compared by a test."""
    lines = []
    for h in hyper_parameters():
        annotation = h.parser.__name__ + (" | None" if h.default is None else "")
        lines.append(f'    {h.name}: {annotation} = option(hyper="{h.name}")')
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- value parsers


def comma_list(text: str) -> tuple[str, ...] | None:
    """`"a, b,"` → ("a", "b"); nothing listed → None."""
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    return items or None


def optional_int(text: str) -> int | None:
    """An integer, or None for `none` (and the empty string Airflow renders for an empty param)."""
    return None if text.strip().lower() in ("", "none") else int(text)


def fraction(low_open: bool = True, high_open: bool = False) -> Callable[[str], float]:
    """A parser of floats in (0, 1] (bounds open or closed as asked); out of range: a usage error."""

    def parse(text: str) -> float:
        value = float(text)
        above = value > 0 if low_open else value >= 0
        below = value < 1 if high_open else value <= 1
        if not (above and below):
            interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {text}")
        return value

    parse.__name__ = "fraction"
    return parse
